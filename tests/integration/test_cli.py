"""The pgtenancy CLI: every command, and one clear line on error.

The commands run in this process (click's CliRunner, helpers.run_cli): the
same group, options, output and exit status as the real program, without a
Python start-up per call. One smoke test runs the installed program for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import outbox, run_cli, subprocess_env
from pgtenancy import SQL_VERSION


def cli(
    *args: str, dsn: str | None = None, env_dsn: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = list(args)
    if dsn:
        argv += ["--dsn", dsn]
    return run_cli(*argv, env={"DATABASE_URL": env_dsn} if env_dsn else None)


def test_the_installed_program_runs(empty_dsn: str) -> None:
    """The console script itself, in a real process: --help and one database command."""
    program = Path(sys.executable).with_name("pgtenancy")
    assert program.exists(), program
    r = subprocess.run(
        [str(program), "--help"], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "pgtenancy: PostgreSQL-native multi-tenancy." in r.stdout
    env = subprocess_env()
    env["DATABASE_URL"] = empty_dsn
    r = subprocess.run(
        [str(program), "install"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"pgtenancy {SQL_VERSION} installed")


def test_lifecycle_through_the_cli(empty_dsn: str, tmp_path: Path) -> None:
    assert cli("install", dsn=empty_dsn).stdout.startswith(f"pgtenancy {SQL_VERSION} installed")
    migration = tmp_path / "0001.sql"
    migration.write_text("CREATE TABLE invoice (id int PRIMARY KEY);")
    r = cli("add-migration", "0001", str(migration), dsn=empty_dsn)
    assert r.returncode == 0, r.stderr
    r = cli("create", "acme", "--metadata", '{"plan": "pro"}', env_dsn=empty_dsn)  # DATABASE_URL
    assert r.returncode == 0, r.stderr
    assert "created acme (schema tenant_acme, status active, migration 0001)" in r.stdout
    assert cli("create", "globex", dsn=empty_dsn).returncode == 0
    assert cli("suspend", "globex", dsn=empty_dsn).returncode == 0
    r = cli("list", "--json", dsn=empty_dsn)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["slug"], x["status"], x["metadata"]) for x in rows] == [
        ("acme", "active", {"plan": "pro"}),
        ("globex", "suspended", {}),
    ]
    assert "globex" in cli("list", dsn=empty_dsn).stdout
    assert cli("resume", "globex", dsn=empty_dsn).returncode == 0
    migration2 = tmp_path / "0002.sql"
    migration2.write_text("ALTER TABLE invoice ADD COLUMN note text;")
    assert cli("add-migration", "0002", str(migration2), dsn=empty_dsn).returncode == 0
    r = cli("migrate", dsn=empty_dsn)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["acme: migrated to 0002", "globex: migrated to 0002"]
    assert lines[2].startswith("2 migrated, 0 failed, 0 already current")
    r = cli("migrate", dsn=empty_dsn)
    assert r.stdout.startswith("0 migrated, 0 failed, 2 already current")
    assert cli("drop", "globex", dsn=empty_dsn).stdout.startswith("deleted globex")
    assert cli("drop", "acme", "--destroy-data", dsn=empty_dsn).stdout.startswith("destroyed acme")
    assert [n for n, _ in outbox(empty_dsn)] == [
        "tenant_created",
        "tenant_created",
        "tenant_suspended",
        "tenant_resumed",
        "tenant_migrated",
        "tenant_migrated",
        "tenant_deleted",
        "tenant_deleted",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "Bad-Slug"), "error: invalid tenant slug 'Bad-Slug'"),
        (("suspend", "nobody"), "error: tenant 'nobody' not found"),
        (("create", "dup"), "error: tenant 'dup' already exists"),
        (("migrate", "nobody"), "error: 1 of 1 tenants failed"),
        (("create", "x", "--metadata", "[1]"), "--metadata"),
    ],
)
def test_errors_are_one_clear_line_and_change_nothing(
    dsn: str, args: tuple[str, ...], message: str
) -> None:
    assert cli("create", "dup", dsn=dsn).returncode == 0
    before = outbox(dsn)
    r = cli(*args, dsn=dsn)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert outbox(dsn) == before


def test_not_installed_and_unreachable_and_missing_dsn(empty_dsn: str) -> None:
    r = cli("list", dsn=empty_dsn)
    assert r.returncode == 1
    assert r.stderr.startswith("error: pgtenancy is not installed")
    r = cli("list", dsn="postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    assert r.returncode == 1
    assert r.stderr.startswith("error: connection")
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("list")
    assert r.returncode == 2
    assert "--dsn" in r.stderr


def test_help_on_every_command() -> None:
    for command in (
        "install",
        "uninstall",
        "create",
        "list",
        "suspend",
        "resume",
        "drop",
        "migrate",
        "add-migration",
        "listen",
        "version",
        "enable-rls",
        "disable-rls",
        "grant-app-role",
        "grant-listener-role",
        "doctor",
        "events status",
        "events prune",
    ):
        r = cli(*command.split(), "--help")
        assert r.returncode == 0, command
        assert "--dsn" in r.stdout, command


def test_sqlalchemy_urls_are_accepted_and_handlers_found_in_cwd(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from pgtenancy import Tenancy
    from pgtenancy.listener import import_handlers

    url = dsn if "://" in dsn else None
    if url is not None:
        t = Tenancy(url.replace("postgresql://", "postgresql+psycopg://", 1))
        assert t.create_tenant("acme").slug == "acme"
    (tmp_path / "myhandlers_for_test.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    import_handlers(["myhandlers_for_test"])
    assert sys.modules["myhandlers_for_test"].LOADED is True
    with pytest.raises(ImportError, match="cannot import handlers module 'nope_not_here'"):
        import_handlers(["nope_not_here"])
