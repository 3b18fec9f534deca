"""docker/citus/demo.py, the compose file's demo, against the local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from citus.conftest import CitusCluster

ROOT = Path(__file__).resolve().parents[2]
CHINOOK = ROOT.parent / "shared" / "data" / "chinook" / "Chinook_PostgreSql.sql"


def test_docker_citus_demo_runs(citus_cluster: CitusCluster) -> None:
    if not CHINOOK.exists():
        pytest.skip(f"Chinook not found at {CHINOOK}")
    dsn = citus_cluster.create_database("pgtenancy_citus_demo", register=False)
    port = conninfo_to_dict(dsn)["port"]
    env = {
        **os.environ,
        "DSN": dsn,
        "COORDINATOR": f"127.0.0.1:{port}",
        "WORKERS": ",".join(f"127.0.0.1:{p}" for p in citus_cluster.worker_ports),
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "citus" / "demo.py"), "--chinook", str(CHINOOK)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "acme: 412 invoices" in out.stdout
    assert "globex: 0 invoices" in out.stdout
    assert out.stdout.count("(citus_schema_distribute) on 127.0.0.1:") == 3
    assert "hooli: orders ['hooli']" in out.stdout
