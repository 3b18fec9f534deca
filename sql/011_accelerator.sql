-- pgtenancy — 011: the optional C accelerator of the per-transaction
-- functions.
--
-- enter_tenant() (every tenant transaction) and active_tenant_id() (every
-- statement on a guarded shared table) are PL/pgSQL, and most of their cost
-- is PL/pgSQL's own. Where the server has the library pgtenancy_accel (built
-- and installed by `make install-extension` on a server with its headers)
-- and the installing role is a superuser, each becomes an SQL function of
-- one SELECT calling its C counterpart (tenancy.<name>_c): the planner
-- inlines such a function into the calling query, so the wrapper costs
-- nothing. The C function handles the common case (an active tenant) and
-- calls the PL/pgSQL, kept as tenancy.<name>_plpgsql, for every other one,
-- so refusals are the PL/pgSQL's own. Elsewhere (no library, not a
-- superuser: managed services) nothing changes and the PL/pgSQL runs.
-- The wrappers keep their functions' OIDs, signatures, grants and comments
-- (CREATE OR REPLACE), so policies and callers follow.
--
-- tenancy.set_accelerator(false) (pgtenancy install --no-accelerator) puts
-- the PL/pgSQL back and records the choice; installs and upgrades keep it.
-- Strict entry's body swap (012) and prepare_citus() (004) take the PL/pgSQL
-- back before they change a body.

