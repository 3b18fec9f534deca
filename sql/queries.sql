-- pgtenancy — the queries the Python layer sends, each under a "-- name: x"
-- header and loaded by name (pgtenancy.queries), so Python never builds SQL.
-- Parameters use psycopg's %(name)s style.

-- name: enter_tenant
SELECT tenancy.enter_tenant(%(slug)s)

-- name: is_installed
SELECT pg_catalog.to_regprocedure('tenancy.version()') IS NOT NULL

-- name: version
SELECT tenancy.version()

-- name: create_tenant
SELECT * FROM tenancy.create_tenant(%(slug)s, %(metadata)s::jsonb, %(isolation)s)

-- name: get_tenant
SELECT * FROM tenancy.get_tenant(%(slug)s)

-- name: list_tenants
SELECT * FROM tenancy.tenants ORDER BY slug

-- name: suspend_tenant
SELECT * FROM tenancy.suspend_tenant(%(slug)s)

-- name: resume_tenant
SELECT * FROM tenancy.resume_tenant(%(slug)s)

-- name: drop_tenant
SELECT * FROM tenancy.drop_tenant(%(slug)s, %(destroy_data)s)

-- name: add_migration
SELECT version, checksum, created_at
  FROM tenancy.add_migration(%(version)s, %(sql)s, %(outside_transaction)s)

-- name: list_migrations
SELECT version, checksum, created_at FROM tenancy.migrations ORDER BY version

-- name: migrate_tenant
SELECT * FROM tenancy.migrate_tenant(%(slug)s)

-- name: register_consumer
SELECT name, last_xid::text AS last_xid, last_id FROM tenancy.register_consumer(%(consumer)s)

-- name: next_events
SELECT id, xid::text AS xid, name, tenant_id, tenant_slug, tenant_schema, tenant_status,
       payload, created_at
  FROM tenancy.next_events(%(consumer)s, %(limit)s)

-- name: events_held_back
SELECT tenancy.events_held_back(%(consumer)s)

-- name: advance_consumer
SELECT tenancy.advance_consumer(%(consumer)s, %(xid)s::xid8, %(id)s, %(holder)s)

-- name: events_channel
SELECT tenancy.events_channel()

-- name: enable_rls
SELECT table_name::text AS table_name, tenant_column::text AS tenant_column
  FROM tenancy.enable_rls(%(table)s::regclass, %(tenant_column)s)

-- name: disable_rls
SELECT tenancy.disable_rls(%(table)s::regclass)

-- name: guarded_tables
SELECT table_name::text AS table_name, tenant_column::text AS tenant_column
  FROM tenancy.guarded_tables ORDER BY 1

-- name: grant_app_role
SELECT tenancy.grant_app_role(%(role)s)

-- name: check_isolation
SELECT severity, check_name, object, message, fix FROM tenancy.check_isolation()

-- name: consumer_heartbeat
SELECT tenancy.consumer_heartbeat(%(consumer)s)

-- name: consumer_status
SELECT consumer, last_id, lag_events, lag_seconds, seen_at, listeners, lease_holder
  FROM tenancy.consumer_status()

-- name: outbox_health
SELECT notification_queue_usage, oldest_transaction_seconds, events FROM tenancy.outbox_health()

-- name: prune_events
SELECT tenancy.prune_events(%(older_than)s::interval, %(inactive_after)s::interval) AS deleted

-- name: acquire_lease
SELECT tenancy.acquire_lease(%(consumer)s, %(holder)s, make_interval(secs => %(seconds)s)) AS held

-- name: release_lease
SELECT tenancy.release_lease(%(consumer)s, %(holder)s)

-- name: grant_listener_role
SELECT tenancy.grant_listener_role(%(role)s)

-- name: track_changes
SELECT tenancy.track_changes(%(table)s::regclass)

-- name: untrack_changes
SELECT tenancy.untrack_changes(%(table)s::regclass)

-- name: park_event
SELECT tenancy.park_event(%(consumer)s, %(event_id)s, %(receiver)s, %(attempts)s, %(error)s)

-- name: unpark_event
SELECT tenancy.unpark_event(%(consumer)s, %(event_id)s, %(receiver)s)

-- name: parked_events
SELECT consumer, receiver, attempts, error, parked_at, id, xid, name, tenant_id, tenant_slug,
       tenant_schema, tenant_status, payload, created_at
  FROM tenancy.parked_events(%(consumer)s)

-- name: inbox_claim
SELECT tenancy.inbox_claim(%(receiver)s, %(event_id)s)

