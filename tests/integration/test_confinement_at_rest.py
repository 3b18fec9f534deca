"""Issue 9, at rest: code a migration plants in its own tenant's objects never
runs with the kit owner's rights later, outside any migration.

Each tenant's objects belong between migrations to a role of its own
(tenancy.tenant_role: NOLOGIN, its own schema only); a migration's deferred
constraint triggers fire inside the migration, as the migrator; kit
operations that write a tenant's rows (clone, import, the pytest plugin's
reset) write them as the tenant's role.

The planted payload, ``grab(what)``, tries what only the owner may: suspend
every tenant, write a public canary, empty another tenant's canary, make the
application role a superuser, and RESET ROLE back to the session's user.
It logs who ran it and whether each attempt succeeded; it is armed only
while the test's session sets ``trap.armed`` (so the test's own setup writes
trip nothing). Every test checks that the trap fired, as whom, that every
attempt failed and that nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgtenancy import Tenancy
from pgtenancy.errors import UnsafeMigration

SQL = Callable[..., list[tuple[Any, ...]]]

_GRAB = """
CREATE TABLE trap_log (who text, what text, attempt text, ok boolean);
CREATE FUNCTION grab(what text) RETURNS boolean
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $g$
DECLARE
    v_attempt text;
    v_ok      boolean;
BEGIN
    -- 'on': always; 'rest': outside migrations only.
    IF coalesce(current_setting('trap.armed', true), '') NOT IN ('on', 'rest')
       OR (current_setting('trap.armed', true) = 'rest' AND current_user = '{migrator}') THEN
        RETURN true;
    END IF;
    FOREACH v_attempt IN ARRAY ARRAY[
        'UPDATE tenancy.tenants SET status = ''suspended''',
        'INSERT INTO public.canary VALUES (99, ''pwned'')',
        'DELETE FROM tenant_globex.canary',
        'ALTER ROLE {app} SUPERUSER',
        'RESET ROLE',
        'SET ROLE NONE']
    LOOP
        v_ok := true;
        BEGIN
            EXECUTE v_attempt;
        EXCEPTION WHEN OTHERS THEN
            v_ok := false;
        END;
        RAISE NOTICE 'trap|%|%|%|%', current_user, what, v_attempt, v_ok;
        IF current_setting('trap.armed', true) = 'rest' THEN
            -- A table of its own that no archive checksum covers.
            CREATE TABLE IF NOT EXISTS trap_rest_log (LIKE trap_log);
            INSERT INTO trap_rest_log VALUES (current_user, what, v_attempt, v_ok);
        ELSE
            INSERT INTO trap_log VALUES (current_user, what, v_attempt, v_ok);
        END IF;
    END LOOP;
    RETURN true;
END
$g$;
CREATE FUNCTION grab_int(i int) RETURNS int
    LANGUAGE plpgsql IMMUTABLE SET search_path FROM CURRENT AS $g$
BEGIN
    PERFORM grab('index expression');
    RETURN i;
END
$g$;
"""

_PLANTS = """
-- (a) a foreign-key action into a tenant table: refused (see below).
-- (b) ANALYZE evaluates expression indexes as the table's owner.
CREATE TABLE indexed (i int);
CREATE INDEX indexed_grab ON indexed (grab_int(i));
-- (c) a deferred constraint trigger fires at COMMIT as whoever commits.
CREATE TABLE late (i int);
CREATE FUNCTION late_fire() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $t$
BEGIN
    PERFORM grab('deferred');
    RETURN NULL;
