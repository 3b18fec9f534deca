"""`import pgtenancy`, `pgtenancy --help`, `pgtenancy version` and a no-op
`pgtenancy migrate` load neither SQLAlchemy, rich, pglast, psycopg_pool, the
listener nor templates (issue 16: every CLI call paid ~1.4 s for them);
`import pgtenancy` and `pgtenancy --help` do not even load psycopg; the public
names and the submodules still resolve. Which modules load is asserted here;
how long start-up takes is measured in bench/bench_startup.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from helpers import subprocess_env

HEAVY = (
    "sqlalchemy",
    "alembic",
    "pgtenancy.alembic",
    "rich",
    "pglast",
    "psycopg_pool",
    "pgtenancy.listener",
    "pgtenancy.templates",
    "pgtenancy.session",
    "pgtenancy.admin",
)
# What the CLI start-up may not load (the admin API is fine once a command runs).
CLI_HEAVY = (
    "sqlalchemy",
    "alembic",
    "rich",
    "pglast",
    "pgtenancy.listener",
    "pgtenancy.templates",
)

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {roots!r} or m in {heavy!r})))
"""


def loaded_after(body: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Heavy modules present in a fresh interpreter after running ``body``."""
    roots = {h.split(".")[0] for h in heavy if "." not in h}
    code = PROBE.format(body=body, roots=sorted(roots), heavy=list(heavy))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env()
    )
    assert r.returncode == 0, r.stderr
    found: list[str] = json.loads(r.stdout.splitlines()[-1])
    return found


def run_cli(*args: str) -> str:
    """Run the CLI in-process in a fresh interpreter, like the console script."""
    return (
        "from pgtenancy.cli import main\n"
        "try:\n"
        f"    main({list(args)!r}, prog_name='pgtenancy')\n"
        "except SystemExit:\n"
        "    pass\n"
    )


def test_import_pgtenancy_loads_no_heavy_module() -> None:
    assert loaded_after("import pgtenancy") == []


def test_import_pgtenancy_loads_only_itself() -> None:
    """Not even psycopg: every public name waits for its first use."""
    found = loaded_after("import pgtenancy", ("pgtenancy", "psycopg", "asyncio"))
    assert found == ["pgtenancy", "pgtenancy._version"]


def test_every_public_name_imports_with_from() -> None:
    body = (
        "import pgtenancy\n"
        "for name in pgtenancy.__all__:\n"
        "    exec(f'from pgtenancy import {name}')\n"
        "from pgtenancy import *\n"
        "from pgtenancy import TenantNotFound, TenancyError, use_tenant, install\n"
        "assert issubclass(TenantNotFound, TenancyError)\n"
        "assert pgtenancy.install is install\n"
    )
    assert "pgtenancy.errors" in loaded_after(body, ("pgtenancy.errors",))


def test_submodules_resolve_as_attributes() -> None:
    """``import pgtenancy; pgtenancy.signals.muted()`` as when the package
    imported its submodules eagerly."""
    body = (
        "import pgtenancy\n"
        "assert callable(pgtenancy.signals.muted)\n"
        "assert pgtenancy.errors.lookup('PT003') is pgtenancy.TenantNotFound\n"
        "assert pgtenancy.signals is __import__('pgtenancy.signals').signals\n"
    )
    assert loaded_after(body, ("sqlalchemy", "pgtenancy.admin")) == []


def test_public_names_still_resolve_on_first_use() -> None:
    body = (
        "import pgtenancy\n"
        "from pgtenancy import tenant_session, Tenancy, Listener, tenant_connection\n"
        "assert set(pgtenancy.__all__) <= set(dir(pgtenancy))\n"
        "assert all(getattr(pgtenancy, n) is not None for n in pgtenancy.__all__)\n"
    )
    found = loaded_after(body)
    assert {"sqlalchemy", "pgtenancy.session", "pgtenancy.listener", "pgtenancy.admin"} <= set(
        found
    )


def test_unknown_attribute_is_an_attribute_error() -> None:
    body = (
        "import pgtenancy\n"
        "try:\n"
        "    pgtenancy.nope\n"
        "except AttributeError as exc:\n"
        "    assert \"no attribute 'nope'\" in str(exc)\n"
        "else:\n"
        "    raise SystemExit(1)\n"
    )
    assert loaded_after(body) == []


def test_cli_help_loads_not_even_psycopg() -> None:
    found = loaded_after(run_cli("--help"), (*CLI_HEAVY, "psycopg", "pgtenancy.errors"))
    assert found == []
    assert loaded_after(run_cli("migrate", "--help"), (*CLI_HEAVY, "psycopg")) == []


def test_cli_help_version_and_noop_migrate_load_no_heavy_module(dsn: str) -> None:
    assert loaded_after(run_cli("version", "--dsn", dsn), CLI_HEAVY) == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_migration('0001', 'CREATE TABLE note (id int)')")
        conn.execute("SELECT tenancy.create_tenant('acme')")
    # A fleet run with nothing to do shows no progress bar, so it needs none
    # of them, with or without --quiet.
    for args in ((), ("--quiet",), ("--json",)):
        assert loaded_after(run_cli("migrate", *args, "--dsn", dsn), CLI_HEAVY) == []
    # And they still work, through the console script's module.
    r = subprocess.run(
        [sys.executable, "-m", "pgtenancy.cli", "version", "--dsn", dsn],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert r.returncode == 0, r.stderr


def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "0001_x.sql").write_text("CREATE TABLE t (id int);\n")
    body = (
        "import sys\n"
        "sys.modules['pglast'] = None  # as if the migrations extra were not installed\n"
        + run_cli("migrate", "--dsn", "postgresql://nobody@127.0.0.1:1/x", "--dir", str(tmp_path))
    )
    r = subprocess.run(
        [sys.executable, "-c", body], capture_output=True, text=True, env=subprocess_env()
    )
    assert (
        r.stderr.strip() == "error: this command needs pglast: pip install 'pgtenancy[migrations]'"
    )
