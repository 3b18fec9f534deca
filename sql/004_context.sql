-- pgtenancy — 004: entering a tenant.
--
-- Tenant context is per transaction: enter_tenant() sets search_path and
-- app.tenant_id with set_config(..., true), so both vanish at COMMIT or
-- ROLLBACK and a pooled connection carries nothing of the tenant.
-- enter_tenant() must not have a SET clause (the clause would undo its
-- set_config calls on return), so it is SECURITY INVOKER and qualifies
-- every name instead.

-- What enter_tenant() reads of the registry. A view (not a SECURITY DEFINER
-- function, whose call costs more than the lookup) that application roles
-- may read: no metadata, nothing they could not enter anyway.
CREATE OR REPLACE VIEW tenancy.tenant_directory AS
    SELECT t.slug, t.id, t.schema_name, t.status, t.limits FROM tenancy.tenants AS t;

COMMENT ON VIEW tenancy.tenant_directory IS
    'Slug, id, schema, status and limits of every tenant: what entering a tenant needs, readable by '
    'application roles that have no access to tenancy.tenants.';

-- The hot path: every tenant transaction starts with this call, sent in the
-- same message as BEGIN. Its cost was measured statement by statement
-- (backend CPU time per entry, bench/bench_entry.py for the totals) and cut
-- to what a PL/pgSQL call cannot avoid: one lookup statement, two tests and
-- one assignment (simple expressions, evaluated without the executor).
--   * One lookup through the directory view (the view costs nothing at run
--     time: it is expanded into the cached plan) that also answers "may the
--     transaction enter": status active and schema present, the schema
--     tested with to_regnamespace (a syscache probe, cheaper than a join on
--     pg_namespace, which the planner turns into a hash join over every
--     schema). The refusals are diagnosed only when that answer is not true.
--   * Every setting in one expression, search_path LAST, with no statement
--     after it: PL/pgSQL re-plans a cached statement whose search_path
--     differs from the one it was planned under, so anything run after the
--     switch would be re-planned on every change of tenant. Everything before
--     it runs under the session's own search_path and keeps its plans; every
--     name is qualified anyway.
CREATE OR REPLACE FUNCTION tenancy.enter_tenant(slug text)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    -- The parameter by position, not as enter_tenant.slug: the accelerator
    -- (011_accelerator.sql) keeps this body under another name too.
    v_slug    ALIAS FOR $1;
    v_id      pg_catalog.uuid;
    v_schema  pg_catalog.text;
    v_status  pg_catalog.text;
    v_limits  pg_catalog.text[];
    v_ok      boolean;
    v_set     pg_catalog.text;
    v_renamed pg_catalog.text;
