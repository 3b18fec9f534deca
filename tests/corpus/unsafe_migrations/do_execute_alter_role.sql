-- expect: warned: make the application role SUPERUSER via EXECUTE in a DO block
-- execution: refused
-- warning: DO block runs dynamic SQL
DO $$
BEGIN
    EXECUTE 'ALTER ROLE ' || current_user || ' SUPERUSER';
END
$$;
