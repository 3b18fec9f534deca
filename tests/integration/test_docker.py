"""docker/: the image, the compose files and the init script.

No Docker engine runs on the development machines, so images are not built
and compose files not started here; the files are parsed and checked, and the
init script is run against the test server in both of its modes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from helpers import ROOT, snapshot
from pgtenancy import SQL_VERSION, installed_version

DOCKER = ROOT / "docker"


def test_dockerfile_installs_the_extension_and_the_init_script() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "FROM postgres:${PG_MAJOR}" in text
    assert "COPY sql/ /usr/src/pgtenancy/sql/" in text
    assert "make -C /usr/src/pgtenancy/sql install" in text
    assert "/docker-entrypoint-initdb.d/10-pgtenancy.sh" in text
    assert os.access(DOCKER / "initdb" / "10-pgtenancy.sh", os.X_OK)


def test_compose_files_parse_and_wire_up() -> None:
    main = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = main["services"]
    assert set(services) == {"postgres", "pgbouncer", "demo"}
    assert services["postgres"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert services["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    assert "examples/chinook/demo.py" in services["demo"]["command"]
    assert (DOCKER.parent / "examples" / "chinook" / "demo.py").is_file()
    assert (DOCKER / services["postgres"]["build"]["context"] / "sql").is_dir()
    citus = yaml.safe_load((DOCKER / "citus" / "compose.yaml").read_text())
    assert {"coordinator", "worker1", "worker2", "demo"} <= set(citus["services"])
    assert citus["services"]["worker1"]["image"].startswith("citusdata/citus:")
    assert "docker/citus/demo.py" in citus["services"]["demo"]["command"]
    assert (DOCKER / "citus" / "demo.py").is_file()
    assert "citus_schema_distribute" in (DOCKER / "citus" / "demo.py").read_text()


def run_init_script(dsn: str, **extra: str) -> subprocess.CompletedProcess[str]:
    params = conninfo_to_dict(dsn)
    env = {
        **os.environ,
        "PGHOST": str(params.get("host", "127.0.0.1")),
        "PGPORT": str(params.get("port", 5432)),
        "PGPASSWORD": str(params.get("password", "")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_DB": str(params["dbname"]),
        **extra,
    }
    if "PGTENANCY_SQL_DIR" not in extra:
        env.pop("PGTENANCY_SQL_DIR", None)
    script = DOCKER / "initdb" / "10-pgtenancy.sh"
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_init_script_plain_install_matches_the_python_installer(empty_dsn: str, dsn: str) -> None:
    result = run_init_script(empty_dsn, PGTENANCY_SQL_DIR=str(ROOT / "sql"))
    assert result.returncode == 0, result.stderr
    assert installed_version(empty_dsn) == SQL_VERSION

    def strip(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [(*r[:2], r[2] if r[0] != "relation" else "") for r in rows]

    assert strip(snapshot(empty_dsn)) == strip(snapshot(dsn))
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("SELECT tenancy.create_tenant('acme')")


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_init_script_creates_the_extension(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'pgtenancy'"
        ).fetchone()
    if row is None or row[0] != SQL_VERSION:
        pytest.skip("the pgtenancy extension is not installed (make install-extension, as root)")
    result = run_init_script(empty_dsn)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pgtenancy'"
        ).fetchone() == (SQL_VERSION,)
