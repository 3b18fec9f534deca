"""Install, upgrade and uninstall the SQL core, without psql.

``sql/NNN_*.sql`` hold the current schema only; ``sql/upgrades/<from>--<to>.sql``
are the deltas from each earlier release (the extension's upgrade scripts are
the same files). :func:`install` looks at what the database has, in one
transaction under an advisory lock, so a failure changes nothing and
concurrent installs wait for each other:

* nothing installed: run the schema files;
* this version installed: run the schema files again (idempotent: nothing
  changes, damage such as a replaced function is repaired);
* an earlier version installed: run the chain of deltas up to this version;
* a newer version installed: refuse (``PT018``, :class:`NewerVersionInstalled`).

The version is not written by hand in any SQL file: ``@PGTENANCY_VERSION@`` is
stamped with :data:`SQL_VERSION` (``pgtenancy/_version.py``) when the files are
read here, and by ``sql/Makefile`` when it builds the extension scripts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, NoReturn

import psycopg
import psycopg.sql

from pgtenancy._version import __version__
from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import (
    InstallBlocked,
    TenancyError,
    UninstallIncomplete,
    raise_translated,
    translate,
)
from pgtenancy.queries import QUERIES, sql_dir

#: Version of the SQL this package installs; ``tenancy.version()`` returns it.
SQL_VERSION: Final[str] = __version__

#: Seconds each lock of an install, upgrade or uninstall may wait (see
#: :func:`install`): long enough for ordinary transactions to finish, short
#: enough that the sessions queued behind the waiting install barely notice.
DEFAULT_LOCK_TIMEOUT: Final[float] = 5.0
#: The line of ``sql/uninstall.sql`` that ends its checks.
_END_OF_CHECKS: Final[str] = "-- pgtenancy: end of checks"

#: The placeholder the SQL files carry instead of the version literal.
VERSION_PLACEHOLDER: Final[str] = "@PGTENANCY_VERSION@"

_UPGRADE_NAME = re.compile(r"^(\d+(?:\.\d+)*)--(\d+(?:\.\d+)*)\.sql$")


def stamp(text: str, version: str) -> str:
    """``text`` with every ``@PGTENANCY_VERSION@`` replaced by ``version``.

    Args:
        text: SQL text of a schema file or a delta.
        version: ``major.minor.patch``; for a delta, the version it upgrades to.
    """
    return text.replace(VERSION_PLACEHOLDER, version)


def version_key(version: str) -> tuple[int, ...]:
    """``"0.10.1"`` -> ``(0, 10, 1)``, so versions compare numerically.

    Raises:
        ValueError: when ``version`` is not dot-separated integers.
    """
    return tuple(int(part) for part in version.split("."))


def install_files() -> list[Path]:
    """The schema files, in the order they run (``sql/[0-9][0-9][0-9]_*.sql`` by name)."""
    return sorted(sql_dir().glob("[0-9][0-9][0-9]_*.sql"))


def install_script() -> str:
    """The schema files concatenated in order, stamped with :data:`SQL_VERSION`."""
    return stamp("\n".join(p.read_text("utf-8") for p in install_files()), SQL_VERSION)


def upgrade_files() -> dict[tuple[str, str], Path]:
    """The deltas ``sql/upgrades/<from>--<to>.sql``, by ``(from, to)``."""
    found: dict[tuple[str, str], Path] = {}
    for path in sorted((sql_dir() / "upgrades").glob("*--*.sql")):
        match = _UPGRADE_NAME.match(path.name)
        if match is not None:
            found[(match.group(1), match.group(2))] = path
    return found


def upgrade_path(installed: str, target: str = SQL_VERSION) -> list[tuple[str, str]]:
    """The shortest chain of deltas from ``installed`` to ``target``.

    Args:
        installed: version ``tenancy.version()`` reports.
        target: version to reach (this package's by default).

    Returns:
        ``[(from, to), ...]`` in the order to run them; empty when equal.

    Raises:
        pgtenancy.errors.TenancyError: no chain of ``sql/upgrades`` files leads
            from ``installed`` to ``target``.
    """
    edges = upgrade_files()
    paths: dict[str, list[tuple[str, str]]] = {installed: []}
    frontier = [installed]
    while frontier and target not in paths:
        step: list[str] = []
        for version in frontier:
            for source, dest in sorted(edges):
                if source == version and dest not in paths:
                    paths[dest] = [*paths[version], (source, dest)]
                    step.append(dest)
        frontier = step
    if target not in paths:
        raise TenancyError(
            f"no upgrade path from pgtenancy {installed} to {target} in sql/upgrades",
            hint="Install an intermediate release of pgtenancy first.",
        )
    return paths[target]


def upgrade_script(installed: str, target: str = SQL_VERSION) -> str:
    """The deltas from ``installed`` to ``target`` concatenated, each stamped with
    the version it upgrades to. Raises as :func:`upgrade_path`."""
    edges = upgrade_files()
    return "\n".join(
        stamp(edges[step].read_text("utf-8"), step[1]) for step in upgrade_path(installed, target)
    )


def install(
    dsn: str, *, accelerate: bool | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> str:
    """Install the pgtenancy SQL into a database, or upgrade the installed one.

    Args:
        dsn: libpq connection string or URL of the target database; the role
            needs CREATE on the database. It will own the ``tenancy`` schema and
            the tenant schemas created later.
        accelerate: whether to use the C accelerator of ``enter_tenant`` and
            ``active_tenant_id`` (``sql/011_accelerator.sql``; it needs the
            library ``pgtenancy_accel`` on the server and a superuser the first
            time, and is silently not used without them). ``None`` keeps what
            the database recorded (wanted, on a first install); ``True`` and
            ``False`` record the choice (``tenancy.set_accelerator``). Whether it
            is in use: ``SELECT tenancy.accelerator_in_use()``.
        lock_timeout: seconds each lock the install takes may wait for other
            sessions (PostgreSQL's ``lock_timeout``, for this transaction), up
            to :data:`MAX_LOCK_TIMEOUT`; ``0`` waits without limit. An install
            that waits holds up every session that needs the same objects
            after it (tenant entry among them), so it gives up instead. Not
            for another install, upgrade or uninstall running: that one is
            waited for (they serialize on a lock of their own).

    Returns:
        The installed version, as ``tenancy.version()`` reports it.

    Raises:
        ValueError: ``lock_timeout`` out of range, before any SQL runs.
        pgtenancy.errors.InstallBlocked: a lock waited longer than
            ``lock_timeout`` (55P03); nothing is changed, ``.blockers`` names
            the sessions holding the kit's objects.
        pgtenancy.errors.NewerVersionInstalled: a newer version is installed
            (PT018); nothing is changed.
        pgtenancy.errors.TenancyError: no chain of deltas leads from the
            installed version to this one, or an earlier version is installed
            as the extension (upgrade it with ALTER EXTENSION pgtenancy UPDATE).
        psycopg.Error: on connection failure or an SQL error; the transaction is
            rolled back and nothing is changed.
    """
    timeout = _lock_timeout_ms(lock_timeout)
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        try:
            with conn.transaction():
                conn.execute(QUERIES["install_quiet"])
                if accelerate is not None:
                    conn.execute(
                        QUERIES["install_accelerator"], {"setting": "on" if accelerate else "off"}
                    )
                # Another install, upgrade or uninstall is waited for as long as
                # it takes (the application role cannot take this lock); every
                # lock after it waits at most lock_timeout.
                conn.execute(QUERIES["install_lock"])
                conn.execute(QUERIES["install_lock_timeout"], {"lock_timeout": timeout})
                present = conn.execute(QUERIES["is_installed"]).fetchone()
                if present is None or not present[0]:
                    script = install_script()
                else:
                    conn.execute(QUERIES["install_target_version"], {"version": SQL_VERSION})
                    conn.execute(QUERIES["refuse_newer_install"])
                    old = conn.execute(QUERIES["version"]).fetchone()
                    assert old is not None
                    installed = str(old[0])
                    if installed == SQL_VERSION:
                        script = install_script()
                    else:
                        extension = conn.execute(QUERIES["extension_version"]).fetchone()
                        if extension is not None:
                            raise TenancyError(
                                f"pgtenancy {installed} is installed as an extension; "
                                "upgrade it with ALTER EXTENSION pgtenancy UPDATE",
                                hint="make install-extension installs the upgrade scripts.",
                            )
                        script = upgrade_script(installed)
                conn.execute(script.encode("utf-8"))
                row = conn.execute(QUERIES["version"]).fetchone()
        except psycopg.errors.LockNotAvailable:
            _raise_blocked(conn, "install", lock_timeout)
        except psycopg.Error as exc:
            raise_translated(exc)
    assert row is not None
    return str(row[0])


#: The largest lock_timeout PostgreSQL takes (INT_MAX milliseconds), in seconds.
MAX_LOCK_TIMEOUT: Final[float] = 2147483.647


def _lock_timeout_ms(seconds: float) -> str:
    if not 0 <= seconds <= MAX_LOCK_TIMEOUT:
        raise ValueError(
            f"lock_timeout must be 0 (no limit) to {MAX_LOCK_TIMEOUT:g} seconds, not {seconds!r}"
        )
    return f"{max(1, round(seconds * 1000)) if seconds else 0}ms"


def _raise_blocked(
    conn: psycopg.Connection[Any], what: str, seconds: float, dropped: int = 0
) -> NoReturn:
    """Raise :class:`InstallBlocked` for ``what``, naming the sessions that hold
    the kit's objects (read on ``conn``, whose transaction was rolled back);
    ``dropped`` tenant schemas an uninstall dropped before it was blocked."""
    try:
        rows = conn.execute(QUERIES["install_blockers"]).fetchall()
    except psycopg.Error:
        rows = []
    blockers = tuple((int(r[0]), str(r[1]), str(r[2])) for r in rows)
    held = ", ".join(f"pid {pid} ({role}, {state})" for pid, role, state in blockers)
    raise InstallBlocked(
        f"the {what} waited {seconds:g} s for a lock other sessions hold on the kit's objects"
        " and gave up; "
        + (
            f"{dropped} tenant {'schema was' if dropped == 1 else 'schemas were'} dropped"
            " before it, run it again to finish"
            if dropped
            else "nothing changed"
        )
        + (f": held by {held}" if held else ""),
        blockers=blockers,
        hint="End those transactions (they finish, or pg_terminate_backend(pid)) and run it "
        "again; an application-role transaction that read tenancy.tenant_directory and stays "
        "open is enough (idle_in_transaction_session_timeout on the role ends such ones). "
        "A longer wait: lock_timeout= (pgtenancy install --lock-timeout).",
    )


def uninstall(
    dsn: str, *, drop_tenants: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> None:
    """Remove the pgtenancy SQL (the ``tenancy`` schema) from a database.

    With ``drop_tenants`` the script's checks run first and are rolled back,
    with a wait (up to ``lock_timeout``) until no other session or prepared
    transaction holds a tenant schema's relation, then a lock on the kit's;
    then the tenant schemas are dropped, each in a transaction of its own
    (one transaction cannot lock every object of hundreds of schemas:
    PostgreSQL's ``max_locks_per_transaction``); then the whole script runs
    in one transaction. Only schemas named as the kit names them
    (``schema_prefix() || slug``) are dropped. Stopped between two of those
    transactions, the database keeps the kit with some tenant schemas gone:
    run the uninstall again to finish it.

    Args:
        dsn: libpq connection string or URL of the database.
        drop_tenants: also drop every registered tenant's schema and its data.
        lock_timeout: seconds each lock may wait, as for :func:`install`.

    Raises:
        ValueError: ``lock_timeout`` out of range, before any SQL runs.
        pgtenancy.errors.InstallBlocked: a lock waited longer than
            ``lock_timeout`` (55P03). Nothing is changed when the sessions
            holding the kit's objects or the tenants' tables were there
            before the first tenant schema was dropped; one that comes
            later stops the uninstall between two schemas, and the message
            says how many were dropped.
        pgtenancy.errors.TenantsStillRegistered: tenants are registered and
            ``drop_tenants`` is false, or objects outside the kit use it
            (PT009), found before any schema is dropped; nothing is changed.
        pgtenancy.errors.TenancyError: the kit is installed as an extension
            (CREATE EXTENSION pgtenancy): DROP EXTENSION removes it; nothing is
            changed.
        pgtenancy.errors.UninstallIncomplete: any other error after tenant
            schemas were dropped (``.dropped``, ``.cause``: a lost
            connection, a timeout, an object using the kit made meanwhile).
        psycopg.Error: on connection failure or another SQL error.
    """
    timeout = _lock_timeout_ms(lock_timeout)
    script = (sql_dir() / "uninstall.sql").read_text("utf-8")
    checks = script[: script.index(_END_OF_CHECKS)]
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:

        def begin(flag: str) -> None:
            conn.execute(QUERIES["install_quiet"])
            conn.execute(QUERIES["install_lock"])
            conn.execute(QUERIES["install_lock_timeout"], {"lock_timeout": timeout})
            conn.execute(QUERIES["uninstall_drop_tenants"], {"drop_tenants": flag})

        dropped = 0
        try:
            if conn.execute(QUERIES["extension_version"]).fetchone() is not None:
                raise TenancyError(
                    "pgtenancy is installed as an extension; remove it with DROP EXTENSION "
                    "pgtenancy, not with uninstall",
                    hint="Drop the tenants first (SELECT tenancy.drop_tenant(slug, true) for "
                    "each): their schemas are not part of the extension. Nothing was changed.",
                )
            installed = conn.execute(QUERIES["is_installed"]).fetchone()
            if drop_tenants and installed is not None and installed[0]:
                with conn.transaction(force_rollback=True):
                    begin("on")
                    conn.execute(checks.encode("utf-8"))
                    conn.execute(QUERIES["uninstall_no_statement_timeout"])
                    conn.execute(QUERIES["uninstall_claim"])
                roles = conn.execute(QUERIES["uninstall_drops_roles"]).fetchone()
                while True:
                    with conn.transaction():
                        begin("on")
                        row = conn.execute(QUERIES["uninstall_next_tenant_schema"]).fetchone()
                        if row is None:
                            break
                        conn.execute(
                            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                                psycopg.sql.Identifier(row[0])
                            )
                        )
                        if roles is not None and roles[0]:
                            conn.execute(QUERIES["uninstall_tenant_role"], {"schema_name": row[0]})
                    dropped += 1
            with conn.transaction():
                begin("on" if drop_tenants else "off")
                conn.execute(script.encode("utf-8"))
        except psycopg.errors.LockNotAvailable:
            _raise_blocked(conn, "uninstall", lock_timeout, dropped)
        except psycopg.Error as exc:
            if dropped:
                cause = translate(exc)
                raise UninstallIncomplete(dropped, cause) from cause
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


def installed_accelerator(dsn: str) -> bool:
    """Whether the C accelerator of tenant entry is in use in a database
    (``tenancy.accelerator_in_use()``, ``sql/011_accelerator.sql``).

    Args:
        dsn: libpq connection string or URL of the database.

    Returns:
        True when ``enter_tenant`` or ``active_tenant_id`` runs through its C
        function; False when the PL/pgSQL runs or the kit is not installed.

    Raises:
        psycopg.OperationalError: when the database cannot be reached.
    """
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        present = conn.execute(QUERIES["is_installed"]).fetchone()
        if present is None or not present[0]:
            return False
        row = conn.execute(QUERIES["accelerator_in_use"]).fetchone()
    return bool(row is not None and row[0])
