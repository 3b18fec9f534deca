-- pgtenancy — the queries the Python layer sends, each under a "-- name: x"
-- header and loaded by name (pgtenancy.queries), so Python never builds SQL.
-- Parameters use psycopg's %(name)s style.

-- name: enter_tenant
SELECT tenancy.enter_tenant(%(slug)s)

-- name: enter_tenant_token
SELECT tenancy.enter_tenant_token(%(token)s, %(slug)s)

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

-- name: add_migrations
SELECT version, checksum, created_at
  FROM tenancy.add_migrations(%(versions)s, %(sqls)s, %(outside_transaction)s)

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
SELECT notification_queue_usage, oldest_transaction_seconds, events, held_back_events,
       prepared_transactions, oldest_prepared_seconds, xid_holders
  FROM tenancy.outbox_health()

-- name: prune_events
SELECT tenancy.prune_events(%(older_than)s::interval, %(inactive_after)s::interval) AS deleted

-- name: acquire_lease
SELECT tenancy.acquire_lease(%(consumer)s, %(holder)s, make_interval(secs => %(seconds)s)) AS held

-- name: release_lease
SELECT tenancy.release_lease(%(consumer)s, %(holder)s)

-- name: grant_listener_role
SELECT tenancy.grant_listener_role(%(role)s)

-- name: set_strict_entry
SELECT tenancy.set_strict_entry(%(enabled)s) AS was

-- name: add_entry_key
SELECT tenancy.add_entry_key(%(name)s, %(key)s) AS added

-- name: drop_entry_key
SELECT tenancy.drop_entry_key(%(name)s) AS dropped

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
-- The tenant's row of tenancy.slug_locks (as creation and rename take it),
-- held by a transaction of its own while a no-transaction migration runs: a
-- lock the application role cannot take (it could hold an advisory lock).
INSERT INTO tenancy.slug_locks AS l (slug) VALUES (%(slug)s)
    ON CONFLICT (slug) DO UPDATE SET slug = l.slug

-- name: session_setting
SELECT pg_catalog.set_config(%(name)s, %(value)s, false)

-- name: relation_schema
-- The schema a relation name resolves to under the current search_path.
SELECT n.nspname
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.quote_ident(%(relation)s))

-- name: local_setting
SELECT pg_catalog.set_config(%(name)s, %(value)s, true)

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

-- name: install_accelerator
-- Read by the last statement of sql/011_accelerator.sql: on or off records
-- whether the C accelerator is wanted (tenancy.set_accelerator).
SELECT pg_catalog.set_config('pgtenancy.accelerator', %(setting)s, true)

-- name: accelerator_in_use
SELECT tenancy.accelerator_in_use()

-- name: install_lock_timeout
-- How long each lock of the install transaction may wait (milliseconds as
-- text; '0' waits without limit), so that a session holding a kit object
-- cannot make an install wait, and everything queued behind it, for ever.
SELECT pg_catalog.set_config('lock_timeout', %(lock_timeout)s, true)

-- name: install_blockers
-- Other sessions holding a lock on a relation of schema tenancy or of a
-- tenant schema (none before the first install), for InstallBlocked; a
-- prepared transaction (no backend: pid 0) by its gid, found through the
-- lock on its own transaction id, which shares its virtual transaction.
SELECT DISTINCT coalesce(a.pid, 0),
       coalesce(a.usename, p.owner::text, ''),
       coalesce(a.state, 'prepared transaction ' || pg_catalog.quote_literal(p.gid), '')
  FROM pg_catalog.pg_locks AS l
  JOIN pg_catalog.pg_class AS c ON c.oid = l.relation
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
  LEFT JOIN pg_catalog.pg_locks AS x
         ON l.pid IS NULL AND x.locktype = 'transactionid'
        AND x.virtualtransaction = l.virtualtransaction
  LEFT JOIN pg_catalog.pg_prepared_xacts AS p ON p.transaction = x.transactionid
 WHERE l.granted AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
   AND (a.pid IS NOT NULL OR p.gid IS NOT NULL)
   AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                      WHERE d.datname = pg_catalog.current_database())
   AND (n.nspname = 'tenancy'
        OR n.nspname IN (SELECT t.schema_name FROM tenancy.tenants AS t))
 ORDER BY 1

