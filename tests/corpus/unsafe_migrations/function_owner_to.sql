-- expect: refused: ALTER FUNCTION ... OWNER TO
-- execution: refused
-- reason: line 5: OWNER TO
CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
ALTER FUNCTION f() OWNER TO app;
