"""The gate of ``pgtenancy migrate --dir``: a corpus of hostile and careless migrations.

Every file of ``tests/corpus/unsafe_migrations/`` starts with its expectation::

    -- expect: refused|warned|allowed: <what>
    -- execution: refused|allowed        (what the database does when it runs)
    -- reason: line N: <part of the reason>   (refused)
    -- warning: <part of a warning>            (warned)

The gate needs no database; the execution-time tests reuse the same files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import pgtenancy_cli, subprocess_env
from helpers import CORPUS, Case, load
from pgtenancy.migration_files import (
    MigrationCheckError,
    check_migration,
    read_migration_dir,
)

CASES = [load(p) for p in sorted(CORPUS.glob("*.sql"))]


def as_migration_file(case: Case, directory: Path) -> Path:
    """Copy a corpus file into a migrations directory as ``0001_<name>.sql``."""
    directory.mkdir(exist_ok=True)
    target = directory / f"0001_{case.path.stem}.sql"
    shutil.copyfile(case.path, target)
    return target


@pytest.mark.parametrize("case", CASES, ids=[c.path.stem for c in CASES])
def test_corpus_file_gets_its_verdict(case: Case, tmp_path: Path) -> None:
    as_migration_file(case, tmp_path)
    (migration,) = read_migration_dir(tmp_path)
    if case.expect == "refused":
        with pytest.raises(MigrationCheckError) as info:
            check_migration(migration)
        error = info.value
        assert error.file == f"0001_{case.path.stem}.sql"
        assert (error.line, case.text in error.reason) == (case.line, True), str(error)
        return
    warnings = check_migration(migration)
    if case.expect == "warned":
        assert any(case.text in w for w in warnings), warnings
        assert all(w.startswith(f"0001_{case.path.stem}.sql:") for w in warnings)
    else:
        assert warnings == []


def test_corpus_covers_every_verdict() -> None:
    kinds = {c.expect for c in CASES}
    assert kinds == {"refused", "warned", "allowed"}
    assert len([c for c in CASES if c.expect == "refused"]) >= 80
    # Files whose statements the gate lets through but the database must refuse.
    assert {c.path.stem for c in CASES if c.expect != "refused" and c.execution == "refused"} >= {
        "do_execute_alter_role",
        "do_execute_drop_schema",
        "set_config_search_path",
    }


def test_marker_after_the_expect_line_is_honoured(tmp_path: Path) -> None:
    (case,) = [c for c in CASES if c.path.stem == "alter_type_add_value"]
    as_migration_file(case, tmp_path)
    (migration,) = read_migration_dir(tmp_path)
    assert migration.outside_transaction
    (plain,) = [c for c in CASES if c.path.stem == "analyze"]
    other = tmp_path / "other"
    as_migration_file(plain, other)
    assert not read_migration_dir(other)[0].outside_transaction


def test_shared_schema_references_follow_the_option(tmp_path: Path) -> None:
    path = tmp_path / "0001_ext.sql"
    path.write_text(
        "CREATE TABLE doc (title text);\n"
        "CREATE INDEX ON doc USING gin (title extensions.gin_trgm_ops);\n"
    )
    (migration,) = read_migration_dir(tmp_path)
    with pytest.raises(MigrationCheckError, match="references schema 'extensions'") as info:
        check_migration(migration)
    assert info.value.line == 2
    assert check_migration(migration, ("public", "extensions")) == []
    # Naming a shared schema as the object stays refused.
    path.write_text("CREATE TABLE extensions.doc (title text);\n")
    (migration,) = read_migration_dir(tmp_path)
    with pytest.raises(MigrationCheckError, match=r"acts on extensions\.doc"):
        check_migration(migration, ("public", "extensions"))


def test_migrate_dir_refuses_before_anything_runs(dsn: str, tmp_path: Path) -> None:
    """The CLI stops at the gate: nothing is registered, the error names file and line."""
    d = tmp_path / "migrations"
    d.mkdir()
    (d / "0001_ok.sql").write_text("CREATE TABLE note (id int);\nANALYZE note;\n")
    (d / "0002_bad.sql").write_text(
        "CREATE TABLE t (id int);\n\nUPDATE tenancy.tenants SET status = 'suspended';\n"
    )
    r = subprocess.run(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, "--dir", str(d), "--quiet"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error: 0002_bad.sql:3: UPDATE writes tenancy.tenants"), r.stderr
    r = subprocess.run(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, "--dry-run", "--json"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    from pgtenancy import Tenancy

    assert Tenancy(dsn).list_migrations() == []
