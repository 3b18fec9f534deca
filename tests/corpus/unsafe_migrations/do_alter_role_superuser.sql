-- expect: refused: make the application role SUPERUSER from a DO block (static statement)
-- execution: refused
-- reason: line 6: in a DO block: ALTER ROLE:
DO $$
BEGIN
    ALTER ROLE app SUPERUSER;
END
$$;