CREATE TABLE IF NOT EXISTS tenancy.accelerator (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled    boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenancy.accelerator IS
    'Whether the C accelerator is wanted in this database (one row; none means wanted). Set with '
    'tenancy.set_accelerator.';

REVOKE ALL ON TABLE tenancy.accelerator FROM PUBLIC;

-- Create the C function tenancy.<p_name>_c from the library, when it is not
-- there yet. False when that is not possible here: not a superuser (42501),
-- no library (58P01), a library without the symbol (42883). Made by a
-- superuser, owned then by the kit's owner like every other function.
CREATE OR REPLACE FUNCTION tenancy.accelerator_create_c(p_name text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sig   text;
    v_check text;
    v_ident text;
    v_attrs text;
    v_returns text := 'uuid';
    v_owner name := (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy');
BEGIN
    -- Names without their schema: tenancy.%s below.
    IF p_name = 'enter_tenant' THEN
        v_sig := 'enter_tenant_c(slug text)';
        v_ident := 'text';
        v_attrs := 'VOLATILE';
    ELSIF p_name = 'active_tenant_id' THEN
        v_sig := 'active_tenant_id_c()';
        v_ident := '';
        v_attrs := 'STABLE PARALLEL SAFE';
    ELSIF p_name = 'active_tenant_id_strict' THEN
        v_sig := 'active_tenant_id_strict_c()';
        v_ident := '';
        v_attrs := 'STABLE PARALLEL SAFE';
    ELSIF p_name = 'enter_tenant_token' THEN
        v_sig := 'enter_tenant_token_c(token text, slug text)';
        v_ident := 'text, text';
        v_attrs := 'VOLATILE';
    ELSIF p_name = 'verify_entry_token' THEN
        v_sig := 'verify_entry_token_c(token text, at_entry boolean)';
        v_ident := 'text, boolean';
        v_attrs := 'STABLE PARALLEL SAFE';
    ELSIF p_name = 'fence_target' THEN
        v_sig := 'fence_target_c(stack text)';
        v_ident := 'text';
        v_attrs := 'STABLE';
        v_returns := 'text';
    ELSE
        RAISE EXCEPTION 'no C accelerator for %', p_name USING ERRCODE = '22023';
    END IF;
    -- By argument types (the functions are made with named arguments): a kit
    -- owner that is not a superuser finds what a superuser made before.
    IF EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname = p_name || '_c'
                  AND oidvectortypes(p.proargtypes) = v_ident AND l.lanname = 'c') THEN
        RETURN true;
    END IF;
    BEGIN
        -- The library is loaded and the symbol checked now, not at the
        -- first call (check_function_bodies may be off, as in a restore);
        -- the caller's setting back afterwards.
        v_check := current_setting('check_function_bodies');
        PERFORM set_config('check_function_bodies', 'on', true);
        EXECUTE format('CREATE OR REPLACE FUNCTION tenancy.%s RETURNS %s LANGUAGE c %s '
                       'AS %L, %L', v_sig, v_returns, v_attrs, '$libdir/pgtenancy_accel', 'pgtenancy_' || p_name);
        PERFORM set_config('check_function_bodies', v_check, true);
    EXCEPTION WHEN insufficient_privilege OR undefined_file OR undefined_function THEN
        -- The subtransaction's rollback restored the setting.
        RETURN false;
    END;
    EXECUTE format('ALTER FUNCTION tenancy.%s_c(%s) OWNER TO %I', p_name, v_ident, v_owner);
    IF p_name = 'verify_entry_token' THEN
        -- Like verify_entry_token itself: not for every role (the parity
        -- test calls it; the other C functions verify tokens themselves).
        EXECUTE format('REVOKE ALL ON FUNCTION tenancy.%s_c(%s) FROM PUBLIC', p_name, v_ident);
    END IF;
    EXECUTE format('COMMENT ON FUNCTION tenancy.%s_c(%s) IS %L', p_name, v_ident,
                   format('C fast path of tenancy.%s (library pgtenancy_accel): the same result for an '
                          'active tenant, and tenancy.%s_plpgsql for every other case (so its errors). '
                          'Called by tenancy.%s while the accelerator is in use '
                          '(tenancy.set_accelerator).', p_name, p_name, p_name));
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.accelerator_create_c(text) IS
    'Create the C function <p_name>_c of the tenancy schema (enter_tenant, active_tenant_id, '
    'active_tenant_id_strict, enter_tenant_token, verify_entry_token, fence_target) from the library '
    'pgtenancy_accel when missing; true when it exists, false when it cannot be created here (not '
    'a superuser, no library). Raises 22023 for another name. Internal.';

REVOKE ALL ON FUNCTION tenancy.accelerator_create_c(text) FROM PUBLIC;

-- Point function p_fn (PL/pgSQL) at the C function tenancy.<p_impl>_c, or
-- (p_impl NULL) give it back its PL/pgSQL body. Pointing: the PL/pgSQL
-- definition is copied to tenancy.<p_impl>_plpgsql (the C function's
-- fallback; the bodies are written to work under either name), then p_fn
-- becomes `SELECT tenancy.<p_impl>_c(<p_args>)` in LANGUAGE sql, its other
-- attributes kept. Returns whether p_fn calls a C function afterwards.
CREATE OR REPLACE FUNCTION tenancy.accelerator_swap(p_fn regprocedure, p_impl text, p_args text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name name;
    v_src  text;
    v_def  text;
    v_lang name;
    v_stem text;
    v_head text;
    v_copy text;
BEGIN
    SELECT p.proname, p.prosrc, pg_get_functiondef(p.oid), l.lanname INTO v_name, v_src, v_def, v_lang
      FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang WHERE p.oid = p_fn;
    v_head := 'CREATE OR REPLACE FUNCTION tenancy.' || v_name || '(';
    v_stem := substring(v_src FROM E'^\\n    SELECT tenancy\\.(\\w+)_c\\(');
    IF v_lang = 'sql' AND v_stem IS NOT NULL THEN
        IF v_stem = p_impl THEN
            RETURN true;
        END IF;
        -- Back to the PL/pgSQL, from the copy the wrapper's C function uses.
        v_copy := 'CREATE OR REPLACE FUNCTION tenancy.' || v_stem || '_plpgsql(';
        SELECT pg_get_functiondef(p.oid) INTO v_def FROM pg_proc AS p
         WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname = v_stem || '_plpgsql'
           AND p.proargtypes = (SELECT f.proargtypes FROM pg_proc AS f WHERE f.oid = p_fn);
        IF v_def IS NULL OR left(v_def, length(v_copy)) <> v_copy THEN
            RAISE EXCEPTION 'cannot restore %: its PL/pgSQL copy %_plpgsql is missing', p_fn, v_stem
                USING ERRCODE = 'XX000';
        END IF;
        EXECUTE v_head || substr(v_def, length(v_copy) + 1);
        SELECT p.prosrc, pg_get_functiondef(p.oid), l.lanname INTO v_src, v_def, v_lang
          FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang WHERE p.oid = p_fn;
    END IF;
    IF p_impl IS NULL OR v_lang <> 'plpgsql' THEN
        RETURN false;
    END IF;
    IF left(v_def, length(v_head)) <> v_head OR strpos(v_def, v_src) = 0
       OR strpos(v_def, E'\n LANGUAGE plpgsql\n') = 0 THEN
        RAISE EXCEPTION 'cannot accelerate %: unexpected definition', p_fn
            USING ERRCODE = 'XX000';
    END IF;
    EXECUTE 'CREATE OR REPLACE FUNCTION tenancy.' || p_impl || '_plpgsql(' || substr(v_def, length(v_head) + 1);
    -- Owned by the kit's owner like everything else: made by a superuser
    -- for an owner that is not one, the owner's next install replaces it.
    EXECUTE format('ALTER FUNCTION tenancy.%s_plpgsql(%s) OWNER TO %I', p_impl,
                   pg_get_function_identity_arguments(p_fn),
                   (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'tenancy'));
    EXECUTE format('COMMENT ON FUNCTION tenancy.%s_plpgsql(%s) IS %L', p_impl,
                   pg_get_function_identity_arguments(p_fn),
                   format('The PL/pgSQL body of tenancy.%s, copied by the accelerator '
                          '(tenancy.set_accelerator): tenancy.%s_c calls it for every case but the '
                          'common one. Internal.', v_name, p_impl));
    v_def := replace(replace(v_def, v_src, E'\n    SELECT tenancy.' || p_impl || '_c(' || p_args || E')\n'),
                     E'\n LANGUAGE plpgsql\n', E'\n LANGUAGE sql\n');
    -- An invoker function's pinned search_path goes: the call is qualified,
    -- and a SQL function with a SET clause is never inlined (each call
    -- would run the SQL function executor and set the path twice).
    IF NOT (SELECT p.prosecdef FROM pg_proc AS p WHERE p.oid = p_fn) THEN
        v_def := regexp_replace(v_def, E'\n SET search_path TO [^\n]*\n', E'\n');
    END IF;
    EXECUTE v_def;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.accelerator_swap(regprocedure, text, text) IS
    'Make PL/pgSQL function p_fn an inlinable SQL call of <p_impl>_c(p_args) after copying its '
    'definition to <p_impl>_plpgsql, or (p_impl NULL) restore its PL/pgSQL definition from that '
    'copy; OID, signature, attributes, grants and comment kept. Returns whether p_fn calls a C '
    'function afterwards. Raises XX000 when a definition is not as expected. Internal.';

REVOKE ALL ON FUNCTION tenancy.accelerator_swap(regprocedure, text, text) FROM PUBLIC;

-- The PL/pgSQL body in effect of function p_fn: its own, or for a function
-- the accelerator took over, that of the copy its C function falls back to.
CREATE OR REPLACE FUNCTION tenancy.accelerated_body(p_fn regprocedure)
    RETURNS text
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT c.prosrc FROM pg_proc AS c
                      WHERE c.pronamespace = 'tenancy'::regnamespace
                        AND c.proname = substring(p.prosrc FROM E'^\\n    SELECT tenancy\\.(\\w+)_c\\(')
                                        || '_plpgsql'
                        AND c.proargtypes = p.proargtypes),
                    p.prosrc)
      FROM pg_proc AS p WHERE p.oid = p_fn
$$;

COMMENT ON FUNCTION tenancy.accelerated_body(regprocedure) IS
    'The PL/pgSQL body in effect of function p_fn: its own source, or, while the C accelerator '
    'takes it over, the source of the PL/pgSQL copy its C function falls back to. Used by the '
    'doctor''s strict check. Internal.';

REVOKE ALL ON FUNCTION tenancy.accelerated_body(regprocedure) FROM PUBLIC;

-- The functions the accelerator may take over, each with the C function for
-- its plain body (impl) and for the body strict entry gives it (strict_impl,
-- NULL: that body stays PL/pgSQL). Later files add theirs (012).
CREATE TABLE IF NOT EXISTS tenancy.accelerated_functions (
    function    text PRIMARY KEY,
    impl        text NOT NULL,
    strict_impl text,
    args        text NOT NULL,
    with_citus  boolean NOT NULL
);

COMMENT ON TABLE tenancy.accelerated_functions IS
    'Functions the C accelerator takes over (apply_accelerator): function (regprocedure text), its '
    'C fast path <impl>_c for the plain body and <strict_impl>_c for the strict-entry body (NULL: '
    'none), the call''s arguments, and whether it may be accelerated with Citus. Written by the '
    'install files.';

REVOKE ALL ON TABLE tenancy.accelerated_functions FROM PUBLIC;

-- Not with Citus: enter_tenant, whose workers need the literal SET LOCAL
-- statements prepare_citus() writes into the PL/pgSQL.
INSERT INTO tenancy.accelerated_functions (function, impl, strict_impl, args, with_citus) VALUES
    ('tenancy.enter_tenant(text)', 'enter_tenant', 'enter_tenant', '$1', false),
    ('tenancy.active_tenant_id()', 'active_tenant_id', 'active_tenant_id_strict', '', true),
    ('tenancy.fence_target(text)', 'fence_target', 'fence_target', '$1', true)
ON CONFLICT (function) DO UPDATE
   SET impl = EXCLUDED.impl, strict_impl = EXCLUDED.strict_impl, args = EXCLUDED.args,
       with_citus = EXCLUDED.with_citus;

-- Procedures of entry that later files define (012's token entry), each
-- with the function that makes it (p_c true: the C procedure, false: its
-- PL/pgSQL): apply_accelerator makes them C while enter_tenant runs its C
-- function, as it makes tenancy.enter and tenancy.enter_known.
CREATE TABLE IF NOT EXISTS tenancy.entry_procedures (
    procedure text PRIMARY KEY,
    define    text NOT NULL
);

COMMENT ON TABLE tenancy.entry_procedures IS
    'Procedures of entry defined after the accelerator (procedure: regprocedure text) and the '
    'function that makes each (define: regprocedure text of a function taking p_c boolean), for '
    'apply_accelerator. Written by the install files.';

REVOKE ALL ON TABLE tenancy.entry_procedures FROM PUBLIC;

-- Put the recorded choice in place: accelerate what can be, where it can be.
CREATE OR REPLACE FUNCTION tenancy.apply_accelerator()
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_on    boolean := coalesce((SELECT a.enabled FROM tenancy.accelerator AS a), true);
    v_citus boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
    v_fn    regprocedure;
    v_src   text;
    v_impl  text;
    v_c     boolean;
    v_any_c boolean;
    v_check text;
    -- Whether the loop made enter_tenant the call of its C function.
    v_entry_c boolean := false;
    v_swapped boolean;
    r       tenancy.accelerated_functions;
    r_proc  tenancy.entry_procedures;
BEGIN
    FOR r IN SELECT * FROM tenancy.accelerated_functions AS f ORDER BY f.function LOOP
        v_fn := r.function::regprocedure;
        -- The PL/pgSQL first: which body it has says which C function fits.
        PERFORM tenancy.accelerator_swap(v_fn, NULL, r.args);
        SELECT p.prosrc INTO v_src FROM pg_proc AS p WHERE p.oid = v_fn;
        v_impl := CASE WHEN strpos(v_src, '-- strict entry') > 0 THEN r.strict_impl ELSE r.impl END;
        IF v_on AND v_impl IS NOT NULL AND (r.with_citus OR NOT v_citus)
           AND strpos(v_src, 'citus.propagate_set_commands') = 0
           AND tenancy.accelerator_create_c(v_impl) THEN
            v_swapped := tenancy.accelerator_swap(v_fn, v_impl, r.args);
            v_entry_c := v_entry_c OR (v_swapped AND v_fn = 'tenancy.enter_tenant(text)'::regprocedure);
        END IF;
    END LOOP;
    -- The verifier's fast path on its own, for the parity test of the
    -- token checks (tests/integration/test_accelerator.py).
    IF v_on THEN
        PERFORM tenancy.accelerator_create_c('verify_entry_token');
    END IF;
    -- The procedure form of entry (tenancy.enter, 004_context.sql): C while
    -- enter_tenant runs its C function, PL/pgSQL otherwise (the accelerator
    -- off, Citus). Creating the C procedure needs a superuser: without one it
    -- stays PL/pgSQL, which enters the same way.
    -- Both procedures of entry (enter, enter_known) count: C only when both are.
    v_c := (SELECT count(*) FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
             WHERE p.oid IN ('tenancy.enter(text, text)'::regprocedure,
                             'tenancy.enter_known(text, text)'::regprocedure)
               AND l.lanname = 'c') = 2;
    v_any_c := EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                        WHERE p.oid IN ('tenancy.enter(text, text)'::regprocedure,
                                        'tenancy.enter_known(text, text)'::regprocedure)
                          AND l.lanname = 'c');
    IF v_entry_c THEN
        IF NOT v_c THEN
            BEGIN
                -- The symbol is checked now, whatever check_function_bodies
                -- says (as accelerator_create_c does).
                v_check := current_setting('check_function_bodies');
                PERFORM set_config('check_function_bodies', 'on', true);
                PERFORM tenancy.define_enter(true);
                PERFORM set_config('check_function_bodies', v_check, true);
            EXCEPTION WHEN insufficient_privilege OR undefined_file OR undefined_function THEN
                NULL;
            END;
        END IF;
    ELSIF v_any_c THEN
        PERFORM tenancy.define_enter(false);
    END IF;
    FOR r_proc IN SELECT * FROM tenancy.entry_procedures AS e ORDER BY e.procedure LOOP
        BEGIN
            -- A procedure (or its define function) missing is one its own
            -- file makes again later in an install (undefined_function: the
            -- cast fails); not a superuser or no library: it stays as it is.
            v_c := EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                            WHERE p.oid = r_proc.procedure::regprocedure AND l.lanname = 'c');
            IF v_entry_c AND NOT v_c THEN
                v_check := current_setting('check_function_bodies');
                PERFORM set_config('check_function_bodies', 'on', true);
                EXECUTE format('SELECT %s(true)', r_proc.define::regprocedure::oid::regproc);
                PERFORM set_config('check_function_bodies', v_check, true);
            ELSIF v_c AND NOT v_entry_c THEN
                EXECUTE format('SELECT %s(false)', r_proc.define::regprocedure::oid::regproc);
            END IF;
        EXCEPTION WHEN insufficient_privilege OR undefined_file OR undefined_function THEN
            NULL;
        END;
    END LOOP;
    RETURN tenancy.accelerator_in_use();
