-- pgtenancy — 010: operating on one tenant as a unit: rename, clone,
-- resource limits and size accounting (issue 15).
--
-- Renaming keeps a record of the old slug, so entering a tenant under the
-- slug it had fails with PT020 naming the new one (tenancy.enter_tenant
-- reads tenancy.tenant_renames only when the slug is unknown). Limits live
-- in the registry as a flat text[] of (setting, value) pairs that
-- enter_tenant applies with set_config(..., true), one call per limit.

CREATE OR REPLACE FUNCTION tenancy.rename_tenant(slug text, new_slug text)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row    tenancy.tenants := tenancy.lock_tenant(rename_tenant.slug);
    v_new    text := tenancy.validate_slug(rename_tenant.new_slug);
    v_schema text;
    v_old_schema text := v_row.schema_name;
    v_table  regclass;
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(rename_tenant.slug)
            USING ERRCODE = 'PT005';
    END IF;
    IF v_new = v_row.slug THEN
        RETURN v_row;
    END IF;
    -- The same lock as creation (a row of tenancy.slug_locks, which the
    -- application role cannot take; it could hold an advisory lock): a
    -- concurrent create of new_slug waits.
    INSERT INTO tenancy.slug_locks AS l (slug) VALUES (v_new)
        ON CONFLICT ON CONSTRAINT slug_locks_pkey DO UPDATE SET slug = l.slug;
    IF EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.slug = v_new) THEN
        RAISE EXCEPTION 'tenant % already exists', quote_literal(v_new)
            USING ERRCODE = 'PT002';
    END IF;
    IF v_row.schema_name IS NOT NULL THEN
        v_schema := tenancy.schema_prefix() || v_new;
        IF to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
            RAISE EXCEPTION 'schema % already exists but is not a registered tenant', quote_ident(v_schema)
                USING ERRCODE = 'PT002',
                      HINT = 'Rename or drop that schema, or choose another slug.';
        END IF;
        IF to_regnamespace(quote_ident(v_row.schema_name)) IS NULL THEN
            RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_row.schema_name),
                quote_literal(v_row.slug)
                USING ERRCODE = 'PT007';
        END IF;
        -- Wait for the transactions using the tenant's tables (bounded by the
        -- caller's lock_timeout): none of them finds its tables gone midway.
        -- LOCK TABLE takes tables and views only (materialized views and
        -- foreign tables raise 42809).
        FOR v_table IN
            SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = to_regnamespace(quote_ident(v_row.schema_name))
               AND c.relkind IN ('r', 'p', 'v')
             ORDER BY c.oid
        LOOP
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_table);
        END LOOP;
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', v_row.schema_name, v_schema);
        -- The owner role's name follows the schema's.
        IF EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.rolname = tenancy.tenant_role(v_old_schema)) THEN
            PERFORM tenancy.ensure_tenant_role(v_schema);
            EXECUTE format('REASSIGN OWNED BY %I TO %I', tenancy.tenant_role(v_old_schema),
                           tenancy.tenant_role(v_schema));
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', v_schema, tenancy.tenant_role(v_old_schema));
            PERFORM tenancy.drop_tenant_role(v_old_schema);
        END IF;
    END IF;
    -- The registry trigger lets slug and schema_name change for this row only.
    PERFORM set_config('pgtenancy.renaming', v_row.id::text, true);
    UPDATE tenancy.tenants AS t SET slug = v_new, schema_name = v_schema
     WHERE t.id = v_row.id RETURNING * INTO v_row;
    PERFORM set_config('pgtenancy.renaming', '', true);
    -- Old slugs of this tenant now point to the new one; the new slug is no
    -- longer an old name of anybody.
    DELETE FROM tenancy.tenant_renames AS r WHERE r.old_slug = v_new;
    UPDATE tenancy.tenant_renames AS r SET new_slug = v_new WHERE r.tenant_id = v_row.id;
    INSERT INTO tenancy.tenant_renames (old_slug, tenant_id, new_slug)
    VALUES (rename_tenant.slug, v_row.id, v_new)
    ON CONFLICT (old_slug) DO UPDATE
        SET tenant_id = EXCLUDED.tenant_id, new_slug = EXCLUDED.new_slug, renamed_at = now();
    PERFORM tenancy.emit_event('tenant_renamed', v_row,
        jsonb_build_object('old_slug', rename_tenant.slug, 'old_schema', v_old_schema,
                           'new_slug', v_new, 'new_schema', v_schema));
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.rename_tenant(text, text) IS
    'Give tenant slug the slug new_slug and, for a schema tenant, the schema '
    'schema_prefix()||new_slug, atomically: it waits for the transactions using the tenant''s '
    'tables (ACCESS EXCLUSIVE locks, bounded by lock_timeout). Entering under the old slug then '
    'fails with PT020 naming the new slug (tenancy.tenant_renames). Emits tenant_renamed '
    '(payload old_slug, old_schema, new_slug, new_schema). A no-op when new_slug is the slug. '
    'Raises PT003 (not found), PT005 (deleted), PT001 (invalid new slug), PT002 (new slug or '
    'schema taken), PT007 (schema missing).';

