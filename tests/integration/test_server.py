"""Finding or starting a server: explicit URL first, a throwaway cluster from
the local binaries (as a non-root user), a clear message when nothing works,
and fresh databases that are dropped."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import psycopg
import pytest

from pgtenancy.testing import (
    NoServerError,
    TemporaryCluster,
    find_bindir,
    find_server,
    fresh_database,
    server,
)


def test_explicit_url_comes_first(monkeypatch: pytest.MonkeyPatch, pg_admin_dsn: str) -> None:
    monkeypatch.setenv("TEST_DATABASE_URL", pg_admin_dsn)
    monkeypatch.setenv("DATABASE_URL", "postgresql://ignored@127.0.0.1:1/x")
    with find_server() as dsn:
        assert dsn == pg_admin_dsn
    monkeypatch.delenv("TEST_DATABASE_URL")
    with find_server(env=("DATABASE_URL",)) as dsn:
        assert dsn == "postgresql://ignored@127.0.0.1:1/x"


def test_no_server_gives_a_message_that_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(server, "docker_available", lambda: False)
    monkeypatch.setattr(server, "find_bindir", lambda: None)
    with pytest.raises(NoServerError) as info, find_server():
        pass
    message = str(info.value)
    for hint in ("TEST_DATABASE_URL", "Docker", "initdb", "apt-get install postgresql"):
        assert hint in message


@pytest.mark.skipif(find_bindir() is None, reason="no local PostgreSQL binaries")
def test_throwaway_cluster_runs_as_non_root_and_is_removed() -> None:
    bindir = find_bindir()
    assert bindir is not None
    cluster = TemporaryCluster(
        bindir, settings={"max_prepared_transactions": 7, "max_connections": "50"}
    )
    dsn = cluster.start()
    base = cluster.base
    assert base is not None
    try:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            assert row is not None
            assert Path(row[0]).is_relative_to(base)
            # Settings given win over the defaults (max_connections=200).
            assert conn.execute(
                "SELECT current_setting('max_prepared_transactions'),"
                " current_setting('max_connections')"
            ).fetchone() == ("7", "50")
        owner = pwd.getpwuid((base / "data").stat().st_uid).pw_name
        if os.geteuid() == 0:
            assert owner != "root"
        with fresh_database(dsn, "probe") as db:
            name = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
            with psycopg.connect(db) as conn:
                assert conn.execute("SELECT current_database()").fetchone() == (name,)
        with psycopg.connect(dsn) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)
            ).fetchone() == (0,)
    finally:
        cluster.stop()
    assert not base.exists()


@pytest.mark.parametrize(
    "settings",
    [{"work_mem' -c x": "1"}, {"work_mem": "4 MB"}, {"work_mem": "4MB'"}, {"": "1"}],
)
def test_cluster_settings_that_cannot_be_passed_are_refused(settings: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cannot be passed to pg_ctl"):
        TemporaryCluster(Path("/nonexistent"), settings=settings)


def test_the_server_is_the_expected_major_version(pg_admin_dsn: str) -> None:
    with psycopg.connect(pg_admin_dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int / 10000").fetchone()
    assert row is not None and row[0] >= 15  # the supported versions: 15 and later
    expected = os.environ.get("PGTENANCY_EXPECT_PG")
    if expected:
        assert row[0] == int(expected)
