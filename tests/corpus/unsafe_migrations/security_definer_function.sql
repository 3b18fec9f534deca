-- expect: warned: a SECURITY DEFINER function
-- execution: allowed
-- warning: SECURITY DEFINER
CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$;
