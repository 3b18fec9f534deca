-- pgtenancy — 001: the tenancy schema and its tables.
--
-- sql/NNN_*.sql hold the current schema only, in name order; a file uses
-- only objects of itself and of earlier files.  A fresh install runs them
-- all in one transaction; an existing install is upgraded by the deltas in
-- sql/upgrades/ instead.  Every file stays idempotent (IF NOT EXISTS,
-- CREATE OR REPLACE), so re-installing the same version changes nothing.
-- SQLSTATE class PT is pgtenancy's own; the README lists every code.
--
-- The version in tenancy.version() is a placeholder, stamped with the
-- release (python/pgtenancy/_version.py) by the installer when it reads
-- these files and by sql/Makefile when it builds the extension scripts.

CREATE SCHEMA IF NOT EXISTS tenancy;

COMMENT ON SCHEMA tenancy IS
    'pgtenancy: tenant registry, tenant migrations, lifecycle outbox and consumer cursors.';

CREATE OR REPLACE FUNCTION tenancy.version()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT '@PGTENANCY_VERSION@'::pg_catalog.text
$$;

COMMENT ON FUNCTION tenancy.version() IS
    'Version of the installed pgtenancy SQL, as major.minor.patch text.';

CREATE OR REPLACE FUNCTION tenancy.schema_prefix()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT 'tenant_'::pg_catalog.text
$$;

COMMENT ON FUNCTION tenancy.schema_prefix() IS
    'Prefix of every tenant schema name: schema_name = schema_prefix() || slug.';

-- The registry: one row per tenant.  The row is the truth about a tenant;
-- triggers on it provision schemas and emit lifecycle events, so every path
-- that changes it (functions, psql, other services) gets the same checks
-- and the same events.
CREATE TABLE IF NOT EXISTS tenancy.tenants (
    id                uuid        NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    slug              text        NOT NULL,
    schema_name       text,
    status            text        NOT NULL DEFAULT 'active',
    isolation         text        NOT NULL DEFAULT 'schema',
    metadata          jsonb       NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    migration_version text COLLATE "C",
    limits            text[],
    slug_assigned_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_schema_name_key UNIQUE (schema_name),
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleted', 'provisioning')),
    CONSTRAINT tenants_isolation_check CHECK (isolation IN ('schema', 'shared')),
    CONSTRAINT tenants_schema_name_check CHECK ((isolation = 'schema') = (schema_name IS NOT NULL)),
    CONSTRAINT tenants_metadata_check CHECK (pg_catalog.jsonb_typeof(metadata) = 'object')
);

COMMENT ON TABLE tenancy.tenants IS
    'Tenant registry. Insert, update and delete go through triggers that validate, provision and emit events.';
COMMENT ON COLUMN tenancy.tenants.isolation IS
    'schema: the tenant has its own schema; shared: its rows live in RLS-guarded shared tables.';
COMMENT ON COLUMN tenancy.tenants.schema_name IS
    'The tenant''s schema (schema_prefix() || slug); NULL for a shared tenant.';
COMMENT ON COLUMN tenancy.tenants.migration_version IS
    'Latest tenancy.migrations version applied to this tenant''s schema; NULL when none.';
COMMENT ON COLUMN tenancy.tenants.limits IS
    'Resource limits as (setting, value) pairs, applied transaction-locally at entry '
    '(set by the limits function of 010_tenant_operations.sql); NULL when none.';
COMMENT ON COLUMN tenancy.tenants.slug_assigned_at IS
    'When the tenant got its slug (clock_timestamp() at creation and at each rename, set by the '
    'registry triggers, never by hand): strict entry refuses tokens issued before it, so a token '
    'for the slug''s previous holder (renamed or destroyed) does not enter this tenant.';

-- Tenant migrations: DDL run inside every tenant schema, in version order
-- (C collation).  A tenant's state is the single migration_version above,
-- so checking whether a tenant is current is one comparison.
CREATE TABLE IF NOT EXISTS tenancy.migrations (
    version    text COLLATE "C" NOT NULL,
    sql        text        NOT NULL,
    checksum   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    outside_transaction boolean NOT NULL DEFAULT false,
    CONSTRAINT migrations_pkey PRIMARY KEY (version)
);

COMMENT ON TABLE tenancy.migrations IS
    'Tenant DDL, applied inside each tenant schema in version order (C collation).';

-- The outbox: one row per lifecycle event, written in the transaction that
-- made the change.  xid is the writing transaction's id; consumers read only
-- below the oldest running transaction, ordered by (xid, id), so an event
-- that took a smaller id but committed later is never skipped.
CREATE TABLE IF NOT EXISTS tenancy.events (
    id            bigint      GENERATED ALWAYS AS IDENTITY,
    xid           xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    name          text        NOT NULL,
    tenant_id     uuid,
    tenant_slug   text,
    tenant_schema text,
    tenant_status text,
    payload       jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT events_pkey PRIMARY KEY (id)
);

CREATE INDEX IF NOT EXISTS events_xid_id_idx ON tenancy.events (xid, id);

COMMENT ON TABLE tenancy.events IS
    'Outbox of tenant lifecycle events. id is unique and serves receivers as an idempotency key.';

