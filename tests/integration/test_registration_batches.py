"""Registration in batches: ``tenancy.add_migrations`` registers several
migrations in one transaction, all or nothing, each checked as it is applied
to the scratch schema; ``sync_migration_dir`` sends a directory in batches and
falls back to one file at a time when a batch is refused, so the files before
a refused one stay registered and the error is that file's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgtenancy import Tenancy
from pgtenancy.errors import InvalidMigration, UnsafeMigration
from pgtenancy.fleet import BATCH_FILES, registration_batches, sync_migration_dir
from pgtenancy.migration_files import read_migration_dir

SQL = Callable[..., list[tuple[Any, ...]]]


def registered(sql: SQL) -> list[str]:
    return [v for (v,) in sql("SELECT version FROM tenancy.migrations ORDER BY version")]


def scratch(sql: SQL) -> list[tuple[Any, ...]]:
    """The scratch schema's version and its relations."""
    return sql("SELECT version FROM tenancy.scratch") + sql(
        "SELECT relname::text FROM pg_class"
        " WHERE relnamespace = 'tenancy_scratch'::regnamespace ORDER BY 1"
    )


def test_add_migrations_registers_in_order_and_repeats_are_no_ops(
    tenancy: Tenancy, sql: SQL
) -> None:
    tenancy.add_migration("0001", "CREATE TABLE a (id int PRIMARY KEY)")
    rows = tenancy.add_migrations(
        [
            ("0001", "CREATE TABLE a (id int PRIMARY KEY)", False),
            ("0002", "CREATE TABLE b (id int PRIMARY KEY, a int REFERENCES a)", False),
            ("0003", "CREATE INDEX CONCURRENTLY b_a ON b (a)", True),
        ]
    )
    assert [m.version for m in rows] == ["0001", "0002", "0003"]
    assert registered(sql) == ["0001", "0002", "0003"]
    assert sql("SELECT outside_transaction FROM tenancy.migrations ORDER BY version") == [
        (False,),
        (False,),
        (True,),
    ]
    assert scratch(sql) == [("0003",), ("a",), ("a_pkey",), ("b",), ("b_a",), ("b_pkey",)]
    # A new tenant gets the whole chain.
    tenancy.create_tenant("acme")
    assert sql("SELECT migration_version FROM tenancy.tenants") == [("0003",)]


@pytest.mark.parametrize(
    ("second", "error", "message"),
    [
        ("CREATE TABLE broken (", InvalidMigration, r"^migration 0003 does not apply"),
        ("ALTER TYPE mood ADD VALUE 'sad'", InvalidMigration, r"^migration 0004 does not apply"),
        (
            "CREATE TABLE public.escaped (id int)",
            UnsafeMigration,
            r"^unsafe migration 0003 \(schema tenancy_scratch\)",
        ),
    ],
)
def test_a_refused_batch_registers_nothing(
    tenancy: Tenancy, sql: SQL, second: str, error: type[Exception], message: str
) -> None:
    tenancy.add_migration("0001", "CREATE TYPE mood AS ENUM ('happy')")
    before = scratch(sql)
    with pytest.raises(error, match=message):
        tenancy.add_migrations(
            [
                ("0002", "CREATE TABLE a (id int PRIMARY KEY)", False),
                ("0003", second, False),
                # Uses a value added in the same call: needs a commit first.
                ("0004", "CREATE TABLE b (m mood DEFAULT 'sad')", False),
            ]
        )
    assert registered(sql) == ["0001"]
    assert scratch(sql) == before
    assert sql("SELECT to_regclass('public.escaped')") == [(None,)]


def test_bad_arrays_and_versions_are_refused(tenancy: Tenancy, sql: SQL) -> None:
    with pytest.raises(InvalidMigration, match="arrays of one length"):
        tenancy.database.rows(
            "add_migrations",
            {"versions": ["0001", "0002"], "sqls": ["SELECT 1"], "outside_transaction": None},
        )
    with pytest.raises(InvalidMigration, match="invalid migration version 'bad version'"):
        tenancy.add_migrations(
            [("0001", "CREATE TABLE a (id int)", False), ("bad version", "SELECT 1", False)]
        )
    with pytest.raises(InvalidMigration, match="0001 sorts before the latest"):
        tenancy.add_migrations(
            [("0002", "CREATE TABLE a (id int)", False), ("0001", "SELECT 1", False)]
        )
    assert registered(sql) == []


