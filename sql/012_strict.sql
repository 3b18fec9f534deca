-- pgtenancy — 012: strict entry, a tenant proven by a signed token.
--
-- Off by default: the application role is trusted to say which tenant it
-- serves (app.tenant_id, search_path). With strict entry on
-- (tenancy.set_strict_entry(true)), a transaction of the application role
-- is in tenant X only while it holds a token for X signed with an entry key
-- the application role cannot read, so SQL injected into a request for
-- tenant A reaches no row of another tenant:
--   * token: pt2.<key name>.<slug>.<issued, Unix ms>.<expiry, Unix ms>.
--     <nonce, hex>.<mac, hex>; mac = HMAC-SHA256 (RFC 2104) under the named
--     key over everything before the last dot. The token names the slug
--     (what the signing service knows); it binds to the tenant holding the
--     slug since before it was issued (tenancy.tenants.slug_assigned_at),
--     so a token of a renamed or destroyed tenant does not enter the next
--     holder of its slug. HMAC is computed with the core sha256() function
--     (PostgreSQL 11+): no pgcrypto, no extension to manage. The keys'
--     inner and outer pads are stored, never readable by application roles.
--   * enter_tenant_token(token) verifies the token, enters its tenant with
--     enter_tenant and keeps the token in the transaction-local setting
--     app.tenant_token.
--   * every statement re-verifies that setting once (the policies call
--     active_tenant_id() in an InitPlan); strict mode swaps that function's
--     body for the verifying one, so the policies of guarded shared tables,
--     created before or after, trust only the verified tenant, and plain
--     (non-strict) databases keep the original body at its original cost.
--   * tables of tenant schemas get a RESTRICTIVE policy allowing rows only
--     to the verified tenant that owns the schema (FORCE ROW LEVEL SECURITY:
--     views and SECURITY DEFINER functions of a tenant schema, running as
--     the owner, are bound too); sessions of the kit's owner (migrations,
--     admin) pass. The guard follows migrations and provisioning through a
--     registry trigger.
-- Sessions whose login role (session_user) is a member of the kit's owner
-- are trusted without a token: an application role cannot change its
-- session_user, and the doctor reports application roles in the owner role.

CREATE TABLE IF NOT EXISTS tenancy.entry_keys (
    name       text PRIMARY KEY CHECK (name ~ '^[a-z0-9_-]{1,63}$'),
    inner_pad  bytea NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad  bytea NOT NULL CHECK (length(outer_pad) = 64),
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenancy.entry_keys IS
    'Entry keys of strict mode, by name: the HMAC-SHA256 inner and outer pads (key XOR 0x36 and '
    'XOR 0x5c, RFC 2104) of each key. Readable by the kit''s owner only; add and drop with '
    'tenancy.add_entry_key and tenancy.drop_entry_key.';

REVOKE ALL ON TABLE tenancy.entry_keys FROM PUBLIC;

-- One row when strict entry was ever switched; no row means off. The plain
-- definitions of the functions strict mode specializes are kept here, to be
-- restored when it is switched off.
CREATE TABLE IF NOT EXISTS tenancy.strict_entry (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled   boolean NOT NULL DEFAULT false,
    changed_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenancy.strict_entry IS
    'Whether strict entry is on in this database (one row; none means off). Set with '
    'tenancy.set_strict_entry.';

REVOKE ALL ON TABLE tenancy.strict_entry FROM PUBLIC;

CREATE TABLE IF NOT EXISTS tenancy.strict_plain_functions (
    function   regprocedure PRIMARY KEY,
    definition text NOT NULL
);

COMMENT ON TABLE tenancy.strict_plain_functions IS
    'While strict entry is on: the plain definition (pg_get_functiondef) of each function whose '
    'body strict mode replaced, restored when it is switched off.';

REVOKE ALL ON TABLE tenancy.strict_plain_functions FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.strict_entry_enabled()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT s.enabled FROM tenancy.strict_entry AS s), false)
$$;

COMMENT ON FUNCTION tenancy.strict_entry_enabled() IS
    'True when strict entry is on in this database (tenancy.set_strict_entry). Owner only.';

REVOKE ALL ON FUNCTION tenancy.strict_entry_enabled() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.add_entry_key(name text, key bytea)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key   bytea := add_entry_key.key;
    v_inner bytea;
    v_outer bytea;
    v_old   tenancy.entry_keys;
