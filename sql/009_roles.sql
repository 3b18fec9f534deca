-- pgtenancy — 009: the roles that use the kit without owning it.
--
-- Last, because they grant EXECUTE on functions of every earlier file:
-- grant_app_role() for the application (enter tenants, read and write
-- tenant data), grant_listener_role() for outbox consumers.

CREATE OR REPLACE FUNCTION tenancy.grant_app_role(role name)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role   pg_roles;
    v_schema text;
    v_table  regclass;
BEGIN
    SELECT * INTO v_role FROM pg_roles WHERE rolname = grant_app_role.role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role % does not exist', quote_ident(grant_app_role.role)
            USING ERRCODE = '42704';
    END IF;
    IF v_role.rolsuper OR v_role.rolbypassrls THEN
        RAISE EXCEPTION 'role % is a superuser or has BYPASSRLS: row-level security would not apply',
            quote_ident(grant_app_role.role)
            USING ERRCODE = 'PT013',
                  HINT = 'Use a role with NOSUPERUSER NOBYPASSRLS for the application.';
    END IF;
    SELECT g.table_name INTO v_table
      FROM tenancy.guarded_tables AS g
      JOIN pg_class AS c ON c.oid = g.table_name
     WHERE pg_has_role(grant_app_role.role, c.relowner, 'USAGE')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'role % owns guarded table %: an owner can turn row-level security off',
            quote_ident(grant_app_role.role), v_table
            USING ERRCODE = 'PT013',
                  HINT = 'Let the application role own nothing; tables belong to the kit''s owner.';
    END IF;

    PERFORM tenancy.forget_dropped_tables();
    -- A role already recorded is updated (to itself), not skipped: strict
    -- mode's trigger on app_roles takes back at commit what the grants
    -- below give on materialized views and sequences, every time.
    INSERT INTO tenancy.app_roles (role_name) VALUES (grant_app_role.role)
        ON CONFLICT (role_name) DO UPDATE SET role_name = EXCLUDED.role_name;
    EXECUTE format('GRANT USAGE ON SCHEMA tenancy TO %I', grant_app_role.role);
    EXECUTE format('GRANT SELECT ON TABLE tenancy.guarded_tables, tenancy.tenant_directory TO %I',
                   grant_app_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.enter_tenant(text), '
                   'tenancy.current_tenant_id(), '
                   'tenancy.current_tenant(), tenancy.require_tenant_id(), tenancy.version(), '
                   'tenancy.check_isolation(), tenancy.check_registry() TO %I', grant_app_role.role);
    EXECUTE format('GRANT EXECUTE ON PROCEDURE tenancy.enter(text, text), tenancy.enter_known(text, text) TO %I',
                   grant_app_role.role);
    -- No outbox function: the application role could pre-claim events
    -- (inbox_claim) or move cursors; receivers run as listener roles.
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.tenant_info(), tenancy.resolve_domain(text) TO %I',
                   grant_app_role.role);
    FOR v_schema IN SELECT schema_name FROM tenancy.tenants WHERE schema_name IS NOT NULL LOOP
        IF to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
            PERFORM tenancy.grant_schema_to_app_roles(v_schema);
        END IF;
    END LOOP;
    FOR v_table IN SELECT table_name FROM tenancy.guarded_tables LOOP
        PERFORM tenancy.grant_table_to_app_roles(v_table);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.grant_app_role(name) IS
    'Let role role use tenants: enter them, read the public fields of the entered tenant '
    '(tenant_info) and resolve host names (resolve_domain), and read and write every tenant '
    'schema and guarded table, now and as new ones appear, without owning any table. Raises 42704 '
    '(no such role) and PT013 (superuser, BYPASSRLS, or owner of a guarded table). Idempotent.';

REVOKE ALL ON FUNCTION tenancy.grant_app_role(name) FROM PUBLIC;

-- The outbox functions are for listeners: the kit's owner, or roles granted
-- with tenancy.grant_listener_role().
CREATE OR REPLACE FUNCTION tenancy.grant_listener_role(role name)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = grant_listener_role.role) THEN
        RAISE EXCEPTION 'role % does not exist', quote_ident(grant_listener_role.role)
            USING ERRCODE = '42704';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA tenancy TO %I', grant_listener_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.events_channel(), '
                   'tenancy.register_consumer(text), tenancy.next_events(text, integer), '
                   'tenancy.events_held_back(text), tenancy.advance_consumer(text, xid8, bigint, text), '
                   'tenancy.version() TO %I', grant_listener_role.role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.consumer_heartbeat(text), '
                   'tenancy.acquire_lease(text, text, interval), '
                   'tenancy.release_lease(text, text), '
                   'tenancy.park_event(text, bigint, text, integer, text), '
                   'tenancy.unpark_event(text, bigint, text), tenancy.parked_events(text), '
                   'tenancy.inbox_claim(text, bigint) '
                   'TO %I', grant_listener_role.role);
    -- For `pgtenancy events status` and `events health` run as the listener.
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.consumer_status(), tenancy.outbox_health(), '
                   'tenancy.start_consumer(text, text) TO %I', grant_listener_role.role);
END
$$;

COMMENT ON FUNCTION tenancy.grant_listener_role(name) IS
    'Let role role run outbox consumers (pgtenancy listen): register a consumer, read events, '
    'move its cursor (start_consumer: from now or the oldest event), read consumer_status and '
    'outbox_health. Raises 42704 when the role does '
    'not exist.';

REVOKE ALL ON FUNCTION tenancy.grant_listener_role(name) FROM PUBLIC;

-- Application roles granted before a procedure of entry existed (a
-- reinstall over an earlier build of this version): what grant_app_role
-- grants of them now.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                   WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = a.role_name) LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE tenancy.enter(text, text), '
                                  'tenancy.enter_known(text, text) TO %I', v_role);
    END LOOP;
END
$$;
