"""Work across tenants: run a function (or a command) once inside every tenant.

:func:`for_each_tenant` lists the tenants (``tenancy.tenant_directory``,
readable by the application role, so no owner credentials are needed), then
runs ``fn`` for each in its own transaction in the tenant, ``jobs`` at a time.
A tenant that was suspended, deleted or removed after the listing is
refused by the database when it is entered and is *skipped*, not failed. A
failure of one tenant does not stop the others; the report has every
tenant's outcome. ``pgtenancy each`` is the command line form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgtenancy.errors import TenantDeleted, TenantNotFound, TenantSuspended, raise_translated
from pgtenancy.queries import QUERIES

#: Errors entering a tenant that mean "not there any more": the tenant is skipped.
GONE = (TenantSuspended, TenantDeleted, TenantNotFound)


@dataclass(frozen=True)
class TenantRow:
    """A tenant as the directory lists it."""

    slug: str
    id: Any
    schema_name: str | None
    status: str


@dataclass
class EachReport:
    """Outcome of a run over tenants.

    Attributes:
        done: slug -> what ``fn`` returned, for tenants it ran in.
        failed: slug -> the exception ``fn`` (or its commit) raised.
        skipped: slug -> why it was skipped (suspended, deleted or gone since
            the listing: the message of the database's refusal).
    """

    done: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no tenant failed."""
        return not self.failed

    def summary(self) -> str:
        """``"3 done, 1 skipped, 0 failed"``."""
        return f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed"


def list_tenants(database: Any, status: str | None = "active") -> list[TenantRow]:
    """Tenants of ``status`` (None: every tenant not deleted), ordered by slug.

    Args:
        database: a SQLAlchemy ``Engine``, a psycopg ``ConnectionPool`` or
            ``Connection``, or a DSN.
        status: ``"active"``, ``"suspended"``, ``"deleted"`` or None.
    """
    params = {"status": status}
    query = QUERIES["each_tenants"]
    try:
        if isinstance(database, str):
            with psycopg.connect(database, autocommit=True) as conn:
                rows = conn.execute(query, params).fetchall()
        elif isinstance(database, ConnectionPool):
            with database.connection() as conn:
                rows = conn.execute(query, params).fetchall()
        elif isinstance(database, psycopg.Connection):
            rows = database.execute(query, params).fetchall()
        else:  # a SQLAlchemy Engine
            with database.connect() as c:
                rows = [tuple(r) for r in c.exec_driver_sql(query, params).fetchall()]
    except psycopg.Error as exc:
        raise_translated(exc)
    except Exception as exc:
        if isinstance(getattr(exc, "orig", None), psycopg.Error):
            raise_translated(exc)
        raise
    return [TenantRow(*r) for r in rows]


async def alist_tenants(database: Any, status: str | None = "active") -> list[TenantRow]:
    """:func:`list_tenants` for an ``AsyncEngine`` or ``AsyncConnectionPool``."""
    params = {"status": status}
    query = QUERIES["each_tenants"]
    try:
        if isinstance(database, AsyncConnectionPool):
            async with database.connection() as conn:
                cur = await conn.execute(query, params)
                rows = await cur.fetchall()
        else:
            async with database.connect() as c:
                result = await c.exec_driver_sql(query, params)
                rows = [tuple(r) for r in result.fetchall()]
    except psycopg.Error as exc:
        raise_translated(exc)
    except Exception as exc:
        if isinstance(getattr(exc, "orig", None), psycopg.Error):
            raise_translated(exc)
        raise
    return [TenantRow(*r) for r in rows]


def _run_sync(database: Any, slug: str, fn: Callable[[Any], Any]) -> tuple[str, Any]:
    """("done", result) | ("skipped", reason) | ("failed", exc) for one tenant."""
    entered = False
    try:
        if isinstance(database, ConnectionPool):
            from pgtenancy.connection import tenant_connection

            with tenant_connection(database, slug) as conn:
                entered = True
                return "done", fn(conn)
        from pgtenancy.session import tenant_session

        with tenant_session(database, slug) as session:
            session.connection()  # enter now: a refusal is a skip
            entered = True
            result = fn(session)
            session.commit()
            return "done", result
    except GONE as exc:
        if entered:
            return "failed", exc
        return "skipped", exc.message
    except Exception as exc:
        return "failed", exc


def for_each_tenant(
    database: Any,
    fn: Callable[[Any], Any],
    *,
    jobs: int = 4,
    status: str | None = "active",
    slugs: Sequence[str] | None = None,
) -> EachReport:
    """Run ``fn`` once inside every tenant, ``jobs`` tenants at a time (threads).

    Usage::

        def close_month(session: Session) -> int:
            return session.execute(update(Invoice).values(closed=True)).rowcount

        report = for_each_tenant(engine, close_month, jobs=8)
        if not report.ok: ...

    Args:
        database: a SQLAlchemy ``Engine`` (``fn`` gets a ``Session`` in the
            tenant, committed when ``fn`` returns) or a psycopg
            ``ConnectionPool`` (``fn`` gets a connection in a tenant
            transaction, committed when ``fn`` returns). The application
            role's is enough. Give the engine/pool at least ``jobs`` connections.
        fn: called with the session or connection; ``current_tenant()``
            names the tenant. What it returns lands in ``report.done``.
        jobs: tenants run at once (>= 1).
        status: which tenants to list (None: every tenant not deleted).
        slugs: these tenants instead of listing (still entered one by one).

    Returns:
        :class:`EachReport`. Exceptions of ``fn`` are collected, not raised.

    Raises:
        ValueError: ``jobs`` < 1. Errors listing the tenants (e.g.
        :class:`~pgtenancy.errors.NotInstalled`).
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    todo = list(slugs) if slugs is not None else [t.slug for t in list_tenants(database, status)]
    report = EachReport()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pgtenancy-each") as pool:
        outcomes = pool.map(lambda s: (s, *_run_sync(database, s, fn)), todo)
        for slug, kind, value in outcomes:
            getattr(report, kind)[slug] = value
    return report


async def afor_each_tenant(
    database: Any,
    fn: Callable[[Any], Awaitable[Any]],
    *,
    jobs: int = 4,
    status: str | None = "active",
    slugs: Sequence[str] | None = None,
) -> EachReport:
    """:func:`for_each_tenant` for asyncio: ``fn`` is a coroutine function
    given an ``AsyncSession`` (``AsyncEngine``) or an async connection
    (``AsyncConnectionPool``); at most ``jobs`` run at once."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    if slugs is not None:
        todo = list(slugs)
    else:
        todo = [t.slug for t in await alist_tenants(database, status)]
    report = EachReport()
    gate = asyncio.Semaphore(jobs)

    async def one(slug: str) -> None:
        entered = False
        async with gate:
            try:
                if isinstance(database, AsyncConnectionPool):
                    from pgtenancy.connection import tenant_connection

                    async with tenant_connection(database, slug) as conn:
                        entered = True
                        report.done[slug] = await fn(conn)
                    return
                from pgtenancy.session import tenant_session

                async with tenant_session(database, slug) as session:
                    await session.connection()
                    entered = True
                    result = await fn(session)
                    await session.commit()
                    report.done[slug] = result
            except GONE as exc:
                if entered:
                    report.failed[slug] = exc
                else:
                    report.skipped[slug] = exc.message
            except Exception as exc:
                report.failed[slug] = exc

    await asyncio.gather(*(one(s) for s in todo))
    return report
