-- pgtenancy — 006: the isolation doctor.
--
-- tenancy.check_isolation() runs as the calling role (SECURITY INVOKER), so
-- run it as the application's role: most of what can break isolation is a
-- property of the role that queries.

CREATE OR REPLACE FUNCTION tenancy.check_registry()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_latest text;
BEGIN
    RETURN QUERY
        SELECT 'error'::text, 'tenant_schema_missing'::text, t.slug,
               format('tenant %s is registered but its schema %I does not exist', t.slug, t.schema_name),
               format('restore the schema, or SELECT tenancy.drop_tenant(%L, true)', t.slug)
          FROM tenancy.tenants AS t
         WHERE t.schema_name IS NOT NULL AND t.status <> 'deleted'
           AND to_regnamespace(quote_ident(t.schema_name)) IS NULL;

    RETURN QUERY
        SELECT 'warning'::text, 'unregistered_tenant_schema'::text, n.nspname::text,
               format('schema %I has the tenant prefix but is not a registered tenant', n.nspname),
               'drop or rename it, or register it (schemas are never adopted silently)'::text
          FROM pg_namespace AS n
         WHERE starts_with(n.nspname, tenancy.schema_prefix())
           AND NOT EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = n.nspname);

    -- Citus: a migration re-distributed the tenant's schema on another node
    -- and nothing moved it back yet (tenancy.tenant_placements).
    RETURN QUERY
        SELECT 'warning'::text, 'citus_tenant_placement'::text, t.slug,
               format('tenant %s sits on %s, it belongs on %s:%s (a migration placed it again)',
                      t.slug, coalesce(tenancy.tenant_node(t.slug), 'no node'), p.node_name, p.node_port),
               format('pgtenancy move %s %s %s', t.slug, p.node_name, p.node_port)
          FROM tenancy.tenant_placements AS p
          JOIN tenancy.tenants AS t ON t.id = p.tenant_id
         WHERE t.status <> 'deleted'
           AND tenancy.tenant_node(t.slug) IS DISTINCT FROM p.node_name || ':' || p.node_port;

    v_latest := tenancy.latest_migration();
    RETURN QUERY
        SELECT 'warning'::text, 'migration_lag'::text, t.slug,
               format('tenant %s is at migration %s, the latest is %s', t.slug,
                      coalesce(t.migration_version, 'none'), v_latest),
               format('SELECT tenancy.migrate_tenant(%L)', t.slug)
          FROM tenancy.tenants AS t
         WHERE t.isolation = 'schema' AND t.status <> 'deleted' AND v_latest IS NOT NULL
           AND t.migration_version IS DISTINCT FROM v_latest;

    -- A shared schema others may create in: code planted there could
    -- shadow what the application or its migrations call.
    RETURN QUERY
        SELECT 'warning'::text, 'shared_schema_writable'::text, n.nspname::text,
               format('schema %I can be created in by %s, not only by its owner %s', n.nspname,
                      string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                      ELSE quote_ident(pg_get_userbyid(a.grantee)) END, ', '
                                 ORDER BY a.grantee),
                      quote_ident(pg_get_userbyid(n.nspowner))),
               format('REVOKE CREATE ON SCHEMA %I FROM %s', n.nspname,
                      string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                      ELSE quote_ident(pg_get_userbyid(a.grantee)) END, ', '
                                 ORDER BY a.grantee))
          FROM pg_namespace AS n
         CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
         WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy')
           AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
           AND NOT EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = n.nspname)
           -- The database owner's role and the migrator are the kit's own.
           AND a.grantee <> (SELECT oid FROM pg_roles WHERE rolname = tenancy.migrator_role())
         GROUP BY n.nspname, n.nspowner;

    -- Whoever owns a tenant table can switch its privileges and policies
    -- off; the tenant's own role owns them at rest (tenancy.rest_owner), the
    -- migrator only for the span of one migration (so one left at rest
    -- means an interrupted hand-over).
    RETURN QUERY
        SELECT 'error'::text, 'tenant_object_foreign_owner'::text,
               format('%I.%I', n.nspname, c.relname),
               format('%s %I.%I of tenant %s is owned by %s, not by its owner at rest %s%s',
                      CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                                     WHEN 'm' THEN 'materialized view' ELSE 'table' END,
                      n.nspname, c.relname, t.slug, quote_ident(pg_get_userbyid(c.relowner)),
                      quote_ident(tenancy.rest_owner(t.schema_name)),
                      CASE WHEN pg_get_userbyid(c.relowner) = tenancy.migrator_role()
                           THEN ' (the migrator role owns nothing at rest)' ELSE '' END),
               format('ALTER TABLE %I.%I OWNER TO %I', n.nspname, c.relname, tenancy.rest_owner(t.schema_name))
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
          JOIN pg_class AS c ON c.relnamespace = n.oid
         WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
           AND pg_get_userbyid(c.relowner) <> tenancy.rest_owner(t.schema_name);

    -- Without a role of its own, a tenant's objects are the owner's at rest:
    -- code its migrations planted in them (foreign-key actions, expression
    -- indexes under ANALYZE, REFRESH) runs with the owner's rights.
    RETURN QUERY
        SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension AS e WHERE e.extname = 'citus')
                    THEN 'info' ELSE 'warning' END::text, 'tenant_without_owner_role'::text, t.slug,
               format('the objects of tenant %s belong to the kit''s owner at rest, not to a role '
                      'of its own (%s): code its migrations attached to them may run with the '
                      'owner''s rights', t.slug, tenancy.tenant_role(t.schema_name)),
               CASE WHEN EXISTS (SELECT 1 FROM pg_extension AS e WHERE e.extname = 'citus')
                    THEN 'none with Citus: it moves shards as the table owner, which must log in '
                         '(see the README, Citus)'
                    WHEN NOT EXISTS (SELECT 1 FROM pg_roles AS g WHERE g.rolname = tenancy.tenant_group_role())
                    THEN format('as a superuser: CREATE ROLE %I NOLOGIN; then install the kit again '
                                'and run pgtenancy migrate', tenancy.tenant_group_role())
                    ELSE 'give the kit''s owner CREATEROLE, then run pgtenancy migrate' END
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
         WHERE NOT EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.rolname = tenancy.tenant_role(t.schema_name))
           AND EXISTS (SELECT 1 FROM pg_class AS c WHERE c.relnamespace = n.oid);

    -- A tenant table's foreign key to a table outside its schema with an
    -- action runs the tenant's triggers inside whoever deletes or updates
    -- the referenced row, the AFTER ones with that role's rights (a
    -- migration may no longer make one: these are from before, or by hand).
    RETURN QUERY
        SELECT 'error'::text, 'tenant_fk_action'::text, format('%I.%I', n.nspname, c.relname),
               format('foreign key %I of %I.%I (tenant %s) references %s with an action (ON '
                      'DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT): deleting or updating a row '
                      'of %s runs the tenant''s triggers with the rights of whoever does it',
                      k.conname, n.nspname, c.relname, t.slug, k.confrelid::regclass,
                      k.confrelid::regclass),
               'make it ON DELETE/UPDATE RESTRICT (or NO ACTION) in a tenant migration: drop the '
               'constraint and add it again'::text
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
          JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
          JOIN pg_constraint AS k ON k.conrelid = c.oid AND k.contype = 'f'
          JOIN pg_class AS r ON r.oid = k.confrelid
         WHERE r.relnamespace <> n.oid
           AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
           AND k.conparentid = 0;

    -- A member of the owner's role has the owner's rights: every tenant,
    -- every policy, the registry.
    RETURN QUERY
        SELECT CASE WHEN EXISTS (SELECT 1 FROM tenancy.app_roles AS a WHERE a.role_name = r.rolname)
                    THEN 'error' ELSE 'warning' END::text,
               'owner_role_member'::text, r.rolname::text,
               format('role %s is a member of the kit''s owner %s and has all its rights (every '
                      'tenant''s data, the registry, the policies)', quote_ident(r.rolname),
                      quote_ident(pg_get_userbyid(k.nspowner))),
               format('REVOKE %I FROM %I', pg_get_userbyid(k.nspowner), r.rolname)
          FROM (SELECT nspowner FROM pg_namespace WHERE nspname = 'tenancy') AS k
          JOIN pg_roles AS r ON r.oid <> k.nspowner AND pg_has_role(r.oid, k.nspowner, 'MEMBER')
         WHERE NOT r.rolsuper;

    -- Without the event-trigger fence only privileges confine migrations.
    RETURN QUERY
        SELECT 'warning'::text, 'migration_fence_missing'::text, 'tenancy'::text,
               'the event-trigger fence of tenant migrations is not installed (the kit was '
               'installed without superuser rights): migrations are confined by the migrator '
               'role''s privileges alone, so a create in a schema everybody may create in is '
               'not refused'::text,
               'install the kit again as a superuser (make install-sql), or REVOKE CREATE ON '
               'SCHEMA public FROM PUBLIC'::text
         WHERE (SELECT count(*) FROM pg_event_trigger
                 WHERE evtname IN ('pgtenancy_fence_ddl_start', 'pgtenancy_fence_ddl_end',
                                   'pgtenancy_fence_sql_drop')
                   AND evtenabled <> 'D') < 3;

    RETURN QUERY
        SELECT 'warning'::text, 'consumer_inactive'::text, c.name,
               format('consumer %s has not been seen since %s and has undelivered events; '
                      'prune_events no longer waits for it',
                      c.name, coalesce(c.seen_at, c.updated_at)),
               format('run its listener again, or pgtenancy events drop-consumer %s', c.name)
          FROM tenancy.consumers AS c
         WHERE coalesce(c.seen_at, c.updated_at) < now() - tenancy.consumer_inactive_after()
           AND EXISTS (SELECT 1 FROM tenancy.events AS e
                        WHERE (e.xid, e.id) > (c.last_xid, c.last_id));

    -- Stale: nobody listens, and undelivered events wait longer than the
    -- setting pgtenancy.consumer_stale_after (default 15 minutes), well
    -- before consumer_inactive_after().
    RETURN QUERY
        SELECT 'warning'::text, 'consumer_stale'::text, c.name,
               format('consumer %s has no listener (last seen %s) and %s undelivered events, '
                      'the oldest %s old',
                      c.name, coalesce(c.seen_at::text, 'never'), s.lag_events,
                      date_trunc('second', now() - s.oldest)),
               format('start its listener (pgtenancy listen --consumer %s), or drop it: '
                      'pgtenancy events drop-consumer %s', c.name, c.name)
          FROM tenancy.consumers AS c
         CROSS JOIN LATERAL (
             SELECT count(*) AS lag_events, min(e.created_at) AS oldest
               FROM tenancy.events AS e
              WHERE (e.xid, e.id) > (c.last_xid, c.last_id)) AS s
         WHERE s.lag_events > 0
           AND s.oldest < now() - coalesce(nullif(current_setting('pgtenancy.consumer_stale_after', true),
                                                  ''), '15 minutes')::interval
           AND coalesce(c.seen_at, c.updated_at) >= now() - tenancy.consumer_inactive_after()
           AND (c.lease_until IS NULL OR c.lease_until < now())
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a
                            WHERE a.datname = current_database()
                              AND a.application_name = 'pgtenancy-listener:' || c.name);

    -- An orphaned prepared transaction (its transaction manager gone) holds
    -- the snapshot xmin of the whole cluster back until someone finishes it:
    -- no consumer passes it, whatever database it was prepared in. Older
    -- than the setting pgtenancy.prepared_stale_after (default 5 minutes,
    -- the default stall limit of the listener health check).
    RETURN QUERY
        SELECT 'warning'::text, 'prepared_transaction'::text, p.gid,
               format('prepared transaction %L (database %s, role %s) has been waiting for '
                      'COMMIT PREPARED or ROLLBACK PREPARED since %s (%s): it holds the snapshot '
                      'xmin back, so no consumer gets events committed after it began (%s held '
                      'back now) and VACUUM cannot clean up behind it',
                      p.gid, p.database, p.owner, date_trunc('second', p.prepared),
                      date_trunc('second', now() - p.prepared),
                      (SELECT count(*) FROM tenancy.events AS e
                        WHERE e.xid >= pg_snapshot_xmin(pg_current_snapshot()))),
               format('COMMIT PREPARED %L or ROLLBACK PREPARED %L, in database %s as %s or a '
                      'superuser (ask its transaction manager which one first)',
                      p.gid, p.gid, p.database, p.owner)
          FROM pg_prepared_xacts AS p
         WHERE p.prepared < now() - coalesce(nullif(current_setting('pgtenancy.prepared_stale_after',
                                                                    true), ''),
                                             '5 minutes')::interval;

    -- Defaults stored for an application role (ALTER ROLE ... SET, which the
    -- role can run on itself and PostgreSQL cannot forbid), for every role
    -- or for the database: every session starts with them again, RESET ALL
    -- included, so a pooled connection carries them into every tenant's
    -- requests. Errors: row_security (off: every tenant query fails),
    -- search_path, app.* and the kit's internal settings (a default
    -- app.tenant_id is a tenant without entry); warnings: settings that make
    -- requests fail or behave otherwise.
    RETURN QUERY
        SELECT CASE WHEN s.name IN ('row_security', 'search_path') OR starts_with(s.name, 'app.')
                         OR starts_with(s.name, 'pgtenancy.') THEN 'error' ELSE 'warning' END::text,
               'weakening_default_setting'::text,
               format('%s: %s', s.target, s.name),
               format('%s is set to %L by default for %s: every session starts with it, and '
                      'RESET ALL (pool reset) returns to it, so it reaches every tenant''s requests',
                      s.name, s.value, s.target),
               format('%s RESET %s', s.alter, s.name)
          FROM (SELECT lower(split_part(c.cfg, '=', 1)) AS name,
                       substr(c.cfg, strpos(c.cfg, '=') + 1) AS value,
                       CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN 'every role in every database'
                            WHEN d.setrole = 0 THEN format('database %I', current_database())
                            WHEN d.setdatabase = 0 THEN format('application role %I', pg_get_userbyid(d.setrole))
                            ELSE format('application role %I in database %I', pg_get_userbyid(d.setrole),
                                        current_database()) END AS target,
                       CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN 'ALTER ROLE ALL'
                            WHEN d.setrole = 0 THEN format('ALTER DATABASE %I', current_database())
                            WHEN d.setdatabase = 0 THEN format('ALTER ROLE %I', pg_get_userbyid(d.setrole))
                            ELSE format('ALTER ROLE %I IN DATABASE %I', pg_get_userbyid(d.setrole),
                                        current_database()) END AS alter
                  FROM pg_db_role_setting AS d
                 CROSS JOIN LATERAL unnest(d.setconfig) AS c(cfg)
                 WHERE d.setdatabase IN (0, (SELECT b.oid FROM pg_database AS b
                                              WHERE b.datname = current_database()))
                   AND (d.setrole = 0
                        OR EXISTS (SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r
                                       ON r.rolname = a.role_name WHERE r.oid = d.setrole))) AS s
         WHERE (s.name IN ('row_security', 'search_path', 'session_replication_role', 'statement_timeout',
                          'lock_timeout', 'idle_in_transaction_session_timeout', 'idle_session_timeout',
                          'default_transaction_isolation', 'default_transaction_read_only',
                          'default_transaction_deferrable', 'standard_conforming_strings',
                          'plpgsql.variable_conflict', 'transaction_timeout')
            OR starts_with(s.name, 'app.')
            -- The kit's settings, but for its configuration (the doctor's ages).
            OR (starts_with(s.name, 'pgtenancy.')
                AND s.name NOT IN ('pgtenancy.consumer_inactive_after', 'pgtenancy.consumer_stale_after',
                                   'pgtenancy.prepared_stale_after')))
           -- Values that weaken nothing.
           AND NOT (s.name, lower(trim(both '''"' FROM s.value))) IN (
                   ('row_security', 'on'), ('default_transaction_isolation', 'read committed'),
                   ('default_transaction_read_only', 'off'), ('default_transaction_deferrable', 'off'),
                   ('standard_conforming_strings', 'on'), ('session_replication_role', 'origin'),
                   ('statement_timeout', '0'), ('lock_timeout', '0'), ('transaction_timeout', '0'),
                   ('idle_in_transaction_session_timeout', '0'), ('idle_session_timeout', '0'),
                   ('plpgsql.variable_conflict', 'error'))
         ORDER BY 3;
END
$$;

COMMENT ON FUNCTION tenancy.check_registry() IS
    'Registry findings of the doctor, readable without access to the registry: tenant schemas '
    'missing (error), prefixed schemas not registered, tenants behind the latest migration, '
    'Citus tenants a migration left off the node recorded in tenant_placements (warnings), consumers unseen for consumer_inactive_after() with undelivered events '
    '(warning), consumers without a listener whose undelivered events are older than '
    'the setting pgtenancy.consumer_stale_after, default 15 minutes (warning), prepared '
    'transactions older than the setting pgtenancy.prepared_stale_after, default 5 minutes, '
    'which stall every consumer (warning, the fix names COMMIT/ROLLBACK PREPARED), shared schemas '
    'that roles other than their owner may create in (warning), the migration fence missing '
    '(warning), objects of tenant schemas owned by a role other than their owner at rest '
    '(tenancy.rest_owner; error), tenants whose objects have no owner role of their own (warning), '
    'members of the owner''s role (error for an application role, warning otherwise), defaults '
    'stored with ALTER ROLE/DATABASE ... SET for application roles, every role or this database '
    '(weakening_default_setting: error for row_security, search_path, app.* and pgtenancy.* but '
    'the *_after ages; '
    'warning for session_replication_role, the timeouts, default_transaction_isolation, '
    'default_transaction_read_only, default_transaction_deferrable, standard_conforming_strings, '
    'plpgsql.variable_conflict; the fix is ALTER ... RESET). Called by check_isolation().';

REVOKE ALL ON FUNCTION tenancy.check_registry() FROM PUBLIC;

-- Citus: what the coordinator's catalog cannot show. Policies as written to
-- the shards (Citus writes a RESTRICTIVE policy there as PERMISSIVE), tenant
-- schemas left undistributed, local tables inside distributed schemas.
-- Everything Citus-specific is dynamic SQL: the function exists, and
-- returns nothing, without Citus.
CREATE OR REPLACE FUNCTION tenancy.check_citus()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_table        regclass;
    v_slug         text;
    v_schema       text;
    v_bad          bigint;
    v_restrictive  name[];
    v_cmd          text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    FOR v_table IN EXECUTE format(
        'SELECT g.table_name FROM tenancy.guarded_tables AS g
           JOIN pg_catalog.%I AS p ON p.logicalrelid = g.table_name', 'pg_dist_partition')
    LOOP
        -- A policy that is permissive on a shard but restrictive on the
        -- coordinator, or the USING (true) companion: either opens the rows.
        SELECT coalesce(array_agg(c.polname), '{}') INTO v_restrictive
          FROM pg_policy AS c WHERE c.polrelid = v_table AND NOT c.polpermissive;
        v_cmd := format('SELECT count(*) FROM pg_policy AS p WHERE p.polrelid = ''%%s''::regclass '
                        'AND p.polpermissive AND (p.polname = ''tenancy_tenant_rows'' '
                        'OR p.polname = ANY (%L::name[]))', v_restrictive::text);
        EXECUTE format('SELECT count(*) FROM pg_catalog.%I($1, $2) AS s '
                       'WHERE s.success AND s.result::bigint > 0', 'run_command_on_shards')
            INTO v_bad USING v_table, v_cmd;
        IF v_bad > 0 THEN
            RETURN QUERY SELECT 'error'::text, 'citus_shard_policy_permissive'::text, v_table::text,
                format('%s shards of %s carry a permissive copy of a restrictive policy or the '
                       'USING (true) companion: tenants read each other''s rows there',
                       v_bad, v_table),
                format('SELECT tenancy.enable_rls(%L)', v_table::text);
        END IF;
    END LOOP;
    FOR v_slug, v_schema IN EXECUTE format(
        'SELECT t.slug, t.schema_name FROM tenancy.tenant_directory AS t
           JOIN pg_namespace AS n ON n.nspname = t.schema_name
          WHERE t.status <> $d$deleted$d$
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.%I AS s WHERE s.schemaid = n.oid)', 'pg_dist_schema')
    LOOP
        RETURN QUERY SELECT 'warning'::text, 'citus_schema_not_distributed'::text, v_slug::text,
            format('schema %I of tenant %s is not distributed: it lives on the coordinator',
                   v_schema, v_slug),
            format('SELECT citus_schema_distribute(%L)', v_schema);
    END LOOP;
    FOR v_table IN EXECUTE format(
        'SELECT c.oid::regclass AS tbl FROM pg_class AS c
           JOIN pg_catalog.%I AS s ON s.schemaid = c.relnamespace
          WHERE c.relkind IN ($k$r$k$, $k$p$k$) AND NOT c.relispartition
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.%I AS p WHERE p.logicalrelid = c.oid)',
        'pg_dist_schema', 'pg_dist_partition')
    LOOP
        RETURN QUERY SELECT 'error'::text, 'citus_local_table_in_distributed_schema'::text, v_table::text,
            format('table %s is local in a distributed schema: its rows stay on the coordinator', v_table),
            format('SELECT create_distributed_table(%L, NULL, colocate_with => <a table of its schema>)',
                   v_table::text);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.check_citus() IS
    'Citus findings of the isolation doctor (none without Citus): shards of guarded tables carrying '
    'a permissive copy of a restrictive policy or the USING (true) companion (error), tenant '
    'schemas not distributed (warning), local tables in distributed schemas (error). Internal: '
    'called by check_isolation(), as the calling role (reads tenant_directory, guarded_tables and '
    'the catalogs).';

CREATE OR REPLACE FUNCTION tenancy.check_isolation()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_me     pg_roles;
    r        record;
    v_citus  boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
BEGIN
    SELECT * INTO v_me FROM pg_roles WHERE rolname = current_user;
    IF v_me.rolsuper OR v_me.rolbypassrls THEN
        RETURN QUERY SELECT 'error'::text, 'role_bypasses_rls'::text, current_user::text,
            format('role %s is %s: row-level security policies do not apply to it',
                   current_user, CASE WHEN v_me.rolsuper THEN 'a superuser' ELSE 'BYPASSRLS' END),
            format('connect the application as a NOSUPERUSER NOBYPASSRLS role granted with '
                   'tenancy.grant_app_role()')::text;
    END IF;

    FOR r IN
        SELECT g.table_name, g.tenant_column, c.relowner, c.relrowsecurity, c.relforcerowsecurity,
               (SELECT a.attnum FROM pg_attribute AS a
                 WHERE a.attrelid = g.table_name AND a.attname = g.tenant_column) AS attnum
          FROM tenancy.guarded_tables AS g
          JOIN pg_class AS c ON c.oid = g.table_name::oid
    LOOP
        IF pg_has_role(current_user, r.relowner, 'USAGE') THEN
            RETURN QUERY SELECT 'error'::text, 'role_owns_guarded_table'::text, r.table_name::text,
                format('role %s owns guarded table %s and can switch its row-level security off',
                       current_user, r.table_name),
                format('ALTER TABLE %s OWNER TO <the kit''s owner role>', r.table_name);
        END IF;
        IF NOT r.relrowsecurity THEN
            RETURN QUERY SELECT 'error'::text, 'rls_disabled'::text, r.table_name::text,
                format('row-level security is disabled on guarded table %s', r.table_name),
                format('SELECT tenancy.enable_rls(%L)', r.table_name::text);
        END IF;
        IF NOT r.relforcerowsecurity THEN
            RETURN QUERY SELECT 'error'::text, 'rls_not_forced'::text, r.table_name::text,
                format('guarded table %s lacks FORCE ROW LEVEL SECURITY: its owner bypasses the policy',
                       r.table_name),
                format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.table_name);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policy
                        WHERE polrelid = r.table_name AND polname = 'tenancy_tenant_isolation') THEN
            RETURN QUERY SELECT 'error'::text, 'policy_missing'::text, r.table_name::text,
                format('guarded table %s has no tenancy_tenant_isolation policy', r.table_name),
                format('SELECT tenancy.enable_rls(%L, %L)', r.table_name::text, r.tenant_column);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_index
                        WHERE indrelid = r.table_name AND indkey[0] = r.attnum) THEN
            RETURN QUERY SELECT 'warning'::text, 'tenant_index_missing'::text, r.table_name::text,
                format('guarded table %s has no index led by %I: every tenant query scans it all',
                       r.table_name, r.tenant_column),
                format('CREATE INDEX ON %s (%I)', r.table_name, r.tenant_column);
        END IF;
        -- An index not led by the tenant column lets the planner scan it with
        -- the caller's own condition (leakproof comparisons) while the
        -- tenant check runs as a filter over every tenant's entries: EXPLAIN
        -- ANALYZE ("Rows Removed by Filter") and pg_stat_get_xact_tuples_fetched
        -- then count other tenants' values in any range (binary search).
        -- Partitions' indexes are reported once, on the parent's index.
        RETURN QUERY
            SELECT 'warning'::text, 'index_not_led_by_tenant'::text, i.indexrelid::regclass::text,
                   format('index %s of guarded table %s is not led by %I: a tenant can count other '
                          'tenants'' rows in any range of its columns (EXPLAIN ANALYZE, '
                          'pg_stat_get_xact_tuples_fetched) and so read their values by binary search',
                          i.indexrelid::regclass, r.table_name, r.tenant_column),
                   format('lead it with the tenant column: CREATE INDEX ON %s (%I, %s), then DROP INDEX %s '
                          '(a primary key or unique constraint: make it (%I, %s), unique per tenant)',
                          r.table_name, r.tenant_column, k.cols, i.indexrelid::regclass, r.tenant_column, k.cols)
              FROM pg_index AS i
             CROSS JOIN LATERAL (SELECT string_agg(pg_get_indexdef(i.indexrelid, n, true), ', ' ORDER BY n) AS cols
                                   FROM generate_series(1, i.indnkeyatts::integer) AS n) AS k
             WHERE i.indrelid = r.table_name AND i.indkey[0] <> r.attnum
               AND NOT EXISTS (SELECT 1 FROM pg_inherits AS h WHERE h.inhrelid = i.indexrelid)
             ORDER BY i.indexrelid::regclass::text;
    END LOOP;

    -- A setting read outside an InitPlan is evaluated once per row (not
    -- said on Citus, which refuses sub-selects in policies of distributed tables).
    -- A partition or inheritance child is queried by name with its own
    -- policies: a child of a guarded table must be guarded itself.
    RETURN QUERY
        SELECT 'error'::text, 'unguarded_child'::text, i.inhrelid::regclass::text,
               format('%s is a partition or child of guarded table %s but is not guarded: read by '
                      'name it shows every tenant''s rows', i.inhrelid::regclass, g.table_name),
               format('SELECT tenancy.enable_rls(%L, %L)', i.inhrelid::regclass::text, g.tenant_column)
          FROM tenancy.guarded_tables AS g
          JOIN pg_inherits AS i ON i.inhparent = g.table_name
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS c WHERE c.table_name = i.inhrelid);
    -- The other way round: read through a parent, a guarded table's rows
    -- get the parent's policies, so its parents must be guarded too.
    RETURN QUERY
        SELECT 'error'::text, 'unguarded_parent'::text, i.inhparent::regclass::text,
               format('%s is a parent of guarded table %s but is not guarded: read through it, '
                      'the rows of %s show to every tenant', i.inhparent::regclass, g.table_name,
                      g.table_name),
               format('SELECT tenancy.enable_rls(%L, %L)', i.inhparent::regclass::text, g.tenant_column)
          FROM tenancy.guarded_tables AS g
          JOIN pg_inherits AS i ON i.inhrelid = g.table_name
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.guarded_tables AS p WHERE p.table_name = i.inhparent);

    -- A setting read outside an InitPlan is evaluated once per row.
    FOR r IN
        SELECT p.polname, p.polrelid::regclass AS tbl,
               coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' '
               || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') AS expr
          FROM pg_policy AS p
         WHERE NOT v_citus
    LOOP
        IF regexp_replace(r.expr, '\(\s*SELECT\s+[^()]*(\([^()]*\)[^()]*)*\)', '', 'gi')
           ~* '(current_setting|tenancy\.current_tenant_id|tenancy\.active_tenant_id|tenancy\.current_tenant)\s*\(' THEN
            RETURN QUERY SELECT 'warning'::text, 'policy_not_initplan'::text,
                format('%s on %s', r.polname, r.tbl),
                format('policy %s on %s calls the tenant setting outside a sub-select, so it is '
                       'evaluated for every row', r.polname, r.tbl),
                'wrap it in a sub-select: tenant_id = (SELECT tenancy.active_tenant_id())'::text;
        END IF;
    END LOOP;

    RETURN QUERY SELECT * FROM tenancy.check_registry();
    -- Findings of files installed later (strict entry, 012), by name: this
    -- file cannot refer to them.
    IF EXISTS (SELECT 1 FROM pg_proc AS p
                WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname = 'check_strict'
                  AND p.pronargs = 0 AND has_function_privilege(p.oid, 'EXECUTE')) THEN
        RETURN QUERY EXECUTE format('SELECT * FROM %I.%I()', 'tenancy', 'check_strict');
    END IF;
    IF v_citus THEN
        RETURN QUERY SELECT * FROM tenancy.check_citus();
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_stat_activity
                    WHERE datname = current_database()
                      AND application_name LIKE 'pgtenancy-listener:%') THEN
        RETURN QUERY SELECT 'warning'::text, 'no_listener'::text, tenancy.events_channel(),
            format('no pgtenancy listener is connected to this database: lifecycle events wait '
                   'in the outbox'),
            'run pgtenancy listen --consumer NAME --handlers MODULE'::text;
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.check_isolation() IS
    'Isolation findings for the current role and database, one row each: severity (error, warning '
    'or info), check_name, object, message, fix. Checks: role is superuser or BYPASSRLS; role owns '
    'a guarded table; guarded table without ENABLE or FORCE RLS, without its policy, without an '
    'index led by the tenant column, with an index not led by it (warning: a range-count side '
    'channel); partitions and children of guarded tables not guarded, and parents of guarded tables not guarded; policies reading the tenant setting outside an InitPlan; '
    'tenant schemas missing; prefixed schemas not registered; tenants behind the latest migration; '
    'no listener connected; with Citus, tenancy.check_citus() (and no InitPlan advice); the '
    'strict-entry findings (strict entry off with shared tenants: info; tables of tenant schemas '
    'without the strict guard: error in strict mode). Run it as the application role.';
