-- pgtenancy — 012: registering baselines (squashed histories).
--
-- A baseline through version V (see 003_migration_baselines.sql) is
-- registered only when it creates what the migrations up to V create:
-- tenancy.add_baseline applies it to a scratch schema and compares that,
-- object by object (tenancy.schema_catalog), with the reference schema
-- tenancy_check_baseline, which tenancy.prepare_baseline builds by a replay
-- of the migrations up to V with the commit boundaries a new tenant gets (one
-- call per transaction). pgtenancy migrate squash drives it: prepare, dump the
-- reference with pg_dump (schema and rows), rewrite the dump into a tenant
-- script (python/pgtenancy/templates.py), register it.

CREATE OR REPLACE FUNCTION tenancy.schema_catalog(schema_name text)
    RETURNS TABLE (kind text, name text, definition text)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_nsp    oid := to_regnamespace(quote_ident(schema_catalog.schema_name))::oid;
    v_prefix text := quote_ident(schema_catalog.schema_name) || '.';
    -- Each tenant schema has its own owner role (tenancy.tenant_role): it
    -- prints as one token, so two schemas' owners and ACLs compare.
    v_role   text := tenancy.tenant_role(schema_catalog.schema_name)::text;
BEGIN
    IF v_nsp IS NULL THEN
        RAISE EXCEPTION 'schema % does not exist', coalesce(quote_ident(schema_catalog.schema_name), 'NULL')
            USING ERRCODE = '3F000';
    END IF;
    -- Names of the schema's own objects print unqualified (the schema is on
    -- the path, after the catalogs), so two schemas compare; the few
    -- deparsers that always qualify are stripped of the schema name.
    PERFORM set_config('search_path', format('pg_catalog, %I, pg_temp', schema_catalog.schema_name), true);
    RETURN QUERY
    SELECT x.kind, replace(x.name, v_prefix, ''),
           replace(replace(x.definition, v_prefix, ''), v_role, '(tenant owner role)')
      FROM (
        SELECT 'relation' AS kind, c.relname::text AS name,
               jsonb_build_array(c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
                   c.reloptions::text, pg_get_userbyid(c.relowner),
                   (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(c.relacl) AS a)::text,
                   obj_description(c.oid, 'pg_class'),
                   CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                   pg_get_partkeydef(c.oid), pg_get_expr(c.relpartbound, c.oid),
                   (SELECT array_agg(i.inhparent::regclass::text ORDER BY i.inhseqno)
                      FROM pg_inherits AS i WHERE i.inhrelid = c.oid)::text)::text AS definition
          FROM pg_class AS c WHERE c.relnamespace = v_nsp
        UNION ALL
        -- Columns by their place among the live ones: a replay that dropped
        -- a column and a baseline without it agree.
        SELECT 'column', c.relname || '.' || a.attname,
               jsonb_build_array(row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                   format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
                   (SELECT co.collname FROM pg_collation AS co
                     WHERE co.oid = a.attcollation AND a.attcollation <> 100),
                   pg_get_expr(d.adbin, d.adrelid),
                   (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) AS x)::text,
                   col_description(c.oid, a.attnum))::text
          FROM pg_attribute AS a
          JOIN pg_class AS c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = v_nsp AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
           AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'constraint', coalesce(c.relname, t.typname) || '.' || k.conname,
               jsonb_build_array(k.contype, pg_get_constraintdef(k.oid), k.condeferrable,
                   k.condeferred, k.convalidated, obj_description(k.oid, 'pg_constraint'))::text
          FROM pg_constraint AS k
          LEFT JOIN pg_class AS c ON c.oid = k.conrelid
          LEFT JOIN pg_type AS t ON t.oid = k.contypid
         WHERE k.connamespace = v_nsp
        UNION ALL
        SELECT 'index', c.relname, pg_get_indexdef(i.indexrelid)
          FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE c.relnamespace = v_nsp
        UNION ALL
        SELECT 'sequence', c.relname,
               jsonb_build_array(format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
                   s.seqmin, s.seqcache, s.seqcycle,
                   (SELECT d.deptype::text || ' ' || d.refobjid::regclass::text || '.' || a.attname
                      FROM pg_depend AS d
                      JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                       AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))::text
          FROM pg_sequence AS s JOIN pg_class AS c ON c.oid = s.seqrelid
         WHERE c.relnamespace = v_nsp
        UNION ALL
        SELECT 'function', p.oid::regprocedure::text,
               jsonb_build_array(CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
                   p.prokind, pg_get_userbyid(p.proowner),
                   (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(p.proacl) AS x)::text,
                   obj_description(p.oid, 'pg_proc'))::text
          FROM pg_proc AS p WHERE p.pronamespace = v_nsp
        UNION ALL
        SELECT 'trigger', c.relname || '.' || t.tgname,
               jsonb_build_array(pg_get_triggerdef(t.oid), t.tgenabled,
                   obj_description(t.oid, 'pg_trigger'))::text
          FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
         WHERE c.relnamespace = v_nsp AND NOT t.tgisinternal
        UNION ALL
        SELECT 'policy', c.relname || '.' || p.polname,
               jsonb_build_array(p.polcmd, p.polpermissive,
                   (SELECT array_agg(CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END
                                     ORDER BY 1) FROM unnest(p.polroles) AS r)::text,
                   pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))::text
          FROM pg_policy AS p JOIN pg_class AS c ON c.oid = p.polrelid
         WHERE c.relnamespace = v_nsp
        UNION ALL
        -- Enum labels in their order; domains with base type and default.
        SELECT 'type', t.typname,
               jsonb_build_array(t.typtype, pg_get_userbyid(t.typowner),
                   (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(t.typacl) AS x)::text,
                   obj_description(t.oid, 'pg_type'),
                   (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                      FROM pg_enum AS e WHERE e.enumtypid = t.oid)::text,
                   CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
                   t.typnotnull, t.typdefault,
                   (SELECT format_type(r.rngsubtype, NULL) FROM pg_range AS r WHERE r.rngtypid = t.oid))::text
          FROM pg_type AS t WHERE t.typnamespace = v_nsp
        UNION ALL
        SELECT 'rule', c.relname || '.' || r.rulename, pg_get_ruledef(r.oid)
          FROM pg_rewrite AS r JOIN pg_class AS c ON c.oid = r.ev_class
         WHERE c.relnamespace = v_nsp AND r.rulename <> '_RETURN'
        UNION ALL
        SELECT 'statistics', s.stxname, pg_get_statisticsobjdef(s.oid)
          FROM pg_statistic_ext AS s WHERE s.stxnamespace = v_nsp
        UNION ALL
        -- Whatever else lives in the schema (operators, collations, text
        -- search objects, conversions ...), by kind and name.
        SELECT 'object', o.type || ' ' || o.identity, ''
          FROM pg_depend AS d, pg_identify_object(d.classid, d.objid, 0) AS o
         WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = v_nsp AND d.deptype = 'n'
           AND d.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_type'::regclass,
                                 'pg_constraint'::regclass, 'pg_statistic_ext'::regclass)
      ) AS x;
    PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