-- name: install_lock
-- Serializes installs, upgrades and uninstalls. Once the kit is installed,
-- with a lock on its migration registry that the application role cannot
-- take (no privilege on the table; SELECT's lock does not conflict); an
-- advisory lock, which any role could hold to block every upgrade, only
-- before the first install (an arbitrary constant key).
DO $$
BEGIN
    IF pg_catalog.to_regclass('tenancy.migrations') IS NULL THEN
        PERFORM pg_catalog.pg_advisory_xact_lock(7242001);
    ELSE
        LOCK TABLE tenancy.migrations IN SHARE ROW EXCLUSIVE MODE;
    END IF;
END
$$

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

-- name: uninstall_next_tenant_schema
-- The next tenant schema uninstall --drop-tenants drops in a transaction of
-- its own: a registered schema that still exists and is named as the kit
-- names tenant schemas (schema_prefix() || slug; a row restored by hand
-- naming public or tenancy is not a tenant schema, and is never dropped).
SELECT t.schema_name
  FROM tenancy.tenants AS t
 WHERE t.schema_name = tenancy.schema_prefix() || t.slug
   AND pg_catalog.to_regnamespace(pg_catalog.quote_ident(t.schema_name)) IS NOT NULL
 ORDER BY t.schema_name
 LIMIT 1

-- name: uninstall_claim
-- Before uninstall --drop-tenants drops the first tenant schema (in a
-- transaction rolled back afterwards): wait, up to lock_timeout ('0'
-- without limit), until no other session or prepared transaction holds a
-- relation of a tenant schema, holding nothing of the kit meanwhile (a
-- session waiting for the kit's tables could not be waited for in turn
-- unseen by the deadlock detector); then lock the kit's relations (the
-- script's DROP SCHEMA tenancy needs them all: real lock waits) and look
-- once more, refusing at once if a holder came meanwhile. 55P03 when
-- blocked, so that a blocked uninstall drops nothing.
DO $$
DECLARE
    v_table   regclass;
    v_phase   text;
    v_timeout interval := pg_catalog.current_setting('lock_timeout')::interval;
    v_start   timestamptz := pg_catalog.clock_timestamp();
BEGIN
    FOREACH v_phase IN ARRAY ARRAY['wait', 'recheck'] LOOP
        IF v_phase = 'recheck' THEN
            FOR v_table IN SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
                            WHERE c.relnamespace = 'tenancy'::regnamespace
                              AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                            ORDER BY c.oid LOOP
                EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_table);
            END LOOP;
        END IF;
        WHILE EXISTS (SELECT 1
                        FROM pg_catalog.pg_locks AS l
                        JOIN pg_catalog.pg_class AS c ON c.oid = l.relation
                       WHERE l.granted AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()
                         AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                                            WHERE d.datname = pg_catalog.current_database())
                         AND c.relnamespace IN (SELECT n.oid FROM pg_catalog.pg_namespace AS n
                                                  JOIN tenancy.tenants AS t ON t.schema_name = n.nspname)) LOOP
            IF v_phase = 'recheck'
               OR (v_timeout > interval '0' AND pg_catalog.clock_timestamp() - v_start > v_timeout) THEN
                RAISE EXCEPTION 'other sessions hold relations of tenant schemas'
                    USING ERRCODE = 'lock_not_available';
            END IF;
            PERFORM pg_catalog.pg_sleep(0.05);
        END LOOP;
    END LOOP;
END
$$

-- name: uninstall_no_statement_timeout
-- The claim's wait is bounded by lock_timeout alone, not by a
-- statement_timeout of the role's (which would cancel it as QueryCanceled).
SELECT pg_catalog.set_config('statement_timeout', '0', true)

-- name: uninstall_drops_roles
-- Whether the installed kit has owner roles for tenant schemas to drop
-- (tenancy.drop_tenant_role, new in 0.3.0: a 0.2.0 kit has none).
SELECT pg_catalog.to_regprocedure('tenancy.drop_tenant_role(text)') IS NOT NULL

-- name: uninstall_tenant_role
-- The owner role of a tenant schema uninstall dropped, unless another
-- database copied from this one still uses it.
SELECT tenancy.drop_tenant_role(schema_name => %(schema_name)s)

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