BEGIN
    SELECT d.id, d.schema_name, d.status, d.limits,
           d.status OPERATOR(pg_catalog.=) 'active'
           AND (d.schema_name IS NULL
                OR pg_catalog.to_regnamespace(pg_catalog.quote_ident(d.schema_name)) IS NOT NULL)
      INTO v_id, v_schema, v_status, v_limits, v_ok
      FROM tenancy.tenant_directory AS d
     -- The registry's own collation: under a nondeterministic one given with
     -- the argument ('ACME' COLLATE <case-insensitive>) another spelling of
     -- the slug would match, and app.tenant would get that spelling.
     WHERE d.slug OPERATOR(pg_catalog.=) (v_slug COLLATE pg_catalog."default");
    IF v_ok IS NOT TRUE THEN
        IF NOT FOUND THEN
            -- A renamed tenant's old slug says where the tenant went.
            SELECT r.new_slug INTO v_renamed
              FROM tenancy.tenant_renames AS r
             WHERE r.old_slug OPERATOR(pg_catalog.=) (v_slug COLLATE pg_catalog."default");
            IF FOUND THEN
                RAISE EXCEPTION 'tenant % was renamed to %', pg_catalog.quote_literal(v_slug),
                    pg_catalog.quote_literal(v_renamed)
                    USING ERRCODE = 'PT020',
                          DETAIL = pg_catalog.format('new slug: %s', v_renamed);
            END IF;
            RAISE EXCEPTION 'tenant % not found', coalesce(pg_catalog.quote_literal(v_slug), 'NULL')
                USING ERRCODE = 'PT003';
        END IF;
        IF v_status OPERATOR(pg_catalog.=) 'suspended' THEN
            RAISE EXCEPTION 'tenant % is suspended', pg_catalog.quote_literal(v_slug)
                USING ERRCODE = 'PT004';
        END IF;
        IF v_status OPERATOR(pg_catalog.=) 'deleted' THEN
            RAISE EXCEPTION 'tenant % is deleted', pg_catalog.quote_literal(v_slug)
                USING ERRCODE = 'PT005';
        END IF;
        IF v_status OPERATOR(pg_catalog.=) 'provisioning' THEN
            RAISE EXCEPTION 'tenant % is being provisioned', pg_catalog.quote_literal(v_slug)
                USING ERRCODE = 'PT019',
                      HINT = 'Its migrations are not all applied yet: rerun create_tenant or pgtenancy migrate.';
        END IF;
        IF v_status OPERATOR(pg_catalog.<>) 'active' THEN
            -- Any status added later is refused too: fail closed.
            RAISE EXCEPTION 'tenant % is not active (status %)', pg_catalog.quote_literal(v_slug),
                v_status
                USING ERRCODE = 'PT004';
        END IF;
        -- Fail closed: never fall back to public when the schema is gone.
        RAISE EXCEPTION 'schema % of tenant % is missing', pg_catalog.quote_ident(v_schema),
            pg_catalog.quote_literal(v_slug)
            USING ERRCODE = 'PT007';
    END IF;
    -- The tenant's resource limits (tenancy.set_tenant_limits), as
    -- (setting, value) pairs, transaction-local too; nothing for most tenants.
    IF v_limits IS NOT NULL THEN
        PERFORM pg_catalog.set_config(v_limits[i], v_limits[i OPERATOR(pg_catalog.+) 1], true)
           FROM pg_catalog.generate_series(1, pg_catalog.cardinality(v_limits), 2) AS i;
    END IF;
    -- Settings: nothing with a cached plan may follow this assignment.
    -- A shared tenant sees the shared schema, guarded by RLS on app.tenant_id.
    -- pg_temp is named last, so a temporary table (left on a pooled
    -- connection by an earlier request) never shadows a tenant table.
    v_set := pg_catalog.set_config('app.tenant_id', v_id::pg_catalog.text, true)
             OPERATOR(pg_catalog.||) pg_catalog.set_config('app.tenant', v_slug, true)
             OPERATOR(pg_catalog.||) pg_catalog.set_config('search_path',
                                      CASE WHEN v_schema IS NULL THEN 'public, pg_temp'
                                           ELSE pg_catalog.quote_ident(v_schema)
                                                OPERATOR(pg_catalog.||) ', public, pg_temp'
                                      END,
                                      true);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant(text) IS
    'Put the current transaction into tenant slug: search_path = tenant schema, public, pg_temp '
    '(public, pg_temp for a shared tenant); app.tenant_id = tenant id; app.tenant = slug; the '
    'tenant''s limits (tenancy.tenants.limits); all transaction-local (set_config(..., true)); '
    'with Citus, tenancy.prepare_citus() adds SET LOCAL statements so every node of the '
    'transaction has the tenant. Returns the tenant id. Raises PT003 (unknown), PT020 (renamed: '
    'DETAIL names the new slug), PT004 (suspended, or any status but active), PT005 (deleted), '
    'PT019 (being provisioned), PT007 (schema missing) before anything is set. Call it as the '
    'first statement of a transaction block.';

-- The check of the quiet procedures of entry (enter_known, and the token
-- one of 012_strict.sql), called in the same statement as the entry, after it: PT023
-- when the search_path the tenant got is not the one given (not checked
-- when given is NULL). A function of its own, pinned, so the procedures run
-- no statement of theirs after the entry changed search_path (one would be
-- planned again at every change of tenant). Quoted: at most 200 characters
-- of given (an attack run's 600-million-character path made the message
-- itself fail to allocate); compared byte for byte, as the C compares.
CREATE OR REPLACE FUNCTION tenancy.check_known_path(slug text, search_path text, given text, hint text)
    RETURNS boolean
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF given IS NOT NULL AND check_known_path.search_path <> (given COLLATE "C") THEN
        RAISE EXCEPTION 'tenant % has search_path %, not %', quote_literal(slug),
            quote_literal(check_known_path.search_path),
            concat(quote_literal(left(given, 200)), CASE WHEN length(given) > 200 THEN '...' END)
            USING ERRCODE = 'PT023', HINT = hint;
    END IF;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.check_known_path(text, text, text, text) IS
    'PT023 (with hint) when search_path, the one tenant slug got, is not given (NULL: not '
    'checked); else true. For the PL/pgSQL of the quiet procedures of entry. Internal.';

-- The quiet form of entry: CALL tenancy.enter_known('acme', <search_path>)
-- after BEGIN, for a client that learnt the tenant's search_path from an
-- earlier tenancy.enter on its connection. No output parameter, so the
-- server sends no row (the client parses none): the same entry otherwise.
-- The search_path given is checked against the one the tenant got (PT023
-- when they differ: the tenant's schema changed since the client learnt
-- it, and it enters with tenancy.enter again); NULL skips the check.
CREATE OR REPLACE FUNCTION tenancy.define_enter_known(p_c boolean)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_c THEN
        -- The accelerator's C procedure (needs a superuser and the library).
        CREATE OR REPLACE PROCEDURE tenancy.enter_known(slug text, search_path text)
            LANGUAGE c
            AS '$libdir/pgtenancy_accel', 'pgtenancy_enter_known';
        RETURN;
    END IF;
    CREATE OR REPLACE PROCEDURE tenancy.enter_known(slug text, search_path text)
        LANGUAGE plpgsql
    AS $$