-- Durable cursors, one per consumer name: the (xid, id) of the last event
-- whose receivers have all run.
CREATE TABLE IF NOT EXISTS tenancy.consumers (
    name       text        NOT NULL,
    last_xid   xid8        NOT NULL DEFAULT '0',
    last_id    bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    lease_holder text,
    lease_until  timestamptz,
    seen_at      timestamptz,
    CONSTRAINT consumers_pkey PRIMARY KEY (name)
);

COMMENT ON TABLE tenancy.consumers IS
    'Outbox cursor per consumer name: (last_xid, last_id) of the last fully delivered event.';
COMMENT ON COLUMN tenancy.consumers.seen_at IS
    'Last heartbeat of a listener running this consumer; NULL when none ever ran.';

-- Shared tables guarded by RLS on a tenant column (tenancy.enable_rls).
CREATE TABLE IF NOT EXISTS tenancy.guarded_tables (
    table_name    regclass    NOT NULL,
    tenant_column name        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT guarded_tables_pkey PRIMARY KEY (table_name)
);

COMMENT ON TABLE tenancy.guarded_tables IS
    'Shared tables whose rows belong to tenants, guarded by an RLS policy on tenant_column.';

-- Application roles granted tenant access (tenancy.grant_app_role): every
-- new tenant schema and guarded table is granted to them as it appears.
CREATE TABLE IF NOT EXISTS tenancy.app_roles (
    role_name  name        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT app_roles_pkey PRIMARY KEY (role_name)
);

COMMENT ON TABLE tenancy.app_roles IS
    'Roles that use tenants without owning tables and without BYPASSRLS.';

-- One row per slug ever created: tenants_before_insert locks it (INSERT ...
-- ON CONFLICT DO UPDATE) to serialize creations of one slug. A row lock on
-- a table the application role cannot touch, not an advisory lock, which
-- any role could take first and hold.
CREATE TABLE IF NOT EXISTS tenancy.slug_locks (
    slug text NOT NULL,
    CONSTRAINT slug_locks_pkey PRIMARY KEY (slug)
);

COMMENT ON TABLE tenancy.slug_locks IS
    'Row locks serializing the creation of each tenant slug. Internal.';

CREATE OR REPLACE FUNCTION tenancy.check_metadata(metadata jsonb)
    RETURNS jsonb
    LANGUAGE plpgsql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF check_metadata.metadata IS NULL OR jsonb_typeof(check_metadata.metadata) <> 'object' THEN
        RAISE EXCEPTION 'tenant metadata must be a JSON object, not %',
            coalesce(jsonb_typeof(check_metadata.metadata), 'NULL')
            USING ERRCODE = 'PT029';
    END IF;
    -- Metadata is copied into every tenant_created event: keep it small.
    IF octet_length(check_metadata.metadata::text) > 65536 THEN
        RAISE EXCEPTION 'tenant metadata is % bytes as JSON text, more than 65536',
            octet_length(check_metadata.metadata::text)
            USING ERRCODE = 'PT029',
                  HINT = 'Keep large data in your own tables, keyed by the tenant id.';
    END IF;
    -- Deeper JSON is no metadata (and recursive readers have limits:
    -- Python's json fails near 1,000 levels): a value at most 32 levels
    -- below the top.
    IF jsonb_path_exists(check_metadata.metadata, 'strict $.**{33 to last}') THEN
        RAISE EXCEPTION 'tenant metadata nests values more than 32 levels deep'
            USING ERRCODE = 'PT029',
                  HINT = 'Flatten it, or keep such data in your own tables.';
    END IF;
    RETURN check_metadata.metadata;
END
$$;

COMMENT ON FUNCTION tenancy.check_metadata(jsonb) IS
    'Return metadata when it is a JSON object of at most 65536 bytes as JSON text with no value '
    'more than 32 levels below the top; raise PT029 otherwise. Checked by the registry triggers '
    'on every insert and update.';
-- Old slugs of renamed tenants (the rename of 010_tenant_operations.sql).
CREATE TABLE IF NOT EXISTS tenancy.tenant_renames (
    old_slug   text        NOT NULL,
    tenant_id  uuid        NOT NULL,
    new_slug   text        NOT NULL,
    renamed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT tenant_renames_pkey PRIMARY KEY (old_slug)
);

COMMENT ON TABLE tenancy.tenant_renames IS
    'Slugs tenants had before a rename, with the slug each tenant has now; '
    'enter_tenant reads it to fail with PT020 under an old slug. Readable by everyone.';

-- enter_tenant runs as the calling (application) role.
GRANT SELECT ON TABLE tenancy.tenant_renames TO PUBLIC;

-- Database-wide maxima of tenant limits, set by the kit's owner (010).
CREATE TABLE IF NOT EXISTS tenancy.limit_maxima (
    setting    text        NOT NULL,
    maximum    text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT limit_maxima_pkey PRIMARY KEY (setting),
    CONSTRAINT limit_maxima_setting_check CHECK (setting IN ('work_mem'))
);

COMMENT ON TABLE tenancy.limit_maxima IS
    'Largest value a tenant limit may set, per setting (work_mem), for the whole database.';