def test_each_migration_of_a_batch_is_checked_as_it_is_applied(tenancy: Tenancy, sql: SQL) -> None:
    # Alone, 0001 is refused (a tenant migrated to 0001 could not be handed
    # back); a batch that removes it again in 0002 must not hide it.
    definer = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1 $$",
        "DROP FUNCTION f()",
    )
    with pytest.raises(UnsafeMigration, match=r"0001.*SECURITY DEFINER"):
        tenancy.add_migrations([("0001", definer[0], False), ("0002", definer[1], False)])
    # A deferred foreign key its own commit would refuse, repaired by the next
    # migration of the batch.
    tenancy.add_migration(
        "0001",
        "CREATE TABLE parent (id int PRIMARY KEY);"
        " CREATE TABLE child (p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
    )
    with pytest.raises(InvalidMigration, match=r"^migration 0002 does not apply") as caught:
        tenancy.add_migrations(
            [
                ("0002", "INSERT INTO child VALUES (1)", False),
                ("0003", "INSERT INTO parent VALUES (1)", False),
            ]
        )
    assert caught.value.detail == "SQLSTATE 23503"
    assert registered(sql) == ["0001"]


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, "utf-8")


def test_sync_splits_batches_at_enum_values_and_no_transaction_files(tmp_path: Path) -> None:
    files = {f"{i:04d}_t{i}.sql": f"CREATE TABLE t{i} (id int);" for i in range(1, 61)}
    files["0005_t5.sql"] = "ALTER TYPE mood ADD VALUE 'sad';"
    files["0009_t9.sql"] = "-- pgtenancy: no-transaction\nCREATE INDEX CONCURRENTLY i ON t1 (id);"
    write(tmp_path / "m", files)
    batches = list(registration_batches(read_migration_dir(tmp_path / "m")))
    rest = [BATCH_FILES] * ((60 - 9) // BATCH_FILES) + [(60 - 9) % BATCH_FILES]
    assert [len(b) for b in batches] == [5, 4, *[n for n in rest if n]]
    assert [f.version for b in batches for f in b] == [f"{i:04d}_t{i}" for i in range(1, 61)]


def test_sync_falls_back_to_one_file_at_a_time(
    dsn: str, tenancy: Tenancy, sql: SQL, tmp_path: Path
) -> None:
    files = {f"{i:04d}_t{i}.sql": f"CREATE TABLE t{i} (id int PRIMARY KEY);" for i in range(1, 11)}
    files["0001_t1.sql"] = "CREATE TYPE mood AS ENUM ('happy');"
    # 0006 alters t7 before it exists: 0001-0005 register, nothing after.
    files["0006_t6.sql"] = "ALTER TABLE t7 ADD COLUMN m mood;"
    write(tmp_path / "m", files)
    with pytest.raises(InvalidMigration, match=r"^migration 0006_t6 does not apply.*t7"):
        sync_migration_dir(dsn, tmp_path / "m")
    assert registered(sql) == [f"{i:04d}_t{i}" for i in range(1, 6)]
    assert sql("SELECT version FROM tenancy.scratch") == [("0005_t5",)]
    # Repaired, the rest registers; the enum and table chain applies to a tenant.
    (tmp_path / "m" / "0006_t6.sql").write_text("ALTER TABLE t5 ADD COLUMN m mood;", "utf-8")
    synced = sync_migration_dir(dsn, tmp_path / "m")
    assert synced.current == registered(sql)[:5]
    assert synced.registered == [f"{i:04d}_t{i}" for i in range(6, 11)]
    tenancy.create_tenant("acme")
    assert sql("SELECT migration_version FROM tenancy.tenants") == [("0010_t10",)]


def test_a_batch_failing_only_as_a_batch_still_registers(
    dsn: str, sql: SQL, tmp_path: Path
) -> None:
    # 0002 relies on a deferred constraint inside itself; in a batch after
    # 0001 the scratch try runs its constraints immediately (what 0001's own
    # commit would check), so the batch fails and the files go one at a time.
    write(
        tmp_path / "m",
        {
            "0001_parent.sql": "CREATE TABLE parent (id int PRIMARY KEY);"
            " CREATE TABLE child (p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);",
            "0002_rows.sql": "INSERT INTO child VALUES (1); INSERT INTO parent VALUES (1);",
            "0003_more.sql": "CREATE TABLE more (id int);",
        },
    )
    synced = sync_migration_dir(dsn, tmp_path / "m")
    assert synced.registered == ["0001_parent", "0002_rows", "0003_more"]
    assert registered(sql) == synced.registered