END
$$;

COMMENT ON FUNCTION tenancy.schema_catalog(text) IS
    'The objects of schema schema_name as (kind, name, definition) rows, keyed by names (never '
    'oids) with the schema''s own name left out, so two schemas compare: relations (kind, '
    'persistence, RLS flags, options, owner, ACL, comment, view query, partitioning, '
    'inheritance), columns of tables, views and composite types (position among live columns, '
    'type, NOT NULL, identity, generated, collation, default, ACL, comment), constraints, indexes, sequences (parameters, owning '
    'column), functions (full definition, owner, ACL, comment), triggers, policies, types (enum '
    'labels in order, domains, ranges), rules, statistics and any other object by name; the schema''s own owner role (tenancy.tenant_role) prints as one token. Raises '
    '3F000 for a missing schema.';

-- The reference the baseline is checked against: the version the scratch
-- schema tenancy_check_baseline has been replayed to, for which baseline.
CREATE TABLE IF NOT EXISTS tenancy.baseline_scratch (
    singleton       boolean NOT NULL DEFAULT true,
    through_version text COLLATE "C" NOT NULL,
    version         text COLLATE "C",
    CONSTRAINT baseline_scratch_pkey PRIMARY KEY (singleton),
    CONSTRAINT baseline_scratch_singleton_check CHECK (singleton)
);