BEGIN
    IF add_entry_key.name IS NULL OR add_entry_key.name !~ '^[a-z0-9_-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid entry key name %', coalesce(quote_literal(add_entry_key.name), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Key names are 1 to 63 characters of a-z, 0-9, _ and -.';
    END IF;
    IF v_key IS NULL OR length(v_key) < 32 THEN
        RAISE EXCEPTION 'entry key % is shorter than 32 bytes', quote_literal(add_entry_key.name)
            USING ERRCODE = '22023',
                  HINT = 'Use 32 random bytes or more (Python: secrets.token_bytes(32)).';
    END IF;
    -- RFC 2104: a key longer than the block (64 bytes) is hashed first,
    -- then padded with zeros to the block.
    IF length(v_key) > 64 THEN
        v_key := sha256(v_key);
    END IF;
    v_key := v_key || decode(repeat('00', 64 - length(v_key)), 'hex');
    v_inner := v_key;
    v_outer := v_key;
    FOR i IN 0 .. 63 LOOP
        v_inner := set_byte(v_inner, i, get_byte(v_key, i) # 54);   -- 0x36
        v_outer := set_byte(v_outer, i, get_byte(v_key, i) # 92);   -- 0x5c
    END LOOP;
    SELECT * INTO v_old FROM tenancy.entry_keys AS k WHERE k.name = add_entry_key.name;
    IF FOUND THEN
        IF v_old.inner_pad = v_inner THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'entry key % exists with another value', quote_literal(add_entry_key.name)
            USING ERRCODE = '22023',
                  HINT = 'Rotate by adding the new key under a new name, then drop the old one.';
    END IF;
    INSERT INTO tenancy.entry_keys (name, inner_pad, outer_pad)
    VALUES (add_entry_key.name, v_inner, v_outer);
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.add_entry_key(text, bytea) IS
    'Add entry key name (1-63 of a-z 0-9 _ -) with secret key (32 bytes or more): tokens signed '
    'with it (pgtenancy.sign_tenant_token(key, slug, ttl, key_name=name)) enter tenants. Several '
    'keys may be active at once (rotation: add the new one, sign with it, drop the old one). True '
    'when added, false when the same key is there already. Raises 22023 (bad name, short key, '
    'name taken by another key). Owner only.';

REVOKE ALL ON FUNCTION tenancy.add_entry_key(text, bytea) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.drop_entry_key(name text)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenancy.entry_keys AS k WHERE k.name = drop_entry_key.name) THEN
        RETURN false;
    END IF;
    IF tenancy.strict_entry_enabled()
       AND NOT EXISTS (SELECT 1 FROM tenancy.entry_keys AS k WHERE k.name <> drop_entry_key.name) THEN
        RAISE EXCEPTION 'entry key % is the last one and strict entry is on: no tenant could be entered',
            quote_literal(drop_entry_key.name)
            USING ERRCODE = '22023',
                  HINT = 'Add the next key first, or switch strict entry off.';
    END IF;
    DELETE FROM tenancy.entry_keys AS k WHERE k.name = drop_entry_key.name;
    RETURN true;
END
$$;

COMMENT ON FUNCTION tenancy.drop_entry_key(text) IS
    'Drop entry key name: tokens signed with it are refused from the next statement on (PT025). '
    'True when dropped, false when there was no such key. Raises 22023 for the last key while '
    'strict entry is on. Owner only.';

REVOKE ALL ON FUNCTION tenancy.drop_entry_key(text) FROM PUBLIC;

-- The verifier. SECURITY DEFINER: it alone reads the keys. Called once per
-- statement (through active_tenant_id in the policies' InitPlan) and at
-- entry. The cost of a PL/pgSQL function is mostly per statement and per
-- expression, paid again in every transaction: one statement checks the
-- key, the tenant, the signature, the times and the slug's binding; what
-- was wrong is worked out only for a token that fails.
CREATE OR REPLACE FUNCTION tenancy.verify_entry_token(token text, at_entry boolean DEFAULT true)
    RETURNS uuid
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_token    text := verify_entry_token.token;
    v_parts    text[];
    v_ok       boolean;
    v_id       uuid;
    v_status   text;
    v_assigned timestamptz;
    v_now      bigint;
BEGIN
    -- HMAC-SHA256 (RFC 2104) under the named key over everything before the
    -- last dot, compared as hashes of the hex text: the time the comparison
    -- takes says nothing of the MAC. v_ok: true when it verifies and its
    -- times hold (issued no later than its expiry, nor more than 60 s ahead
    -- of this server's clock, nor before the tenant got its slug; expiry
    -- ahead), false when it verifies and a time fails, NULL when it does not
    -- verify (no row: no such key). CASE: the times of a malformed token are
    -- not even computed. The pattern has no bounded repetition ({64}): those
    -- make PostgreSQL's regular expressions many times slower.
    SELECT CASE WHEN v_token ~ '^pt2\.[a-z0-9_-]+\.[a-z0-9_-]+\.[0-9]+\.[0-9]+\.[0-9a-f]+\.[0-9a-f]+$'
                     AND length(split_part(v_token, '.', 4)) <= 16
                     AND length(split_part(v_token, '.', 5)) <= 16
                     AND length(split_part(v_token, '.', 6)) BETWEEN 16 AND 64
                     AND sha256(convert_to('.' || encode(sha256(k.outer_pad || sha256(k.inner_pad
                             || convert_to(left(v_token, length(v_token) - 65), 'UTF8'))), 'hex'), 'UTF8'))
                         = sha256(convert_to(right(v_token, 65), 'UTF8'))
                THEN split_part(v_token, '.', 5)::bigint
                         > (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                     AND split_part(v_token, '.', 4)::bigint <= split_part(v_token, '.', 5)::bigint
                     AND split_part(v_token, '.', 4)::bigint
                         <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000
                     AND split_part(v_token, '.', 4)::bigint
                         >= coalesce(floor(extract(epoch FROM t.slug_assigned_at) * 1000)::bigint, 0)
           END,
           t.id, t.status, t.slug_assigned_at
      INTO v_ok, v_id, v_status, v_assigned
      FROM tenancy.entry_keys AS k
      LEFT JOIN tenancy.tenants AS t ON t.slug = split_part(v_token, '.', 3)
     WHERE k.name = split_part(v_token, '.', 2);
    IF v_ok AND (v_status = 'active' OR (verify_entry_token.at_entry AND v_id IS NOT NULL)) THEN
        RETURN v_id;
    END IF;
    -- Refused, or a tenant that is not active: why.
    IF v_ok IS NULL THEN
        v_parts := string_to_array(v_token, '.');
        IF cardinality(v_parts) IS DISTINCT FROM 7 OR v_parts[1] <> 'pt2'
           OR length(v_parts[4]) NOT BETWEEN 1 AND 16 OR v_parts[4] !~ '^[0-9]+$'
           OR length(v_parts[5]) NOT BETWEEN 1 AND 16 OR v_parts[5] !~ '^[0-9]+$'
           OR length(v_parts[6]) NOT BETWEEN 16 AND 64 OR v_parts[6] !~ '^[0-9a-f]+$'
           OR length(v_parts[7]) <> 64 OR v_parts[7] !~ '^[0-9a-f]+$' THEN
            RAISE EXCEPTION 'entry token refused: not a pgtenancy token'
                USING ERRCODE = 'PT025',
                      HINT = 'Sign tokens with pgtenancy.sign_tenant_token (format pt2).';
        END IF;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'entry token refused: unknown key %', quote_literal(v_parts[2])
                USING ERRCODE = 'PT025';
        END IF;
        RAISE EXCEPTION 'entry token refused: bad signature'
            USING ERRCODE = 'PT025';
    END IF;
    IF NOT v_ok THEN
        v_parts := string_to_array(v_token, '.');
        v_now := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
        IF v_parts[4]::bigint > v_parts[5]::bigint THEN
            RAISE EXCEPTION 'entry token refused: issued at % after its expiry at %',
                to_timestamp(v_parts[4]::bigint / 1000.0), to_timestamp(v_parts[5]::bigint / 1000.0)
                USING ERRCODE = 'PT025';
        END IF;
        IF v_parts[4]::bigint > v_now + 60000 THEN
            RAISE EXCEPTION 'entry token refused: issued at %, more than 60 s ahead of the database''s clock',
                to_timestamp(v_parts[4]::bigint / 1000.0)
                USING ERRCODE = 'PT025',
                      HINT = 'Synchronize the clocks of the signing host and the database (NTP).';
        END IF;
        IF v_parts[4]::bigint < floor(extract(epoch FROM v_assigned) * 1000)::bigint THEN
            RAISE EXCEPTION 'entry token refused: issued at %, before tenant % got its slug (at %)',
                to_timestamp(v_parts[4]::bigint / 1000.0), quote_literal(v_parts[3]), v_assigned
                USING ERRCODE = 'PT034',
                      DETAIL = 'The token was signed for the slug''s previous holder (a tenant since '
                               'renamed or destroyed) or for this tenant under its previous slug.',
                      HINT = 'Sign a new token for the tenant.';
        END IF;
        IF verify_entry_token.at_entry THEN
            RAISE EXCEPTION 'entry token refused: expired at %',
                to_timestamp(v_parts[5]::bigint / 1000.0)
                USING ERRCODE = 'PT026';
        END IF;
        RAISE EXCEPTION 'entry token of this transaction expired at %: its tenant''s rows are out of reach',
            to_timestamp(v_parts[5]::bigint / 1000.0)
            USING ERRCODE = 'PT028',
                  HINT = 'Enter the tenant again with a fresh token.';
    END IF;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'tenant % not found', quote_literal(split_part(v_token, '.', 3))
            USING ERRCODE = 'PT003';
    END IF;
    -- A suspended or deleted tenant: enter_tenant says why at entry; later
    -- statements see no tenant.
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.verify_entry_token(text, boolean) IS
    'Id of the tenant entry token token (pt2.<key>.<slug>.<issued ms>.<expiry ms>.<nonce>.<mac>) '
    'is for, when its HMAC-SHA256 signature verifies under an entry key, it has not expired '
    '(against clock_timestamp()), it was issued no later than its expiry and at most 60 s '
    'ahead of this server''s clock, and not before the tenant got its slug '
    '(tenancy.tenants.slug_assigned_at: a token for a renamed or destroyed previous holder of the '
    'slug enters nothing). Raises PT025 (malformed, unknown key, bad signature, issued after its '
    'expiry or in the future), PT034 (issued before the tenant got its slug), PT026 (expired, '
    'at_entry), PT028 (expired, later statements: at_entry false), PT003 (no such tenant); with '
    'at_entry false NULL for a tenant that is not active. Reads the keys and the registry as the '
    'kit''s owner. Granted to application roles.';

REVOKE ALL ON FUNCTION tenancy.verify_entry_token(text, boolean) FROM PUBLIC;

-- Entry with a token. SECURITY INVOKER and no SET clause, like enter_tenant
-- (a SET clause would undo the transaction-local settings on return).
CREATE OR REPLACE FUNCTION tenancy.enter_tenant_token(token text, slug text DEFAULT NULL)
    RETURNS uuid
    LANGUAGE plpgsql
    VOLATILE
AS $$
DECLARE
    -- The parameters by position, not as p_token: the
    -- accelerator (011_accelerator.sql) keeps this body under another name too.
    p_token ALIAS FOR $1;
    p_slug  ALIAS FOR $2;
    v_id   pg_catalog.uuid := tenancy.verify_entry_token(p_token, true);
    v_slug pg_catalog.text := pg_catalog.split_part(p_token, '.', 3);
BEGIN
    -- REPEATABLE READ and SERIALIZABLE: the snapshot's registry and keys can
    -- be older than the token (a slug renamed or destroyed and given to
    -- another tenant since resolves to its previous holder, whose rows the
    -- new holder's token would open). Only the C accelerator reads the
    -- committed state; without it such transactions are refused.
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'
       AND tenancy.strict_without_c() THEN
        RAISE EXCEPTION 'strict entry in a % transaction needs the C accelerator',
            pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
            USING ERRCODE = '0A000',
                  HINT = 'Use READ COMMITTED, or install the accelerator (make install-extension; tenancy.set_accelerator(true)).';
    END IF;
    IF p_slug IS NOT NULL AND p_slug OPERATOR(pg_catalog.<>) v_slug THEN
        RAISE EXCEPTION 'entry token is for tenant %, not %', pg_catalog.quote_literal(v_slug),
            pg_catalog.quote_literal(p_slug)
            USING ERRCODE = 'PT027';
    END IF;
    -- The token first: after enter_tenant has changed search_path, a
    -- statement with a cached plan would be planned again (an error in
    -- enter_tenant aborts the transaction, setting and all).
    PERFORM pg_catalog.set_config('app.tenant_token', p_token, true);
    PERFORM tenancy.enter_tenant(v_slug);
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION tenancy.enter_tenant_token(text, text) IS
    'Put the current transaction into the tenant of entry token token (pgtenancy.sign_tenant_token) '
    'after verifying it: enter_tenant(its slug), and the token in the transaction-local setting '
    'app.tenant_token, which every later statement re-verifies when strict entry is on. slug, '
    'when given, must be the token''s tenant. Returns the tenant id. Raises PT025 (forged, '
    'malformed, unknown key, issued after its expiry or in the future), PT026 (expired), PT027 '
    '(slug is another tenant), PT034 (issued before the tenant got its slug) and enter_tenant''s '
    'errors (PT003, PT004, PT005, PT007, PT019, PT020), before anything is set.';

-- Whether the C accelerator checks a strict transaction's token against the
-- committed state (REPEATABLE READ and SERIALIZABLE, whose snapshot can be
-- older than the token): true while active_tenant_id() is its SQL call of C.
CREATE OR REPLACE FUNCTION tenancy.strict_checked_in_c()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                    WHERE p.oid = 'tenancy.active_tenant_id()'::regprocedure AND l.lanname = 'sql')
$$;

COMMENT ON FUNCTION tenancy.strict_checked_in_c() IS
    'True while the C accelerator runs active_tenant_id() (its SQL call of the C function), which '
    'checks a REPEATABLE READ or SERIALIZABLE transaction''s entry token against the committed '
    'state; without it strict entry refuses such transactions (0A000). Internal.';

-- Token entry's test of the same: strict entry on and its checks not in C,
-- read off active_tenant_id() itself (its strict body in PL/pgSQL), which
-- every caller may read (enter_tenant_token runs as its caller, who may not
-- read the mode's table).
CREATE OR REPLACE FUNCTION tenancy.strict_without_c()
    RETURNS boolean
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
                    WHERE p.oid = 'tenancy.active_tenant_id()'::regprocedure
                      AND l.lanname = 'plpgsql' AND strpos(p.prosrc, '-- strict entry') > 0)
$$;

COMMENT ON FUNCTION tenancy.strict_without_c() IS
    'True when strict entry is on and the C accelerator does not run its checks '
    '(strict_checked_in_c): enter_tenant_token then refuses REPEATABLE READ and SERIALIZABLE '
    'transactions (0A000). Internal.';

-- The body of active_tenant_id() while strict entry is on. Kept as text:
-- set_strict_entry puts it in place of the plain body (same signature and
-- attributes, same OID, so every policy calling the function follows).
CREATE OR REPLACE FUNCTION tenancy.strict_active_tenant_body()
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
AS $$
    SELECT $body$
-- strict entry (tenancy.set_strict_entry): only a verified tenant. Every
-- name qualified: this runs with the caller's search_path (tests/sql/
-- test_unpinned_names.py).
DECLARE
    v_token pg_catalog.text := pg_catalog.current_setting('app.tenant_token', true);
    v_id    pg_catalog.uuid := tenancy.current_tenant_id();
    v_ok    pg_catalog.uuid;
BEGIN
    IF v_token IS NULL OR v_token OPERATOR(pg_catalog.=) '' THEN
        -- The kit's owner (migrations, admin, delete_shared_rows) is trusted
        -- by its login role, which an application role cannot change.
        IF v_id IS NULL OR pg_catalog.pg_has_role(session_user,
               (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n
                 WHERE n.nspname OPERATOR(pg_catalog.=) 'tenancy'), 'MEMBER') THEN
            RETURN v_id;
        END IF;
        RAISE EXCEPTION 'strict entry: this transaction is in a tenant without an entry token'
            USING ERRCODE = 'PT025',
                  HINT = 'Enter with a token: tenant_session(engine, token=...) or tenancy.enter_tenant_token(token).';
    END IF;
    -- REPEATABLE READ and SERIALIZABLE: the snapshot's registry and keys can
    -- be older than the token (a slug renamed or destroyed and given to
    -- another tenant since resolves to its previous holder, whose rows the
    -- new holder's token would open). Only the C accelerator reads the
    -- committed state; without it such transactions are refused.
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed'
       AND NOT tenancy.strict_checked_in_c() THEN
        RAISE EXCEPTION 'strict entry in a % transaction needs the C accelerator',
            pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
            USING ERRCODE = '0A000',
                  HINT = 'Use READ COMMITTED, or install the accelerator (make install-extension; tenancy.set_accelerator(true)).';
    END IF;
    v_ok := tenancy.verify_entry_token(v_token, false);
    IF v_ok IS NULL THEN
        RETURN NULL;   -- the tenant is no longer active
    END IF;
    IF v_id IS NULL OR v_id OPERATOR(pg_catalog.<>) v_ok THEN
        RAISE EXCEPTION 'strict entry: app.tenant_id is not the tenant of this transaction''s entry token'
            USING ERRCODE = 'PT027';
    END IF;
    RETURN v_ok;
END
$body$
$$;

COMMENT ON FUNCTION tenancy.strict_active_tenant_body() IS
    'The PL/pgSQL body tenancy.active_tenant_id() gets while strict entry is on: the tenant of the '
    'verified entry token (PT025 without one, PT027 when app.tenant_id names another, PT028 once it '
    'expired); sessions of the kit''s owner keep app.tenant_id. Internal.';

REVOKE ALL ON FUNCTION tenancy.strict_active_tenant_body() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.strict_owner_session()
    RETURNS boolean
    LANGUAGE plpgsql
    STABLE
    PARALLEL SAFE
AS $$
BEGIN
    -- PL/pgSQL, not SQL: a SQL function with a sub-select is planned on
    -- every call; this plan is cached.
    RETURN pg_catalog.pg_has_role(session_user,
               (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n
                 WHERE n.nspname OPERATOR(pg_catalog.=) 'tenancy'), 'MEMBER');
END
$$;

COMMENT ON FUNCTION tenancy.strict_owner_session() IS
    'True when the session''s login role (session_user, which an application role cannot change) '
    'is a member of the kit''s owner: migrations, admin and the kit''s own functions pass the '
    'strict guard of tenant schemas.';

-- Tables of tenant schemas: what the strict policy asks. SQL without a
-- sub-select, so the planner inlines it into the policy's InitPlan: one
-- PL/pgSQL call (active_tenant_id) per statement, the owner test (a
-- catalog lookup) only when that is not the schema's tenant.
CREATE OR REPLACE FUNCTION tenancy.strict_schema_guard(tenant uuid)
    RETURNS boolean
    LANGUAGE sql
    STABLE
    PARALLEL SAFE
AS $$
    SELECT coalesce(tenancy.active_tenant_id() OPERATOR(pg_catalog.=) strict_schema_guard.tenant, false)
           OR tenancy.strict_owner_session()
$$;

COMMENT ON FUNCTION tenancy.strict_schema_guard(uuid) IS
    'Policy check of tables of tenant schemas in strict mode: true for sessions of the kit''s owner '
    '(login role a member of it, strict_owner_session), otherwise only when the transaction''s '
    'verified tenant (active_tenant_id) is tenant. Inlined into the policy; evaluated once per '
    'statement (InitPlan).';

-- Guard one tenant schema: a RESTRICTIVE policy (and its permissive
-- companion) with ENABLE and FORCE ROW LEVEL SECURITY on every table,
-- security_invoker on every view, and no application-role access to what
-- row-level security cannot guard (materialized views, foreign tables,
-- sequence values).
CREATE OR REPLACE FUNCTION tenancy.strict_guard_schema(p_schema text)
    RETURNS integer
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid;
    v_check  text;
    v_count  integer := 0;
    r        record;
    v_role   name;
BEGIN
    SELECT t.id INTO v_tenant FROM tenancy.tenants AS t WHERE t.schema_name = p_schema;
    IF NOT FOUND OR to_regnamespace(quote_ident(p_schema)) IS NULL THEN
        RETURN 0;
    END IF;
    v_check := format('(SELECT tenancy.strict_schema_guard(%L::uuid))', v_tenant);
    FOR r IN
        SELECT c.oid::regclass AS tbl, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               coalesce((SELECT o.option_value::boolean FROM pg_options_to_table(c.reloptions) AS o
                          WHERE o.option_name = 'security_invoker'), false) AS invoker,
               (SELECT pg_get_expr(p.polqual, p.polrelid) FROM pg_policy AS p
                 WHERE p.polrelid = c.oid AND p.polname = 'tenancy_strict_schema') AS qual,
               EXISTS (SELECT 1 FROM pg_policy AS p
                        WHERE p.polrelid = c.oid AND p.polname = 'tenancy_strict_rows') AS has_rows
          FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_schema))
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
         ORDER BY c.oid
    LOOP
        IF r.relkind IN ('r', 'p') THEN
            IF r.qual IS NULL THEN
                EXECUTE format('CREATE POLICY tenancy_strict_schema ON %s AS RESTRICTIVE FOR ALL '
                               'USING (%s) WITH CHECK (%s)', r.tbl, v_check, v_check);
                v_count := v_count + 1;
            ELSIF strpos(r.qual, v_tenant::text) = 0 THEN
                -- Copied from another tenant's table (clone): this tenant's id.
                EXECUTE format('ALTER POLICY tenancy_strict_schema ON %s USING (%s) WITH CHECK (%s)',
                               r.tbl, v_check, v_check);
                v_count := v_count + 1;
            END IF;
            IF NOT r.has_rows THEN
                EXECUTE format('CREATE POLICY tenancy_strict_rows ON %s AS PERMISSIVE FOR ALL '
                               'USING (true) WITH CHECK (true)', r.tbl);
            END IF;
            IF NOT r.relrowsecurity THEN
                EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', r.tbl);
            END IF;
            IF NOT r.relforcerowsecurity THEN
                EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.tbl);
            END IF;
        ELSIF r.relkind = 'v' THEN
            -- Only where needed: ALTER VIEW locks the view (ACCESS EXCLUSIVE),
            -- and a strict re-guard of every tenant (grant_app_role) would
            -- lock every view of every tenant schema.
            IF NOT r.invoker THEN
                EXECUTE format('ALTER VIEW %s SET (security_invoker = true)', r.tbl);
            END IF;
        ELSE
            FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                            JOIN pg_roles AS o ON o.rolname = a.role_name LOOP
                IF r.relkind = 'S' THEN
                    -- nextval for column defaults stays; reading and setting values goes.
                    EXECUTE format('REVOKE SELECT, UPDATE ON SEQUENCE %s FROM %I', r.tbl, v_role);
                ELSE
                    EXECUTE format('REVOKE ALL ON TABLE %s FROM %I', r.tbl, v_role);
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    -- A SECURITY DEFINER function runs as its owner: owned by a superuser it
    -- skips every policy. Migrations refuse them; one made by hand is out
    -- of the application roles' reach.
    FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc AS p
              WHERE p.pronamespace = to_regnamespace(quote_ident(p_schema)) AND p.prosecdef LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', r.fn);
        FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                        JOIN pg_roles AS o ON o.rolname = a.role_name LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', r.fn, v_role);
        END LOOP;
    END LOOP;
    RETURN v_count;
END
$$;

COMMENT ON FUNCTION tenancy.strict_guard_schema(text) IS
    'Strict mode for tenant schema p_schema: every table gets the RESTRICTIVE policy '
    'tenancy_strict_schema (rows only for the verified tenant owning the schema, or the kit''s '
    'owner), its permissive companion tenancy_strict_rows, ENABLE and FORCE ROW LEVEL SECURITY; '
    'views get security_invoker; application roles lose access to materialized views and foreign '
    'tables, SELECT and UPDATE (not USAGE) on sequences, and EXECUTE on SECURITY DEFINER functions '
    '(revoked from PUBLIC too). Returns how many policies it created '
    'or corrected. Idempotent. Internal.';

REVOKE ALL ON FUNCTION tenancy.strict_guard_schema(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.strict_unguard_schema(p_schema text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS tbl FROM pg_class AS c
         WHERE c.relnamespace = to_regnamespace(quote_ident(p_schema))
           AND EXISTS (SELECT 1 FROM pg_policy AS p
                        WHERE p.polrelid = c.oid AND p.polname = 'tenancy_strict_schema')
    LOOP
        EXECUTE format('DROP POLICY tenancy_strict_schema ON %s', r.tbl);
        EXECUTE format('DROP POLICY IF EXISTS tenancy_strict_rows ON %s', r.tbl);
        -- Row-level security stays on where policies of the application remain.
        IF NOT EXISTS (SELECT 1 FROM pg_policy AS p WHERE p.polrelid = r.tbl) THEN
            EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', r.tbl);
            EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', r.tbl);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM tenancy.tenants AS t WHERE t.schema_name = p_schema) THEN
        PERFORM tenancy.grant_schema_to_app_roles(p_schema);
    END IF;
END
$$;

COMMENT ON FUNCTION tenancy.strict_unguard_schema(text) IS
    'Undo strict_guard_schema on tenant schema p_schema: drop its policies (row-level security off '
    'where no other policy remains) and grant the schema to the application roles again '
    '(grant_schema_to_app_roles). Views keep security_invoker. Internal.';

REVOKE ALL ON FUNCTION tenancy.strict_unguard_schema(text) FROM PUBLIC;

-- Replace the body of function p_fn with p_body, or restore its plain
-- definition (p_body NULL). The plain definition is saved first.
CREATE OR REPLACE FUNCTION tenancy.strict_swap_body(p_fn regprocedure, p_body text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_src   text;
    v_def   text;
    v_plain text;
BEGIN
    SELECT p.prosrc, pg_get_functiondef(p.oid) INTO v_src, v_def FROM pg_proc AS p WHERE p.oid = p_fn;
    SELECT f.definition INTO v_plain FROM tenancy.strict_plain_functions AS f WHERE f.function = p_fn;
    IF p_body IS NULL THEN
        IF v_plain IS NOT NULL THEN
            EXECUTE v_plain;
            DELETE FROM tenancy.strict_plain_functions AS f WHERE f.function = p_fn;
        END IF;
        RETURN;
    END IF;
    IF v_src = p_body THEN
        RETURN;
    END IF;
    -- Not the strict body: the plain one (perhaps new, after an upgrade).
    INSERT INTO tenancy.strict_plain_functions (function, definition) VALUES (p_fn, v_def)
    ON CONFLICT (function) DO UPDATE SET definition = EXCLUDED.definition;
    IF strpos(v_def, v_src) = 0 THEN
        RAISE EXCEPTION 'cannot specialize %: its definition does not hold its body', p_fn
            USING ERRCODE = 'XX000';
    END IF;
    EXECUTE replace(v_def, v_src, p_body);
END
$$;

COMMENT ON FUNCTION tenancy.strict_swap_body(regprocedure, text) IS
    'Give function p_fn the body p_body (its signature, attributes, OID and comment kept), saving '
    'its plain definition in tenancy.strict_plain_functions; with p_body NULL restore that plain '
    'definition. Internal to set_strict_entry.';

REVOKE ALL ON FUNCTION tenancy.strict_swap_body(regprocedure, text) FROM PUBLIC;

-- Put strict mode in place (p_on) or take it away, from the recorded state.
-- Run by set_strict_entry, at the end of install and of upgrades (which
-- recreate the specialized functions with their plain bodies).
CREATE OR REPLACE FUNCTION tenancy.apply_strict_entry()
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_on     boolean := tenancy.strict_entry_enabled();
    v_schema text;
    v_info   text;
BEGIN
    -- The accelerator (011) makes active_tenant_id() an SQL call of C: give
    -- it its PL/pgSQL back before its body is swapped or restored, and let
    -- the accelerator take it again after (the plain body only).
    PERFORM tenancy.accelerator_swap('tenancy.active_tenant_id()'::regprocedure, NULL, '');
    IF v_on THEN
        PERFORM tenancy.strict_swap_body('tenancy.active_tenant_id()'::regprocedure,
                                         tenancy.strict_active_tenant_body());
        -- tenant_info() shows the verified tenant, not app.tenant_id.
        SELECT p.prosrc INTO v_info FROM pg_proc AS p WHERE p.oid = 'tenancy.tenant_info()'::regprocedure;
        IF strpos(v_info, '-- strict entry') = 0 THEN
            PERFORM tenancy.strict_swap_body('tenancy.tenant_info()'::regprocedure,
                E'\n-- strict entry (tenancy.set_strict_entry): the verified tenant.'
                || replace(v_info, 'tenancy.current_tenant_id()', 'tenancy.active_tenant_id()'));
        END IF;
        FOR v_schema IN SELECT t.schema_name FROM tenancy.tenants AS t
                         WHERE t.schema_name IS NOT NULL ORDER BY t.schema_name LOOP
            PERFORM tenancy.strict_guard_schema(v_schema);
        END LOOP;
    ELSE
        PERFORM tenancy.strict_swap_body(f.function, NULL) FROM tenancy.strict_plain_functions AS f;
        FOR v_schema IN SELECT t.schema_name FROM tenancy.tenants AS t
                         WHERE t.schema_name IS NOT NULL ORDER BY t.schema_name LOOP
            PERFORM tenancy.strict_unguard_schema(v_schema);
        END LOOP;
    END IF;
    PERFORM tenancy.apply_accelerator();
    RETURN v_on;
END
$$;

COMMENT ON FUNCTION tenancy.apply_strict_entry() IS
    'Bring the database in line with tenancy.strict_entry: on, specialize active_tenant_id() and '
    'tenant_info() to the verified tenant and guard every tenant schema (strict_guard_schema); '
    'off, restore their plain definitions and unguard the schemas. Returns whether strict entry is '
    'on. Run by set_strict_entry, install and upgrades. Owner only.';

REVOKE ALL ON FUNCTION tenancy.apply_strict_entry() FROM PUBLIC;

CREATE OR REPLACE FUNCTION tenancy.set_strict_entry(enabled boolean)
    RETURNS boolean
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_was boolean := tenancy.strict_entry_enabled();
BEGIN
    IF set_strict_entry.enabled IS NULL THEN
        RAISE EXCEPTION 'set_strict_entry needs true or false, not NULL'
            USING ERRCODE = '22004';
    END IF;
    IF set_strict_entry.enabled THEN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
            RAISE EXCEPTION 'strict entry is not available with Citus'
                USING ERRCODE = '0A000',
                      DETAIL = 'Citus refuses sub-selects in policies of distributed tables, and the '
                               'workers could not read the entry keys.';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM tenancy.entry_keys) THEN
            RAISE EXCEPTION 'strict entry needs an entry key first: no tenant could be entered'
                USING ERRCODE = '22023',
                      HINT = 'SELECT tenancy.add_entry_key(''k1'', <32 random bytes or more>)';
        END IF;
    END IF;
    -- One switch at a time: concurrent switches would save each other's bodies.
    LOCK TABLE tenancy.strict_entry IN EXCLUSIVE MODE;
    INSERT INTO tenancy.strict_entry (singleton, enabled) VALUES (true, set_strict_entry.enabled)
    ON CONFLICT (singleton) DO UPDATE SET enabled = EXCLUDED.enabled, changed_at = now();
    PERFORM tenancy.apply_strict_entry();
    RETURN v_was;
END
$$;

COMMENT ON FUNCTION tenancy.set_strict_entry(boolean) IS
    'Switch strict entry on (true) or off (false) for this database; returns the previous state. '
    'On: a transaction of a role outside the kit''s owner is in a tenant only with a verified entry '
    'token (enter_tenant_token); guarded shared tables and the tables of tenant schemas show only '
    'that tenant''s rows. Raises 22023 (no entry key yet), 0A000 (Citus), 22004 (NULL). Idempotent. '
    'Owner only.';

REVOKE ALL ON FUNCTION tenancy.set_strict_entry(boolean) FROM PUBLIC;

-- Migrations and provisioning end by updating the tenant's row: guard the
-- tables they created, in the same transaction.
CREATE OR REPLACE FUNCTION tenancy.tenants_sync_strict()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenancy.assert_registry_trigger(TG_RELID);
    IF NEW.schema_name IS NULL OR tenancy.restoring() OR NOT tenancy.strict_entry_enabled() THEN
        RETURN NULL;
    END IF;
    PERFORM tenancy.strict_guard_schema(NEW.schema_name);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.tenants_sync_strict() IS
    'Trigger: while strict entry is on, guard the tenant''s schema (strict_guard_schema) whenever '
    'its row is inserted or its status, schema or migration version changes, which is how '
    'provisioning and every migration end.';

REVOKE ALL ON FUNCTION tenancy.tenants_sync_strict() FROM PUBLIC;

-- Named to fire after tenants_sync_grants (triggers fire in name order),
-- which grants the schema again on a status change.
CREATE OR REPLACE TRIGGER tenants_sync_strict
    AFTER INSERT OR UPDATE OF status, schema_name, migration_version ON tenancy.tenants
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenants_sync_strict();

-- The doctor's strict findings, run by check_isolation (006) by name.
CREATE OR REPLACE FUNCTION tenancy.check_strict()
    RETURNS TABLE (severity text, check_name text, object text, message text, fix text)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_on boolean := tenancy.strict_entry_enabled();
BEGIN
    RETURN QUERY
        SELECT 'info'::text, 'strict_entry_off'::text, current_database()::text,
               format('strict entry is off and %s tenants are shared: SQL run by the application '
                      'role can set app.tenant_id to any tenant', count(*)),
               'SELECT tenancy.add_entry_key(''k1'', <key>); SELECT tenancy.set_strict_entry(true)'::text
          FROM tenancy.tenants AS t
         WHERE t.isolation = 'shared' AND t.status <> 'deleted' AND NOT v_on
        HAVING count(*) > 0;

    IF v_on THEN
        RETURN QUERY
            SELECT 'error'::text, 'strict_entry_not_applied'::text, 'tenancy.active_tenant_id()'::text,
                   'strict entry is recorded as on but active_tenant_id() has its plain body (a '
                   'restore or a manual CREATE OR REPLACE): policies trust app.tenant_id'::text,
                   'SELECT tenancy.set_strict_entry(true)'::text
             -- The body in effect: the C accelerator (011) falls back to a copy.
             WHERE tenancy.accelerated_body('tenancy.active_tenant_id()'::regprocedure)
                   IS DISTINCT FROM tenancy.strict_active_tenant_body();
    END IF;

    -- Tables of tenant schemas without the strict policy, views without
    -- security_invoker, unguardable relations an application role can read.
    RETURN QUERY
        SELECT CASE WHEN v_on THEN 'error' ELSE 'info' END::text, 'strict_guard_missing'::text,
               format('%I.%I', n.nspname, c.relname),
               format('%s %I.%I of tenant %s %s', CASE c.relkind WHEN 'v' THEN 'view'
                          WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                          WHEN 'S' THEN 'sequence' ELSE 'table' END,
                      n.nspname, c.relname, t.slug,
                      CASE WHEN c.relkind IN ('r', 'p')
                           THEN 'lacks the strict guard (policy tenancy_strict_schema, FORCE ROW LEVEL SECURITY)'
                           WHEN c.relkind = 'v' THEN 'is not security_invoker: it reads as its owner'
                           ELSE 'cannot carry row-level security and an application role can read it' END),
               'SELECT tenancy.set_strict_entry(true)'::text
          FROM tenancy.tenants AS t
          JOIN pg_namespace AS n ON n.nspname = t.schema_name
          JOIN pg_class AS c ON c.relnamespace = n.oid
         WHERE v_on AND (
               (c.relkind IN ('r', 'p') AND (NOT c.relforcerowsecurity OR NOT c.relrowsecurity
                   OR NOT EXISTS (SELECT 1 FROM pg_policy AS p WHERE p.polrelid = c.oid
                                     AND p.polname = 'tenancy_strict_schema' AND NOT p.polpermissive
                                     AND strpos(pg_get_expr(p.polqual, p.polrelid), t.id::text) > 0)))
            OR (c.relkind = 'v' AND NOT coalesce(c.reloptions @> ARRAY['security_invoker=true'], false))
            OR (c.relkind IN ('m', 'f') AND EXISTS (
                   SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r ON r.rolname = a.role_name
                    WHERE has_table_privilege(r.oid, c.oid, 'SELECT')))
            OR (c.relkind = 'S' AND EXISTS (
                   SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r ON r.rolname = a.role_name
                    WHERE has_sequence_privilege(r.oid, c.oid, 'SELECT')
                       OR has_sequence_privilege(r.oid, c.oid, 'UPDATE'))));

    -- SECURITY DEFINER functions an application role may call that run as
    -- a role bypassing row-level security (a superuser, BYPASSRLS, the
    -- owner of a guarded table): they read every tenant's rows.
    RETURN QUERY
        SELECT CASE WHEN v_on AND t.slug IS NOT NULL THEN 'error' ELSE 'warning' END::text,
               'definer_function_bypasses_rls'::text, p.oid::regprocedure::text,
               format('SECURITY DEFINER function %s runs as %s, which %s: an application role '
                      'calling it reads every tenant''s rows%s', p.oid::regprocedure,
                      quote_ident(o.rolname),
                      CASE WHEN o.rolsuper THEN 'is a superuser' WHEN o.rolbypassrls THEN 'has BYPASSRLS'
                           ELSE 'owns tables of tenants' END,
                      CASE WHEN t.slug IS NOT NULL THEN format(' (in the schema of tenant %s)', t.slug)
                           ELSE '' END),
               format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', p.oid::regprocedure)
          FROM pg_proc AS p
          JOIN pg_namespace AS n ON n.oid = p.pronamespace
          JOIN pg_roles AS o ON o.oid = p.proowner
          LEFT JOIN tenancy.tenants AS t ON t.schema_name = n.nspname
         WHERE p.prosecdef AND n.nspname NOT IN ('tenancy', 'pg_catalog', 'information_schema')
           AND (o.rolsuper OR o.rolbypassrls OR t.slug IS NOT NULL
                OR EXISTS (SELECT 1 FROM tenancy.guarded_tables AS g JOIN pg_class AS c ON c.oid = g.table_name
                            WHERE c.relowner = o.oid))
           AND EXISTS (SELECT 1 FROM tenancy.app_roles AS a JOIN pg_roles AS r ON r.rolname = a.role_name
                        WHERE has_function_privilege(r.oid, p.oid, 'EXECUTE'));

    -- Owners of guarded shared tables other than the kit's owner: an owner
    -- can switch row-level security off (tenant schemas' objects are
    -- checked by tenant_object_foreign_owner).
    RETURN QUERY
        SELECT 'error'::text, 'guarded_table_foreign_owner'::text, g.table_name::text,
               format('guarded table %s is owned by %s, not by the kit''s owner %s: its owner can '
                      'switch row-level security off', g.table_name,
                      quote_ident(pg_get_userbyid(c.relowner)), quote_ident(pg_get_userbyid(k.nspowner))),
               format('ALTER TABLE %s OWNER TO %I', g.table_name, pg_get_userbyid(k.nspowner))
          FROM tenancy.guarded_tables AS g
          JOIN pg_class AS c ON c.oid = g.table_name
         CROSS JOIN (SELECT nspowner FROM pg_namespace WHERE nspname = 'tenancy') AS k
         WHERE c.relowner <> k.nspowner;
END
$$;

COMMENT ON FUNCTION tenancy.check_strict() IS
    'Strict-entry findings of the doctor: strict entry off while shared tenants exist (info); '
    'strict recorded on but not in effect (error); tables of tenant schemas without the strict '
    'guard, views without security_invoker, materialized views, foreign tables and sequence values '
    'an application role can read (error in strict mode); SECURITY DEFINER functions an application '
    'role may call that run as a role bypassing row-level security (error in a tenant schema in '
    'strict mode, warning otherwise); guarded shared tables owned by a role '
    'other than the kit''s owner (error). Called by check_isolation(); granted to application '
    'roles (they run the doctor).';

REVOKE ALL ON FUNCTION tenancy.check_strict() FROM PUBLIC;

-- Application roles call the verifier (in every policy check) and the
-- doctor's strict findings: granted as grant_app_role records each role.
CREATE OR REPLACE FUNCTION tenancy.app_roles_grant_strict()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_RELID <> 'tenancy.app_roles'::regclass THEN
        RAISE EXCEPTION 'tenancy.app_roles_grant_strict runs on tenancy.app_roles only, not on %',
            TG_RELID::regclass
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = NEW.role_name) THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy.verify_entry_token(text, boolean), '
                       'tenancy.check_strict() TO %I', NEW.role_name);
    END IF;
    -- At commit, after grant_app_role granted the tenant schemas: take back
    -- what strict mode keeps from application roles.
    IF tenancy.strict_entry_enabled() THEN
        PERFORM tenancy.strict_guard_schema(t.schema_name)
           FROM tenancy.tenants AS t WHERE t.schema_name IS NOT NULL ORDER BY t.schema_name;
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION tenancy.app_roles_grant_strict() IS
    'Deferred trigger on tenancy.app_roles (grant_app_role, for a new role or one granted '
    'again), at commit: grant the application role EXECUTE on verify_entry_token (policies call '
    'it in strict mode) and check_strict (the doctor); in strict mode guard every tenant schema '
    'again (strict_guard_schema), taking back what grant_app_role granted on materialized '
    'views, sequences and definer functions.';

REVOKE ALL ON FUNCTION tenancy.app_roles_grant_strict() FROM PUBLIC;

-- A constraint trigger (deferrable) has no CREATE OR REPLACE.
DROP TRIGGER IF EXISTS app_roles_grant_strict ON tenancy.app_roles;
CREATE CONSTRAINT TRIGGER app_roles_grant_strict
    AFTER INSERT OR UPDATE ON tenancy.app_roles
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION tenancy.app_roles_grant_strict();

-- Application roles granted before this file was installed.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT a.role_name FROM tenancy.app_roles AS a
                    JOIN pg_catalog.pg_roles AS r ON r.rolname = a.role_name LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION tenancy.verify_entry_token(text, boolean), '
                                  'tenancy.check_strict() TO %I', v_role);
    END LOOP;