REVOKE ALL ON FUNCTION tenancy.rename_tenant(text, text) FROM PUBLIC;

-- Clone ----------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.fk_order(p_tables regclass[])
    RETURNS regclass[]
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_done regclass[] := '{}'::regclass[];
    v_left regclass[] := coalesce(p_tables, '{}'::regclass[]);
    v_next regclass[];
BEGIN
    WHILE cardinality(v_left) > 0 LOOP
        -- Tables whose foreign keys (to the others still left) are all satisfied;
        -- a self-reference is checked at the end of the one INSERT of the table.
        SELECT coalesce(array_agg(t.rel ORDER BY t.rel::text), '{}'::regclass[]) INTO v_next
          FROM unnest(v_left) AS t(rel)
         WHERE NOT EXISTS (SELECT 1 FROM pg_constraint AS c
                            WHERE c.contype = 'f' AND c.conrelid = t.rel
                              AND c.confrelid <> t.rel AND c.confrelid = ANY (v_left));
        IF cardinality(v_next) = 0 THEN
            RAISE EXCEPTION 'foreign keys between % form a cycle', v_left::text
                USING ERRCODE = 'PT022',
                      HINT = 'Cloning copies table by table, referenced tables first.';
        END IF;
        v_done := v_done || v_next;
        v_left := ARRAY(SELECT t.rel FROM unnest(v_left) AS t(rel) WHERE t.rel <> ALL (v_next));
    END LOOP;
    RETURN v_done;
END
$$;

COMMENT ON FUNCTION tenancy.fk_order(regclass[]) IS
    'The tables p_tables ordered so that every table comes after the tables its foreign keys '
    'reference (self-references aside). Raises PT022 when foreign keys form a cycle. Internal.';

CREATE OR REPLACE FUNCTION tenancy.copy_columns(p_table regclass)
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
      FROM pg_attribute AS a
     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
$$;

COMMENT ON FUNCTION tenancy.copy_columns(regclass) IS
    'Comma-separated quoted names of the columns of p_table an INSERT may write (not dropped, '
    'not generated), in column order. Internal.';

CREATE OR REPLACE FUNCTION tenancy.create_stage(p_table regclass)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stage text := format('pg_temp.%I', 'pgtenancy_stage_' || p_table::oid);
BEGIN
    -- Plain text columns: loading them runs no type's or domain's code of
    -- the tenant's (tenancy.load_stage casts them, as the tenant's role).
    EXECUTE format('CREATE TEMPORARY TABLE %s (%s) ON COMMIT DROP', v_stage,
                   (SELECT string_agg(format('%I text', a.attname), ', ' ORDER BY a.attnum)
                      FROM pg_attribute AS a
                     WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attgenerated = ''));
    RETURN v_stage;
END
$$;

COMMENT ON FUNCTION tenancy.create_stage(regclass) IS
    'Create, for this transaction, a temporary table with a text column for each column of '
    'tenant table p_table an INSERT may write (tenancy.copy_columns), and return its name: an '
    'import COPYs into it, then tenancy.load_stage writes the rows as the tenant''s role. Internal.';

