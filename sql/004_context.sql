-- pgtenancy — 004: entering a tenant.
--
-- Tenant context is per transaction: enter_tenant() sets search_path and
-- app.tenant_id with set_config(..., true), so both vanish at COMMIT or
-- ROLLBACK and a pooled connection carries nothing of the tenant.
-- enter_tenant() must not have a SET clause (the clause would undo its
-- set_config calls on return), so it is SECURITY INVOKER and qualifies
-- every name instead.

-- What enter_tenant() reads of the registry. A view (not a SECURITY DEFINER
-- function, whose call costs more than the lookup) that application roles
-- may read: no metadata, nothing they could not enter anyway.
CREATE OR REPLACE VIEW tenancy.tenant_directory AS
    SELECT t.slug, t.id, t.schema_name, t.status FROM tenancy.tenants AS t;

COMMENT ON VIEW tenancy.tenant_directory IS
    'Slug, id, schema and status of every tenant: what entering a tenant needs, readable by '
    'application roles that have no access to tenancy.tenants.';

CREATE OR REPLACE FUNCTION tenancy.enter_tenant(slug text)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    p_slug ALIAS FOR slug;
    v_id     uuid;
    v_schema text;
    v_status text;
BEGIN
    SELECT d.id, d.schema_name, d.status
      INTO v_id, v_schema, v_status
      FROM tenancy.tenant_directory AS d
     WHERE d.slug = p_slug;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant % not found', coalesce(pg_catalog.quote_literal(p_slug), 'NULL')
            USING ERRCODE = 'PT003';
    END IF;
    IF v_status = 'suspended' THEN
        RAISE EXCEPTION 'tenant % is suspended', pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT004';
    END IF;
    IF v_status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_status = 'provisioning' THEN
        RAISE EXCEPTION 'tenant % is being provisioned', pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT019',
                  HINT = 'Its migrations are not all applied yet: rerun create_tenant or pgtenancy migrate.';
    END IF;
    -- Fail closed: never fall back to public when the schema is gone.
    IF v_schema IS NOT NULL
       AND pg_catalog.to_regnamespace(pg_catalog.quote_ident(v_schema)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', pg_catalog.quote_ident(v_schema),
            pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT007';
    END IF;
    -- A shared tenant sees the shared schema, guarded by RLS on app.tenant_id.
    PERFORM pg_catalog.set_config('search_path',
                                  CASE WHEN v_schema IS NULL THEN 'public'
                                       ELSE pg_catalog.quote_ident(v_schema) || ', public' END,
                                  true);
    PERFORM pg_catalog.set_config('app.tenant_id', v_id::text, true);
    PERFORM pg_catalog.set_config('app.tenant', p_slug, true);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant(text) IS
    'Put the current transaction into tenant slug: search_path = tenant schema, public (public '
    'alone for a shared tenant); '
    'app.tenant_id = tenant id; app.tenant = slug; all transaction-local. Returns the tenant id. '
    'Raises PT003 (unknown), PT004 (suspended), PT005 (deleted), PT019 (being provisioned), '
    'PT007 (schema missing) before anything is set. Call it inside a transaction block.';

CREATE OR REPLACE FUNCTION tenancy.current_tenant_id()
    RETURNS uuid
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT nullif(pg_catalog.current_setting('app.tenant_id', true), '')::uuid
$$;

COMMENT ON FUNCTION tenancy.current_tenant_id() IS
    'Id of the tenant the current transaction entered, NULL outside a tenant (a custom setting '
    'reads back as an empty string after the transaction that set it).';

CREATE OR REPLACE FUNCTION tenancy.current_tenant()
    RETURNS text
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT nullif(pg_catalog.current_setting('app.tenant', true), '')
$$;

COMMENT ON FUNCTION tenancy.current_tenant() IS
    'Slug of the tenant the current transaction entered, NULL outside a tenant.';
