"""Tenant placement survives migrations: a migration that alters a distributed
tenant makes its schema local and distributes it again, and Citus places it
by the new colocation id; the fleet runner and Tenancy.migrate_tenant move it
back to the node recorded before, the doctor reports it until then."""

from __future__ import annotations

import itertools

import psycopg

from citus.conftest import CitusCluster
from pgtenancy import Tenancy, install
from pgtenancy.doctor import check_isolation
from pgtenancy.fleet import migrate_fleet

_names = itertools.count()


def _database(cluster: CitusCluster) -> str:
    dsn = cluster.create_database(f"pgtenancy_citus_place{next(_names)}")
    install(dsn)
    return dsn


def _tenant_on_other_worker(cluster: CitusCluster, dsn: str, slug: str) -> int:
    """Create ``slug`` with 5 rows and move it to the worker Citus did not
    pick; return that worker's port."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tenancy.add_migration('0001',"
            " 'CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)')"
        )
        conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
        conn.execute(
            f"INSERT INTO tenant_{slug}.item SELECT g, 'x' FROM generate_series(1, 5) AS g"
        )
        row = conn.execute("SELECT tenancy.tenant_node(%s)", (slug,)).fetchone()
    assert row is not None and row[0] is not None
    target = next(p for p in cluster.worker_ports if not row[0].endswith(f":{p}"))
    assert Tenancy(dsn).move_tenant(slug, "127.0.0.1", target) == f"127.0.0.1:{target}"
    return target


def _node(dsn: str, slug: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT tenancy.tenant_node(%s)", (slug,)).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


def _check_tenant(dsn: str, slug: str, columns: list[str]) -> None:
    """The tenant's 5 rows are there, its tables distributed, its columns the
    migrations' ones, and no placement left to restore."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM tenant_{slug}.item").fetchone() == (5,)
        got = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (f"tenant_{slug}.item",),
            )
        ]
        assert got == columns
        assert conn.execute(
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = %s::regclass",
            (f"tenant_{slug}.item",),
        ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM tenancy.tenant_placements").fetchone() == (0,)


def _doctor(dsn: str) -> list[tuple[str, str, str]]:
    """The placement findings of the doctor, as ``pgtenancy doctor`` reads them."""
    return [
        (f.check, f.object, f.fix)
        for f in check_isolation(dsn)
        if f.check == "citus_tenant_placement" and f.severity == "warning"
    ]


def test_fleet_run_keeps_the_tenant_on_its_worker(citus_cluster: CitusCluster) -> None:
    dsn = _database(citus_cluster)
    target = _tenant_on_other_worker(citus_cluster, dsn, "pl_fleet")
    moved_back = 0
    columns = ["id", "owner"]
    # Each altering migration distributes the schema again with a new
    # colocation id; over two of them Citus picks the other worker at least
    # once (colocation id modulo 2 workers), so the runner moves it back.
    for version, column in (("0002", "note"), ("0003", "extra")):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT tenancy.add_migration(%s, %s)",
                (version, f"ALTER TABLE item ADD COLUMN {column} text DEFAULT 'd'"),
            )
        report = migrate_fleet(dsn, tenants=["pl_fleet"])
        assert report.ok and [o.to_version for o in report.migrated] == [version]
        assert report.placements.failed == {}
        if report.placements.moved_back:
            assert report.placements.moved_back == {"pl_fleet": f"127.0.0.1:{target}"}
            moved_back += 1
        columns.append(column)
        assert _node(dsn, "pl_fleet") == f"127.0.0.1:{target}"
        _check_tenant(dsn, "pl_fleet", columns)
        assert _doctor(dsn) == []
    assert moved_back >= 1


def test_tenancy_migrate_tenant_keeps_the_tenant_on_its_worker(
    citus_cluster: CitusCluster,
) -> None:
    dsn = _database(citus_cluster)
    target = _tenant_on_other_worker(citus_cluster, dsn, "pl_api")
    tenancy = Tenancy(dsn)
    columns = ["id", "owner"]
    for version, column in (("0002", "note"), ("0003", "extra")):
        tenancy.add_migration(version, f"ALTER TABLE item ADD COLUMN {column} text")
        assert tenancy.migrate_tenant("pl_api").migration_version == version
        columns.append(column)
        assert _node(dsn, "pl_api") == f"127.0.0.1:{target}"
        _check_tenant(dsn, "pl_api", columns)


