"""Shared-schema migrations: ordered files applied once to the shared schemas.

Tenant migrations change their own tenant schema only (the database refuses
anything else with PT017). Changes to shared objects (public's tables, a
guarded shared table, extensions, a second schema) are shared migrations: a
directory of ordered ``.sql`` files (the same naming rules as tenant
migration directories) applied once per database by the kit's owner, with the
owner's rights, and recorded in ``tenancy.shared_migrations``.
``pgtenancy migrate --shared-dir DIR`` applies them before the tenant
migrations of the same command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import raise_translated
from pgtenancy.migration_files import read_migration_dir
from pgtenancy.queries import QUERIES


@dataclass
class SharedMigrationReport:
    """What :func:`apply_shared_migrations` did.

    Attributes:
        applied: versions applied by this call, in order.
        current: versions that were applied before (same SQL): skipped.
    """

    applied: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)


def apply_shared_migrations(dsn: str, directory: Path) -> SharedMigrationReport:
    """Apply the shared-schema migrations of ``directory`` that this database
    lacks, each in its own transaction, in version order; stop at the first
    failure (later files build on earlier ones).

    Args:
        dsn: libpq DSN or URL of the database, as the kit's owner.
        directory: folder of ``<version>_<name>.sql`` files.

    Returns:
        A :class:`SharedMigrationReport`.

    Raises:
        FileNotFoundError: the directory does not exist.
        pgtenancy.migration_files.MigrationCheckError: a file is misnamed.
        pgtenancy.errors.InvalidMigration: (PT008) a bad version, an applied
            version whose file changed, or a version sorting before the latest
            applied one; that file and the later ones are not applied.
        psycopg.Error: the SQL of a file failed; that file changed nothing.
    """
    files = read_migration_dir(directory)
    report = SharedMigrationReport()
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        for migration in files:
            try:
                with conn.transaction():
                    before = conn.execute(
                        QUERIES["shared_migration_checksum"], {"version": migration.version}
                    ).fetchone()
                    conn.execute(
                        QUERIES["apply_shared_migration"],
                        {"version": migration.version, "sql": migration.sql},
                    )
            except psycopg.Error as exc:
                raise_translated(exc)
            if before is not None and before[0] == migration.checksum:
                report.current.append(migration.version)
            else:
                report.applied.append(migration.version)
    return report


def pending_shared_migrations(dsn: str, directory: Path) -> list[str]:
    """Versions of ``directory`` not yet applied to the database, in order.

    Raises:
        FileNotFoundError, MigrationCheckError: as :func:`apply_shared_migrations`.
    """
    files = read_migration_dir(directory)
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        applied = {r[0] for r in conn.execute(QUERIES["shared_migration_versions"])}
    return [f.version for f in files if f.version not in applied]
