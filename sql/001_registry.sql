-- pgtenancy 0.2.0 — 001: the tenancy schema and its tables.
--
-- Every file in sql/ is idempotent: the installer runs all of them, in name
-- order, in one transaction, and a second run changes nothing.  Tables use
-- IF NOT EXISTS, functions CREATE OR REPLACE, triggers CREATE OR REPLACE.
--
-- SQLSTATE class PT is pgtenancy's own:
--   PT001 invalid tenant slug        PT006 migration failed
--   PT002 tenant already exists      PT007 tenant schema missing
--   PT003 tenant not found           PT008 invalid migration
--   PT004 tenant suspended           PT009 tenants still registered
--   PT005 tenant deleted             PT010 immutable tenant column
--   PT012 no tenant in transaction   PT011 consumer not found
--   PT013 unsafe application role    PT014 table cannot be guarded
--   PT015 consumer lease lost        PT016 table cannot be tracked

CREATE SCHEMA IF NOT EXISTS tenancy;

COMMENT ON SCHEMA tenancy IS
    'pgtenancy: tenant registry, tenant migrations, lifecycle outbox and consumer cursors.';

-- Refuse to install over a newer version of the kit: a downgrade would
-- replace newer functions with older ones.
DO $$
DECLARE
    v_installed text;
BEGIN
    IF pg_catalog.to_regprocedure('tenancy.version()') IS NOT NULL THEN
        EXECUTE 'SELECT tenancy.version()' INTO v_installed;
        IF pg_catalog.string_to_array(v_installed, '.')::int[]
           > pg_catalog.string_to_array('0.2.0', '.')::int[] THEN
            RAISE EXCEPTION 'pgtenancy % is installed; refusing to install the older 0.2.0',
                v_installed
                USING ERRCODE = 'PT008';
        END IF;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.version()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT '0.2.0'::text
$$;

COMMENT ON FUNCTION tenancy.version() IS
    'Version of the installed pgtenancy SQL, as major.minor.patch text.';

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
    CONSTRAINT tenants_pkey PRIMARY KEY (id),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_schema_name_key UNIQUE (schema_name),
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT tenants_isolation_check CHECK (isolation IN ('schema', 'shared')),
    CONSTRAINT tenants_schema_name_check CHECK ((isolation = 'schema') = (schema_name IS NOT NULL)),
    CONSTRAINT tenants_metadata_check CHECK (pg_catalog.jsonb_typeof(metadata) = 'object')
);

-- Upgrade in place from 0.1.0 (schema tenants only): shared tenants have no
-- schema. Idempotent, like everything here.
ALTER TABLE tenancy.tenants ALTER COLUMN schema_name DROP NOT NULL;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conrelid = 'tenancy.tenants'::regclass
                      AND conname = 'tenants_schema_name_check') THEN
        ALTER TABLE tenancy.tenants DROP CONSTRAINT tenants_isolation_check;
        ALTER TABLE tenancy.tenants ADD CONSTRAINT tenants_isolation_check
            CHECK (isolation IN ('schema', 'shared'));
        ALTER TABLE tenancy.tenants ADD CONSTRAINT tenants_schema_name_check
            CHECK ((isolation = 'schema') = (schema_name IS NOT NULL));
    END IF;
END
$$;

COMMENT ON TABLE tenancy.tenants IS
    'Tenant registry. Insert, update and delete go through triggers that validate, provision and emit events.';
COMMENT ON COLUMN tenancy.tenants.isolation IS
    'schema: the tenant has its own schema; shared: its rows live in RLS-guarded shared tables.';
COMMENT ON COLUMN tenancy.tenants.schema_name IS
    'The tenant''s schema (schema_prefix() || slug); NULL for a shared tenant.';
COMMENT ON COLUMN tenancy.tenants.migration_version IS
    'Latest tenancy.migrations version applied to this tenant''s schema; NULL when none.';

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

-- Upgrade in place from 0.1.0.
ALTER TABLE tenancy.migrations
    ADD COLUMN IF NOT EXISTS outside_transaction boolean NOT NULL DEFAULT false;

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
