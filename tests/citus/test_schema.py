"""Schema tenants on Citus: create_tenant distributes the schema, later
migrations' tables join its colocation group, dropping a tenant drops its shards."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from citus.conftest import CitusCluster, make_app_role
from pgtenancy import install, tenant_connection

MIGRATION_1 = "CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)"


def distribution(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """Whether schema is a distributed schema, and its tables' colocation ids."""
    dist = conn.execute(
        "SELECT colocationid FROM pg_dist_schema WHERE schemaid = %s::regnamespace", (schema,)
    ).fetchone()
    tables = conn.execute(
        "SELECT c.relname, p.colocationid FROM pg_class c"
        " LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid"
        " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' ORDER BY 1",
        (schema,),
    ).fetchall()
    return {"colocation": dist[0] if dist else None, "tables": dict(tables)}


@pytest.fixture(scope="module")
def fleet(citus_dsn: str) -> str:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_migration('0001', %s)", (MIGRATION_1,))
    return citus_dsn


@pytest.mark.parametrize("sharding", ["off", "on"])
def test_create_tenant_distributes_the_schema(fleet: str, sharding: str) -> None:
    slug = f"sch_{sharding}"
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute(f"SET citus.enable_schema_based_sharding = {sharding}")
        conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
        d = distribution(conn, f"tenant_{slug}")
    assert d["colocation"] is not None
    assert d["tables"] == {"item": d["colocation"]}