COMMENT ON TABLE tenancy.baseline_scratch IS
    'Where the replay in schema tenancy_check_baseline stands (version) on its way to '
    'through_version, the version a baseline is being made for. One row at most.';

CREATE OR REPLACE FUNCTION tenancy.prepare_baseline(through_version text)
    RETURNS text
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_through ALIAS FOR through_version;
    v_schema  text := 'tenancy_check_baseline';
    v_role    name := tenancy.migrator_role();
    v_state   tenancy.baseline_scratch;
    v_next    tenancy.migrations;
    v_at      text;
    v_count   integer;
    v_sqlstate text;
    v_message text;
BEGIN
    -- Registrations wait: the history up to p_through cannot change anyway,
    -- but the commit boundaries are read from the whole registry.
    LOCK TABLE tenancy.migrations IN SHARE ROW EXCLUSIVE MODE;
    IF NOT EXISTS (SELECT 1 FROM tenancy.migrations AS m WHERE m.version = p_through) THEN
        RAISE EXCEPTION 'cannot squash through %: no such migration is registered',
            coalesce(quote_literal(p_through), 'NULL')
            USING ERRCODE = 'PT032',
                  HINT = 'Name a registered version (pgtenancy migrate --dry-run lists them per tenant).';
    END IF;
    IF EXISTS (SELECT 1 FROM tenancy.baselines AS b WHERE b.through_version = p_through) THEN
        RAISE EXCEPTION 'a baseline through % is registered already', quote_literal(p_through)
            USING ERRCODE = 'PT032',
                  HINT = 'Drop it first (tenancy.drop_baseline) to replace it.';
    END IF;
    SELECT * INTO v_state FROM tenancy.baseline_scratch AS s;
    IF FOUND AND v_state.through_version = p_through
       AND to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
        v_at := v_state.version;
    ELSE
        IF to_regnamespace(quote_ident(v_schema)) IS NOT NULL THEN
            EXECUTE format('DROP SCHEMA %I CASCADE', v_schema);
        END IF;
        EXECUTE format('CREATE SCHEMA %I', v_schema);
        v_at := NULL;
    END IF;
    IF v_at IS DISTINCT FROM p_through THEN
        SELECT * INTO v_next FROM tenancy.migrations AS m
         WHERE v_at IS NULL OR m.version > v_at
         ORDER BY m.version LIMIT 1;
        IF v_next.outside_transaction THEN
            -- A baseline is one transaction: the migration must run inside
            -- one (CREATE/DROP INDEX without CONCURRENTLY, ALTER TYPE ... ADD
            -- VALUE do; VACUUM does not).
            EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', v_schema, v_role);
            PERFORM tenancy.hand_over_schema(v_schema, true);
            PERFORM set_config('pgtenancy.migration_schema', v_schema, true);
            BEGIN
                PERFORM tenancy.execute_migration(
                    regexp_replace(v_next.sql, '\mCONCURRENTLY\M', '', 'gi'),
                    format('%I, pg_catalog, public, pg_temp', v_schema));
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_sqlstate = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT;
                RAISE EXCEPTION 'cannot squash through %: migration % runs outside a transaction and cannot be squashed: %',
                    quote_literal(p_through), v_next.version, v_message
                    USING ERRCODE = 'PT032',
                          DETAIL = format('Run inside a transaction (as a baseline is) it fails with SQLSTATE %s.', v_sqlstate),
                          HINT = 'Squash through a version before it.';
            END;
            PERFORM set_config('pgtenancy.migration_schema', '', true);
            PERFORM tenancy.hand_over_schema(v_schema, false);
            EXECUTE format('REVOKE USAGE, CREATE ON SCHEMA %I FROM %I', v_schema, v_role);
            v_at := v_next.version;
        ELSE
            -- What a new tenant gets in one transaction: everything up to
            -- p_through, or the next migration when commits are needed.
            SELECT count(*)::integer INTO v_count FROM tenancy.migrations AS m
             WHERE (v_at IS NULL OR m.version > v_at) AND m.version <= p_through;
            v_at := tenancy.apply_migrations(
                v_schema, v_at, CASE WHEN tenancy.needs_commit_boundaries(v_at) THEN 1 ELSE v_count END);
        END IF;
    END IF;
    INSERT INTO tenancy.baseline_scratch AS s (singleton, through_version, version)
    VALUES (true, p_through, v_at)
        ON CONFLICT (singleton) DO UPDATE
       SET through_version = EXCLUDED.through_version, version = EXCLUDED.version;
    RETURN v_at;