-- name: tenants_to_migrate
SELECT slug, migration_version FROM tenancy.tenants
 WHERE isolation = 'schema' AND status <> 'deleted'
   AND migration_version IS DISTINCT FROM tenancy.latest_migration()
 ORDER BY slug

-- name: migrate_tenant_locked
SELECT slug, migration_version FROM tenancy.migrate_tenant(%(slug)s)

-- name: set_lock_timeout
SELECT pg_catalog.set_config('lock_timeout', %(timeout)s, true)

-- name: record_migration_failure
SELECT tenancy.record_migration_failure(%(slug)s, %(version)s, %(sqlstate)s, %(message)s)

-- name: pending_migrations
SELECT version FROM tenancy.migrations
 WHERE %(from_version)s::text IS NULL OR version > %(from_version)s::text
 ORDER BY version

-- name: next_pending_migration
SELECT m.version, m.sql, m.outside_transaction, t.schema_name
  FROM tenancy.tenants AS t
  JOIN tenancy.migrations AS m
    ON t.migration_version IS NULL OR m.version > t.migration_version
 WHERE t.slug = %(slug)s AND t.isolation = 'schema'
 ORDER BY m.version
 LIMIT 1

-- name: lock_tenant_migration
SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext('tenancy.migrate'), pg_catalog.hashtext(%(slug)s))

-- name: unlock_tenant_migration
SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('tenancy.migrate'), pg_catalog.hashtext(%(slug)s))

-- name: session_setting
SELECT pg_catalog.set_config(%(name)s, %(value)s, false)

-- name: mark_migrated
UPDATE tenancy.tenants SET migration_version = %(version)s WHERE slug = %(slug)s
RETURNING migration_version

-- name: live_tenant_isolations
SELECT slug, isolation FROM tenancy.tenants WHERE status <> 'deleted'

-- name: tenant_migration_version
SELECT migration_version FROM tenancy.tenants WHERE slug = %(slug)s

-- name: latest_migration
SELECT tenancy.latest_migration() AS latest_migration

-- name: reset_setting
-- RESET for a setting named by a parameter (RESET takes no parameters):
-- back to the value the session started with.
SELECT pg_catalog.set_config(%(name)s, s.reset_val, false)
  FROM pg_catalog.pg_settings AS s
 WHERE s.name = %(name)s
-- name: install_quiet
SELECT pg_catalog.set_config('client_min_messages', 'warning', true)

-- name: install_lock
-- Serializes installs, upgrades and uninstalls (an arbitrary constant key).
SELECT pg_catalog.pg_advisory_xact_lock(7242001)

-- name: install_target_version
SELECT pg_catalog.set_config('pgtenancy.install_version', %(version)s, true)

-- name: refuse_newer_install
-- Installing over a newer version would replace newer functions with older
-- ones: refuse (PT018). The version to install comes from install_target_version.
DO $$
DECLARE
    v_installed text := tenancy.version();
    v_target    text := pg_catalog.current_setting('pgtenancy.install_version');
BEGIN
    IF pg_catalog.string_to_array(v_installed, '.')::int[]
       > pg_catalog.string_to_array(v_target, '.')::int[] THEN
        RAISE EXCEPTION 'newer pgtenancy installed: % is installed; refusing to install the older %',
            v_installed, v_target
            USING ERRCODE = 'PT018',
                  HINT = 'Upgrade the pgtenancy Python package (or use the newer one''s installer).';
    END IF;
END
$$

-- name: uninstall_drop_tenants
SELECT pg_catalog.set_config('pgtenancy.drop_tenants', %(drop_tenants)s, true)

-- name: extension_version
SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgtenancy'
-- name: shared_migration_checksum
SELECT checksum FROM tenancy.shared_migrations WHERE version = %(version)s

-- name: apply_shared_migration
SELECT version FROM tenancy.apply_shared_migration(%(version)s, %(sql)s)

-- name: shared_migration_versions
SELECT version FROM tenancy.shared_migrations
-- name: backend_pid
SELECT pg_catalog.pg_backend_pid()

-- name: listen
-- The channel is formatted in as a psycopg.sql.Identifier: LISTEN takes no parameters.
LISTEN {channel}

-- name: move_tenant
SELECT tenancy.move_tenant(%(slug)s, %(node_host)s, %(node_port)s) AS node

-- name: tenant_nodes
SELECT t.slug, tenancy.tenant_node(t.slug) AS node FROM tenancy.tenants AS t ORDER BY t.slug
