"""Install, upgrade in place and uninstall the SQL core, without psql.

The SQL lives in ordered files ``sql/NNN_*.sql``. :func:`install` runs all of
them in one transaction under an advisory lock, so a failure changes nothing
and concurrent installs wait for each other; every file is idempotent, so
running it twice changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from pgtenancy._version import __version__
from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import raise_translated
from pgtenancy.queries import QUERIES, sql_dir

#: Version of the SQL this package installs; ``tenancy.version()`` returns it.
SQL_VERSION = __version__

# Arbitrary constant key of the advisory lock that serializes installs.
_INSTALL_LOCK_KEY = 7_242_001


def install_files() -> list[Path]:
    """The install scripts, in the order they run (``sql/[0-9]*.sql`` by name)."""
    return sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql"))


def install_script() -> str:
    """All install scripts concatenated, in order, as one SQL text."""
    return "\n".join(p.read_text("utf-8") for p in install_files())


def install(dsn: str) -> str:
    """Install (or re-install in place) the pgtenancy SQL into a database.

    Args:
        dsn: libpq connection string or URL of the target database; the role
            needs CREATE on the database. It will own the ``tenancy`` schema and
            the tenant schemas created later.

    Returns:
        The installed version, as ``tenancy.version()`` reports it.

    Raises:
        psycopg.Error: on connection failure or an SQL error; the transaction is
            rolled back and nothing is changed.
        pgtenancy.errors.InvalidMigration: a newer version is installed (PT008).
    """
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_catalog.set_config('client_min_messages', 'warning', true)")
                conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_INSTALL_LOCK_KEY,))
                conn.execute(install_script().encode("utf-8"))
                row = conn.execute(QUERIES["version"]).fetchone()
        except psycopg.Error as exc:
            raise_translated(exc)
    assert row is not None
    return str(row[0])


def uninstall(dsn: str, *, drop_tenants: bool = False) -> None:
    """Remove the pgtenancy SQL (the ``tenancy`` schema) from a database.

    Args:
        dsn: libpq connection string or URL of the database.
        drop_tenants: also drop every registered tenant's schema and its data.

    Raises:
        pgtenancy.errors.TenantsStillRegistered: tenants are registered and
            ``drop_tenants`` is false (PT009); nothing is changed.
        psycopg.Error: on connection failure or another SQL error.
    """
    script = (sql_dir() / "uninstall.sql").read_text("utf-8")
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_catalog.set_config('client_min_messages', 'warning', true)")
                conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (_INSTALL_LOCK_KEY,))
                conn.execute(
                    "SELECT pg_catalog.set_config('pgtenancy.drop_tenants', %s, true)",
                    ("on" if drop_tenants else "off",),
                )
                conn.execute(script.encode("utf-8"))
        except psycopg.Error as exc:
            raise_translated(exc)


def installed_version(dsn: str) -> str | None:
    """Version of the pgtenancy SQL installed in a database, or None if absent.

    Args:
        dsn: libpq connection string or URL of the database.

    Raises:
        psycopg.OperationalError: when the database cannot be reached.
    """
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        present = conn.execute(QUERIES["is_installed"]).fetchone()
        if present is None or not present[0]:
            return None
        row = conn.execute(QUERIES["version"]).fetchone()
    return None if row is None else str(row[0])
