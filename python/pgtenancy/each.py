"""Work across tenants: run a function (or a command) once inside every tenant.

:func:`for_each_tenant` lists the tenants (``tenancy.tenant_directory``,
readable by the application role, so no owner credentials are needed), then
runs ``fn`` for each in its own transaction in the tenant, ``jobs`` at a time.
A tenant that was suspended, deleted or removed after the listing is
refused by the database when it is entered and is *skipped*, not failed. A
failure of one tenant does not stop the others; the report has every
tenant's outcome. ``pgtenancy each`` is the command line form.

Strict entry (``tenancy.set_strict_entry(true)``): a job connecting as the
application role enters each tenant with a signed entry token. Give
``token_for``, a callable ``slug -> token`` called right before each tenant
is entered (:class:`TokenSigner` signs a fresh short-lived token per tenant
with an entry key; any callable of yours, e.g. asking the service that holds
the key, works too). Without ``token_for`` on a strict database the run
stops before entering any tenant with :class:`~pgtenancy.errors.EntryTokenForged`
(PT025) saying so. A job connecting as the kit's owner (a login role member
of it) needs no token: the database trusts its sessions.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgtenancy.entry_tokens import DEFAULT_KEY_NAME, sign_tenant_token
from pgtenancy.errors import (
    EntryTokenError,
    EntryTokenForged,
    TenantDeleted,
    TenantNotFound,
    TenantSuspended,
    raise_translated,
    translate,
)
from pgtenancy.queries import QUERIES

#: Errors entering a tenant that mean "not there any more": the tenant is skipped.
GONE = (TenantSuspended, TenantDeleted, TenantNotFound)

#: ``token_for``: the entry token for a tenant slug (called right before entering it).
TokenFor = Callable[[str], str]

#: Environment variable holding an entry key as hex (``pgtenancy each``).
KEY_ENV = "PGTENANCY_ENTRY_KEY"

# Strict probe: the function the policies call, with a made-up tenant id set
# first (one statement: the subquery, volatile, runs before the outer target
# list). In strict mode, without a token, active_tenant_id() raises PT025 for
# any id, before any tenant is looked up; otherwise it returns NULL here.
_PROBE = (
    "SELECT tenancy.active_tenant_id() FROM (SELECT pg_catalog.set_config("
    "'app.tenant_id', '00000000-0000-0000-0000-000000000000', true)) AS probe"
)

_NEEDS_TOKEN = (
    "strict entry is on: entering tenants as this role needs an entry token; pass "
    "token_for=TokenSigner(key, key_name=...) to for_each_tenant (pgtenancy each: "
    "--entry-key-name NAME with the key in $PGTENANCY_ENTRY_KEY or --entry-key-file)"
)


class TokenSigner:
    """``token_for`` that signs a fresh entry token per tenant with an entry key.

    Usage::

        report = for_each_tenant(engine, job, token_for=TokenSigner(key, key_name="k1"))

    Args:
        key: the entry key (32 bytes or more), the bytes given to
            ``tenancy.add_entry_key(key_name, key)``. Kept in this object
            only; its ``repr`` does not show it.
        key_name: the name the key was added under.
        ttl_seconds: lifetime of each token, in seconds, counted from the
            moment its tenant is entered: it must cover that tenant's work
            (every transaction of the tenant's session enters with the same
            token; a transaction begun after it expired is refused with PT026,
            a statement after it expired with PT028).

    Raises:
        ValueError: short key, bad key name or ttl (as
            :func:`pgtenancy.sign_tenant_token`), at construction.
    """

    __slots__ = ("_key", "key_name", "ttl_seconds")

    def __init__(
        self, key: bytes, *, key_name: str = DEFAULT_KEY_NAME, ttl_seconds: float = 300.0
    ) -> None:
        sign_tenant_token(key, "probe", ttl_seconds, key_name)  # check the arguments now
        self._key = bytes(key)
        self.key_name = key_name
        self.ttl_seconds = ttl_seconds

    def __call__(self, slug: str) -> str:
        """A fresh token for tenant ``slug``, valid for ``ttl_seconds`` from now."""
        return sign_tenant_token(self._key, slug, self.ttl_seconds, self.key_name)

    def __repr__(self) -> str:
        return f"TokenSigner(key_name={self.key_name!r}, ttl_seconds={self.ttl_seconds!r})"


def load_entry_key(
    file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """An entry key from a file or the environment, never from the command line.

    Args:
        file: a file holding the key as hex (what ``pgtenancy entry-key add``
            prints; surrounding whitespace ignored).
        environ: where to read ``$PGTENANCY_ENTRY_KEY`` (hex) when ``file``
            is None; default ``os.environ``.

    Returns:
        The key bytes, or None when neither is given.

    Raises:
        ValueError: the file or variable is not hex, or both are given. The
            message never contains the key.
        FileNotFoundError: ``file`` does not exist.
    """
    env = os.environ if environ is None else environ
    from_env = env.get(KEY_ENV)
    if file is not None and from_env:
        raise ValueError(f"give the entry key either in ${KEY_ENV} or in a file, not both")
    if file is not None:
        with open(file, encoding="ascii", errors="replace") as f:
            text, where = f.read().strip(), f"file {os.fspath(file)}"
    elif from_env:
        text, where = from_env.strip(), f"${KEY_ENV}"
    else:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"the entry key in {where} is not hex") from None


def _probe_sync(database: Any) -> None:
    """Raise EntryTokenForged when entering without a token is refused (strict mode)."""
    try:
        if isinstance(database, ConnectionPool):
            with database.connection() as conn:
                conn.execute(_PROBE)
                if not conn.autocommit:
                    conn.rollback()
        else:  # a SQLAlchemy Engine
            with database.connect() as c:
                c.exec_driver_sql(_PROBE)
                c.rollback()
    except Exception as exc:
        _probe_failed(exc)


async def _probe_async(database: Any) -> None:
    """:func:`_probe_sync` for an ``AsyncConnectionPool`` or ``AsyncEngine``."""
    try:
        if isinstance(database, AsyncConnectionPool):
            async with database.connection() as conn:
                await conn.execute(_PROBE)
                if not conn.autocommit:
                    await conn.rollback()
        else:
            async with database.connect() as c:
                await c.exec_driver_sql(_PROBE)
                await c.rollback()
    except Exception as exc:
        _probe_failed(exc)


def _probe_failed(exc: Exception) -> None:
    err = translate(exc)
    if isinstance(err, EntryTokenForged):
        raise EntryTokenForged(_NEEDS_TOKEN, hint=err.hint) from exc
    if err is not exc:
        raise err from exc
    raise exc


def _token_error(exc: Exception) -> Exception:
    """The kit's exception for a refused or expired entry token raised by ``fn``
    (a raw driver error with SQLSTATE PT025-PT028, PT034), else ``exc`` itself."""
    err = translate(exc)
    return err if isinstance(err, EntryTokenError) else exc


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


def _run_sync(
    database: Any, slug: str, fn: Callable[[Any], Any], token: str | None = None
) -> tuple[str, Any]:
    """("done", result) | ("skipped", reason) | ("failed", exc) for one tenant,
    entered with entry token ``token`` when given."""
    entered = False
    try:
        if isinstance(database, ConnectionPool):
            from pgtenancy.connection import tenant_connection

            with tenant_connection(database, slug, token=token) as conn:
                entered = True
                return "done", fn(conn)
        from pgtenancy.session import tenant_session

        with tenant_session(database, slug, token=token) as session:
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
        return "failed", _token_error(exc)


def _run_one(
    database: Any, slug: str, fn: Callable[[Any], Any], token_for: TokenFor | None
) -> tuple[str, Any]:
    """:func:`_run_sync` with the token ``token_for`` gives (its failure: a failed tenant)."""
    token = None
    if token_for is not None:
        try:
            token = token_for(slug)
        except Exception as exc:
            return "failed", exc
    return _run_sync(database, slug, fn, token)


def for_each_tenant(
    database: Any,
    fn: Callable[[Any], Any],
    *,
    jobs: int = 4,
    status: str | None = "active",
    slugs: Sequence[str] | None = None,
    token_for: TokenFor | None = None,
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
        token_for: strict entry: ``slug -> entry token``, called in the
            worker right before the tenant is entered (e.g.
            :class:`TokenSigner`); every transaction of the tenant's session
            enters with that token. An exception it raises fails that tenant.
            None: plain entry.

    Returns:
        :class:`EachReport`. Exceptions of ``fn`` are collected, not raised;
        refused or expired tokens (SQLSTATE PT025-PT028, PT034) appear there as the
        kit's :class:`~pgtenancy.errors.EntryTokenError` classes.

    Raises:
        ValueError: ``jobs`` < 1. Errors listing the tenants (e.g.
        :class:`~pgtenancy.errors.NotInstalled`).
        pgtenancy.errors.EntryTokenForged: strict entry is on, no
            ``token_for`` was given and this role is not the kit's owner
            (PT025): raised before any tenant is entered.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    todo = list(slugs) if slugs is not None else [t.slug for t in list_tenants(database, status)]
    if todo and token_for is None:
        _probe_sync(database)
    report = EachReport()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="pgtenancy-each") as pool:
        outcomes = pool.map(lambda s: (s, *_run_one(database, s, fn, token_for)), todo)
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
    token_for: TokenFor | None = None,
) -> EachReport:
    """:func:`for_each_tenant` for asyncio: ``fn`` is a coroutine function
    given an ``AsyncSession`` (``AsyncEngine``) or an async connection
    (``AsyncConnectionPool``); at most ``jobs`` run at once. ``token_for``
    (a plain callable) and the strict-mode refusal as in :func:`for_each_tenant`."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    if slugs is not None:
        todo = list(slugs)
    else:
        todo = [t.slug for t in await alist_tenants(database, status)]
    if todo and token_for is None:
        await _probe_async(database)
    report = EachReport()
    gate = asyncio.Semaphore(jobs)

    async def one(slug: str) -> None:
        entered = False
        async with gate:
            try:
                token = None if token_for is None else token_for(slug)
                if isinstance(database, AsyncConnectionPool):
                    from pgtenancy.connection import tenant_connection

                    async with tenant_connection(database, slug, token=token) as conn:
                        entered = True
                        report.done[slug] = await fn(conn)
                    return
                from pgtenancy.session import tenant_session

                async with tenant_session(database, slug, token=token) as session:
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
                report.failed[slug] = _token_error(exc)

    await asyncio.gather(*(one(s) for s in todo))
    return report