REVOKE ALL ON FUNCTION tenancy.create_stage(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.load_stage(p_table regclass)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_stage  text := format('pg_temp.%I', 'pgtenancy_stage_' || p_table::oid);
    v_schema text := (SELECT n.nspname::text FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                       WHERE c.oid = p_table);
    v_role   name := tenancy.rest_owner(v_schema);
    v_count  bigint;
BEGIN
    EXECUTE format('GRANT SELECT ON TABLE %s TO %I', v_stage, v_role);
    v_count := tenancy.run_as_rest_owner(v_schema, format(
        'INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s', p_table,
        tenancy.copy_columns(p_table),
        (SELECT string_agg(format('%I::%s', a.attname, format_type(a.atttypid, a.atttypmod)), ', '
                           ORDER BY a.attnum)
           FROM pg_attribute AS a
          WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
        v_stage));
    EXECUTE format('DROP TABLE %s', v_stage);
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.load_stage(regclass) IS
    'Write the rows of p_table''s stage (tenancy.create_stage) into tenant table p_table, cast to '
    'its column types, as the tenant''s owner role (tenancy.run_as_rest_owner: its check '
    'constraints, domains, index expressions and triggers left on run with that role''s rights), '
    'drop the stage and return the rows written. Internal.';

REVOKE ALL ON FUNCTION tenancy.load_stage(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.clone_schema_data(p_source text, p_target text)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tables regclass[];
    v_table  regclass;
    v_dest   regclass;
    v_cols   text;
    v_count  bigint;
    v_total  bigint := 0::bigint;
    v_seq    record;
    v_from   text;
    v_forced boolean;
    v_role   name := tenancy.rest_owner(p_target);
    v_owner  name := (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
BEGIN
    SELECT coalesce(array_agg(c.oid::regclass), '{}'::regclass[]) INTO v_tables
      FROM pg_class AS c
     WHERE c.relnamespace = to_regnamespace(quote_ident(p_source))
       AND c.relkind IN ('r', 'p') AND NOT c.relispartition;
    -- In READ COMMITTED every statement sees a new snapshot: hold the
    -- source's writers back so the copies of all tables agree.
    IF current_setting('transaction_isolation') = 'read committed' THEN
        FOREACH v_table IN ARRAY v_tables LOOP
            EXECUTE format('LOCK TABLE %s IN SHARE MODE', v_table);
        END LOOP;
    END IF;
    IF v_role <> v_owner THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', p_source, v_role);
    END IF;
    FOREACH v_table IN ARRAY tenancy.fk_order(v_tables) LOOP
        SELECT d.oid::regclass INTO v_dest
          FROM pg_class AS s JOIN pg_class AS d ON d.relname = s.relname
         WHERE s.oid = v_table AND d.relnamespace = to_regnamespace(quote_ident(p_target));
        IF v_dest IS NULL THEN
            RAISE EXCEPTION 'table % has no counterpart in the clone: the migrations do not create it',
                v_table
                USING ERRCODE = 'PT022',
                      HINT = 'A clone gets its schema from the registered migrations; create tables of '
                             'tenant schemas through migrations only.';
        END IF;
        v_cols := tenancy.copy_columns(v_dest);
        -- Triggers of the application (audit, change tracking) do not see
        -- the copy: the rows are not new, they are the source's.
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER USER', v_dest);
        -- FORCE ROW LEVEL SECURITY (strict mode's, or a migration's own)
        -- binds the clone's owner, whose copy runs with row_security off
        -- (an error, not fewer rows): lifted for the copy, put back after.
        v_forced := (SELECT c.relforcerowsecurity FROM pg_class AS c WHERE c.oid = v_dest);
        IF v_forced THEN
            EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', v_dest);
        END IF;
        -- The rows are written as the clone's own role (its check
        -- constraints, index expressions and generated columns run as it,
        -- not as the owner), which may read this source table for the copy
        -- only; a table under row security goes through a copy the owner
        -- reads in full.
        v_from := v_table::text;
        IF (SELECT c.relrowsecurity FROM pg_class AS c WHERE c.oid = v_table)
           AND v_role <> v_owner THEN
            v_from := format('pg_temp.%I', 'pgtenancy_clone_' || v_table::oid);
            EXECUTE format('CREATE TEMPORARY TABLE %s ON COMMIT DROP AS SELECT %s FROM %s',
                           v_from, v_cols, v_table);
            EXECUTE format('GRANT SELECT ON TABLE %s TO %I', v_from, v_role);
        ELSIF v_role <> v_owner THEN
            EXECUTE format('GRANT SELECT ON TABLE %s TO %I', v_table, v_role);
        END IF;
        v_count := tenancy.run_as_rest_owner(p_target,
            format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s',
                   v_dest, v_cols, v_cols, v_from));
        IF v_from <> v_table::text THEN
            EXECUTE format('DROP TABLE %s', v_from);
        ELSIF v_role <> v_owner THEN
            EXECUTE format('REVOKE SELECT ON TABLE %s FROM %I', v_table, v_role);
        END IF;
        IF v_forced THEN
            EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', v_dest);
        END IF;
        EXECUTE format('ALTER TABLE %s ENABLE TRIGGER USER', v_dest);
        v_total := v_total + v_count;
    END LOOP;
    IF v_role <> v_owner THEN
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM %I', p_source, v_role);
    END IF;
    -- Sequences (serial and identity ones too) continue from the source's values.
    FOR v_seq IN
        SELECT c.relname FROM pg_class AS c JOIN pg_class AS d ON d.relname = c.relname
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_source)) AND c.relkind = 'S'
           AND d.relnamespace = to_regnamespace(quote_ident(p_target)) AND d.relkind = 'S'
    LOOP
        EXECUTE format('SELECT setval(%L, s.last_value, s.is_called) FROM %I.%I AS s',
                       format('%I.%I', p_target, v_seq.relname), p_source, v_seq.relname);
    END LOOP;
    FOR v_seq IN
        SELECT c.relname FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_source)) AND c.relkind = 'm'
           AND c.relispopulated
    LOOP
        EXECUTE format('REFRESH MATERIALIZED VIEW %I.%I', p_target, v_seq.relname);
    END LOOP;
    RETURN v_total;
