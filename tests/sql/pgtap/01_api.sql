-- pgTAP: the SQL API of pgtenancy, its triggers and its error SQLSTATEs.
-- Run by tests/sql/test_pgtap.py in a fresh database with the kit installed,
-- inside a transaction that is rolled back.

SELECT plan(40);

-- The functions of the API exist with their signatures.
SELECT has_function('tenancy', 'version', ARRAY[]::text[]);
SELECT has_function('tenancy', 'create_tenant', ARRAY['text', 'jsonb', 'text']);
SELECT has_function('tenancy', 'suspend_tenant', ARRAY['text']);
SELECT has_function('tenancy', 'resume_tenant', ARRAY['text']);
SELECT has_function('tenancy', 'drop_tenant', ARRAY['text', 'boolean']);
SELECT has_function('tenancy', 'add_migration', ARRAY['text', 'text', 'boolean']);
SELECT has_function('tenancy', 'migrate_tenant', ARRAY['text']);
SELECT has_function('tenancy', 'enter_tenant', ARRAY['text']);
SELECT has_function('tenancy', 'enable_rls', ARRAY['regclass', 'name']);
SELECT has_function('tenancy', 'track_changes', ARRAY['regclass']);
SELECT has_table('tenancy', 'tenants', 'the registry');
SELECT has_table('tenancy', 'events', 'the outbox');
SELECT has_trigger('tenancy', 'tenants', 'tenants_before_insert', 'provisioning trigger');
SELECT has_trigger('tenancy', 'tenants', 'tenants_after_change', 'event trigger');
SELECT matches(tenancy.version(), '^[0-9]+\.[0-9]+\.[0-9]+$', 'version is major.minor.patch');

-- Lifecycle and its events.
SELECT lives_ok($$ SELECT tenancy.add_migration('0001', 'CREATE TABLE note (id int PRIMARY KEY)') $$,
                'add a migration');
SELECT lives_ok($$ SELECT tenancy.create_tenant('acme') $$, 'create a tenant');
SELECT has_table('tenant_acme', 'note', 'the migration ran in the tenant schema');
SELECT is((SELECT migration_version FROM tenancy.tenants WHERE slug = 'acme'), '0001',
          'tenant at the latest version');
SELECT results_eq($$ SELECT name FROM tenancy.events ORDER BY id $$,
                  ARRAY['tenant_created'], 'tenant_created emitted');
SELECT lives_ok($$ SELECT tenancy.suspend_tenant('acme') $$, 'suspend');
SELECT results_eq($$ SELECT name FROM tenancy.events ORDER BY id DESC LIMIT 1 $$,
                  ARRAY['tenant_suspended'], 'tenant_suspended emitted');

-- Errors, each with its SQLSTATE, leaving nothing behind.
SELECT throws_ok($$ SELECT tenancy.create_tenant('Bad Slug') $$, 'PT001', NULL, 'invalid slug');
SELECT throws_ok($$ SELECT tenancy.create_tenant('acme') $$, 'PT002', NULL, 'duplicate');
SELECT throws_ok($$ SELECT tenancy.suspend_tenant('nobody') $$, 'PT003', NULL, 'unknown');
SELECT throws_ok($$ SELECT tenancy.enter_tenant('acme') $$, 'PT004', NULL, 'suspended');
SELECT lives_ok($$ SELECT tenancy.drop_tenant('acme') $$, 'soft delete');
SELECT throws_ok($$ SELECT tenancy.enter_tenant('acme') $$, 'PT005', NULL, 'deleted');
SELECT throws_ok($$ SELECT tenancy.add_migration('0002', 'CREATE TABLE broken (') $$, 'PT008',
                 NULL, 'broken migration refused');
SELECT throws_ok($$ UPDATE tenancy.tenants SET slug = 'x' $$, 'PT010', NULL, 'immutable slug');
SELECT is((SELECT count(*)::int FROM pg_namespace WHERE nspname = 'tenant_bad slug'), 0,
          'no schema left by the invalid slug');

-- Entering a tenant is transaction-local.
SELECT lives_ok($$ SELECT tenancy.create_tenant('globex') $$, 'create globex');
SELECT lives_ok($$ SELECT tenancy.enter_tenant('globex') $$, 'enter globex');
SELECT is(current_setting('search_path'), 'tenant_globex, public, pg_temp', 'search_path set');
SELECT is(tenancy.current_tenant(), 'globex', 'current_tenant');

-- Shared tables guarded by RLS.
SELECT lives_ok($$ CREATE TABLE public.orders (id int PRIMARY KEY) $$, 'shared table');
SELECT lives_ok($$ SELECT tenancy.enable_rls('public.orders') $$, 'enable_rls');
SELECT policies_are('public', 'orders', ARRAY['tenancy_tenant_isolation', 'tenancy_tenant_rows'],
                    'the tenant policies');
SELECT col_default_is('public', 'orders', 'tenant_id', 'tenancy.require_tenant_id()',
                      'tenant column defaults to the current tenant');
SELECT throws_ok($$ SELECT tenancy.enable_rls('public.orders', 'other') $$, 'PT014', NULL,
                 'already guarded on another column');

SELECT * FROM finish();