END
$$;

-- The quiet form of token entry, what the kit's connections send (prepared,
-- the token a bind parameter) for a tenant whose search_path they learnt
-- from an earlier token entry: CALL tenancy.enter_token($1, $2, $3) after
-- BEGIN. No output parameter, so no row comes back: enter_tenant_token
-- otherwise, then PT023 when the search_path the tenant got is not the one
-- given (NULL: not checked), as tenancy.enter_known checks it.
CREATE OR REPLACE FUNCTION tenancy.define_enter_token(p_c boolean)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_c THEN
        -- The accelerator's C procedure (needs a superuser and the library).
        CREATE OR REPLACE PROCEDURE tenancy.enter_token(token text, slug text, search_path text)
            LANGUAGE c
            AS '$libdir/pgtenancy_accel', 'pgtenancy_enter_token';
        RETURN;
    END IF;
    CREATE OR REPLACE PROCEDURE tenancy.enter_token(token text, slug text, search_path text)
        LANGUAGE plpgsql
    AS $$
DECLARE
    v_id pg_catalog.uuid;
    v_ok pg_catalog.bool;
BEGIN
    -- One statement, planned before search_path changes (as enter_known's).
    SELECT tenancy.enter_tenant_token($1, $2),
           tenancy.check_known_path(pg_catalog.current_setting('app.tenant'),
               pg_catalog.current_setting('search_path'), $3,
               'Its schema changed: enter with tenancy.enter_tenant_token(token) to learn its search_path.')
      INTO v_id, v_ok;
END
$$;
END
$fn$;

COMMENT ON FUNCTION tenancy.define_enter_token(boolean) IS
    'Create (or replace) the procedure tenancy.enter_token: its PL/pgSQL (p_c false) or the C '
    'accelerator''s procedure pgtenancy_enter_token (p_c true: a superuser, the library '
    'installed; raises 42501, 58P01 or 42883 otherwise). Grants and comment kept. Internal.';

REVOKE ALL ON FUNCTION tenancy.define_enter_token(boolean) FROM PUBLIC;

-- Install and upgrades leave the C procedure in place (apply_accelerator,
-- below, decides whether it stays).
SELECT tenancy.define_enter_token(false)
 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc AS p
                     JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
                    WHERE p.pronamespace = 'tenancy'::pg_catalog.regnamespace
                      AND p.proname = 'enter_token' AND l.lanname = 'c');