END
$$;

COMMENT ON FUNCTION tenancy.clone_schema_data(text, text) IS
    'Copy every table of schema p_source into the table of the same name in p_target, referenced '
    'tables first, with user triggers disabled and FORCE ROW LEVEL SECURITY lifted for the copy, '
    'written as p_target''s owner at rest '
    '(tenancy.run_as_rest_owner), which may read the source for the copy only; set every sequence of p_target to its '
    'counterpart''s value; refresh populated materialized views. Returns the rows copied. '
    'Raises PT022 (a table without counterpart, a foreign-key cycle). Internal.';

REVOKE ALL ON FUNCTION tenancy.clone_schema_data(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.clone_shared_rows(p_source uuid, p_target uuid)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tables regclass[];
    v_table  regclass;
    v_column name;
    v_cols   text;
    v_count  bigint;
    v_total  bigint := 0::bigint;
    v_maps   jsonb := '{}'::jsonb;
    v_own    jsonb;
    v_n      integer := 0;
    v_tmp    text;
    v_map    text;
    v_attr   record;
    v_fk     record;
    v_before text := current_setting('app.tenant_id', true);
BEGIN
    PERFORM tenancy.forget_dropped_tables();
    SELECT coalesce(array_agg(g.table_name), '{}'::regclass[]) INTO v_tables FROM tenancy.guarded_tables AS g;
    FOREACH v_table IN ARRAY tenancy.fk_order(v_tables) LOOP
        v_n := v_n + 1;
        v_column := (SELECT g.tenant_column FROM tenancy.guarded_tables AS g WHERE g.table_name = v_table);
        v_tmp := format('pgtenancy_clone_%s', v_n);
        -- The policy (FORCE ROW LEVEL SECURITY binds the owner too) shows the
        -- source's rows to the source only and takes new rows from the clone
        -- only: read as the source into a temporary table, write as the clone.
        PERFORM set_config('app.tenant_id', p_source::text, true);
        EXECUTE format('CREATE TEMPORARY TABLE %I ON COMMIT DROP AS SELECT * FROM %s WHERE %I = $1',
                       v_tmp, v_table, v_column)
            USING p_source;
        -- Columns drawn from sequences get new values (the source's are
        -- taken): a map old -> new per column, then foreign keys follow the
        -- maps (self-references too), then the columns themselves.
        v_own := '{}';
        FOR v_attr IN
            SELECT a.attnum, a.attname, pg_get_serial_sequence(v_table::text, a.attname) AS seq
              FROM pg_attribute AS a
             WHERE a.attrelid = v_table AND a.attnum > 0 AND NOT a.attisdropped
               AND pg_get_serial_sequence(v_table::text, a.attname) IS NOT NULL
        LOOP
            v_map := format('%s_map_%s', v_tmp, v_attr.attnum);
            EXECUTE format('CREATE TEMPORARY TABLE %I ON COMMIT DROP AS '
                           'SELECT DISTINCT t.%I AS old, NULL::bigint AS new FROM %I AS t',
                           v_map, v_attr.attname, v_tmp);
            EXECUTE format('UPDATE %I SET new = nextval(%L)', v_map, v_attr.seq);
            v_maps := v_maps || jsonb_build_object(format('%s:%s', v_table::oid, v_attr.attnum), v_map);
            v_own := v_own || jsonb_build_object(v_attr.attname, v_map);
        END LOOP;
        FOR v_fk IN
            SELECT c.confrelid, a.attname, k.refcol
              FROM pg_constraint AS c
             CROSS JOIN LATERAL unnest(c.conkey, c.confkey) AS k(col, refcol)
              JOIN pg_attribute AS a ON a.attrelid = v_table AND a.attnum = k.col
             WHERE c.contype = 'f' AND c.conrelid = v_table
        LOOP
            v_map := v_maps ->> format('%s:%s', v_fk.confrelid, v_fk.refcol);
            IF v_map IS NOT NULL AND NOT v_own ? v_fk.attname THEN
                EXECUTE format('UPDATE %I AS t SET %I = m.new FROM %I AS m WHERE t.%I = m.old',
                               v_tmp, v_fk.attname, v_map, v_fk.attname);
            END IF;
        END LOOP;
        FOR v_attr IN SELECT e.key AS attname, e.value AS map FROM jsonb_each_text(v_own) AS e LOOP
            EXECUTE format('UPDATE %I AS t SET %I = m.new FROM %I AS m WHERE t.%I = m.old',
                           v_tmp, v_attr.attname, v_attr.map, v_attr.attname);
        END LOOP;
        EXECUTE format('UPDATE %I SET %I = $1', v_tmp, v_column) USING p_target;
        PERFORM set_config('app.tenant_id', p_target::text, true);
        v_cols := tenancy.copy_columns(v_table);
        EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %I',
                       v_table, v_cols, v_cols, v_tmp);
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_total := v_total + v_count;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(v_before, ''), true);
    RETURN v_total;