END
$$;

COMMENT ON FUNCTION tenancy.prepare_baseline(text) IS
    'Replay the migrations up to through_version in the scratch schema tenancy_check_baseline, '
    'the reference a baseline through that version is made from and checked against: each call '
    'applies what one transaction of a new tenant''s provisioning applies (all of them, or the '
    'next one when the history needs commit boundaries) and returns the version reached; call it '
    'in transactions of their own until it returns through_version. A different through_version '
    'starts over. Raises PT032 for an unregistered version, a baseline registered through it '
    'already, or a no-transaction migration that cannot run in a transaction (VACUUM); PT006 '
    'when a migration fails. Owner only.';

REVOKE ALL ON FUNCTION tenancy.prepare_baseline(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.discard_baseline_scratch()
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_found boolean := to_regnamespace('tenancy_check_baseline') IS NOT NULL;
BEGIN
    DROP SCHEMA IF EXISTS tenancy_check_baseline CASCADE;
    -- Its owner role (made by the replay as for any tenant schema) with it.
    PERFORM tenancy.drop_tenant_role('tenancy_check_baseline');
    DELETE FROM tenancy.baseline_scratch;
    RETURN v_found;
END
$$;

COMMENT ON FUNCTION tenancy.discard_baseline_scratch() IS
    'Drop the reference schema of tenancy.prepare_baseline (after a refused squash) and its owner '
    'role; true when there was one. Owner only.';

REVOKE ALL ON FUNCTION tenancy.discard_baseline_scratch() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.add_baseline(through_version text, sql text)
    RETURNS tenancy.baselines
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_through ALIAS FOR through_version;
    p_sql     ALIAS FOR sql;
    v_ref     text := 'tenancy_check_baseline';
    v_try     text := 'tenancy_check_baseline_try';
    v_row     tenancy.baselines;
    v_at      text;
    v_table   regclass;
    v_used    text;
    v_diff    text;
    v_count   integer;
    v_state   text;
    v_message text;
    v_detail  text;
    v_role    name;
    v_rls     text;
BEGIN
    IF p_sql IS NULL OR btrim(p_sql) = '' THEN
        RAISE EXCEPTION 'baseline through % has no SQL', coalesce(quote_literal(p_through), 'NULL')
            USING ERRCODE = 'PT032';
    END IF;
    -- Registrations and other squashes wait: the reference cannot change
    -- under the check (prepare_baseline takes the same lock).
    LOCK TABLE tenancy.migrations IN SHARE ROW EXCLUSIVE MODE;
    -- The reference: ready when prepare_baseline reached p_through; else
    -- made here when one transaction can (no commit boundaries needed).
    -- prepare_baseline refuses unknown versions and existing baselines.
    SELECT s.version INTO v_at FROM tenancy.baseline_scratch AS s
     WHERE s.through_version = p_through AND to_regnamespace(quote_ident(v_ref)) IS NOT NULL;
    IF v_at IS DISTINCT FROM p_through THEN
        v_at := tenancy.prepare_baseline(p_through);
    ELSE
        IF EXISTS (SELECT 1 FROM tenancy.baselines AS b WHERE b.through_version = p_through) THEN
            RAISE EXCEPTION 'a baseline through % is registered already', quote_literal(p_through)
                USING ERRCODE = 'PT032',
                      HINT = 'Drop it first (tenancy.drop_baseline) to replace it.';
        END IF;
    END IF;
    IF v_at IS DISTINCT FROM p_through THEN
        RAISE EXCEPTION 'the migrations up to % need commits between them: the reference replay is at %',
            quote_literal(p_through), coalesce(quote_literal(v_at), 'none')
            USING ERRCODE = 'PT032',
                  HINT = 'Call tenancy.prepare_baseline(through_version) in transactions of their own '
                         'until it returns the version, then add_baseline (pgtenancy migrate squash does).';
    END IF;
    -- A baseline carries the rows the history leaves (pg_dump's data of the
    -- reference), but only rows every new tenant would get alike: a value
    -- naming the replay's own schema or role (current_schema(), a regclass
    -- printed qualified) or an object identifier depends on the tenant the
    -- migrations ran in, so such a history is refused. Row security off: a
    -- read that policies would filter fails instead of missing rows.
    v_rls := current_setting('row_security');
    PERFORM set_config('row_security', 'off', true);
    v_role := tenancy.tenant_role(v_ref);
    FOR v_table IN
        SELECT c.oid::regclass FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(v_ref)) AND c.relkind IN ('r', 'm')
           AND c.relispopulated
         ORDER BY c.relname
    LOOP
        BEGIN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s AS r WHERE strpos(r::text, %L) > 0 OR strpos(r::text, %L) > 0)',
                           v_table, v_ref, v_role)
               INTO STRICT v_used;
        EXCEPTION WHEN insufficient_privilege THEN
            -- A table whose row-level security is forced on its owner (the
            -- kit's owner here): with row security off the read is an
            -- error, as pg_dump's is when the owner squashes.
            GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT;
            RAISE EXCEPTION 'cannot squash through %: the kit''s owner cannot read past the row-level security of table % to check its rows',
                quote_literal(p_through), replace(v_table::text, v_ref || '.', '')
                USING ERRCODE = 'PT032',
                      DETAIL = v_message,
                      HINT = 'A migration up to it forces row-level security on the table (FORCE ROW LEVEL SECURITY applies to the owner too): squash through a version before it, or install the kit as a role with BYPASSRLS. Nothing was registered.';
        END;
        IF v_used::boolean THEN
            RAISE EXCEPTION 'cannot squash through %: the migrations leave rows in table % that name the schema they ran in',
                quote_literal(p_through), replace(v_table::text, v_ref || '.', '')
                USING ERRCODE = 'PT032',
                      DETAIL = format('A value of a row holds %s (the replay''s schema) or its owner role: each tenant gets its own value from the migrations, a baseline would give every tenant the same one.', v_ref),
                      HINT = 'Squash through a version before the migration that writes them, or make the rows the same for every tenant.';
        END IF;
        SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
          INTO v_used
          FROM pg_attribute AS a
         WHERE a.attrelid = v_table AND a.attnum > 0 AND NOT a.attisdropped
           AND a.atttypid = ANY (ARRAY['oid'::regtype, 'regclass'::regtype, 'regtype'::regtype, 'regproc'::regtype,
                                       'regprocedure'::regtype, 'regoper'::regtype, 'regoperator'::regtype,
                                       'regconfig'::regtype, 'regdictionary'::regtype, 'regnamespace'::regtype,
                                       'regrole'::regtype, 'regcollation'::regtype, 'xid'::regtype, 'xid8'::regtype,
                                       'tid'::regtype, 'pg_lsn'::regtype]::oid[]);
        IF v_used IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s)', v_table) INTO STRICT v_diff;
            IF v_diff::boolean THEN
                RAISE EXCEPTION 'cannot squash through %: the migrations leave rows in table % with object identifiers (%)',
                    quote_literal(p_through), replace(v_table::text, v_ref || '.', ''), v_used
                    USING ERRCODE = 'PT032',
                          DETAIL = 'Object identifiers, transaction ids and row positions differ from one tenant to the next: a baseline cannot carry them.',
                          HINT = 'Squash through a version before the migration that writes them.';
            END IF;
        END IF;
    END LOOP;
    v_diff := NULL;
    PERFORM set_config('row_security', v_rls, true);

    INSERT INTO tenancy.baselines (through_version, sql, checksum)
    VALUES (p_through, p_sql, encode(sha256(convert_to(p_sql, 'UTF8')), 'hex'))
    RETURNING * INTO v_row;
    -- The baseline runs as it will for every new tenant.
    IF to_regnamespace(quote_ident(v_try)) IS NOT NULL THEN
        EXECUTE format('DROP SCHEMA %I CASCADE', v_try);
    END IF;
    EXECUTE format('CREATE SCHEMA %I', v_try);
    BEGIN
        PERFORM tenancy.apply_baseline(v_try, p_through);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        IF v_state = 'PT017' THEN
            RAISE EXCEPTION '%', v_message
                USING ERRCODE = 'PT017', DETAIL = v_detail, HINT = 'Nothing was registered.';
        END IF;
        RAISE EXCEPTION 'baseline through % does not apply to an empty schema: %', quote_literal(p_through), v_message
            USING ERRCODE = 'PT032', DETAIL = v_detail, HINT = 'Nothing was registered.';
    END;
    -- Equal to the replay, object by object.
    SELECT count(*)::integer,
           string_agg(d.side || ' ' || d.kind || ' ' || d.name || ': ' || left(d.definition, 300), E'\n'
                      ORDER BY d.kind, d.name, d.side)
      INTO v_count, v_diff
      FROM (
        (SELECT 'missing' AS side, * FROM tenancy.schema_catalog(v_ref)
         EXCEPT SELECT 'missing', * FROM tenancy.schema_catalog(v_try))
        UNION ALL
        (SELECT 'extra', * FROM tenancy.schema_catalog(v_try)
         EXCEPT SELECT 'extra', * FROM tenancy.schema_catalog(v_ref))
      ) AS d;
    IF v_count > 0 THEN
        RAISE EXCEPTION 'baseline through % differs from the migrations up to it in % object(s)',
            quote_literal(p_through), v_count
            USING ERRCODE = 'PT033',
                  DETAIL = v_diff,
                  HINT = '"missing": made by the migrations, not by the baseline; "extra": the other way. Nothing was registered.';
    END IF;
    -- Equal to the replay row by row (each table's own rows, as text) and
    -- sequence by sequence (last value, called or not).
    v_rls := current_setting('row_security');
    PERFORM set_config('row_security', 'off', true);
    v_count := 0;
    v_diff := NULL;
    FOR v_table IN
        SELECT c.oid::regclass FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(v_ref)) AND c.relkind IN ('r', 'm', 'S')
         ORDER BY c.relname
    LOOP
        v_used := (SELECT c.relname::text FROM pg_class AS c WHERE c.oid = v_table);
        IF (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_table) = 'S' THEN
            EXECUTE format('SELECT (SELECT s.last_value || CASE WHEN s.is_called THEN '' (called)'' ELSE '''' END FROM %s AS s), '
                           '(SELECT s.last_value || CASE WHEN s.is_called THEN '' (called)'' ELSE '''' END FROM %I.%I AS s)',
                           v_table, v_try, v_used)
               INTO v_state, v_message;
            IF v_state IS DISTINCT FROM v_message THEN
                v_count := v_count + 1;
                v_diff := concat_ws(E'\n', v_diff, format('sequence %s: %s after the migrations, %s after the baseline',
                                                          v_used, v_state, v_message));
            END IF;
        ELSIF (SELECT c.relispopulated FROM pg_class AS c WHERE c.oid = v_table)
              IS DISTINCT FROM (SELECT c.relispopulated FROM pg_class AS c
                                 WHERE c.relnamespace = to_regnamespace(quote_ident(v_try))
                                   AND c.relname = v_used) THEN
            v_count := v_count + 1;
            v_diff := concat_ws(E'\n', v_diff, format('materialized view %s: populated by one and not the other', v_used));
        ELSIF (SELECT c.relispopulated FROM pg_class AS c WHERE c.oid = v_table) THEN
            EXECUTE format('SELECT (SELECT count(*) FROM (SELECT r::text FROM ONLY %1$s AS r EXCEPT ALL '
                           'SELECT r::text FROM ONLY %2$I.%3$I AS r) AS m), '
                           '(SELECT count(*) FROM (SELECT r::text FROM ONLY %2$I.%3$I AS r EXCEPT ALL '
                           'SELECT r::text FROM ONLY %1$s AS r) AS e)',
                           v_table, v_try, v_used)
               INTO v_state, v_message;
            IF v_state::bigint > 0 OR v_message::bigint > 0 THEN
                v_count := v_count + 1;
                v_diff := concat_ws(E'\n', v_diff, format('rows of %s: %s missing, %s extra', v_used, v_state, v_message)
                    || CASE WHEN (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_table) = 'm'
                            THEN ' (a materialized view the migrations left stale: the baseline refreshes it; refresh it in a migration)'
                            ELSE '' END);
            END IF;
        END IF;
    END LOOP;
    PERFORM set_config('row_security', v_rls, true);
    IF v_count > 0 THEN
        RAISE EXCEPTION 'baseline through % leaves other rows or sequence values than the migrations up to it in % object(s)',
            quote_literal(p_through), v_count
            USING ERRCODE = 'PT033',
                  DETAIL = v_diff,
                  HINT = '"missing": left by the migrations, not by the baseline; "extra": the other way. Nothing was registered.';
    END IF;
    EXECUTE format('DROP SCHEMA %I CASCADE', v_try);
    PERFORM tenancy.drop_tenant_role(v_try);
    PERFORM tenancy.discard_baseline_scratch();
    RETURN v_row;
