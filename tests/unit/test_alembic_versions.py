"""Versions of Alembic revisions sort in chain order in the registry's C
collation, parts of a revision after the revision, all after ``--dir``
versions; a revision's rendered chunks split at its autocommit blocks and
lose Alembic's version-table statements (no database: pgtenancy.alembic)."""

from __future__ import annotations

import pytest

from pgtenancy.alembic import _parts, version_for
from pgtenancy.migration_files import MigrationCheckError


def c_sorted(versions: list[str]) -> list[str]:
    return sorted(versions, key=lambda v: v.encode("utf-8"))


def test_versions_sort_in_chain_order() -> None:
    chain = [
        version_for(1, "zz9"),
        version_for(2, "a00"),
        version_for(9, "b-1"),
        version_for(9, "b-1", 2),
        version_for(9, "b-1", 10),
        version_for(10, "0a"),
        version_for(9999, "x_y"),
    ]
    assert chain[2:5] == ["alembic-0009-b-1", "alembic-0009-b-1.02", "alembic-0009-b-1.10"]
    assert c_sorted(chain) == chain
    # After --dir versions: files first, then Alembic.
    assert c_sorted(["alembic-0001-a1", "0007_x", "V0001.0001-y"]) == [
        "0007_x",
        "V0001.0001-y",
        "alembic-0001-a1",
    ]


@pytest.mark.parametrize(
    ("position", "revision", "part"),
    [(1, "has.dot", 1), (1, "", 1), (1, "a" * 101, 1), (10000, "a", 1), (1, "a", 100)],
)
def test_versions_refuse_what_would_not_sort(position: int, revision: str, part: int) -> None:
    with pytest.raises(MigrationCheckError):
        version_for(position, revision, part)


def test_parts_split_at_autocommit_blocks_and_drop_the_version_table() -> None:
    chunks = [
        "BEGIN;\n\n",
        "CREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL\n);\n\n",
        "-- Running upgrade  -> a1\n\n",
        "CREATE TABLE t (id INTEGER);\n\n",
        "COMMIT;\n\n",
        "ALTER TYPE s ADD VALUE 'x';\n\n",
        "BEGIN;\n\n",
        "CREATE INDEX i ON t (id) WHERE true;\n\n",
        "INSERT INTO alembic_version (version_num) VALUES ('a1') RETURNING alembic_version.version_num;\n\n",
        "UPDATE \"alembic_version\" SET version_num='b';\n\n",
        "COMMIT;\n\n",
    ]
    assert _parts(chunks) == [
        ("-- Running upgrade  -> a1\n\nCREATE TABLE t (id INTEGER);\n", False),
        ("ALTER TYPE s ADD VALUE 'x';\n", True),
        ("CREATE INDEX i ON t (id) WHERE true;\n", False),
    ]
    # Without BEGIN/COMMIT (transactional_ddl off) a revision is one transaction.
    assert _parts(
        ["CREATE TABLE t (id int);\n\n", "CREATE TABLE alembic_versions (x int);\n\n"]
    ) == [("CREATE TABLE t (id int);\n\nCREATE TABLE alembic_versions (x int);\n", False)]
