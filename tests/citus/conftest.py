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
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgtenancy import install
from pgtenancy.testing import TemporaryCluster, find_bindir


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
    """A running coordinator + workers.

    Attributes:
        nodes: admin DSNs (database ``postgres``, superuser) of the
            coordinator then each worker.
        worker_ports: TCP ports of the workers (host 127.0.0.1).
    """

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.worker_ports = [_port(w) for w in nodes[1:]]

    def create_database(self, dbname: str, register: bool = True) -> str:
        """Create ``dbname`` on every node with Citus in it and, unless
        ``register`` is false, the coordinator and workers registered; return
        the coordinator's DSN (superuser)."""
        dsns = [_with_db(n, dbname) for n in self.nodes]
        for node in self.nodes:
            with psycopg.connect(node, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {dbname}")
        for d in dsns:
            with psycopg.connect(d, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION citus")
        if not register:
            return dsns[0]
        with psycopg.connect(dsns[0], autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (_port(dsns[0]),))
            for w in dsns[1:]:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (_port(w),))
        return dsns[0]

    def workers(self, dsn: str) -> list[str]:
        """DSNs of the database of coordinator DSN ``dsn`` on each worker."""
        db = str(conninfo_to_dict(dsn)["dbname"])
        return [_with_db(n, db) for n in self.nodes[1:]]


def _port(dsn: str) -> int:
    return int(conninfo_to_dict(dsn)["port"] or 0)


def _with_db(dsn: str, dbname: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """Start a coordinator and 2 workers with ``shared_preload_libraries = citus``."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    if not citus_installed(bindir):
        pytest.skip("Citus is not installed: run `make citus` (builds Citus 13.2.2)")
    nodes = [TemporaryCluster(bindir) for _ in range(3)]
    try:
        for node in nodes:
            node.start()
            # Durable commits: with synchronous_commit = off on the workers,
            # citus_schema_move (logical replication) lost acknowledged writes
            # made during the move in about 1 move of 7 here; with it on, none
            # in 18 (README, Citus: tenant placement).
            node._options = node._options.replace(
                "synchronous_commit=off", "synchronous_commit=on"
            ) + (
                " -c shared_preload_libraries=citus -c max_prepared_transactions=100"
                " -c wal_level=logical -c max_worker_processes=32"
            )
            node.server_stop()
            node.server_start()
        yield CitusCluster([n.dsn for n in nodes])
    finally:
        if os.environ.get("PGTENANCY_KEEP_CITUS"):
            print("kept:", [n.base for n in nodes])
        else:
            for node in nodes:
                node.stop()


@pytest.fixture(scope="session")
def citus_dsn(citus_cluster: CitusCluster) -> str:
    """Coordinator DSN of a Citus database with the kit installed by a superuser."""
    dsn = citus_cluster.create_database("pgtenancy_citus")
    install(dsn)
    return dsn


OWNER = "pgtenancy_citus_owner"


@pytest.fixture(scope="session")
def owner_dsn(citus_cluster: CitusCluster) -> str:
    """Coordinator DSN (as the owner) of a Citus database whose kit owner is
    no superuser (LOGIN CREATEROLE).

    Roles are created by a superuser in this database, so Citus creates them
    on every node and records them as distributed here: Citus propagates a
    role with all its attributes, which only a superuser may set on the
    workers, so neither the owner nor its migrator role may be left for the
    owner to propagate (the migrator role is made as the README says for
    owners without superuser: CREATE ROLE ...; GRANT ... TO owner).
    """
    dsn = citus_cluster.create_database("pgtenancy_citus_owned")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {OWNER} LOGIN CREATEROLE")
        row = conn.execute(
            "SELECT 'pgtenancy_migrator_' || left(md5(current_database()), 12)"
        ).fetchone()
        assert row is not None
        conn.execute(f"CREATE ROLE {row[0]} NOLOGIN NOINHERIT")
        conn.execute(f"GRANT {row[0]} TO {OWNER}")
    for node in [dsn, *citus_cluster.workers(dsn)]:
        with psycopg.connect(node, autocommit=True) as conn:
            conn.execute("SET citus.enable_ddl_propagation = off")
            conn.execute(f"GRANT CREATE ON DATABASE pgtenancy_citus_owned TO {OWNER}")
            conn.execute(f"GRANT CREATE ON SCHEMA public TO {OWNER}")
    owner = make_conninfo(dsn, user=OWNER)
    install(owner)
    return owner


def make_app_role(dsn: str, name: str) -> str:
    """Create login role ``name`` (no SUPERUSER/BYPASSRLS), grant it tenant use;
    return ``dsn`` connecting as it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS")
        conn.execute("SELECT tenancy.grant_app_role(%s)", (name,))
    return make_conninfo(dsn, user=name)