END
$$;

COMMENT ON FUNCTION tenancy.apply_accelerator() IS
    'Bring the functions of tenancy.accelerated_functions in line with tenancy.accelerator: wanted '
    '(the default), make each call its C function where that function exists or can be created (a '
    'superuser, the library pgtenancy_accel installed; not enter_tenant with Citus), and make the '
    'procedures tenancy.enter, tenancy.enter_known and those of tenancy.entry_procedures the C '
    'ones while enter_tenant runs its C function; not wanted, restore their PL/pgSQL. Returns accelerator_in_use(). Run by install, upgrades, '
    'set_accelerator and set_strict_entry. Owner only.';

REVOKE ALL ON FUNCTION tenancy.apply_accelerator() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.set_accelerator(enabled boolean)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF set_accelerator.enabled IS NULL THEN
        RAISE EXCEPTION 'set_accelerator needs true or false, not NULL'
            USING ERRCODE = '22004';
    END IF;
    INSERT INTO tenancy.accelerator (singleton, enabled) VALUES (true, set_accelerator.enabled)
    ON CONFLICT (singleton) DO UPDATE SET enabled = EXCLUDED.enabled, changed_at = now()
     WHERE tenancy.accelerator.enabled <> EXCLUDED.enabled;
    RETURN tenancy.apply_accelerator();
