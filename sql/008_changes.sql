-- pgtenancy — 008: row-change events for tenant tables.
--
-- tenancy.track_changes(table) adds three statement-level triggers with
-- transition tables, so bulk UPDATE ... WHERE, DELETE, INSERT ... SELECT and
-- COPY are caught like single-row writes. Each statement writes one outbox
-- event per 1000 rows of a tenant ('rows_changed': table, op, and per row its
-- primary key and, for updates, the changed columns), in the writing
-- transaction. The tenant of an event comes from the data (the schema of a
-- tenant-schema table, the tenant column of a guarded shared table), never
-- from app.tenant_id, which the writing statement itself can change.
-- Row changes never NOTIFY: NOTIFY takes a global lock at commit and would
-- serialize writers; listeners poll at a short interval while events flow.
-- The trigger function is generated per table with static SQL, so its plans
-- are cached.

CREATE OR REPLACE FUNCTION tenancy.changes_function(p_table regclass)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('tenancy.%I', 'changes_' || p_table::oid)
$$;

COMMENT ON FUNCTION tenancy.changes_function(regclass) IS
    'Name of the generated trigger function that records the changes of p_table.';

CREATE OR REPLACE FUNCTION tenancy.track_changes(table_name regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_in_migration boolean := tenancy.called_from_migration();
    v_fence        text;
    v_pk      name[];
    v_key     text;
    v_join    text;
    v_fn      text := tenancy.changes_function(track_changes.table_name);
    v_body    text;
    v_table   text;
    v_child   regclass;
    v_dist    boolean;
    v_gcol    name;
    v_tmpl    text;
    v_tenant_r text;
    v_tenant_o text;
BEGIN
    -- From a tenant migration: its own tenant's tables only, and the kit's
    -- own DDL (the generated function lives in tenancy) passes the fence.
    IF v_in_migration THEN
        IF NOT tenancy.is_migration_target(
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE c.oid = track_changes.table_name)) THEN
            RAISE EXCEPTION 'unsafe migration: %(%) is outside its tenant schema', 'track_changes', track_changes.table_name
                USING ERRCODE = 'PT017';
        END IF;
        v_fence := current_setting('pgtenancy.migration_schema', true);
        PERFORM set_config('pgtenancy.migration_schema', '', true);
    END IF;
    -- The sender of row signals: schema.table, unquoted.
    SELECT n.nspname || '.' || c.relname INTO v_table
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = track_changes.table_name AND c.relkind IN ('r', 'p');
    IF v_table IS NULL THEN
        RAISE EXCEPTION '% is not a table', track_changes.table_name
            USING ERRCODE = 'PT016';
    END IF;
    -- The kit's own tables: tracking the outbox would write events about
    -- writing events, without end.
    IF starts_with(v_table, 'tenancy.') THEN
        RAISE EXCEPTION '% is a table of the kit', track_changes.table_name
            USING ERRCODE = 'PT016',
                  HINT = 'Lifecycle changes of the registry are events already.';
    END IF;
    -- Citus: triggers of a distributed table run on the workers, where the
    -- registry and the outbox are not; tenant schemas are distributed.
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM pg_catalog.%I WHERE logicalrelid = $1)', 'pg_dist_partition')
            INTO v_dist USING track_changes.table_name;
        IF v_dist OR EXISTS (SELECT 1 FROM tenancy.tenants AS t
                               JOIN pg_namespace AS n ON n.nspname = t.schema_name
                               JOIN pg_class AS c ON c.relnamespace = n.oid
                              WHERE c.oid = track_changes.table_name) THEN
            RAISE EXCEPTION 'table % is distributed by Citus: its change triggers would run on the workers, '
                            'where the outbox is not', track_changes.table_name
                USING ERRCODE = 'PT016',
                      HINT = 'track_changes works on tables local to the coordinator only.';
        END IF;
    END IF;
    SELECT array_agg(a.attname ORDER BY k.ord) INTO v_pk
      FROM pg_index AS i
     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = track_changes.table_name AND i.indisprimary;
    IF v_pk IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key: row-change events identify rows by it', track_changes.table_name
            USING ERRCODE = 'PT016';
    END IF;
    SELECT string_agg(format('%L, r.%I', c, c), ', '),
           string_agg(format('o.%I = r.%I', c, c), ' AND ')
      INTO v_key, v_join
      FROM unnest(v_pk) AS c;

    -- The tenant of row r (and o): read at run time from guarded_tables, so
    -- a table guarded (or unguarded) after tracking is attributed right; the
    -- column guarded now is read directly (to_jsonb of every row costs a
    -- DELETE about twice its time), any other through jsonb.
    v_gcol := (SELECT g.tenant_column FROM tenancy.guarded_tables AS g
                WHERE g.table_name = track_changes.table_name);
    v_tmpl := CASE WHEN v_gcol IS NULL
        THEN 'CASE WHEN v_column IS NULL THEN v_tenant.id ELSE (to_jsonb(%1$s) ->> v_column)::uuid END'
        ELSE 'CASE WHEN v_column IS NULL THEN v_tenant.id WHEN v_column = %2$L THEN %1$s.%3$I '
             'ELSE (to_jsonb(%1$s) ->> v_column)::uuid END' END;
    v_tenant_r := format(v_tmpl, 'r', v_gcol, v_gcol);
    v_tenant_o := format(v_tmpl, 'o', v_gcol, v_gcol);

    -- The body is built first and then given to CREATE FUNCTION as one
    -- quoted literal (%L): a table or column name holding a dollar-quote
    -- tag (an attack run named a table "x$body$;...;SELECT $body$") can
    -- then never end the body early and run the rest as the owner.
    v_body := format($f$
        DECLARE
            v_tenant tenancy.tenants;
            v_column name;
        BEGIN
            -- Whose rows these are: the tenant whose schema holds the table,
            -- else, on a guarded shared table, each row's tenant column (what
            -- the policy's WITH CHECK enforced). Never a setting: RETURNING
            -- set_config('app.tenant_id', ...) changes it after the policy
            -- check and before this trigger runs. Rows are grouped by tenant;
            -- other tables' rows belong to no tenant.
            SELECT * INTO v_tenant FROM tenancy.tenants WHERE schema_name = TG_TABLE_SCHEMA;
            IF NOT FOUND THEN
                SELECT g.tenant_column INTO v_column FROM tenancy.guarded_tables AS g
                 WHERE g.table_name = TG_RELID;
            END IF;
            IF TG_OP = 'TRUNCATE' THEN
                -- A shared table's TRUNCATE empties every tenant's rows: no tenant.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                VALUES ('rows_changed', v_tenant.id, v_tenant.slug, v_tenant.schema_name,
                        v_tenant.status,
                        jsonb_build_object('table', %1$L, 'op', 'TRUNCATE', 'rows', '[]'::jsonb));
            ELSIF TG_OP = 'UPDATE' THEN
                -- Rows whose key and tenant are unchanged, with the columns that changed.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', s.tenant, t.slug, t.schema_name, t.status,
                       jsonb_build_object('table', %1$L, 'op', 'UPDATE', 'rows', jsonb_agg(s.row ORDER BY s.n))
                  FROM (SELECT c.*, (row_number() OVER (PARTITION BY c.tenant ORDER BY c.n) - 1) / 1000 AS chunk
                          FROM (SELECT %4$s AS tenant,
                                       jsonb_build_object(
                                           'key', jsonb_build_object(%2$s),
                                           'columns', (SELECT coalesce(jsonb_agg(e.key), '[]'::jsonb)
                                                         FROM jsonb_each(to_jsonb(r)) AS e
                                                        WHERE to_jsonb(o) -> e.key IS DISTINCT FROM e.value)
                                       ) AS row,
                                       row_number() OVER () AS n
                                  FROM new_rows AS r JOIN old_rows AS o
                                    ON %3$s AND %4$s IS NOT DISTINCT FROM %5$s) AS c) AS s
                  LEFT JOIN tenancy.tenants AS t ON t.id = s.tenant
                 GROUP BY s.tenant, s.chunk, t.id
                 ORDER BY min(s.n);
                -- An update that changed a key (or the tenant): the old key
                -- went from its tenant, the new one came to its tenant.
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', s.tenant, t.slug, t.schema_name, t.status,
                       jsonb_build_object('table', %1$L, 'op', s.op, 'rows', jsonb_agg(s.row ORDER BY s.n))
                  FROM (SELECT 'DELETE' AS op, %4$s AS tenant,
                               jsonb_build_object('key', jsonb_build_object(%2$s)) AS row,
                               row_number() OVER () AS n
                          FROM old_rows AS r
                         WHERE NOT EXISTS (SELECT 1 FROM new_rows AS o
                                            WHERE %3$s AND %4$s IS NOT DISTINCT FROM %5$s)
                        UNION ALL
                        SELECT 'INSERT', %4$s, jsonb_build_object('key', jsonb_build_object(%2$s)),
                               row_number() OVER ()
                          FROM new_rows AS r
                         WHERE NOT EXISTS (SELECT 1 FROM old_rows AS o
                                            WHERE %3$s AND %4$s IS NOT DISTINCT FROM %5$s)) AS s
                  LEFT JOIN tenancy.tenants AS t ON t.id = s.tenant
                 GROUP BY s.op, s.tenant, t.id
                 ORDER BY s.op, min(s.n);
            ELSE
                INSERT INTO tenancy.events
                       (name, tenant_id, tenant_slug, tenant_schema, tenant_status, payload)
                SELECT 'rows_changed', s.tenant, t.slug, t.schema_name, t.status,
                       jsonb_build_object('table', %1$L, 'op', TG_OP, 'rows', jsonb_agg(s.row ORDER BY s.n))
                  FROM (SELECT c.*, (row_number() OVER (PARTITION BY c.tenant ORDER BY c.n) - 1) / 1000 AS chunk
                          FROM (SELECT %4$s AS tenant,
                                       jsonb_build_object('key', jsonb_build_object(%2$s)) AS row,
                                       row_number() OVER () AS n
                                  FROM changed_rows AS r) AS c) AS s
                  LEFT JOIN tenancy.tenants AS t ON t.id = s.tenant
                 GROUP BY s.tenant, s.chunk, t.id
                 ORDER BY min(s.n);
            END IF;
            RETURN NULL;
        END
    $f$, v_table, v_key, v_join, v_tenant_r, v_tenant_o);
    EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
                   'SET search_path = pg_catalog, pg_temp AS %L', v_fn, v_body);
    EXECUTE format('COMMENT ON FUNCTION %s() IS %L', v_fn,
                   format('Records row changes of %s as rows_changed events (tenancy.track_changes).',
                          v_table));
    EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', v_fn);

    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_insert ON %s', track_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_update ON %s', track_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_delete ON %s', track_changes.table_name);
    EXECUTE format('CREATE TRIGGER tenancy_changes_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   track_changes.table_name, v_fn);
    EXECUTE format('CREATE TRIGGER tenancy_changes_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s()', track_changes.table_name, v_fn);
    EXECUTE format('CREATE TRIGGER tenancy_changes_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   track_changes.table_name, v_fn);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_truncate ON %s', track_changes.table_name);
    EXECUTE format('CREATE TRIGGER tenancy_changes_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s()', track_changes.table_name, v_fn);
    -- Statements aimed at a partition fire the partition's triggers only.
    FOR v_child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = track_changes.table_name LOOP
        PERFORM tenancy.track_changes(v_child);
    END LOOP;
    IF v_in_migration THEN
        PERFORM set_config('pgtenancy.migration_schema', v_fence, true);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.track_changes(regclass) IS
    'Record every INSERT, UPDATE and DELETE of table_name (a tenant-schema table or a guarded shared '
    'table; bulk statements and COPY included) and TRUNCATE as rows_changed outbox events '
    'carrying the tenant (the one whose schema holds the table, or on a guarded shared table each '
    'row''s tenant column, one event per tenant; never a setting; none for other tables and for a '
    'shared table''s TRUNCATE), the table (schema.table), the operation, each row''s primary key and, '
    'for updates, the changed columns; an update that changes a key is reported as the old key '
    'deleted and the new one inserted. Partitions present now are tracked too. Statement-level '
    'triggers with transition tables; no NOTIFY. Idempotent. Raises PT016 when table_name is not a '
    'table, is a table of the tenancy schema, or has no primary key, or with Citus when it is '
    'distributed or in a tenant schema.';

REVOKE ALL ON FUNCTION tenancy.track_changes(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.untrack_changes(table_name regclass)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_in_migration boolean := tenancy.called_from_migration();
    v_fence        text;
    v_child regclass;
BEGIN
    -- From a tenant migration: its own tenant's tables only, and the kit's
    -- own DDL (the generated function lives in tenancy) passes the fence.
    IF v_in_migration THEN
        IF NOT tenancy.is_migration_target(
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE c.oid = untrack_changes.table_name)) THEN
            RAISE EXCEPTION 'unsafe migration: %(%) is outside its tenant schema', 'untrack_changes', untrack_changes.table_name
                USING ERRCODE = 'PT017';
        END IF;
        v_fence := current_setting('pgtenancy.migration_schema', true);
        PERFORM set_config('pgtenancy.migration_schema', '', true);
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_insert ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_update ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_delete ON %s', untrack_changes.table_name);
    EXECUTE format('DROP TRIGGER IF EXISTS tenancy_changes_truncate ON %s', untrack_changes.table_name);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', tenancy.changes_function(untrack_changes.table_name));
    FOR v_child IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = untrack_changes.table_name LOOP
        PERFORM tenancy.untrack_changes(v_child);
    END LOOP;
    IF v_in_migration THEN
        PERFORM set_config('pgtenancy.migration_schema', v_fence, true);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.untrack_changes(regclass) IS
    'Stop recording row changes of table_name (drops its triggers and generated function). '
    'Idempotent.';

REVOKE ALL ON FUNCTION tenancy.untrack_changes(regclass) FROM PUBLIC;

-- Tenant migrations may track their own tables (the functions check that).
DO $$
BEGIN
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.track_changes(regclass) TO %I',
                              tenancy.migrator_role());
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.untrack_changes(regclass) TO %I',
                              tenancy.migrator_role());
END
$$;
