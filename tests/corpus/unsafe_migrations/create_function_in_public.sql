-- expect: refused: plant a function in public
-- execution: refused
-- reason: line 4: acts on public.round
CREATE FUNCTION public.round(integer) RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