END
$$;

COMMENT ON FUNCTION tenancy.add_baseline(text, text) IS
    'Register sql as the baseline through migration through_version: new tenants run the newest '
    'baseline instead of the migrations up to its version, then the ones after it. It is checked '
    'first: applied to a scratch schema as any migration is (the migrator role, the fence), it '
    'must create what the migrations up to through_version create and leave the rows and '
    'sequence values they leave (tenancy.schema_catalog and the data of the '
    'reference replay of tenancy.prepare_baseline, made here when no commit boundaries are '
    'needed). Existing tenants are not touched. Raises PT032 (unregistered version, a baseline '
    'through it already, no SQL, a history that leaves rows naming the schema it ran in or '
    'holding object identifiers, or needs an unfinished prepare_baseline, SQL that fails), '
    'PT033 (it differs from the migrations in objects, in the rows of a table or in a '
    'sequence''s value; DETAIL lists them), PT017 (it reaches outside its schema); nothing is registered then. Owner only.';

REVOKE ALL ON FUNCTION tenancy.add_baseline(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_baseline(through_version text)
    RETURNS boolean
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    DELETE FROM tenancy.baselines AS b WHERE b.through_version = drop_baseline.through_version;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION tenancy.drop_baseline(text) IS
    'Remove the baseline through through_version; true when there was one. New tenants then '
    'start from the newest remaining baseline, or replay every migration; existing tenants are '
    'not touched (their state is their migration_version). To replace a baseline, drop it and '
    'squash again. Owner only.';

REVOKE ALL ON FUNCTION tenancy.drop_baseline(text) FROM PUBLIC;