-- name: discard_session
-- Run in autocommit by pgtenancy.pool_reset: DISCARD ALL without DISCARD
-- PLANS, so the kit's cached plans (enter_tenant's) survive: closes cursors
-- (WITH HOLD ones too), forgets currval/lastval (an attack run read the id
-- another tenant's request had just inserted with them), deallocates prepared
-- statements, resets session settings (role included) to their connection
-- defaults, drops temporary tables, UNLISTEN *, releases session advisory
-- locks.
CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *;
SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES
-- name: reset_runner_session
-- After each tenant the fleet runner gives its session back as it was: no
-- setting, temporary object, LISTEN or advisory lock of a migration may
-- reach the next tenant's migration or the runner's own queries.
RESET ALL;
DISCARD TEMP;
UNLISTEN *;
SELECT pg_catalog.pg_advisory_unlock_all()
-- name: rename_tenant
SELECT * FROM tenancy.rename_tenant(%(slug)s, %(new_slug)s)

-- name: clone_tenant
SELECT * FROM tenancy.clone_tenant(%(source)s, %(new_slug)s, %(metadata)s::jsonb)

-- name: set_tenant_limits
SELECT * FROM tenancy.set_tenant_limits(%(slug)s, statement_timeout => %(statement_timeout)s,
    lock_timeout => %(lock_timeout)s,
    idle_in_transaction_session_timeout => %(idle_in_transaction_session_timeout)s,
    work_mem => %(work_mem)s)

-- name: tenant_limits
SELECT limits FROM tenancy.tenants WHERE slug = %(slug)s

-- name: tenant_sizes
SELECT slug, bytes, "rows" FROM tenancy.tenant_sizes()

-- name: repeatable_read
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ

-- Tenant archives (pgtenancy.tenant_archive): export, import, move.

-- name: export_snapshot
SELECT pg_catalog.pg_export_snapshot() AS snapshot

-- name: archive_tenant_row
SELECT id::text AS id, slug, schema_name, status, isolation, metadata, migration_version, limits,
       created_at::text AS created_at
  FROM tenancy.tenants WHERE slug = %(slug)s

-- name: archive_tenant_by_id
SELECT slug FROM tenancy.tenants WHERE id = %(id)s::uuid

-- name: archive_migrations
SELECT version, checksum FROM tenancy.migrations ORDER BY version

-- name: archive_schema_tables
SELECT c.oid::regclass::text AS qualified, c.relname AS name,
       tenancy.copy_columns(c.oid) AS columns
  FROM unnest(tenancy.fk_order(ARRAY(
           SELECT r.oid::regclass FROM pg_catalog.pg_class AS r
            WHERE r.relnamespace = pg_catalog.to_regnamespace(pg_catalog.quote_ident(%(schema)s))
              AND r.relkind IN ('r', 'p') AND NOT r.relispartition))) WITH ORDINALITY AS o(rel, n)
  JOIN pg_catalog.pg_class AS c ON c.oid = o.rel
 ORDER BY o.n

-- name: archive_guarded_tables
SELECT g.table_name::text AS qualified, g.tenant_column, tenancy.copy_columns(g.table_name) AS columns
  FROM unnest(tenancy.fk_order(ARRAY(SELECT t.table_name FROM tenancy.guarded_tables AS t
                                      WHERE pg_catalog.to_regclass(t.table_name::text) IS NOT NULL)))
       WITH ORDINALITY AS o(rel, n)
  JOIN tenancy.guarded_tables AS g ON g.table_name = o.rel
 ORDER BY o.n

-- name: archive_schema_sequences
SELECT c.relname AS name FROM pg_catalog.pg_class AS c
 WHERE c.relnamespace = pg_catalog.to_regnamespace(pg_catalog.quote_ident(%(schema)s))
   AND c.relkind = 'S'
 ORDER BY c.relname

-- name: archive_sequence_value
SELECT last_value, is_called FROM {sequence}

-- name: archive_checksum
SELECT count(*) AS row_count,
       pg_catalog.md5(coalesce(pg_catalog.string_agg(t::text, '|' ORDER BY t::text), '')) AS md5
  FROM (SELECT {columns} FROM {table} WHERE {filter}) AS t

-- name: archive_copy_out
COPY (SELECT {columns} FROM {table} WHERE {filter}) TO STDOUT

-- name: archive_copy_in
COPY {table} ({columns}) FROM STDIN

-- name: archive_create_stage
-- A text-columned temporary table for the rows of a tenant table: COPY
-- runs no code of the tenant's there (tenancy.create_stage).
SELECT tenancy.create_stage(%(table)s::regclass) AS stage

-- name: archive_load_stage
-- The staged rows written into the tenant table as its owner role.
SELECT tenancy.load_stage(%(table)s::regclass) AS rows

-- name: archive_disable_triggers
ALTER TABLE {table} DISABLE TRIGGER USER

-- name: archive_enable_triggers
ALTER TABLE {table} ENABLE TRIGGER USER

-- name: archive_enter
SELECT pg_catalog.set_config('app.tenant_id', %(id)s, true)

-- name: archive_created_payload
SELECT pg_catalog.set_config('pgtenancy.created_payload', %(payload)s, true)

-- name: archive_insert_tenant
INSERT INTO tenancy.tenants (id, slug, metadata, isolation, limits)
VALUES (%(id)s::uuid, %(slug)s, %(metadata)s::jsonb, %(isolation)s, %(limits)s::text[])
RETURNING *

-- name: archive_setval
SELECT pg_catalog.setval(%(sequence)s::regclass, %(value)s, %(called)s)

-- name: archive_serial_sequences
SELECT pg_catalog.pg_get_serial_sequence(%(table)s, a.attname) AS sequence, a.attname AS column_name
  FROM pg_catalog.pg_attribute AS a
 WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
   AND pg_catalog.pg_get_serial_sequence(%(table)s, a.attname) IS NOT NULL

-- name: archive_bump_sequence
SELECT pg_catalog.setval(%(sequence)s::regclass,
       greatest((SELECT s.last_value FROM {sequence} AS s), coalesce(max({column}), 1)))
  FROM {table} WHERE {filter}

-- name: archive_slug_exists
SELECT 1 FROM tenancy.tenants WHERE slug = %(slug)s

-- name: set_max_work_mem
SELECT tenancy.set_max_work_mem(%(maximum)s) AS maximum
-- name: add_tenant_domain
SELECT d.domain, t.slug, d.created_at
  FROM tenancy.add_tenant_domain(%(slug)s, %(domain)s) AS d
  JOIN tenancy.tenants AS t ON t.id = d.tenant_id

-- name: remove_tenant_domain
SELECT tenancy.remove_tenant_domain(%(domain)s) AS removed

-- name: resolve_domain
SELECT tenancy.resolve_domain(%(domain)s) AS slug

-- name: tenant_domains
SELECT d.domain, t.slug, d.created_at
  FROM tenancy.tenant_domains AS d
  JOIN tenancy.tenants AS t ON t.id = d.tenant_id
 WHERE %(slug)s::text IS NULL OR t.slug = %(slug)s::text
 ORDER BY t.slug, d.domain

-- name: tenant_info
SELECT id, slug, status, public FROM tenancy.tenant_info()

-- name: enter_tenant_info
-- Two statements in one simple query, hence one implicit transaction (on an
-- autocommit connection): enter, then read the tenant's public fields. {slug}
-- is formatted in as a psycopg.sql.Literal after validation.
SELECT tenancy.enter_tenant({slug}); SELECT id, slug, status, public FROM tenancy.tenant_info()

-- name: each_tenants
-- Readable by the application role (tenant_directory): what for_each_tenant
-- visits. A NULL status means every tenant not deleted.
SELECT slug, id, schema_name, status
  FROM tenancy.tenant_directory
 WHERE (%(status)s::text IS NULL AND status <> 'deleted') OR status = %(status)s::text
 ORDER BY slug

-- name: start_consumer
SELECT name, last_id FROM tenancy.start_consumer(%(consumer)s, %(start_from)s)

-- name: drop_consumer
SELECT tenancy.drop_consumer(%(consumer)s) AS dropped

-- name: testing_tenant_tables
-- The tables of a tenant schema that a recycled tenant must find empty (a
-- partition is emptied through its parent), for pgtenancy.testing; and
-- whether the connecting role is a superuser (then the reset skips
-- triggers and foreign key checks).
SELECT coalesce(pg_catalog.array_agg(c.oid::pg_catalog.regclass::text ORDER BY c.oid),
                '{}') AS tables,
       (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) AS superuser
  FROM pg_catalog.pg_class AS c
 WHERE c.relnamespace = %(schema)s::pg_catalog.regnamespace AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition

-- name: testing_fk_order
-- Those tables, referenced ones first (PT022 when foreign keys form a cycle).
SELECT pg_catalog.array_to_string(tenancy.fk_order(%(tables)s::pg_catalog.regclass[]), ',')

-- name: testing_fingerprint
-- Everything a test could change in tenant schema $1 (regnamespace)
-- besides rows, for the pgtenancy.testing pool: the definition of its
-- relations (name, kind, owner, privileges, row security, column and check
-- counts, options) and the row versions (xmin) of its columns, defaults,
-- constraints, functions, types, triggers, policies, rules and of the schema
-- itself; TRUNCATE, ANALYZE and VACUUM leave it as it is. Prepared once per
-- connection (as pgtenancy_pool_fingerprint), so planned once.
WITH c AS MATERIALIZED (SELECT c.oid, c.relname, c.relkind, c.relowner, c.relacl,
                                c.relrowsecurity, c.relforcerowsecurity, c.relnatts, c.relchecks,
                                c.reloptions
                           FROM pg_catalog.pg_class AS c WHERE c.relnamespace = $1)
SELECT pg_catalog.md5(pg_catalog.string_agg(f.item, ',' ORDER BY f.item)) AS fingerprint
  FROM (-- Per relation (each lookup below is an index scan on the relation's oid).
        SELECT 'c ' || c.relname || ' ' || c.relkind::text || ' ' || c.relowner::text || ' '
               || coalesce(c.relacl::text, '') || ' ' || c.relrowsecurity::text
               || c.relforcerowsecurity::text || ' ' || c.relnatts::text || ' '
               || c.relchecks::text || ' ' || coalesce(c.reloptions::text, '')
               -- Indexes and sequences have no defaults, triggers, policies
               -- or rules, and their columns follow their table's.
               || CASE WHEN c.relkind IN ('r', 'p', 'v', 'm', 'f') THEN
                  ' a ' || coalesce((SELECT pg_catalog.string_agg(a.attnum::text || ':' || a.xmin::text,
                                                                   ' ' ORDER BY a.attnum)
                                       FROM pg_catalog.pg_attribute AS a
                                      WHERE a.attrelid = c.oid AND a.attnum > 0), '')
               || ' d ' || coalesce((SELECT pg_catalog.string_agg(d.oid::text || ':' || d.xmin::text,
                                                                   ' ' ORDER BY d.oid)
                                       FROM pg_catalog.pg_attrdef AS d WHERE d.adrelid = c.oid), '')
               || ' g ' || coalesce((SELECT pg_catalog.string_agg(g.oid::text || ':' || g.xmin::text,
                                                                   ' ' ORDER BY g.oid)
                                       FROM pg_catalog.pg_trigger AS g WHERE g.tgrelid = c.oid), '')
               || ' y ' || coalesce((SELECT pg_catalog.string_agg(y.oid::text || ':' || y.xmin::text,
                                                                   ' ' ORDER BY y.oid)
                                       FROM pg_catalog.pg_policy AS y WHERE y.polrelid = c.oid), '')
               || ' w ' || coalesce((SELECT pg_catalog.string_agg(w.oid::text || ':' || w.xmin::text,
                                                                   ' ' ORDER BY w.oid)
                                       FROM pg_catalog.pg_rewrite AS w WHERE w.ev_class = c.oid), '')
                  ELSE '' END
               AS item
          FROM c
        UNION ALL
        SELECT 'k ' || k.oid::text || ' ' || k.xmin::text
          FROM pg_catalog.pg_constraint AS k WHERE k.connamespace = $1
        UNION ALL
        -- Functions, types, operators, ... of the schema through their
        -- dependency on it (an index scan, not a scan of pg_proc).
        SELECT 'o ' || o.classid::text || ' ' || o.objid::text || ' '
               || coalesce(p.xmin::text, t.xmin::text, '')
          FROM pg_catalog.pg_depend AS o
          LEFT JOIN pg_catalog.pg_proc AS p
            ON o.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = o.objid
          LEFT JOIN pg_catalog.pg_type AS t
            ON o.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND t.oid = o.objid
         WHERE o.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND o.refobjid = $1
        UNION ALL
        SELECT 'n ' || n.xmin::text FROM pg_catalog.pg_namespace AS n WHERE n.oid = $1) AS f

-- name: testing_sequences
-- Every sequence of tenant schema $1 (regnamespace) that was used, back at
-- its start value (prepared as pgtenancy_pool_sequences).
SELECT pg_catalog.count(pg_catalog.setval(s.seqrelid, s.seqstart, false))
  FROM pg_catalog.pg_sequence AS s
  JOIN pg_catalog.pg_class AS c ON c.oid = s.seqrelid
 WHERE c.relnamespace = $1 AND pg_catalog.pg_sequence_last_value(s.seqrelid) IS NOT NULL

-- name: testing_row
-- The registry row of tenant $2 (uuid) and the fingerprint of its schema $1
-- (the placeholder fingerprint is the query testing_fingerprint; prepared
-- as pgtenancy_pool_row).
SELECT t.*, ({fingerprint}) AS fingerprint FROM tenancy.tenants AS t WHERE t.id = $2

-- name: testing_recycle
-- Reset a tenant of the pgtenancy.testing pool in one round trip (one
-- query string, no parameters; placeholders: replica optionally skips
-- triggers and foreign key checks, empty is a DELETE per table, children
-- first, or one TRUNCATE of them all; schema and id are psycopg.sql.Literal
-- values): rows gone, every sequence used back at its start, domains and
-- shared rows of the tenant gone, status, metadata and limits reset; the
-- last result is the registry row and the schema's fingerprint, to compare
-- with the one taken at provisioning.
BEGIN;
{replica}
{empty}
EXECUTE pgtenancy_pool_sequences({schema});
DELETE FROM tenancy.tenant_domains WHERE tenant_id = {id}::uuid;
SELECT tenancy.delete_shared_rows({id}::uuid) WHERE EXISTS (SELECT 1 FROM tenancy.guarded_tables);
UPDATE tenancy.tenants SET metadata = '{{}}', status = 'active', limits = NULL
 WHERE id = {id}::uuid AND status IN ('active', 'suspended')
   AND (metadata <> '{{}}' OR status <> 'active' OR limits IS NOT NULL);
EXECUTE pgtenancy_pool_row({schema}, {id});
COMMIT

-- name: testing_set_metadata
UPDATE tenancy.tenants SET metadata = %(metadata)s::jsonb WHERE id = %(id)s
RETURNING *

-- name: testing_prepare
-- The statements of the pgtenancy.testing pool, prepared once per
-- connection (placeholders: the queries of the same names).
PREPARE pgtenancy_pool_fingerprint(pg_catalog.regnamespace) AS {fingerprint};
PREPARE pgtenancy_pool_sequences(pg_catalog.regnamespace) AS {sequences};
PREPARE pgtenancy_pool_row(pg_catalog.regnamespace, uuid) AS {row}

-- name: testing_row_now
-- The registry row of a tenant and its schema's fingerprint (placeholders:
-- psycopg.sql.Literal values).
EXECUTE pgtenancy_pool_row({schema}, {id})

-- name: testing_delete
-- The placeholder table is a quoted name: empty it (cheaper than TRUNCATE
-- for the few rows a test leaves).
DELETE FROM {table}

-- name: testing_as_rest_owner
-- {statement} (a psycopg.sql.Literal of the reset's DELETE/TRUNCATE
-- statements) run as tenant schema {schema}'s owner role: a test's triggers
-- fire with that role's rights, not the kit owner's.
SELECT tenancy.run_as_rest_owner({schema}, {statement})

-- name: testing_session
-- The pgtenancy.testing pool's own sessions: wait at most 5 s for a lock a
-- test left; do not wait for the WAL flush of a reset (test data need not
-- survive a crash of the server); plan the prepared catalog queries once.
SET lock_timeout = '5s';
SET synchronous_commit = off;
SET plan_cache_mode = force_generic_plan

-- name: testing_kit_roles
-- The tenants' owner roles and group role of the database whose migrator is
-- %(migrator)s (tenancy.tenant_role, tenancy.tenant_group_role), owner roles
-- first, for the test server's teardown (after DROP DATABASE).
SELECT r.rolname
  FROM pg_catalog.pg_roles AS r
 WHERE pg_catalog.starts_with(r.rolname, 'pgtenancy_owner_'
                              || pg_catalog.left(pg_catalog.md5(%(migrator)s), 12) || '_')
    OR r.rolname = 'pgtenancy_tenants_' || pg_catalog.left(pg_catalog.md5(%(migrator)s), 12)
 ORDER BY pg_catalog.starts_with(r.rolname, 'pgtenancy_tenants_'), r.rolname

-- name: fleet_plan
-- One query plans the whole fleet: every live tenant (or the slugs asked for,
-- deleted ones included so they can be reported), its version and the
-- registered versions it lacks, in the order they apply (C collation).
SELECT t.slug, t.isolation, t.status, t.migration_version,
       CASE WHEN t.isolation = 'schema' AND t.status <> 'deleted' THEN
           ARRAY(SELECT m.version FROM tenancy.migrations AS m
                  WHERE t.migration_version IS NULL OR m.version > t.migration_version
                  ORDER BY m.version)
       ELSE '{}'::text[] END AS pending
  FROM tenancy.tenants AS t
 WHERE (%(slugs)s::text[] IS NULL AND t.status <> 'deleted')
    OR t.slug = ANY (%(slugs)s::text[])
 ORDER BY t.slug

-- name: fleet_plan_behind
-- fleet_plan for the whole fleet, its rows only for the live schema tenants
-- behind the newest migration (compared with it once, not with a list per
-- tenant): a no-op run over 10,000 current tenants reads them on the server
-- and returns none.
SELECT t.slug, t.isolation, t.status, t.migration_version,
       ARRAY(SELECT m.version FROM tenancy.migrations AS m
              WHERE t.migration_version IS NULL OR m.version > t.migration_version
              ORDER BY m.version) AS pending
  FROM tenancy.tenants AS t
 WHERE t.status <> 'deleted' AND t.isolation = 'schema'
   AND (t.migration_version IS NULL
        OR t.migration_version < (SELECT max(m.version) FROM tenancy.migrations AS m))
 ORDER BY t.slug

-- name: fleet_current_count
-- The live tenants fleet_plan_behind leaves out: shared ones, and schema
-- tenants at the newest migration.
SELECT count(*)
  FROM tenancy.tenants AS t
 WHERE t.status <> 'deleted'
   AND NOT (t.isolation = 'schema'
            AND (t.migration_version IS NULL
                 OR coalesce(t.migration_version < (SELECT max(m.version) FROM tenancy.migrations AS m),
                             false)))

-- name: fleet_application_name
SELECT pg_catalog.set_config('application_name', %(name)s, false)

-- name: record_provisioning_failure
SELECT tenancy.record_provisioning_failure(%(slug)s, %(version)s, %(sqlstate)s, %(message)s)
  AS recorded
-- name: move_tenant
SELECT tenancy.move_tenant(%(slug)s, %(node_host)s, %(node_port)s) AS node

-- name: tenant_nodes
SELECT t.slug, tenancy.tenant_node(t.slug) AS node FROM tenancy.tenants AS t ORDER BY t.slug

-- name: add_baseline
SELECT through_version, checksum, created_at
  FROM tenancy.add_baseline(through_version => %(through_version)s, sql => %(sql)s)

-- name: drop_baseline
SELECT tenancy.drop_baseline(through_version => %(through_version)s) AS dropped

-- name: list_baselines
SELECT b.through_version, b.checksum, b.created_at, octet_length(b.sql) AS size,
       (SELECT count(*) FROM tenancy.migrations AS m WHERE m.version <= b.through_version) AS squashed
  FROM tenancy.baselines AS b ORDER BY b.through_version

-- name: prepare_baseline
SELECT tenancy.prepare_baseline(through_version => %(through_version)s) AS version

-- name: discard_baseline_scratch
SELECT tenancy.discard_baseline_scratch() AS discarded

-- pgtenancy.alembic: a scratch tenant schema built from the registry for
-- autogenerate and the model check (dropped afterwards), and the version
-- table Alembic expects there for the span of one rolled-back transaction.

-- name: alembic_create_scratch
CREATE SCHEMA {schema}

-- name: alembic_apply_next
-- The next registered migration after from_version onto the scratch schema,
-- in the caller's transaction (one per transaction: commit boundaries).
SELECT tenancy.apply_migrations(%(schema)s, %(from_version)s, 1, true) AS version

-- name: alembic_drop_scratch
DROP SCHEMA IF EXISTS {schema} CASCADE

-- name: transaction_setting
SELECT pg_catalog.set_config(%(name)s, %(value)s, true)

-- name: alembic_stamp_table
CREATE TABLE {table} (version_num text NOT NULL PRIMARY KEY)

-- name: alembic_stamp
INSERT INTO {table} (version_num) VALUES (%(revision)s)

-- name: pending_placements
SELECT t.slug, p.node_name, p.node_port
  FROM tenancy.tenant_placements AS p
  JOIN tenancy.tenants AS t ON t.id = p.tenant_id
 WHERE t.status <> 'deleted'
   AND (%(slugs)s::text[] IS NULL OR t.slug = ANY (%(slugs)s::text[]))
 ORDER BY t.slug