END
$$;

COMMENT ON FUNCTION tenancy.clone_shared_rows(uuid, uuid) IS
    'Copy the rows of tenant p_source in every guarded table to tenant p_target, referenced '
    'tables first; columns drawn from a sequence (serial, identity) get new values and foreign '
    'keys between guarded tables follow them. Returns the rows copied. Internal.';

REVOKE ALL ON FUNCTION tenancy.clone_shared_rows(uuid, uuid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.clone_tenant(source text, new_slug text, metadata jsonb DEFAULT NULL)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_src   tenancy.tenants := tenancy.lock_tenant(clone_tenant.source);
    v_row   tenancy.tenants;
BEGIN
    IF v_src.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(clone_tenant.source)
            USING ERRCODE = 'PT005';
    END IF;
    IF clone_tenant.metadata IS NOT NULL AND jsonb_typeof(clone_tenant.metadata) <> 'object' THEN
        RAISE EXCEPTION 'tenant metadata must be a JSON object, not %', jsonb_typeof(clone_tenant.metadata)
            USING ERRCODE = '22023';
    END IF;
    IF v_src.isolation = 'schema'
       AND to_regnamespace(quote_ident(v_src.schema_name)) IS NULL THEN
        RAISE EXCEPTION 'schema % of tenant % is missing', quote_ident(v_src.schema_name),
            quote_literal(v_src.slug)
            USING ERRCODE = 'PT007';
    END IF;
    -- Creation provisions the clone as any tenant (schema, migrations run
    -- confined, grants); tenant_created says where it came from.
    PERFORM set_config('pgtenancy.created_payload',
                       jsonb_build_object('cloned_from', jsonb_build_object(
                           'slug', v_src.slug, 'id', v_src.id))::text, true);
    INSERT INTO tenancy.tenants (slug, metadata, isolation)
    VALUES (clone_tenant.new_slug, coalesce(clone_tenant.metadata, v_src.metadata), v_src.isolation)
    RETURNING * INTO v_row;
    PERFORM set_config('pgtenancy.created_payload', '', true);
    IF v_row.migration_version IS DISTINCT FROM v_src.migration_version THEN
        RAISE EXCEPTION 'tenant % is at migration %, a new tenant at %', quote_literal(v_src.slug),
            coalesce(v_src.migration_version, 'none'), coalesce(v_row.migration_version, 'none')
            USING ERRCODE = 'PT022',
                  HINT = 'Migrate the source tenant first (pgtenancy migrate). Nothing was created.';
    END IF;
    IF v_src.isolation = 'schema' THEN
        PERFORM tenancy.clone_schema_data(v_src.schema_name, v_row.schema_name);
    ELSE
        PERFORM tenancy.clone_shared_rows(v_src.id, v_row.id);
    END IF;
    RETURN v_row;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'cannot clone tenant %: %', quote_literal(clone_tenant.source), SQLERRM
            USING ERRCODE = 'PT022',
                  HINT = 'A unique key of a shared table does not include the tenant column and is '
                         'not drawn from a sequence. Nothing was created.';
END
$$;

COMMENT ON FUNCTION tenancy.clone_tenant(text, text, jsonb) IS
    'Create tenant new_slug as a copy of tenant source, in the caller''s transaction: the same '
    'isolation and metadata (unless metadata is given), its own id; a schema tenant gets its '
    'schema from the registered migrations and then every table''s rows (referenced tables '
    'first, user triggers off) and sequences at the source''s values; a shared tenant gets a '
    'copy of its rows of every guarded table (sequence-drawn keys renumbered). Emits '
    'tenant_created with payload cloned_from {slug, id}. In READ COMMITTED the source''s tables '
    'are locked in SHARE mode for the copy (writers wait); in REPEATABLE READ the copy is of the '
    'transaction''s snapshot. Raises PT003, PT005, PT007, PT001/PT002 (new slug), PT022 (source '
    'not at the migration a new tenant gets, a table the migrations do not create, a '
    'foreign-key cycle, a unique key the copy would break); nothing is created then.';

REVOKE ALL ON FUNCTION tenancy.clone_tenant(text, text, jsonb) FROM PUBLIC;

-- Resource limits ------------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.max_work_mem()
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT m.maximum FROM tenancy.limit_maxima AS m WHERE m.setting = 'work_mem'),
                    (SELECT s.reset_val || coalesce(s.unit, '') FROM pg_settings AS s
                      WHERE s.name = 'work_mem'))