END
$$;

COMMENT ON FUNCTION tenancy.set_accelerator(boolean) IS
    'Want the C accelerator (true) or not (false) in this database, recorded for later installs '
    'and upgrades, and put in place (apply_accelerator). Returns whether it is in use afterwards: '
    'true needs the library pgtenancy_accel on the server and, the first time, a superuser. '
    'Raises 22004 (NULL). Owner only.';

REVOKE ALL ON FUNCTION tenancy.set_accelerator(boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.accelerator_in_use()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                    WHERE p.pronamespace = 'tenancy'::regnamespace AND l.lanname = 'sql'
                      AND p.prosrc ~ E'^\\n    SELECT tenancy\\.\\w+_c\\(')
$$;

COMMENT ON FUNCTION tenancy.accelerator_in_use() IS
    'True when a function of the kit (enter_tenant, active_tenant_id, enter_tenant_token) runs '
    'through its C function (the accelerator, tenancy.set_accelerator); false when the PL/pgSQL '
    'functions run.';

-- Install and upgrades recreate enter_tenant() and active_tenant_id() with
-- their PL/pgSQL bodies: accelerate them again, or not, as recorded. The
-- installer's --accelerator/--no-accelerator (pgtenancy.accelerator = on or
-- off in its transaction) records a choice; without one no row is written
-- (an extension's dump would restore a row its CREATE EXTENSION wrote too).
SELECT CASE pg_catalog.current_setting('pgtenancy.accelerator', true)
           WHEN 'on' THEN tenancy.set_accelerator(true)
           WHEN 'off' THEN tenancy.set_accelerator(false)
           ELSE tenancy.apply_accelerator()
       END;