END
$t$;
CREATE CONSTRAINT TRIGGER late_fire AFTER INSERT ON late
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION late_fire();
-- Only where the test asks for it (an import replays the migrations).
INSERT INTO late SELECT 1 WHERE current_setting('trap.seed', true) = 'on';
-- Kit operations: a check constraint (clone, import), a trigger (the pytest
-- plugin's reset), a materialized view (REFRESH).
CREATE TABLE checked (v int CHECK (grab('check') AND v > 0));
CREATE FUNCTION emptied() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $t$
BEGIN
    PERFORM grab('delete trigger');
    RETURN OLD;
END
$t$;
CREATE TABLE kept (v int);
CREATE TRIGGER kept_emptied BEFORE DELETE ON kept FOR EACH ROW EXECUTE FUNCTION emptied();
CREATE MATERIALIZED VIEW mv AS SELECT grab('refresh') AS x;
"""


def _state(dsn: str, app: str) -> dict[str, Any]:
    """What the payload would change if it ran with the owner's rights."""
    queries = {
        "tenants": "SELECT slug, status, migration_version FROM tenancy.tenants ORDER BY slug",
        "events": "SELECT id, name, tenant_slug FROM tenancy.events ORDER BY id",
        "public_canary": "SELECT * FROM public.canary ORDER BY id",
        "globex_canary": "SELECT * FROM tenant_globex.canary ORDER BY id",
        "app_role": f"SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = '{app}'",
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: conn.execute(q).fetchall() for name, q in queries.items()}


@pytest.fixture
def planted(dsn: str, tenancy: Tenancy, sql: SQL, app_role: str) -> Iterator[str]:
    """Tenants acme (with the plants) and globex, a public canary and plans."""
    sql("CREATE TABLE public.canary (id int PRIMARY KEY, v text)")
    sql("INSERT INTO public.canary VALUES (1, 'one'), (2, 'two')")
    sql("CREATE TABLE public.plans (id int PRIMARY KEY)")
    sql("INSERT INTO public.plans VALUES (1), (2)")
    tenancy.add_migration("0001", "CREATE TABLE canary (id int PRIMARY KEY, v text)")
    migrator = sql("SELECT tenancy.migrator_role()")[0][0]
    tenancy.add_migration(
        "0002", _GRAB.replace("{app}", app_role).replace("{migrator}", migrator) + _PLANTS
    )
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug)
        sql(f"INSERT INTO tenant_{slug}.canary VALUES (1, '{slug}')")
    sql("DELETE FROM tenant_acme.trap_log")
    yield app_role


def _log(sql: SQL, schema: str = "tenant_acme") -> list[tuple[Any, ...]]:
    return sql(f"SELECT who, what, attempt, ok FROM {schema}.trap_log ORDER BY what, attempt")


def _assert_confined(log: list[tuple[Any, ...]], what: str, who: str, owner: str) -> None:
    fired = [row for row in log if row[1] == what]
    assert fired, f"the {what} trap was expected to fire (the test must be able to fail)"
    assert {row[0] for row in fired} == {who}, fired
    assert who != owner
    assert not [row for row in fired if row[3]], fired