$$;

COMMENT ON FUNCTION tenancy.max_work_mem() IS
    'Largest work_mem a tenant limit may set: the maximum set with '
    'tenancy.set_max_work_mem, else the database''s default work_mem (so without one, '
    'limits can only lower work_mem).';

CREATE OR REPLACE FUNCTION tenancy.set_max_work_mem(maximum text)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_value text;
BEGIN
    IF set_max_work_mem.maximum IS NULL THEN
        DELETE FROM tenancy.limit_maxima AS m WHERE m.setting = 'work_mem';
        RETURN tenancy.max_work_mem();
    END IF;
    -- Parsed and normalized by the server, in a subtransaction always undone.
    BEGIN
        PERFORM set_config('work_mem', set_max_work_mem.maximum, true);
        v_value := current_setting('work_mem');
        RAISE EXCEPTION 'checked' USING ERRCODE = 'PTZ00';
    EXCEPTION
        WHEN SQLSTATE 'PTZ00' THEN
            NULL;
        WHEN OTHERS THEN
            RAISE EXCEPTION 'invalid work_mem maximum %: %', quote_literal(set_max_work_mem.maximum),
                SQLERRM
                USING ERRCODE = 'PT021';
    END;
    INSERT INTO tenancy.limit_maxima AS m (setting, maximum) VALUES ('work_mem', v_value)
    ON CONFLICT (setting) DO UPDATE SET maximum = EXCLUDED.maximum, updated_at = now();
    RETURN v_value;
END
$$;

COMMENT ON FUNCTION tenancy.set_max_work_mem(text) IS
    'Set the largest work_mem a tenant limit may set in this database (NULL: back to the '
    'database''s default work_mem); returns the maximum now in force. Limits set earlier are '
    'not changed. Raises PT021 for a value the server refuses.';

