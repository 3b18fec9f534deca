"""A throwaway Citus cluster: a coordinator and two workers on free ports.

The three clusters come from pgtenancy.testing.TemporaryCluster (the machine's
PostgreSQL binaries), restarted with ``shared_preload_libraries = 'citus'``.
The coordinator registers itself (citus_set_coordinator_host) and both workers
(citus_add_node); ``CREATE EXTENSION citus`` runs in the test database on every
node, then the kit is installed on the coordinator. Tests here are marked
``citus`` and run with ``make test-citus`` (``pytest -m citus tests/citus``);
a run that does not select the marker skips them, so ``make test`` stays quick.
Citus itself is installed by ``make citus`` (built from the vendored source).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgtenancy import install
from pgtenancy.testing import TemporaryCluster, find_bindir

DBNAME = "pgtenancy_citus"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "citus: needs a Citus cluster (make test-citus)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    selected = "citus" in (config.getoption("-m") or "")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.citus)
            if not selected:
                item.add_marker(
                    pytest.mark.skip(reason="Citus suite: run it with `make test-citus`")
                )


def citus_installed(bindir: Path) -> bool:
    """True when citus.so sits in the pkglibdir of the PostgreSQL in ``bindir``."""
    pg_config = bindir / "pg_config"
    cmd = str(pg_config) if pg_config.exists() else "pg_config"
    try:
        libdir = subprocess.run(
            [cmd, "--pkglibdir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return (Path(libdir) / "citus.so").exists()


class CitusCluster:
    """Coordinator and workers of a running test cluster.

    Attributes:
        coordinator: DSN of the test database on the coordinator (superuser).
        workers: DSNs of the test database on each worker (superuser).
        worker_ports: TCP ports of the workers (host 127.0.0.1).
    """

    def __init__(self, coordinator: str, workers: list[str]) -> None:
        self.coordinator = coordinator
        self.workers = workers
        self.worker_ports = [int(conninfo_to_dict(w)["port"] or 0) for w in workers]

    def on_workers(self, query: str) -> list[list[tuple[object, ...]]]:
        """Run ``query`` on each worker directly; rows per worker."""
        out = []
        for w in self.workers:
            with psycopg.connect(w, autocommit=True) as conn:
                out.append(list(conn.execute(query).fetchall()))  # type: ignore[arg-type]
        return out


def _with_db(dsn: str, dbname: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """Start coordinator + 2 workers with Citus, the kit installed on the coordinator."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    if not citus_installed(bindir):
        pytest.skip("Citus is not installed: run `make citus` (builds Citus 13.2.2)")
    nodes = [TemporaryCluster(bindir) for _ in range(3)]
    try:
        for node in nodes:
            node.start()
            node._options += (
                " -c shared_preload_libraries=citus -c max_prepared_transactions=100"
                " -c wal_level=logical -c max_worker_processes=32"
            )
            node.server_stop()
            node.server_start()
            with psycopg.connect(node.dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DBNAME}")  # type: ignore[arg-type]
        dsns = [_with_db(n.dsn, DBNAME) for n in nodes]
        for d in dsns:
            with psycopg.connect(d, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION citus")
        with psycopg.connect(dsns[0], autocommit=True) as conn:
            port = conninfo_to_dict(dsns[0])["port"]
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (int(port or 0),))
            for w in dsns[1:]:
                conn.execute(
                    "SELECT citus_add_node('127.0.0.1', %s)", (int(conninfo_to_dict(w)["port"] or 0),)
                )
        install(dsns[0])
        yield CitusCluster(dsns[0], dsns[1:])
    finally:
        if os.environ.get("PGTENANCY_KEEP_CITUS"):
            print("kept:", [n.base for n in nodes])
        else:
            for node in nodes:
                node.stop()