DECLARE
    v_id pg_catalog.uuid;
    v_ok pg_catalog.bool;
BEGIN
    -- One statement, planned under the caller's search_path before it
    -- changes, evaluated left to right: the entry, then the check of the
    -- path it set (tenancy.check_known_path).
    SELECT tenancy.enter_tenant($1),
           tenancy.check_known_path($1, pg_catalog.current_setting('search_path'), $2,
               'Its schema changed: enter with CALL tenancy.enter(slug) to learn its search_path.')
      INTO v_id, v_ok;
END
$$;
END
$fn$;

COMMENT ON FUNCTION tenancy.define_enter_known(boolean) IS
    'Create (or replace) the procedure tenancy.enter_known: its PL/pgSQL (p_c false) or the C '
    'accelerator''s procedure pgtenancy_enter_known (p_c true: a superuser, the library '
    'installed; raises 42501, 58P01 or 42883 otherwise). Grants and comment kept. Internal.';

REVOKE ALL ON FUNCTION tenancy.define_enter_known(boolean) FROM PUBLIC;

-- The procedure form of entry, what the kit's connections and sessions send
-- in the message that opens a tenant transaction: BEGIN; CALL
-- tenancy.enter('acme'). A CALL is neither planned nor run as a query, so
-- the server does less for it than for SELECT tenancy.enter_tenant('acme');
-- the entry itself is enter_tenant's (its refusals, its settings). The INOUT
-- parameter returns the search_path the tenant got, which keys the client's
-- prepared statements. No SET clause: it would undo the tenant's settings at
-- the end of the call; so every name is qualified. Where the C accelerator
-- is in use (011_accelerator.sql) it is the accelerator's C procedure, which
-- enters through enter_tenant's C path.
CREATE OR REPLACE FUNCTION tenancy.define_enter(p_c boolean)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_c THEN
        -- The accelerator's C procedure (needs a superuser and the library).
        CREATE OR REPLACE PROCEDURE tenancy.enter(slug text, INOUT search_path text DEFAULT NULL)
            LANGUAGE c
            AS '$libdir/pgtenancy_accel', 'pgtenancy_enter';
        PERFORM tenancy.define_enter_known(true);
        RETURN;
    END IF;
    PERFORM tenancy.define_enter_known(false);
    CREATE OR REPLACE PROCEDURE tenancy.enter(slug text, INOUT search_path text DEFAULT NULL)
        LANGUAGE plpgsql
    AS $$
DECLARE
    v_id pg_catalog.uuid;
BEGIN
    -- One statement, planned under the caller's search_path before it
    -- changes, evaluated left to right: the entry, then the path it set.
    SELECT tenancy.enter_tenant($1), pg_catalog.current_setting('search_path')
      INTO v_id, search_path;
END
$$;
END
$fn$;

COMMENT ON FUNCTION tenancy.define_enter(boolean) IS
    'Create (or replace) the procedures tenancy.enter and tenancy.enter_known '
    '(define_enter_known): their PL/pgSQL (p_c false) or the C accelerator''s procedures '
    'pgtenancy_enter and pgtenancy_enter_known (p_c true: a superuser, the library installed; '
    'raises 42501, 58P01 or 42883 otherwise). Grants and comments kept. Internal.';

REVOKE ALL ON FUNCTION tenancy.define_enter(boolean) FROM PUBLIC;

-- Install and upgrades leave the accelerator's C procedure in place (011
-- decides whether it stays).
SELECT tenancy.define_enter(false)
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
                     JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
                    WHERE p.pronamespace = 'tenancy'::pg_catalog.regnamespace
                      AND p.proname = 'enter' AND l.lanname = 'c');
-- An upgrade that keeps the C tenancy.enter gets enter_known's PL/pgSQL
-- (011 makes it C where it can).
SELECT tenancy.define_enter_known(false)
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
                    WHERE p.pronamespace = 'tenancy'::pg_catalog.regnamespace
                      AND p.proname = 'enter_known');

COMMENT ON PROCEDURE tenancy.enter(text, text) IS
    'CALL tenancy.enter(slug) after BEGIN: tenancy.enter_tenant(slug) as a procedure, which costs '
    'the server less than a SELECT of it; the same settings and refusals (PT003, PT020, PT004, '
    'PT005, PT019, PT007) as enter_tenant. Returns the search_path the tenant got (column '
    'search_path).';

