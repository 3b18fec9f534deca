-- expect: refused: a DO block emptying the outbox inside a loop
-- execution: refused
-- reason: line 8: in a DO block: DELETE writes tenancy.events
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT id FROM tenancy.tenants LOOP
        DELETE FROM tenancy.events WHERE tenant_id = r.id;
    END LOOP;
END
$$;