def _armed(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET trap.armed = 'on'")
    return conn


def test_tenant_objects_belong_to_an_unprivileged_role_of_their_own(planted: str, sql: SQL) -> None:
    role = sql("SELECT tenancy.tenant_role('tenant_acme')")[0][0]
    other = sql("SELECT tenancy.tenant_role('tenant_globex')")[0][0]
    assert role != other
    owners = sql(
        """SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class AS c
            WHERE c.relnamespace = 'tenant_acme'::regnamespace"""
    )
    assert owners == [(role,)]
    assert sql(
        """SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls
             FROM pg_roles WHERE rolname = %s""",
        (role,),
    ) == [(False, False, False, False, False)]
    assert sql("SELECT has_schema_privilege(%s, 'tenant_globex', 'USAGE')", (role,)) == [(False,)]
    assert sql("SELECT has_table_privilege(%s, 'tenancy.tenants', 'SELECT')", (role,)) == [(False,)]
    # The kit's owner is a member of it; it is a member of nothing but the group.
    assert sql(
        "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = %s::regrole", (role,)
    ) == [(sql("SELECT tenancy.tenant_group_role()")[0][0],)]


#: A foreign key to a shared table whose action runs the tenant's triggers
#: when the owner deletes or updates the shared row: the AFTER ones fired with
#: the owner's rights (attack run of 2026-12-04; BEFORE ones as the tenant's
#: role, inside the owner's session).
_CASCADES = {
    "on_delete_cascade": "ON DELETE CASCADE",
    "on_delete_set_null": "ON DELETE SET NULL",
    "on_delete_set_default": "ON DELETE SET DEFAULT",
    "on_update_cascade": "ON UPDATE CASCADE",
}


@pytest.mark.parametrize("action", sorted(_CASCADES))
def test_a_foreign_key_action_from_a_shared_table_is_refused(
    action: str, dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    sql("CREATE TABLE public.plans (id int PRIMARY KEY)")
    sql("INSERT INTO public.plans VALUES (1), (2)")
    tenancy.add_migration("0001", "CREATE TABLE canary (id int PRIMARY KEY)")
    tenancy.create_tenant("acme")
    body = (
        f"CREATE TABLE sub (plan_id int REFERENCES public.plans {_CASCADES[action]});"
        " CREATE FUNCTION gone() RETURNS trigger LANGUAGE plpgsql AS"
        " $t$ BEGIN CREATE TABLE public.pwned (who text); RETURN NULL; END $t$;"
        " CREATE TRIGGER gone AFTER DELETE OR UPDATE ON sub FOR EACH ROW EXECUTE FUNCTION gone()"
    )
    tables = "SELECT count(*) FROM pg_class WHERE relnamespace = 'tenant_acme'::regnamespace"
    before = sql(tables)
    with pytest.raises(UnsafeMigration) as info:
        tenancy.add_migration("0002", body)
    assert "acts on the tenant's rows" in str(info.value)
    assert sql("SELECT version FROM tenancy.migrations ORDER BY 1") == [("0001",)]
    # Past the registration check (a migration file run on the real path).
    tenancy.add_migration(
        "0002",
        "DO $s$ BEGIN IF current_schema() <> 'tenancy_scratch' THEN EXECUTE $q$"
        + body
        + "$q$; END IF; END $s$",
    )
    with pytest.raises(UnsafeMigration) as info:
        tenancy.migrate_tenant("acme")
    assert "acts on the tenant's rows" in str(info.value)
    with pytest.raises(UnsafeMigration) as info:
        tenancy.create_tenant("globex")
    assert "acts on the tenant's rows" in str(info.value)
    assert sql(tables) == before
    assert sql("SELECT count(*) FROM pg_class WHERE relname IN ('sub', 'pwned')") == [(0,)]
    sql("DELETE FROM public.plans")
    assert sql("SELECT count(*) FROM pg_class WHERE relname = 'pwned'") == [(0,)]


def test_the_doctor_reports_a_foreign_key_action_made_before(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    sql("CREATE TABLE public.plans (id int PRIMARY KEY)")
    tenancy.add_migration("0001", "CREATE TABLE sub (plan_id int REFERENCES public.plans)")
    tenancy.create_tenant("acme")

    def found() -> list[tuple[Any, ...]]:
        return [
            r for r in sql("SELECT * FROM tenancy.check_registry()") if r[1] == "tenant_fk_action"
        ]

    assert found() == []
    # By hand, as the owner (or from an older release): no migration refuses it.
    sql("ALTER TABLE tenant_acme.sub DROP CONSTRAINT sub_plan_id_fkey")
    sql(
        "ALTER TABLE tenant_acme.sub ADD CONSTRAINT sub_plan_id_fkey"
        " FOREIGN KEY (plan_id) REFERENCES public.plans ON DELETE CASCADE"
    )
    assert [(r[0], r[2]) for r in found()] == [("error", "tenant_acme.sub")]
    assert "public.plans" in found()[0][3]
    sql("ALTER TABLE tenant_acme.sub DROP CONSTRAINT sub_plan_id_fkey")
    sql(
        "ALTER TABLE tenant_acme.sub ADD CONSTRAINT sub_plan_id_fkey"
        " FOREIGN KEY (plan_id) REFERENCES public.plans ON DELETE RESTRICT"
    )
    assert found() == []


def test_a_foreign_key_to_a_shared_table_without_an_action_is_accepted(
    tenancy: Tenancy, sql: SQL
) -> None:
    sql("CREATE TABLE public.plans (id int PRIMARY KEY)")
    sql("INSERT INTO public.plans VALUES (1)")
    tenancy.add_migration(
        "0001",
        "CREATE TABLE sub (plan_id int REFERENCES public.plans ON DELETE RESTRICT,"
        " other int REFERENCES public.plans ON UPDATE NO ACTION);"
        " CREATE TABLE local (id int PRIMARY KEY);"
        " CREATE TABLE child (id int REFERENCES local ON DELETE CASCADE)",
    )
    tenancy.create_tenant("acme")
    sql("INSERT INTO tenant_acme.sub VALUES (1, 1)")
    # 23503 on PostgreSQL 15, 23001 (restrict_violation) on 18 for RESTRICT.
    with pytest.raises((psycopg.errors.ForeignKeyViolation, psycopg.errors.RestrictViolation)):
        sql("DELETE FROM public.plans")


def test_analyze_runs_expression_indexes_as_the_tenants_role(
    planted: str, dsn: str, sql: SQL
) -> None:
    owner = sql("SELECT current_user")[0][0]
    role = sql("SELECT tenancy.tenant_role('tenant_acme')")[0][0]
    sql("INSERT INTO tenant_acme.indexed SELECT generate_series(1, 3)")
    before = _state(dsn, planted)
    with _armed(dsn) as conn:
        conn.execute("ANALYZE tenant_acme.indexed")
    _assert_confined(_log(sql), "index expression", role, owner)
    assert _state(dsn, planted) == before


def test_a_deferred_constraint_trigger_fires_inside_the_migration(
    planted: str, dsn: str, sql: SQL
) -> None:
    owner = sql("SELECT current_user")[0][0]
    migrator = sql("SELECT tenancy.migrator_role()")[0][0]
    before = _state(dsn, planted)
    with _armed(dsn) as conn:
        conn.execute("SET trap.seed = 'on'")
        conn.execute("SELECT tenancy.create_tenant('newco')")
    _assert_confined(_log(sql, "tenant_newco"), "deferred", migrator, owner)
    after = _state(dsn, planted)
    assert [t for t in after["tenants"] if t[0] != "newco"] == before["tenants"]
    assert {k: v for k, v in after.items() if k not in ("tenants", "events")} == {
        k: v for k, v in before.items() if k not in ("tenants", "events")
    }


def test_refresh_of_a_materialized_view_runs_as_the_tenants_role(
    planted: str, dsn: str, sql: SQL
) -> None:
    owner = sql("SELECT current_user")[0][0]
    role = sql("SELECT tenancy.tenant_role('tenant_acme')")[0][0]
    before = _state(dsn, planted)
    with _armed(dsn) as conn:
        conn.execute("REFRESH MATERIALIZED VIEW tenant_acme.mv")
    _assert_confined(_log(sql), "refresh", role, owner)
    assert _state(dsn, planted) == before


def test_clone_writes_the_rows_as_the_clones_role(planted: str, dsn: str, sql: SQL) -> None:
    owner = sql("SELECT current_user")[0][0]
    sql("INSERT INTO tenant_acme.checked VALUES (1), (2)")
    before = _state(dsn, planted)
    with _armed(dsn) as conn:
        conn.execute("SELECT tenancy.clone_tenant('acme', 'acme_copy')")
    role = sql("SELECT tenancy.tenant_role('tenant_acme_copy')")[0][0]
    _assert_confined(_log(sql, "tenant_acme_copy"), "check", role, owner)
    assert sql("SELECT v FROM tenant_acme_copy.checked ORDER BY v") == [(1,), (2,)]
    # The clone's role may read the source for the copy only.
    assert sql("SELECT has_schema_privilege(%s, 'tenant_acme', 'USAGE')", (role,)) == [(False,)]
    after = _state(dsn, planted)
    assert [t for t in after["tenants"] if t[0] != "acme_copy"] == before["tenants"]
    assert after["public_canary"] == before["public_canary"]
    assert after["globex_canary"] == before["globex_canary"]
    assert after["app_role"] == before["app_role"]


def test_import_writes_the_rows_as_the_tenants_role(
    planted: str, dsn: str, sql: SQL, pg_admin_dsn: str, template_db: str, tmp_path: Path
) -> None:
    from pgtenancy.tenant_archive import export_tenant, import_tenant
    from pgtenancy.testing import fresh_database

    owner = sql("SELECT current_user")[0][0]
    sql("INSERT INTO tenant_acme.checked VALUES (3)")
    export_tenant(dsn, "acme", tmp_path / "acme.pgtenancy")
    with fresh_database(pg_admin_dsn, "pgtenancy_target", template=template_db) as target:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.canary (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO public.canary VALUES (1, 'one')")
            conn.execute("CREATE TABLE public.plans (id int PRIMARY KEY)")
            conn.execute("INSERT INTO public.plans VALUES (1), (2)")
            conn.execute("SELECT tenancy.grant_shared_to_migrator()")
            for version, body in sql("SELECT version, sql FROM tenancy.migrations ORDER BY 1"):
                conn.execute("SELECT tenancy.add_migration(%s, %s)", (version, body))
            conn.execute("SELECT tenancy.create_tenant('globex')")
            conn.execute("INSERT INTO tenant_globex.canary VALUES (1, 'globex')")
        before = _state(target, planted)
        import os

        os.environ["PGOPTIONS"] = "-c trap.armed=rest"
        try:
            import_tenant(target, tmp_path / "acme.pgtenancy")
        finally:
            del os.environ["PGOPTIONS"]
        with psycopg.connect(target, autocommit=True) as conn:
            role = conn.execute("SELECT tenancy.tenant_role('tenant_acme')").fetchall()[0][0]
            log = conn.execute(
                "SELECT who, what, attempt, ok FROM tenant_acme.trap_rest_log ORDER BY what, attempt"
            ).fetchall()
            assert conn.execute("SELECT v FROM tenant_acme.checked").fetchall() == [(3,)]
        _assert_confined(log, "check", role, owner)
        after = _state(target, planted)
        assert after["public_canary"] == before["public_canary"]
        assert after["globex_canary"] == before["globex_canary"]
        assert [t for t in after["tenants"] if t[0] != "acme"] == before["tenants"]
        assert after["app_role"] == before["app_role"]


def test_the_pytest_plugins_reset_runs_no_tenant_code_as_the_owner(
    planted: str, dsn: str, sql: SQL, tenancy: Tenancy
) -> None:
    """A superuser pool empties with ``session_replication_role = replica``:
    no trigger of the tenant's fires at all (a pool that is not a superuser
    runs its DELETEs through ``tenancy.run_as_rest_owner``; see
    test_pytest_plugin's owner tests)."""
    from pgtenancy.testing.plugin import TenantPool

    owner = sql("SELECT current_user")[0][0]
    pool = TenantPool(tenancy, dsn, size=1, prefix="pool")
    notices: list[tuple[Any, ...]] = []
    try:
        tenant = pool.acquire()
        schema = f"tenant_{tenant.slug}"
        sql(f"INSERT INTO {schema}.kept VALUES (1)")
        before = _state(dsn, planted)
        conn = pool._connection()
        conn.execute("SET trap.armed = 'on'")
        # The reset empties trap_log too: the payload's notices tell.
        conn.add_notice_handler(
            lambda d: (
                notices.append(tuple((d.message_primary or "").split("|")[1:]))
                if (d.message_primary or "").startswith("trap|")
                else None
            )
        )
        assert pool.release(tenant.slug)
        role = sql("SELECT tenancy.tenant_role(%s)", (schema,))[0][0]
        assert sql(f"SELECT count(*) FROM {schema}.kept") == [(0,)]
    finally:
        pool.close()
    log = [(who, what, attempt, ok == "true") for who, what, attempt, ok in notices]
    assert role != owner
    assert [row for row in log if row[0] == owner] == [], log
    assert [row for row in log if row[1] == "delete trigger"] == [], log
    after = _state(dsn, planted)
    assert after["public_canary"] == before["public_canary"]
    assert after["globex_canary"] == before["globex_canary"]
    assert after["app_role"] == before["app_role"]


def test_without_a_role_of_its_own_the_doctor_warns(tenancy: Tenancy, sql: SQL) -> None:
    """Installed by an owner who may not create roles (here: the group role
    out of the way), a tenant's objects stay the owner's, and the doctor says so."""
    group = sql("SELECT tenancy.tenant_group_role()")[0][0]
    owner = sql("SELECT current_user")[0][0]
    tenancy.add_migration("0001", "CREATE TABLE note (id int)")
    tenancy.create_tenant("roled")
    assert [r[1] for r in sql("SELECT * FROM tenancy.check_registry()")].count(
        "tenant_without_owner_role"
    ) == 0
    sql(f'ALTER ROLE "{group}" RENAME TO "{group}_off"')
    try:
        tenancy.create_tenant("bare")
    finally:
        sql(f'ALTER ROLE "{group}_off" RENAME TO "{group}"')
    assert sql(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'tenant_bare.note'::regclass"
    ) == [(owner,)]
    findings = [
        (r[0], r[2])
        for r in sql("SELECT * FROM tenancy.check_registry()")
        if r[1] == "tenant_without_owner_role"
    ]
    assert findings == [("warning", "bare")]
    # Its next migration gives it one.
    tenancy.add_migration("0002", "CREATE TABLE more (id int)")
    tenancy.migrate_tenant("bare")
    role = sql("SELECT tenancy.tenant_role('tenant_bare')")[0][0]
    assert sql(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'tenant_bare'::regnamespace"
    ) == [(role,)]
    assert [r[1] for r in sql("SELECT * FROM tenancy.check_registry()")].count(
        "tenant_without_owner_role"
    ) == 0


def test_clone_copies_every_row_of_a_table_under_row_security(tenancy: Tenancy, sql: SQL) -> None:
    """The clone's role is no owner of the source's tables, so their policies
    would hide rows from it: such a table goes through a copy the owner reads."""
    tenancy.add_migration(
        "0001",
        "CREATE TABLE sec (v int); ALTER TABLE sec ENABLE ROW LEVEL SECURITY;"
        " CREATE POLICY nobody ON sec USING (false); CREATE TABLE plain (v int)",
    )
    tenancy.create_tenant("acme")
    sql("INSERT INTO tenant_acme.sec VALUES (1), (2), (3)")
    sql("INSERT INTO tenant_acme.plain VALUES (4)")
    sql("SELECT tenancy.clone_tenant('acme', 'acme_copy')")
    assert sql("SELECT v FROM tenant_acme_copy.sec ORDER BY v") == [(1,), (2,), (3,)]
    assert sql("SELECT v FROM tenant_acme_copy.plain") == [(4,)]
    role = sql("SELECT tenancy.tenant_role('tenant_acme_copy')")[0][0]
    assert sql(
        "SELECT has_table_privilege(%s, 'tenant_acme.plain', 'SELECT'),"
        " has_schema_privilege(%s, 'tenant_acme', 'USAGE')",
        (role, role),
    ) == [(False, False)]


_EVERY_KIND = """
CREATE TABLE t (id int PRIMARY KEY, v text);
CREATE TABLE parted (id int) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE VIEW v AS SELECT id FROM t;
CREATE MATERIALIZED VIEW mv AS SELECT id FROM t;
CREATE SEQUENCE free_seq;
CREATE TABLE serial_t (id serial, g int GENERATED ALWAYS AS IDENTITY);
CREATE TYPE pair AS (a int, b int);
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TYPE mood AS ENUM ('ok', 'meh');
CREATE TYPE span AS RANGE (subtype = int);
CREATE FUNCTION pair_eq(pair, pair) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1.a = $2.a';
CREATE PROCEDURE noop() LANGUAGE sql AS 'SELECT 1';
CREATE OPERATOR === (LEFTARG = pair, RIGHTARG = pair, FUNCTION = pair_eq);
CREATE COLLATION ci (provider = libc, locale = 'C');
CREATE STATISTICS t_stats ON id, v FROM t;
CREATE TEXT SEARCH DICTIONARY stem_nostop (TEMPLATE = pg_catalog.snowball, language = 'english');
CREATE TEXT SEARCH CONFIGURATION english_nostop (COPY = pg_catalog.english);
CREATE CONVERSION latin_to_utf8 FOR 'LATIN1' TO 'UTF8' FROM pg_catalog.iso8859_1_to_utf8;
"""

#: Owner of every object of a schema, by kind (what reown_schema hands over,
#: and what follows: indexes, owned sequences, row and array types). A
#: composite type made by CREATE TYPE and a range's multirange stayed the
#: migrator's before they were handed over too.
_OWNERS = """
SELECT 'class ' || c.relkind::text, c.relname::text, pg_get_userbyid(c.relowner)
  FROM pg_class AS c WHERE c.relnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'proc', p.proname::text, pg_get_userbyid(p.proowner)
  FROM pg_proc AS p WHERE p.pronamespace = %(nsp)s::regnamespace
   -- not a range's constructors: PostgreSQL makes them the bootstrap
   -- superuser's (built-in C functions, internal parts of the type)
   AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'i')
UNION ALL SELECT 'type ' || t.typtype::text, t.typname::text, pg_get_userbyid(t.typowner)
  FROM pg_type AS t WHERE t.typnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'operator', o.oprname::text, pg_get_userbyid(o.oprowner)
  FROM pg_operator AS o WHERE o.oprnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'collation', o.collname::text, pg_get_userbyid(o.collowner)
  FROM pg_collation AS o WHERE o.collnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'statistics', o.stxname::text, pg_get_userbyid(o.stxowner)
  FROM pg_statistic_ext AS o WHERE o.stxnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'ts config', o.cfgname::text, pg_get_userbyid(o.cfgowner)
  FROM pg_ts_config AS o WHERE o.cfgnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'ts dict', o.dictname::text, pg_get_userbyid(o.dictowner)
  FROM pg_ts_dict AS o WHERE o.dictnamespace = %(nsp)s::regnamespace
UNION ALL SELECT 'conversion', o.conname::text, pg_get_userbyid(o.conowner)
  FROM pg_conversion AS o WHERE o.connamespace = %(nsp)s::regnamespace
ORDER BY 1, 2
"""


def test_every_kind_of_object_is_handed_to_the_tenants_role_and_back(
    tenancy: Tenancy, sql: SQL
) -> None:
    """Provisioning gives every object a migration made to the tenant's role;
    the next migration gets them as the migrator (it alters each kind) and
    gives them back."""
    tenancy.add_migration("0001_kinds", _EVERY_KIND)
    tenancy.create_tenant("acme")
    role = sql("SELECT tenancy.tenant_role('tenant_acme')")[0][0]
    owners = sql(_OWNERS, {"nsp": "tenant_acme"})
    kinds = {row[0] for row in owners}
    assert {
        "class r",
        "type c",
        "type m",
        "class p",
        "class v",
        "class m",
        "class S",
        "class i",
        "class c",
        "proc",
        "type d",
        "type e",
        "type r",
        "operator",
        "collation",
        "statistics",
        "ts config",
        "ts dict",
        "conversion",
    } <= kinds, kinds
    assert [row for row in owners if row[2] != role] == [], "\n".join(map(str, owners))
    # Only an owner may do these: the migrator must hold every kind.
    tenancy.add_migration(
        "0002_alter_kinds",
        """
        ALTER TABLE t ADD COLUMN w int;
        ALTER VIEW v RENAME TO v2;
        ALTER MATERIALIZED VIEW mv RENAME TO mv2;
        ALTER SEQUENCE free_seq RESTART 5;
        ALTER TYPE pair ADD ATTRIBUTE c int;
        ALTER DOMAIN positive ADD CONSTRAINT small CHECK (VALUE < 1000);
        ALTER TYPE mood ADD VALUE 'great';
        ALTER TYPE span RENAME TO span2;
        ALTER FUNCTION pair_eq(pair, pair) RENAME TO pair_same;
        ALTER PROCEDURE noop() RENAME TO noop2;
        ALTER OPERATOR === (pair, pair) SET (RESTRICT = eqsel);
        ALTER COLLATION ci RENAME TO ci2;
        ALTER STATISTICS t_stats SET STATISTICS 50;
        ALTER TEXT SEARCH DICTIONARY stem_nostop (StopWords = english);
        ALTER TEXT SEARCH CONFIGURATION english_nostop DROP MAPPING FOR email;
        ALTER CONVERSION latin_to_utf8 RENAME TO latin_to_utf8_2;
        """,
    )
    assert tenancy.migrate_tenant("acme").migration_version == "0002_alter_kinds"
    after = sql(_OWNERS, {"nsp": "tenant_acme"})
    assert len(after) == len(owners)
    assert [row for row in after if row[2] != role] == []