def test_plain_sql_migration_is_reported_then_repaired(citus_cluster: CitusCluster) -> None:
    dsn = _database(citus_cluster)
    target = _tenant_on_other_worker(citus_cluster, dsn, "pl_sql")
    columns = ["id", "owner"]
    away = None
    # Plain SQL leaves the move to the next fleet run; migrate until Citus
    # has placed the tenant elsewhere (at most two tries with two workers).
    for version, column in (("0002", "note"), ("0003", "extra"), ("0004", "more")):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT tenancy.add_migration(%s, %s)",
                (version, f"ALTER TABLE item ADD COLUMN {column} text"),
            )
            conn.execute("SELECT tenancy.migrate_tenant('pl_sql')")
        columns.append(column)
        away = _node(dsn, "pl_sql")
        if away != f"127.0.0.1:{target}":
            break
    assert away is not None and away != f"127.0.0.1:{target}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The record keeps the node from before the first migration.
        assert conn.execute(
            "SELECT node_name, node_port FROM tenancy.tenant_placements"
        ).fetchall() == [("127.0.0.1", target)]
    assert _doctor(dsn) == [
        ("citus_tenant_placement", "pl_sql", f"pgtenancy move pl_sql 127.0.0.1 {target}")
    ]
    # The tenant is usable where it is meanwhile.
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM tenant_pl_sql.item").fetchone() == (5,)
    # The next fleet run has nothing to migrate and still moves it back.
    report = migrate_fleet(dsn)
    assert report.ok and report.migrated == []
    assert report.placements.moved_back == {"pl_sql": f"127.0.0.1:{target}"}
    assert _node(dsn, "pl_sql") == f"127.0.0.1:{target}"
    _check_tenant(dsn, "pl_sql", columns)
    assert _doctor(dsn) == []


def test_operator_move_clears_the_record(citus_cluster: CitusCluster) -> None:
    """An operator's move after a plain SQL migration sets where the tenant
    belongs: the record goes, and the next fleet run moves nothing."""
    dsn = _database(citus_cluster)
    target = _tenant_on_other_worker(citus_cluster, dsn, "pl_op")
    node = f"127.0.0.1:{target}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for version in ("0002", "0003", "0004"):
            conn.execute(
                "SELECT tenancy.add_migration(%s, %s)",
                (version, f"ALTER TABLE item ADD COLUMN c{version} text"),
            )
            conn.execute("SELECT tenancy.migrate_tenant('pl_op')")
            node = _node(dsn, "pl_op") or ""
            if node != f"127.0.0.1:{target}":
                break
        assert node != f"127.0.0.1:{target}"
        assert conn.execute("SELECT count(*) FROM tenancy.tenant_placements").fetchone() == (1,)
        port = int(node.rsplit(":", 1)[1])
        # Already there: move_tenant moves nothing and still clears the record.
        assert conn.execute(
            "SELECT tenancy.move_tenant('pl_op', '127.0.0.1', %s)", (port,)
        ).fetchone() == (node,)
        assert conn.execute("SELECT count(*) FROM tenancy.tenant_placements").fetchone() == (0,)
    assert _doctor(dsn) == []
    report = migrate_fleet(dsn)
    assert report.placements.moved_back == {}
    assert _node(dsn, "pl_op") == node


def test_migration_of_an_undistributed_tenant_records_nothing(
    citus_cluster: CitusCluster,
) -> None:
    """A tenant whose schema is local (the doctor's citus_schema_not_distributed)
    has no node to keep."""
    dsn = _database(citus_cluster)
    slug = "pl_none"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_migration('0001', 'CREATE TABLE item (id int)')")
        conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
        conn.execute(f"SELECT citus_schema_undistribute('tenant_{slug}')")
        conn.execute("SELECT tenancy.add_migration('0002', 'ALTER TABLE item ADD COLUMN n text')")
        conn.execute("SELECT tenancy.migrate_tenant(%s)", (slug,))
        assert conn.execute("SELECT count(*) FROM tenancy.tenant_placements").fetchone() == (0,)


def test_provisioning_in_steps_records_no_placement(citus_cluster: CitusCluster) -> None:
    """A history with commit boundaries provisions one migration per
    transaction, the schema distributed after each: nobody chose the new
    tenant's node yet, so nothing is recorded (nor moved back later)."""
    dsn = _database(citus_cluster)
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)")
    tenancy.add_migration("0002", "ALTER TABLE item ADD COLUMN a text")
    tenancy.add_migration("0003", "ALTER TABLE item ADD COLUMN c text")
    tenancy.add_migration(
        "0004", "CREATE INDEX CONCURRENTLY item_owner ON item (owner)", outside_transaction=True
    )
    tenancy.add_migration("0005", "ALTER TABLE item ADD COLUMN b text DEFAULT 'b'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('pl_prov')")
        conn.execute("INSERT INTO tenant_pl_prov.item (id, owner) VALUES (1, 'x')")
        # One migration per call while provisioning; Citus re-places the
        # schema by each new colocation id, none of it is recorded.
        for version in ("0002", "0003"):
            row = conn.execute(
                "SELECT status, migration_version FROM tenancy.migrate_tenant('pl_prov')"
            ).fetchone()
            assert row == ("provisioning", version)
            assert conn.execute("SELECT count(*) FROM tenancy.tenant_placements").fetchone() == (0,)
    tenant = tenancy.create_tenant("pl_prov")  # resumes it through the fleet runner
    assert (tenant.status, tenant.migration_version) == ("active", "0005")
    assert _node(dsn, "pl_prov") is not None
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT id, b FROM tenant_pl_prov.item").fetchall() == [(1, "b")]
        assert conn.execute("SELECT count(*) FROM tenancy.tenant_placements").fetchone() == (0,)
