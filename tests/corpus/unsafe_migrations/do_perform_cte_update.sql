-- expect: refused: a DO block suspending every tenant through PERFORM of a data-modifying CTE
-- execution: refused
-- reason: line 6: in a DO block: SELECT writes tenancy.tenants
DO $$
BEGIN
    PERFORM * FROM (WITH s AS (UPDATE tenancy.tenants SET status = 'suspended' RETURNING 1) SELECT * FROM s) x;
END
$$;
