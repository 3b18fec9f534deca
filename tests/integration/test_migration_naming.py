"""Migration directories named as real projects name them: dotted versions
(procrastinate), Flyway, golang-migrate, diesel; natural version order that
the registry's C-collation order keeps; ambiguous names refused with the file
and the reason, and nothing registered."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy
from pgtenancy.migration_files import MigrationCheckError, natural_key, read_migration_dir

SQL = Callable[..., list[tuple[Any, ...]]]
ROOT = Path(__file__).resolve().parents[2]
PROCRASTINATE = ROOT / ".cache" / "procrastinate-3.10.0" / "migrations"


def procrastinate_dir() -> Path:
    if not PROCRASTINATE.is_dir():
        subprocess.run(["make", "-C", str(ROOT), "procrastinate"], capture_output=True)
    if not any(PROCRASTINATE.glob("*.sql")):
        pytest.skip("procrastinate's migrations could not be downloaded (make procrastinate)")
    return PROCRASTINATE


def files(directory: Path, entries: dict[str, str]) -> Path:
    for name, text in entries.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def test_procrastinate_series_reads_in_its_own_order(sql: SQL) -> None:
    d = procrastinate_dir()
    read = read_migration_dir(d)
    assert len(read) == 38
    assert [f.name for f in read] == sorted(p.name for p in d.glob("*.sql"))
    assert read[0].version == "0000.0000.0000_01_initial"
    assert read[-1].name == "03.04.00_50_post_add_retry_failed_job_procedure.sql"
    versions = [f.version for f in read]
    # What the registry applies (C collation) is the natural order.
    assert sql(
        'SELECT array_agg(v ORDER BY v COLLATE "C") FROM unnest(%s::text[]) AS v', (versions,)
    ) == [(versions,)]


def test_flyway_natural_order_undo_ignored(tmp_path: Path, sql: SQL) -> None:
    d = files(
        tmp_path,
        {
            "V1__init.sql": "x",
            "V2__b.sql": "x",
            "V10__c.sql": "x",
            "V1.1__d.sql": "x",
            "V2_1__e.sql": "x",
            "U2__undo_b.sql": "x",
            "README.md": "not a migration",
        },
    )
    read = read_migration_dir(d)
    assert [f.name for f in read] == [
        "V1__init.sql",
        "V1.1__d.sql",
        "V2__b.sql",
        "V2_1__e.sql",
        "V10__c.sql",
    ]
    assert [f.version for f in read] == [
        "V0001-init",
        "V0001.0001-d",
        "V0002-b",
        "V0002.0001-e",
        "V0010-c",
    ]
    versions = [f.version for f in read]
    assert sql(
        'SELECT array_agg(v ORDER BY v COLLATE "C") FROM unnest(%s::text[]) AS v', (versions,)
    ) == [(versions,)]


def test_golang_migrate_and_diesel(tmp_path: Path) -> None:
    go = files(
        tmp_path / "go",
        {
            "1_users.up.sql": "CREATE TABLE users (id int);",
            "1_users.down.sql": "DROP TABLE users;",
            "2_posts.up.sql": "CREATE TABLE posts (id int);",
            "10_tags.up.sql": "CREATE TABLE tags (id int);",
            "10_tags.down.sql": "DROP TABLE tags;",
        },
    )
    assert [(f.name, f.version) for f in read_migration_dir(go)] == [
        ("1_users.up.sql", "0001_users"),
        ("2_posts.up.sql", "0002_posts"),
        ("10_tags.up.sql", "0010_tags"),
    ]
    diesel = files(
        tmp_path / "diesel",
        {
            "00000000000000_diesel_initial_setup/up.sql": "CREATE TABLE a (id int);",
            "00000000000000_diesel_initial_setup/down.sql": "DROP TABLE a;",
            "2019-03-01-120000_create_users/up.sql": "CREATE TABLE users (id int);",
            "2019-03-01-120000_create_users/down.sql": "DROP TABLE users;",
            "2019-03-02-090000_index/up.sql": "CREATE INDEX CONCURRENTLY i ON users (id);",
            "2019-03-02-090000_index/metadata.toml": "run_in_transaction = false\n",
        },
    )
    read = read_migration_dir(diesel)
    assert [(f.name, f.version, f.outside_transaction) for f in read] == [
        (
            "00000000000000_diesel_initial_setup/up.sql",
            "00000000000000_diesel_initial_setup",
            False,
        ),
        ("2019-03-01-120000_create_users/up.sql", "2019-0003-0001-120000_create_users", False),
        ("2019-03-02-090000_index/up.sql", "2019-0003-0002-090000_index", True),
    ]


@pytest.mark.parametrize(
    ("entries", "file", "reason"),
    [
        ({"0001_a.sql": "x", "V2__b.sql": "x"}, "", "mixes naming forms"),
        ({"1_a.sql": "x", "01_a.sql": "x"}, "1_a.sql", "ambiguous: same version as 01_a.sql"),
        (
            {"1_2_a.sql": "x", "1_10_b.sql": "x"},
            "1_10_b.sql",
            "sorts after 1_2_a.sql naturally but before it as registered",
        ),
        (
            {"1_a.sql": "x", "123456_b.sql": "x", "99999_c.sql": "x"},
            "123456_b.sql",
            "zero-pad the numbers",
        ),
        ({"2019-01-01_a/down.sql": "x"}, "2019-01-01_a/", "must hold up.sql"),
        ({"bad-name.sql": "x"}, "bad-name.sql", "NNNN_name.sql"),
        ({"R__views.sql": "x"}, "R__views.sql", "repeatable"),
        ({"V1_init.sql": "x"}, "V1_init.sql", "V<version>__<description>.sql"),
        ({"1.2..3_a.sql": "x"}, "1.2..3_a.sql", "NNNN_name.sql"),
        ({"1_" + "a" * 130 + ".sql": "x"}, "1_" + "a" * 130 + ".sql", "registry accepts"),
        # A letter suffix and a further number part disagree: naturally 1.2a
        # is before 1.2.1, registered "0001.0002.0001" < "0001.0002a".
        ({"1.2a.sql": "x", "1.2.1.sql": "x"}, "1.2.1.sql", "sorts after 1.2a.sql naturally"),
        ({"1.2A.sql": "x"}, "1.2A.sql", "one lowercase letter"),
        ({"1.2ab.sql": "x"}, "1.2ab.sql", "NNNN_name.sql"),
        ({"0001_a.sql": "x", "0002_b.SQL": "x"}, "0002_b.SQL", ".sql in lowercase"),
    ],
)
def test_ambiguous_or_unknown_names_are_refused(
    tmp_path: Path, entries: dict[str, str], file: str, reason: str
) -> None:
    d = files(tmp_path / "m", entries)
    with pytest.raises(MigrationCheckError) as info:
        read_migration_dir(d)
    assert info.value.file == (file or "m")
    assert reason in info.value.reason


def test_letter_suffixed_versions_read_in_patch_order(tmp_path: Path, sql: SQL) -> None:
    # DAViCal (Debian's davical package, dba/patches/) names its patches so:
    # 1.2.10a is applied after 1.2.10 and before 1.2.11.
    names = ["1.1.9.sql", "1.1.10.sql", "1.1.11.sql", "1.1.11a.sql", "1.1.12.sql"]
    names += ["1.2.1.sql", "1.2.1a.sql", "1.2.1b.sql", "1.2.2.sql", "1.2.10.sql", "1.2.10a.sql"]
    names += ["1.2.11.sql"]
    d = files(tmp_path, {n: "SELECT 1;" for n in reversed(names)})
    read = read_migration_dir(d)
    assert [f.name for f in read] == names
    versions = [f.version for f in read]
    assert versions[3:5] == ["0001.0001.0011a", "0001.0001.0012"]
    assert sql(
        'SELECT array_agg(v ORDER BY v COLLATE "C") FROM unnest(%s::text[]) AS v', (versions,)
    ) == [(versions,)]
    # With names too: the bare version, then its named ones, then the suffix.
    d2 = files(tmp_path / "named", {"1.2_b.sql": "x", "1.2a_a.sql": "x", "1.2.sql": "x"})
    assert [f.name for f in read_migration_dir(d2)] == ["1.2.sql", "1.2_b.sql", "1.2a_a.sql"]


def test_natural_key() -> None:
    assert sorted(["2.10", "2.9", "10", "9_a", "1.0.10", "1.0.9"], key=natural_key) == [
        "1.0.9",
        "1.0.10",
        "2.9",
        "2.10",
        "9_a",
        "10",
    ]


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )


def test_a_letter_suffixed_series_registers_and_provisions(
    dsn: str, tenancy: Tenancy, sql: SQL, tmp_path: Path
) -> None:
    entries = {"1.1.sql": "CREATE TABLE log (v text, at serial);"}
    for v in ("1.1a", "1.1b", "1.2", "1.2a", "1.10"):
        entries[f"{v}.sql"] = f"INSERT INTO log (v) VALUES ('{v}');"
    d = files(tmp_path / "patches", entries)
    tenancy.create_tenant("acme")
    r = cli(dsn, "--dir", str(d), "--quiet")
    assert r.returncode == 0, r.stderr
    tenancy.create_tenant("globex")
    for schema in ("tenant_acme", "tenant_globex"):
        assert sql(f"SELECT array_agg(v ORDER BY at) FROM {schema}.log") == [
            (["1.1a", "1.1b", "1.2", "1.2a", "1.10"],)
        ]
    assert {t.migration_version for t in tenancy.list_tenants()} == {"0001.0010"}


def test_a_flyway_series_applies_in_natural_order(
    dsn: str, tenancy: Tenancy, sql: SQL, tmp_path: Path
) -> None:
    entries = {"V1__log.sql": "CREATE TABLE log (n int, at serial);"}
    for n in range(2, 13):
        entries[f"V{n}__step.sql"] = f"INSERT INTO log (n) VALUES ({n});"
    d = files(tmp_path / "fly", entries)
    tenancy.create_tenant("acme")
    r = cli(dsn, "--dir", str(d), "--quiet")
    assert r.returncode == 0, r.stderr
    tenancy.create_tenant("globex")
    for schema in ("tenant_acme", "tenant_globex"):
        assert sql(f"SELECT array_agg(n ORDER BY at) FROM {schema}.log") == [(list(range(2, 13)),)]
    assert [m.version for m in tenancy.list_migrations()][-1] == "V0012-step"
    assert {t.migration_version for t in tenancy.list_tenants()} == {"V0012-step"}
    # An ambiguous directory registers nothing.
    (d / "V012__again.sql").write_text("SELECT 1;")
    r = cli(dsn, "--dir", str(d), "--quiet")
    assert r.returncode == 1
    assert "V12__step.sql:0: ambiguous: same version as V012__again.sql" in r.stderr
    assert len(tenancy.list_migrations()) == 12
