"""Tenant placement: move a schema tenant to another worker under a running workload."""

from __future__ import annotations

import threading

import psycopg
import pytest

from citus.conftest import CitusCluster, make_app_role
from pgtenancy import tenant_connection


def test_move_tenant_under_load(citus_cluster: CitusCluster, citus_dsn: str) -> None:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tenancy.add_migration('0001',"
            " 'CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)')"
        )
        conn.execute("SELECT tenancy.create_tenant('mover')")
        before = conn.execute("SELECT tenancy.tenant_node('mover')").fetchone()
    assert before is not None and before[0] is not None
    ports = citus_cluster.worker_ports
    target = next(p for p in ports if not before[0].endswith(f":{p}"))
    app = make_app_role(citus_dsn, "citus_app_move")
    written: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        try:
            with psycopg.connect(app) as conn:
                while not stop.is_set():
                    n += 1
                    try:
                        with tenant_connection(conn, "mover") as tc:
                            tc.execute("INSERT INTO item VALUES (%s, 'mover')", (n,))
                        written.append(n)
                    except psycopg.errors.ObjectNotInPrerequisiteState:
                        pass  # writes blocked for the final switch-over: retried by the app
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=load)
    t.start()
    try:
        with psycopg.connect(citus_dsn, autocommit=True) as conn:
            after = conn.execute(
                "SELECT tenancy.move_tenant('mover', '127.0.0.1', %s)", (target,)
            ).fetchone()
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert after == (f"127.0.0.1:{target}",)
    assert len(written) > 0
    with psycopg.connect(app) as conn, tenant_connection(conn, "mover") as tc:
        ids = {r[0] for r in tc.execute("SELECT id FROM item").fetchall()}
    assert set(written) <= ids


def test_move_shared_tenant_refused(citus_dsn: str) -> None:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('mover_sh', isolation => 'shared')")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT tenancy.move_tenant('mover_sh', '127.0.0.1', 1)")
        assert info.value.sqlstate == "22023"
        assert conn.execute("SELECT tenancy.tenant_node('mover_sh')").fetchone() == (None,)


def test_cli_move_and_list(citus_cluster: CitusCluster, citus_dsn: str) -> None:
    import subprocess
    import sys

    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tenancy.add_migration('0001',"
            " 'CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)')"
        )
        conn.execute("SELECT tenancy.create_tenant('cli_mover')")
        node = conn.execute("SELECT tenancy.tenant_node('cli_mover')").fetchone()
    assert node is not None
    target = next(p for p in citus_cluster.worker_ports if not node[0].endswith(f":{p}"))
    cli = [sys.executable, "-m", "pgtenancy.cli"]
    out = subprocess.run(
        [*cli, "move", "--dsn", citus_dsn, "cli_mover", "127.0.0.1", str(target)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert f"moved cli_mover to 127.0.0.1:{target}" in out.stdout
    listed = subprocess.run(
        [*cli, "list", "--dsn", citus_dsn], capture_output=True, text=True, check=True
    ).stdout
    assert "node" in listed.splitlines()[0]
    assert any(
        line.startswith("cli_mover ") and line.endswith(f"127.0.0.1:{target}")
        for line in listed.splitlines()
    )


def test_tenancy_move_tenant_and_tenant_nodes(citus_cluster: CitusCluster, citus_dsn: str) -> None:
    """The Python API: Tenancy.move_tenant moves, tenant_nodes shows where."""
    from pgtenancy import Tenancy

    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tenancy.add_migration('0001',"
            " 'CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)')"
        )
        conn.execute("SELECT tenancy.create_tenant('api_mover')")
        conn.execute("INSERT INTO tenant_api_mover.item VALUES (1, 'x')")
    tenancy = Tenancy(citus_dsn)
    node = tenancy.tenant_nodes()["api_mover"]
    assert node is not None
    target = next(p for p in citus_cluster.worker_ports if not node.endswith(f":{p}"))
    assert tenancy.move_tenant("api_mover", "127.0.0.1", target) == f"127.0.0.1:{target}"
    assert tenancy.tenant_nodes()["api_mover"] == f"127.0.0.1:{target}"
    with psycopg.connect(citus_dsn) as conn:
        assert conn.execute("SELECT * FROM tenant_api_mover.item").fetchall() == [(1, "x")]