REVOKE ALL ON FUNCTION tenancy.set_max_work_mem(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.set_tenant_limits(
    slug                                text,
    statement_timeout                   text DEFAULT NULL,
    lock_timeout                        text DEFAULT NULL,
    idle_in_transaction_session_timeout text DEFAULT NULL,
    work_mem                            text DEFAULT NULL
)
    RETURNS tenancy.tenants
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_row    tenancy.tenants := tenancy.lock_tenant(set_tenant_limits.slug);
    v_given  text[] := ARRAY[
        'statement_timeout', set_tenant_limits.statement_timeout,
        'lock_timeout', set_tenant_limits.lock_timeout,
        'idle_in_transaction_session_timeout', set_tenant_limits.idle_in_transaction_session_timeout,
        'work_mem', set_tenant_limits.work_mem];
    v_limits text[] := '{}'::text[];
    v_bad    text;
    v_max    bigint;
    v_mem    bigint;
    v_max_text text := tenancy.max_work_mem();
BEGIN
    IF v_row.status = 'deleted' THEN
        RAISE EXCEPTION 'tenant % is deleted', quote_literal(set_tenant_limits.slug)
            USING ERRCODE = 'PT005';
    END IF;
    -- Try every value with set_config in a subtransaction that is always
    -- undone: the server parses and normalizes it ('0.05s' -> '50ms').
    BEGIN
        FOR v_i IN 1 .. cardinality(v_given) BY 2 LOOP
            CONTINUE WHEN v_given[v_i + 1] IS NULL;
            v_bad := format('%s = %s', v_given[v_i], quote_literal(v_given[v_i + 1]));
            PERFORM set_config(v_given[v_i], v_given[v_i + 1], true);
            v_limits := v_limits || ARRAY[v_given[v_i], current_setting(v_given[v_i])];
            IF v_given[v_i] = 'work_mem' THEN
                v_mem := (SELECT s.setting::bigint FROM pg_settings AS s WHERE s.name = 'work_mem');
                v_bad := format('maximum work_mem = %s', quote_literal(v_max_text));
                PERFORM set_config('work_mem', v_max_text, true);
                v_max := (SELECT s.setting::bigint FROM pg_settings AS s WHERE s.name = 'work_mem');
            END IF;
        END LOOP;
        RAISE EXCEPTION 'limits checked' USING ERRCODE = 'PTZ00';
    EXCEPTION
        WHEN SQLSTATE 'PTZ00' THEN
            NULL;
        WHEN OTHERS THEN
            RAISE EXCEPTION 'invalid tenant limit %: %', v_bad, SQLERRM
                USING ERRCODE = 'PT021',
                      HINT = 'Timeouts take units (50ms, 2s, 1min), work_mem sizes (4MB). Nothing was changed.';
    END;
    IF v_mem IS NOT NULL AND v_mem > v_max THEN
        RAISE EXCEPTION 'invalid tenant limit work_mem = %: above the maximum %',
            quote_literal(set_tenant_limits.work_mem), v_max_text
            USING ERRCODE = 'PT021',
                  HINT = 'The kit''s owner raises the maximum with tenancy.set_max_work_mem(...). '
                         'Nothing was changed.';
    END IF;
    UPDATE tenancy.tenants AS t SET limits = nullif(v_limits, '{}')
     WHERE t.id = v_row.id RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.set_tenant_limits(text, text, text, text, text) IS
    'Set the resource limits of tenant slug, applied transaction-locally by enter_tenant: '
    'statement_timeout, lock_timeout, idle_in_transaction_session_timeout, work_mem (text with '
    'units, as SET takes them). The call gives the whole set: a NULL (or omitted) limit is '
    'cleared, so the tenant runs with the session''s setting. work_mem may not exceed '
    'tenancy.max_work_mem(). Stored normalized in tenancy.tenants.limits as (setting, value) '
    'pairs. Raises PT003 (not found), PT005 (deleted), PT021 (a value the server refuses, '
    'work_mem above the maximum); nothing is changed then.';

REVOKE ALL ON FUNCTION tenancy.set_tenant_limits(text, text, text, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.apply_tenant_limits(limits text[])
    RETURNS void
    LANGUAGE sql
    VOLATILE
AS $$
    SELECT pg_catalog.count(pg_catalog.set_config(apply_tenant_limits.limits[i],
                                       apply_tenant_limits.limits[i OPERATOR(pg_catalog.+) 1], true))::integer
      FROM pg_catalog.generate_series(1, pg_catalog.cardinality(apply_tenant_limits.limits), 2) AS i;
$$;

COMMENT ON FUNCTION tenancy.apply_tenant_limits(text[]) IS
    'Apply the (setting, value) pairs of limits (tenancy.tenants.limits) transaction-locally, '
    'as enter_tenant does when the tenant has limits. No SET clause, so the settings outlive '
    'the call until the end of the transaction.';

-- Size accounting ------------------------------------------------------------

CREATE OR REPLACE FUNCTION tenancy.tenant_sizes()
    RETURNS TABLE (slug text, bytes bigint, "rows" bigint)
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_guard  record;
    v_tenant uuid;
    v_count  bigint;
    v_ids    uuid[] := '{}'::uuid[];
    v_bytes  numeric[] := '{}'::numeric[];
    v_rows   bigint[] := '{}'::bigint[];
    v_before text := current_setting('app.tenant_id', true);
BEGIN
    -- Shared tenants: rows counted through the tenant column's index, under
    -- the tenant's own policy (FORCE ROW LEVEL SECURITY binds the owner
    -- too); bytes are the tenant's share of the table's rows times the
    -- table's total size.
    PERFORM tenancy.forget_dropped_tables();
    FOR v_guard IN
        SELECT g.table_name, g.tenant_column, pg_total_relation_size(g.table_name) AS total,
               greatest(c.reltuples, 0::real)::numeric AS tuples
          FROM tenancy.guarded_tables AS g JOIN pg_class AS c ON c.oid = g.table_name::oid
    LOOP
        FOR v_tenant IN SELECT t.id FROM tenancy.tenants AS t WHERE t.isolation = 'shared' LOOP
            PERFORM set_config('app.tenant_id', v_tenant::text, true);
            EXECUTE format('SELECT count(*) FROM %s WHERE %I = $1', v_guard.table_name,
                           v_guard.tenant_column)
                INTO v_count USING v_tenant;
            IF v_count > 0 THEN
                v_ids := v_ids || v_tenant;
                v_rows := v_rows || v_count;
                v_bytes := v_bytes || (v_guard.total * v_count / greatest(v_guard.tuples, v_count::numeric));
            END IF;
        END LOOP;
    END LOOP;
    PERFORM set_config('app.tenant_id', coalesce(v_before, ''), true);
    -- Schema tenants: what the catalog says of every table of the schema, its
    -- indexes and TOAST included; rows are the planner's estimates.
    RETURN QUERY
        WITH schema_sizes AS (
            SELECT t.id, coalesce(sum(pg_total_relation_size(c.oid)), 0) AS bytes,
                   coalesce(sum(greatest(c.reltuples, 0::real)), 0) AS row_count
              FROM tenancy.tenants AS t
              JOIN pg_namespace AS n ON n.nspname = t.schema_name
              JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
             WHERE t.isolation = 'schema'
             GROUP BY t.id
        ), shared_sizes AS (
            SELECT u.id, sum(u.bytes) AS bytes, sum(u.row_count) AS row_count
              FROM unnest(v_ids, v_bytes, v_rows) AS u(id, bytes, row_count)
             GROUP BY u.id
        )
        SELECT t.slug, coalesce(s.bytes, h.bytes, 0)::bigint,
               coalesce(s.row_count, h.row_count, 0)::bigint
          FROM tenancy.tenants AS t
          LEFT JOIN schema_sizes AS s ON s.id = t.id
          LEFT JOIN shared_sizes AS h ON h.id = t.id
         ORDER BY t.slug;
END
$$;

COMMENT ON FUNCTION tenancy.tenant_sizes() IS
    'Size of every tenant: slug, bytes, rows. A schema tenant: pg_total_relation_size of every '
    'table and materialized view of its schema (indexes and TOAST included), rows from '
    'pg_class.reltuples (estimates, as fresh as the last VACUUM or ANALYZE; 0 for a table '
    'never analyzed). A shared tenant: its rows of every guarded table, counted, and bytes '
    'estimated as its share of rows times the table''s total size (rows of equal width '
    'assumed).';

REVOKE ALL ON FUNCTION tenancy.tenant_sizes() FROM PUBLIC;