def test_migrations_tables_join_the_colocation_group(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('mig_a')")
        conn.execute(
            "SELECT tenancy.add_migration('0002', %s)",
            ("CREATE TABLE line (id int PRIMARY KEY, item_id int REFERENCES item (id))",),
        )
        conn.execute("SELECT tenancy.migrate_tenant('mig_a')")
        d = distribution(conn, "tenant_mig_a")
    assert d["colocation"] is not None
    assert d["tables"] == {"item": d["colocation"], "line": d["colocation"]}


def test_tenant_session_routes_and_isolates(fleet: str, citus_dsn: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        for slug in ("iso_a", "iso_b"):
            conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
    app = make_app_role(citus_dsn, "citus_app_schema")
    with psycopg.connect(app) as conn:
        for slug in ("iso_a", "iso_b"):
            with tenant_connection(conn, slug) as tc:
                tc.execute("INSERT INTO item VALUES (1, %s), (2, %s)", (slug, slug))
        for slug in ("iso_a", "iso_b"):
            with tenant_connection(conn, slug) as tc:
                assert tc.execute("SELECT DISTINCT owner FROM item").fetchall() == [(slug,)]


def test_drop_tenant_drops_its_shards(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('gone_s')")
        before = conn.execute(
            "SELECT count(*) FROM citus_shards WHERE table_name::text LIKE 'tenant_gone_s.%'"
        ).fetchone()
        conn.execute("SELECT tenancy.drop_tenant('gone_s', destroy_data => true)")
        after = conn.execute(
            "SELECT count(*) FROM citus_shards WHERE table_name::text LIKE 'tenant_gone_s.%'"
        ).fetchone()
        schemas = conn.execute(
            "SELECT result FROM run_command_on_workers("
            "$$SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_gone_s'$$)"
        ).fetchall()
    assert before is not None and before[0] >= 2
    assert after == (0,)
    assert {r[0] for r in schemas} == {"0"}


def test_multi_statement_migration_creating_tables(fleet: str) -> None:
    """Several statements in one migration, new tables only: all distributed."""
    body = (
        "CREATE TABLE tag (id int PRIMARY KEY, label text DEFAULT 'a;b');\n"
        "-- a comment; with a semicolon\n"
        "CREATE TABLE tag_item (tag_id int REFERENCES tag (id), item_id int);"
        " COMMENT ON TABLE tag IS $c$tags; many$c$"
    )
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('multi_a')")
        conn.execute("SELECT tenancy.add_migration('0003', %s)", (body,))
        conn.execute("SELECT tenancy.migrate_tenant('multi_a')")
        d = distribution(conn, "tenant_multi_a")
        version = conn.execute(
            "SELECT migration_version FROM tenancy.tenants WHERE slug = 'multi_a'"
        ).fetchone()
    assert version == ("0003",)
    assert d["colocation"] is not None
    assert {"item", "tag", "tag_item"} <= set(d["tables"])
    assert set(d["tables"].values()) == {d["colocation"]}


def _worker_columns(conn: psycopg.Connection[Any], schema: str, table: str) -> set[str]:
    """Column lists of ``schema.table``'s shard on the worker holding it."""
    rows = conn.execute(
        "SELECT result FROM run_command_on_placements(%s::regclass,"
        " $$SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute"
        " WHERE attrelid = '%%s'::regclass AND attnum > 0 AND NOT attisdropped$$)",
        (f"{schema}.{table}",),
    ).fetchall()
    return {r[0] for r in rows}


def test_migration_altering_a_distributed_table(fleet: str) -> None:
    """ALTER TABLE, CREATE INDEX and a new table in one migration on a tenant
    with rows: applied, rows kept, schema distributed again, nothing local."""
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('alter_a')")
        conn.execute("INSERT INTO tenant_alter_a.item VALUES (1, 'a'), (2, 'b')")
        conn.execute(
            "SELECT tenancy.add_migration('0004', %s)",
            (
                "ALTER TABLE item ADD COLUMN note text DEFAULT 'n';\n"
                "CREATE INDEX item_note ON item (note);\n"
                "CREATE TABLE item_log (id int PRIMARY KEY, item_id int REFERENCES item (id));",
            ),
        )
        conn.execute("SELECT tenancy.migrate_tenant('alter_a')")
        d = distribution(conn, "tenant_alter_a")
        rows = conn.execute(
            "SELECT id, owner, note FROM tenant_alter_a.item ORDER BY id"
        ).fetchall()
        shard_columns = _worker_columns(conn, "tenant_alter_a", "item")
        local = conn.execute(
            "SELECT sum(pg_relation_size(c.oid)) FROM pg_class c"
            " WHERE c.relnamespace = 'tenant_alter_a'::regnamespace AND c.relkind = 'r'"
        ).fetchone()
        owned = conn.execute(
            "SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'tenant_alter_a'::regnamespace"
            " AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = tenancy.migrator_role())"
        ).fetchone()
        version = conn.execute(
            "SELECT migration_version FROM tenancy.tenants WHERE slug = 'alter_a'"
        ).fetchone()
    assert version == ("0004",)
    assert rows == [(1, "a", "n"), (2, "b", "n")]
    assert shard_columns == {"id,owner,note"}
    assert d["colocation"] is not None
    assert {"item", "item_log"} <= set(d["tables"])
    assert set(d["tables"].values()) == {d["colocation"]}
    # The rows live on the worker only; the migrator owns nothing at rest.
    assert local == (0,)
    assert owned == (0,)


HOSTILE = [
    "ALTER TABLE item ADD COLUMN x int; DELETE FROM tenant_host_b.item",
    "ALTER TABLE item ADD COLUMN x int; ALTER TABLE tenant_host_b.item ADD COLUMN y int",
    "ALTER TABLE item ADD COLUMN x int; DROP TABLE tenant_host_b.item",
    "ALTER TABLE item ADD COLUMN x int; UPDATE tenancy.tenants SET status = 'deleted'",
]


@pytest.mark.parametrize("body", HOSTILE)
def test_hostile_migration_on_a_distributed_tenant(fleet: str, body: str) -> None:
    """A migration of a distributed tenant reaching into another tenant or the
    registry is refused (registration, and run on the tenant itself) and
    changes nothing: both tenants stay distributed where they were, rows kept."""
    with psycopg.connect(fleet, autocommit=True) as conn:
        for slug in ("host_a", "host_b"):
            exists = conn.execute("SELECT 1 FROM tenancy.tenants WHERE slug = %s", (slug,))
            if exists.fetchone() is None:
                conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
                conn.execute(f"INSERT INTO tenant_{slug}.item VALUES (1, %s)", (slug,))
        before = {s: distribution(conn, f"tenant_{s}") for s in ("host_a", "host_b")}
        state = "SELECT tenancy.tenant_node('host_a'), tenancy.tenant_node('host_b'),"
        state += " (SELECT array_agg(owner) FROM tenant_host_a.item),"
        state += " (SELECT array_agg(owner) FROM tenant_host_b.item),"
        state += " (SELECT array_agg(status ORDER BY slug) FROM tenancy.tenants),"
        state += " (SELECT count(*) FROM pg_attribute WHERE attname IN ('x', 'y') AND attrelid"
        state += " IN ('tenant_host_a.item'::regclass, 'tenant_host_b.item'::regclass))"
        state_before = conn.execute(state).fetchone()
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT tenancy.add_migration('0999', %s)", (body,))
        assert info.value.sqlstate == "PT017", info.value
        # Applied to the tenant itself (bypassing registration): refused too.
        with pytest.raises(psycopg.Error) as info, conn.transaction():
            conn.execute(
                "INSERT INTO tenancy.migrations (version, sql, checksum) VALUES ('0999', %s, 'x')",
                (body,),
            )
            conn.execute("SELECT tenancy.migrate_tenant('host_a')")
        assert info.value.sqlstate == "PT017", info.value
        assert {s: distribution(conn, f"tenant_{s}") for s in ("host_a", "host_b")} == before
        assert conn.execute(state).fetchone() == state_before
    assert state_before is not None and state_before[2:4] == (["host_a"], ["host_b"])


def test_migration_altering_a_distributed_table_as_non_superuser_owner(owner_dsn: str) -> None:
    """The same with a kit owner without superuser (no event-trigger fence)."""
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_migration('0001', %s)", (MIGRATION_1,))
        conn.execute("SELECT tenancy.create_tenant('own_alter')")
        conn.execute("INSERT INTO tenant_own_alter.item VALUES (1, 'a')")
        conn.execute(
            "SELECT tenancy.add_migration('0002', %s)",
            ("ALTER TABLE item ADD COLUMN note text; CREATE INDEX ON item (note)",),
        )
        conn.execute("SELECT tenancy.migrate_tenant('own_alter')")
        d = distribution(conn, "tenant_own_alter")
        rows = conn.execute("SELECT id, owner, note FROM tenant_own_alter.item").fetchall()
        with pytest.raises(psycopg.Error) as info:
            conn.execute(
                "SELECT tenancy.add_migration('0003', %s)",
                ("ALTER TABLE item ADD COLUMN x int; DELETE FROM tenancy.tenants",),
            )
        assert info.value.sqlstate == "PT017", info.value
    assert rows == [(1, "a", None)]
    assert d["colocation"] is not None and d["tables"] == {"item": d["colocation"]}


def test_fleet_runner_on_distributed_tenants(citus_cluster: CitusCluster) -> None:
    """migrate_fleet over distributed schema tenants: a migration altering
    their tables applies to each (rows kept, distributed again), a failing
    one is recorded and changes nothing, and a second run is a no-op that
    leaves every schema where it is."""
    from pgtenancy.fleet import migrate_fleet

    dsn = citus_cluster.create_database("pgtenancy_citus_fleet")
    install(dsn)
    slugs = ["flt_a", "flt_b", "flt_c"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_migration('0001', %s)", (MIGRATION_1,))
        for slug in slugs:
            conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
            conn.execute(f"INSERT INTO tenant_{slug}.item VALUES (1, %s)", (slug,))
        conn.execute(
            "SELECT tenancy.add_migration('0002', %s)",
            ("ALTER TABLE item ADD COLUMN note text;\nCREATE INDEX ON item (note);",),
        )
    # Two at a time: on Citus their undistribute/distribute steps take the
    # same metadata locks, so one can wait for the other's whole migration;
    # under a loaded CI machine that exceeded the default 5 s lock_timeout.
    report = migrate_fleet(dsn, jobs=2, lock_timeout="60s")
    assert not report.failed, [(o.slug, o.sqlstate, o.message) for o in report.failed]
    assert {o.slug for o in report.migrated} == set(slugs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for slug in slugs:
            d = distribution(conn, f"tenant_{slug}")
            assert d["colocation"] is not None and d["tables"] == {"item": d["colocation"]}
            assert conn.execute(f"SELECT id, owner, note FROM tenant_{slug}.item").fetchall() == [
                (1, slug, None)
            ]
        # A migration that fails on one tenant only (its data): recorded, nothing changed there.
        conn.execute("INSERT INTO tenant_flt_b.item VALUES (2, 'dup'), (3, 'dup')")
        conn.execute(
            "SELECT tenancy.add_migration('0003', 'CREATE UNIQUE INDEX item_owner ON item (owner)')"
        )
        nodes = {s: conn.execute("SELECT tenancy.tenant_node(%s)", (s,)).fetchone() for s in slugs}
    report = migrate_fleet(dsn)
    assert [o.slug for o in report.failed] == ["flt_b"]
    assert {o.slug for o in report.migrated} == {"flt_a", "flt_c"}
    assert report.failed[0].sqlstate == "PT006"
    with psycopg.connect(dsn, autocommit=True) as conn:
        b = distribution(conn, "tenant_flt_b")
        assert b["colocation"] is not None and b["tables"] == {"item": b["colocation"]}
        assert conn.execute("SELECT tenancy.tenant_node('flt_b')").fetchone() == nodes["flt_b"]
        assert conn.execute("SELECT count(*) FROM tenant_flt_b.item").fetchone() == (3,)
        conn.execute("DELETE FROM tenant_flt_b.item WHERE id = 3")
    report = migrate_fleet(dsn)
    assert [o.slug for o in report.migrated] == ["flt_b"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        nodes = {s: conn.execute("SELECT tenancy.tenant_node(%s)", (s,)).fetchone() for s in slugs}
    # Nothing left to apply: no tenant is touched (no schema made local and placed again).
    report = migrate_fleet(dsn)
    assert not report.migrated and not report.failed and report.current == len(slugs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for slug in slugs:
            assert conn.execute("SELECT tenancy.tenant_node(%s)", (slug,)).fetchone() == nodes[slug]


def test_pool_safety_of_schema_tenants_through_the_coordinator(fleet: str, citus_dsn: str) -> None:
    """4 threads over a pool of 2 switch among distributed schema tenants, some
    transactions raising: never another tenant's row, nothing left on the pool."""
    import random
    import threading

    from psycopg_pool import ConnectionPool

    slugs = [f"pool_{i}" for i in range(4)]
    with psycopg.connect(fleet, autocommit=True) as conn:
        for slug in slugs:
            conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
            conn.execute(
                f"INSERT INTO tenant_{slug}.item SELECT g, %s FROM generate_series(1, 10) g",
                (slug,),
            )
    app = make_app_role(citus_dsn, "citus_app_schema_pool")
    errors: list[BaseException] = []
    foreign = 0
    lock = threading.Lock()

    class Boom(Exception):
        pass

    with ConnectionPool(app, min_size=2, max_size=2, open=True) as pool:

        def body(seed: int) -> None:
            nonlocal foreign
            rnd = random.Random(seed)
            try:
                for _ in range(40):
                    slug = rnd.choice(slugs)
                    try:
                        with tenant_connection(pool, slug) as tc:
                            owners = tc.execute("SELECT owner FROM item").fetchall()
                            tc.execute(
                                "UPDATE item SET owner = owner WHERE id = %s", (rnd.randint(1, 10),)
                            )
                            if rnd.random() < 0.2:
                                raise Boom
                        with lock:
                            foreign += sum(1 for (o,) in owners if o != slug) + (len(owners) != 10)
                    except Boom:
                        pass
                    with pool.connection() as c:
                        left = c.execute(
                            "SELECT current_setting('app.tenant_id', true), current_setting('search_path')"
                        ).fetchone()
                        assert left is not None and (left[0] or "") == "", left
                        assert "tenant_" not in left[1], left
                        with pytest.raises(psycopg.errors.UndefinedTable):
                            c.execute("SELECT 1 FROM item")
                        c.rollback()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert foreign == 0
