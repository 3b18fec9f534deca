"""docker/: the image's init script installs the same SQL as `pgtenancy install`.

No Docker engine runs on the development machines, so the image itself is not
built here; its init script is run against the test server instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgtenancy import SQL_VERSION, installed_version
from test_install import snapshot

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_copies_what_the_init_script_reads() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY sql/ /usr/share/pgtenancy/sql/" in text
    assert "/docker-entrypoint-initdb.d/10-pgtenancy.sh" in text
    assert os.access(ROOT / "docker" / "initdb" / "10-pgtenancy.sh", os.X_OK)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_init_script_installs_like_the_python_installer(empty_dsn: str, dsn: str) -> None:
    params = conninfo_to_dict(empty_dsn)
    env = {
        **os.environ,
        "PGTENANCY_SQL_DIR": str(ROOT / "sql"),
        "PGHOST": str(params.get("host", "127.0.0.1")),
        "PGPORT": str(params.get("port", 5432)),
        "PGPASSWORD": str(params.get("password", "")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_DB": str(params["dbname"]),
    }
    script = ROOT / "docker" / "initdb" / "10-pgtenancy.sh"
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert installed_version(empty_dsn) == SQL_VERSION
    # Same objects as the template installed by pgtenancy.install() (ignoring oids).
    strip = lambda rows: [(*r[:2], r[2] if r[0] != "relation" else "") for r in rows]  # noqa: E731
    assert strip(snapshot(empty_dsn)) == strip(snapshot(dsn))
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("SELECT tenancy.create_tenant('acme')")
