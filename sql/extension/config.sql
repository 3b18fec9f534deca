-- pgtenancy — extension only: the tables whose rows are the users' data, so
-- pg_dump dumps their contents (and restore brings them back) although the
-- tables themselves belong to the extension.

SELECT pg_catalog.pg_extension_config_dump('tenancy.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.migrations', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.events', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.consumers', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.guarded_tables', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.app_roles', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.parked_events', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.shared_migrations', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_renames', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.limit_maxima', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_domains', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.provisioning_failures', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.scratch', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.entry_keys', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.strict_entry', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.strict_plain_functions', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.baselines', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_placements', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.accelerator', '');