COMMENT ON PROCEDURE tenancy.enter_token(text, text, text) IS
    'CALL tenancy.enter_token(token, slug, search_path) after BEGIN: enter_tenant_token(token, '
    'slug) without output, for a client that knows the tenant''s search_path from an earlier '
    'token entry (no row sent back). The refusals of enter_tenant_token, and PT023 when the '
    'tenant''s search_path is not search_path (NULL: not checked).';

INSERT INTO tenancy.entry_procedures (procedure, define) VALUES
    ('tenancy.enter_token(text, text, text)', 'tenancy.define_enter_token(boolean)')
ON CONFLICT (procedure) DO UPDATE SET define = EXCLUDED.define;

-- The C accelerator (011) takes over token entry too (not with Citus: it
-- enters through enter_tenant's PL/pgSQL there).
INSERT INTO tenancy.accelerated_functions (function, impl, strict_impl, args, with_citus) VALUES
    ('tenancy.enter_tenant_token(text, text)', 'enter_tenant_token', 'enter_tenant_token', '$1, $2', false)
ON CONFLICT (function) DO UPDATE
   SET impl = EXCLUDED.impl, strict_impl = EXCLUDED.strict_impl, args = EXCLUDED.args,
       with_citus = EXCLUDED.with_citus;

SELECT tenancy.apply_accelerator();

-- Install and upgrades recreate active_tenant_id() and tenant_info() with
-- their plain bodies: put strict mode back where it was on.
SELECT tenancy.apply_strict_entry() WHERE tenancy.strict_entry_enabled();
