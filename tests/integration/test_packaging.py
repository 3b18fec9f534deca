"""The wheel: only the SQL the package reads at run time (no Makefile, control
file, build outputs or frozen releases), py.typed, the license, plain psycopg
with extras; and a wheel install works on its own: it installs the SQL from
its package data and runs the Chinook demo."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, subprocess_env
from pgtenancy import __version__

PIP_INSTALL = (sys.executable, "-m", "pip", "install", "--no-deps", "--quiet")
SOURCES = ("pyproject.toml", "hatch_build.py", "README.md", "LICENSE", "python", "sql")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A wheel built from a copy of the tree that also holds a gitignored
    build output (sql/pgtenancy--<version>.sql), as a developer's tree would."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    (src / "sql" / f"pgtenancy--{__version__}.sql").write_text("-- build output\n")
    out = base / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = out.glob("*.whl")
    yield built


def test_the_wheel_ships_only_run_time_sql(wheel: Path) -> None:
    assert wheel.name == f"pgtenancy-{__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pgtenancy/py.typed" in names
    assert "pgtenancy/testing/__init__.py" in names
    assert f"pgtenancy-{__version__}.dist-info/licenses/LICENSE" in names
    expected = {
        f"pgtenancy/sql/{p.relative_to(ROOT / 'sql').as_posix()}"
        for pattern in ("[0-9]*.sql", "upgrades/*.sql", "queries.sql", "uninstall.sql")
        for p in (ROOT / "sql").glob(pattern)
    }
    shipped_sql = {n for n in names if n.startswith("pgtenancy/sql/")}
    assert "pgtenancy/sql/queries.sql" in shipped_sql
    assert shipped_sql == expected
    for name in names:
        assert not name.endswith(("Makefile", ".control")), name
        assert "pgtenancy--" not in name, name  # extension build outputs
        assert "/releases/" not in name and "/extension/" not in name, name
        assert not name.startswith(("pgtenancy/demo/", "pgtenancy/server.py")), name


def test_the_wheel_depends_on_plain_psycopg_with_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read(f"pgtenancy-{__version__}.dist-info/METADATA"))
    requires = meta.get_all("Requires-Dist") or []
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(core) == ["psycopg-pool>=3.2", "psycopg>=3.2"]
    assert set(meta.get_all("Provides-Extra") or []) >= {
        "binary",
        "sqlalchemy",
        "cli",
        "migrations",
        "dev",
    }
    assert meta["Version"] == __version__


@pytest.fixture(scope="module")
def wheel_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment whose `import pgtenancy` is the installed wheel (dependencies
    from this virtualenv), not the source tree."""
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        [*PIP_INSTALL, "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    env = subprocess_env()
    env["PYTHONPATH"] = str(target)
    return env


def test_a_wheel_install_installs_the_sql_from_its_package_data(
    wheel_install: dict[str, str], empty_dsn: str
) -> None:
    code = (
        "import pgtenancy, pgtenancy.queries as q\n"
        "print(pgtenancy.__file__)\n"
        "print(q.sql_resources())\n"
        f"print(pgtenancy.install({empty_dsn!r}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=wheel_install, cwd="/"
    )
    assert r.returncode == 0, r.stderr
    module, sql, version = r.stdout.splitlines()
    site = wheel_install["PYTHONPATH"]
    assert module == os.path.join(site, "pgtenancy", "__init__.py")
    assert sql == os.path.join(site, "pgtenancy", "sql")
    assert version == __version__


def test_the_demo_runs_from_a_wheel_install(
    wheel_install: dict[str, str], pg_admin_dsn: str
) -> None:
    from helpers import CHINOOK_FILE, DEMO, check_demo_output

    env = dict(wheel_install, DATABASE_URL=pg_admin_dsn)
    r = subprocess.run(
        [sys.executable, str(DEMO), "--chinook", str(CHINOOK_FILE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd="/",
    )
    check_demo_output(r, pg_admin_dsn)
