-- pgtenancy — 004: host names of tenants, and what the application may know
-- of its own tenant.
--
-- A web front end resolves a request's host to a tenant: tenant_domains maps
-- full host names (acme-corp.example.com, shop.acme.test) to tenants, so
-- host names need not follow the slug rules (hyphens, custom domains).
-- tenant_info() gives the application role the public fields of the tenant
-- its transaction entered, without access to tenancy.tenants.

CREATE TABLE IF NOT EXISTS tenancy.tenant_domains (
    domain     text        NOT NULL,
    tenant_id  uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT tenant_domains_pkey PRIMARY KEY (domain),
    CONSTRAINT tenant_domains_domain_check CHECK (
        pg_catalog.length(domain) <= 253
        AND domain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$')
);

CREATE INDEX IF NOT EXISTS tenant_domains_tenant_id_idx ON tenancy.tenant_domains (tenant_id);

-- No foreign key to tenancy.tenants: it would change how TRUNCATE of the
-- registry is refused. A row whose tenant is gone (drop_tenant with
-- destroy_data) matches nothing, and add_tenant_domain reuses its name.
COMMENT ON TABLE tenancy.tenant_domains IS
    'Host names of tenants (lowercase, no trailing dot, no port): what tenancy.resolve_domain() '
    'and the pgtenancy.fastapi subdomain resolver look up. Rows of removed tenants are ignored.';

CREATE OR REPLACE FUNCTION tenancy.normalize_domain(domain text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.rtrim(pg_catalog.lower(pg_catalog.btrim(normalize_domain.domain)), '.')
$$;

COMMENT ON FUNCTION tenancy.normalize_domain(text) IS
    'Host name domain as tenant_domains stores it: trimmed, lowercase, without trailing dots. '
    'NULL for NULL.';

CREATE OR REPLACE FUNCTION tenancy.add_tenant_domain(slug text, domain text)
    RETURNS tenancy.tenant_domains
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_domain text := tenancy.normalize_domain(add_tenant_domain.domain);
    v_tenant tenancy.tenants := tenancy.lock_tenant(add_tenant_domain.slug);
    v_row    tenancy.tenant_domains;
    v_owner  text;
BEGIN
    IF v_tenant.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(add_tenant_domain.slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_domain IS NULL OR length(v_domain) > 253
       OR v_domain !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$' THEN
        RAISE EXCEPTION 'invalid host name %', coalesce(quote_literal(add_tenant_domain.domain), 'NULL')
            USING ERRCODE = 'PT030',
                  HINT = 'A host name is dot-separated labels of letters, digits and inner '
                         'hyphens, 63 characters each, 253 in all, without port or scheme.';
    END IF;
    SELECT t.slug INTO v_owner
      FROM tenancy.tenant_domains AS d
      JOIN tenancy.tenants AS t ON t.id = d.tenant_id
     WHERE d.domain = v_domain;
    IF FOUND AND v_owner <> v_tenant.slug THEN
        RAISE EXCEPTION 'host name % belongs to tenant %', quote_literal(v_domain), quote_literal(v_owner)
            USING ERRCODE = 'PT031',
                  HINT = 'Remove it first: tenancy.remove_tenant_domain(domain).';
    END IF;
    -- A name left by a removed tenant is taken over.
    INSERT INTO tenancy.tenant_domains AS d (domain, tenant_id) VALUES (v_domain, v_tenant.id)
    ON CONFLICT ON CONSTRAINT tenant_domains_pkey DO UPDATE
       SET tenant_id = excluded.tenant_id, created_at = now()
     WHERE NOT EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.id = d.tenant_id);
    SELECT * INTO v_row FROM tenancy.tenant_domains AS d WHERE d.domain = v_domain;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.add_tenant_domain(text, text) IS
    'Map host name domain (normalized by normalize_domain) to tenant slug; returns the row. '
    'Idempotent for the same tenant. Raises PT003 (no such tenant), PT005 (deleted tenant), '
    'PT030 (invalid host name), PT031 (the name belongs to another tenant).';

REVOKE ALL ON FUNCTION tenancy.add_tenant_domain(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.remove_tenant_domain(domain text)
    RETURNS boolean
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM tenancy.tenant_domains AS d
         WHERE d.domain = tenancy.normalize_domain(remove_tenant_domain.domain)
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM gone)
$$;

COMMENT ON FUNCTION tenancy.remove_tenant_domain(text) IS
    'Forget host name domain; true when it was mapped.';

REVOKE ALL ON FUNCTION tenancy.remove_tenant_domain(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.resolve_domain(domain text)
    RETURNS text
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.slug
      FROM tenancy.tenant_domains AS d
      JOIN tenancy.tenants AS t ON t.id = d.tenant_id
     WHERE d.domain = tenancy.normalize_domain(resolve_domain.domain)
$$;

COMMENT ON FUNCTION tenancy.resolve_domain(text) IS
    'Slug of the tenant host name domain is mapped to (whatever its status: entering it says '
    'whether it may be used), NULL when none. Granted by grant_app_role.';

REVOKE ALL ON FUNCTION tenancy.resolve_domain(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.tenant_info()
    RETURNS TABLE (id uuid, slug text, status text, public jsonb, slug_assigned_at timestamptz)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid := tenancy.current_tenant_id();
BEGIN
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'no tenant in this transaction'
            USING ERRCODE = 'PT012',
                  HINT = 'Call tenancy.tenant_info() in a transaction that entered a tenant '
                         '(tenancy.enter_tenant, tenant_session, tenant_connection).';
    END IF;
    RETURN QUERY
        SELECT t.id, t.slug, t.status, coalesce(t.metadata -> 'public', '{}'::jsonb),
               t.slug_assigned_at
          FROM tenancy.tenants AS t
         WHERE t.id = v_id;
END
$$;

COMMENT ON FUNCTION tenancy.tenant_info() IS
    'Id, slug, status, the public part of the metadata (metadata -> ''public'', {} when '
    'absent) and slug_assigned_at (when it got its slug: strict entry refuses entry tokens '
    'issued before it, PT034) of the tenant the current transaction entered; the rest of the '
    'metadata stays with the owner. Raises PT012 outside a tenant. Granted by grant_app_role.';

REVOKE ALL ON FUNCTION tenancy.tenant_info() FROM PUBLIC;
