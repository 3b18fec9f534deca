-- expect: refused: a SECURITY DEFINER function would run with the owner's rights
-- execution: refused
-- reason: line 4: is SECURITY DEFINER
CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$;