COMMENT ON PROCEDURE tenancy.enter_known(text, text) IS
    'CALL tenancy.enter_known(slug, search_path) after BEGIN: tenancy.enter without output, for '
    'a client that knows the tenant''s search_path from an earlier tenancy.enter (no row sent '
    'back). The refusals of enter_tenant, and PT023 when the tenant''s search_path is not '
    'search_path (NULL: not checked).';

-- Citus sends SET LOCAL (never set_config) to every node taking part in a
-- transaction when citus.propagate_set_commands is 'local', so on Citus
-- entering a tenant must also run literal SET LOCAL statements for the
-- shards' policies on the workers to see the tenant. Plain PostgreSQL must
-- not pay for that test on every entry: the check runs once per database,
-- here, and specializes enter_tenant() by adding those statements to its
-- body, just before its settings comment (so they run before search_path
-- changes and keep their cached plans). The kit runs it at install and from
-- enable_rls(); run it after CREATE EXTENSION citus in a database where the
-- kit is installed already.
CREATE OR REPLACE FUNCTION tenancy.prepare_citus()
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_src   text;
    v_own   boolean;
    v_end   text := E'\n    -- Settings: nothing with a cached plan may follow this assignment.\n';
    v_citus text := E'\n    -- Citus (added by tenancy.prepare_citus()): SET LOCAL reaches every node.'
                    || E'\n    PERFORM pg_catalog.set_config(''citus.propagate_set_commands'', ''local'', true);'
                    || E'\n    EXECUTE pg_catalog.format(''SET LOCAL app.tenant_id = %L'', v_id::pg_catalog.text);'
                    || E'\n    EXECUTE pg_catalog.format(''SET LOCAL app.tenant = %L'', v_slug);'
                    || E'\n';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN false;
    END IF;
    -- The PL/pgSQL body: enter_tenant's own, or, where the accelerator
    -- (011_accelerator.sql) made enter_tenant an SQL call of its C function,
    -- the copy it keeps as enter_tenant_plpgsql. Citus needs the PL/pgSQL:
    -- it takes enter_tenant's place below.
    SELECT p.prosrc, p.proname = 'enter_tenant' INTO v_src, v_own
      FROM pg_proc AS p
     WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname IN ('enter_tenant', 'enter_tenant_plpgsql')
       AND p.proargtypes = '25'::oidvector
       AND p.prolang = (SELECT l.oid FROM pg_language AS l WHERE l.lanname = 'plpgsql')
     ORDER BY p.proname
     LIMIT 1;
    IF v_own AND pg_catalog.strpos(v_src, 'citus.propagate_set_commands') > 0 THEN
        RETURN true;
    END IF;
    IF pg_catalog.strpos(v_src, v_end) = 0 THEN
        RAISE EXCEPTION 'tenancy.enter_tenant() lacks its settings comment: cannot add the Citus statements'
            USING ERRCODE = 'XX000';
    END IF;
    v_src := pg_catalog.replace(v_src, v_end, v_citus || v_end);
    EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION tenancy.enter_tenant(slug text) RETURNS uuid '
                              'LANGUAGE plpgsql VOLATILE AS %L', v_src);
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.prepare_citus() IS
    'With Citus in the database: add literal SET LOCAL app.tenant_id/app.tenant statements (and '
    'citus.propagate_set_commands = local) to tenancy.enter_tenant(), so the tenant reaches every '
    'worker of the transaction; true when Citus is there, false (nothing changed) without it. '
    'Idempotent. Run by install and enable_rls; run it after CREATE EXTENSION citus in a database '
    'where the kit is installed already.';

REVOKE ALL ON FUNCTION tenancy.prepare_citus() FROM PUBLIC;

SELECT tenancy.prepare_citus();

CREATE OR REPLACE FUNCTION tenancy.current_tenant_id()
    RETURNS uuid
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('app.tenant_id', true) OPERATOR(pg_catalog.=) ''
                THEN NULL
                ELSE pg_catalog.current_setting('app.tenant_id', true)::pg_catalog.uuid
           END
$$;

COMMENT ON FUNCTION tenancy.current_tenant_id() IS
    'Id of the tenant the current transaction entered, NULL outside a tenant (a custom setting '
    'reads back as an empty string after the transaction that set it).';

CREATE OR REPLACE FUNCTION tenancy.current_tenant()
    RETURNS text
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('app.tenant', true) OPERATOR(pg_catalog.=) ''
                THEN NULL
                ELSE pg_catalog.current_setting('app.tenant', true)
           END
$$;

COMMENT ON FUNCTION tenancy.current_tenant() IS
    'Slug of the tenant the current transaction entered, NULL outside a tenant.';
