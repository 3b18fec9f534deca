"""The one message that opens a tenant transaction, shared by sessions and connections.

``BEGIN; CALL tenancy.enter('acme')`` goes to the server as one simple-query
message, so a tenant transaction costs the same round trips as a plain one
(psycopg sends ``BEGIN`` as its own round trip before the first statement of
a plain transaction; this message replaces it). ``tenancy.enter`` is the
procedure form of ``tenancy.enter_tenant`` (``sql/004_context.sql``): a
``CALL`` is not planned, so the server does less for it than for a
``SELECT`` of the function. The text is composed once per (``BEGIN``
variant, slug) and cached.

The procedure also returns the ``search_path`` the tenant got, and for the
rest of the transaction psycopg's automatic prepared statements are keyed by
it (:func:`tag_statements`): each tenant's statements are prepared on the
server under that tenant's ``search_path`` alone, so switching tenants does
not make PostgreSQL re-plan them (its plan cache re-plans a cached statement
whenever ``search_path`` differs from the one it was planned under). The
connection remembers each tenant's ``search_path`` once learnt and from then
on enters with ``BEGIN; CALL tenancy.enter_known('acme', '<search_path>')``,
which returns nothing (no row for the server to send nor for psycopg to
parse); the server checks the path and refuses with PT023 when the tenant's
schema changed since, and the connection learns it again (a rollback and
the ``tenancy.enter`` message: two more round trips, once). A connection
whose statements are not keyed (``prepare_threshold=None``, or a psycopg
the kit does not know) needs no path and always enters quietly, with NULL.

Internal module: the public entry points are
:func:`pgtenancy.tenant_connection` and :func:`pgtenancy.tenant_session`.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import generators, pq, sql

try:  # psycopg's prepared-statement manager (private; see tag_statements)
    from psycopg._preparing import Prepare as _Prepare
    from psycopg._preparing import PrepareManager as _PrepareManager
except ImportError:  # pragma: no cover - a psycopg without it: no per-tenant keys
    _PrepareManager = None  # type: ignore[assignment,misc]
    _Prepare = None  # type: ignore[assignment,misc]

# Per-tenant keys use psycopg's private manager: only on the releases it was
# tested with (3.2, 3.3) and with the key(query) method it overrides; on any
# other release statements stay keyed by text, as without the kit.
if _PrepareManager is not None and not (
    psycopg.__version__.split(".")[:2] in (["3", "2"], ["3", "3"])
    and list(inspect.signature(_PrepareManager.key).parameters)[-1:] == ["query"]
):  # pragma: no cover
    _PrepareManager = None  # type: ignore[assignment,misc]

from pgtenancy.errors import VersionMismatch, raise_translated

#: How many composed entry messages are kept (one per tenant and BEGIN variant).
CACHE_SIZE = 4096


def begin_command(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """The ``BEGIN`` psycopg itself would send for ``conn``'s transaction settings."""
    if conn.isolation_level is None and conn.read_only is None and conn.deferrable is None:
        return "BEGIN"
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + conn.isolation_level.name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


@lru_cache(maxsize=CACHE_SIZE)
def known_entry_message(begin: str, slug: str, search_path: bytes | None) -> bytes:
    """``<begin>; CALL tenancy.enter_known('<slug>', '<search_path>')`` as bytes
    (cached): the entry without output, for a connection that learnt the
    tenant's ``search_path`` from :func:`entry_message` (the server sends no
    row back). ``search_path`` None sends NULL: not checked (a connection
    whose statements are not keyed by it).

    ``slug`` must already be validated; both values are rendered as SQL
    literals by :class:`psycopg.sql.Literal`.
    """
    path = None if search_path is None else search_path.decode("utf-8")
    query = sql.SQL("{}; CALL tenancy.enter_known({}, {})").format(
        sql.SQL(begin), sql.Literal(slug), sql.Literal(path)
    )
    return query.as_bytes(None)


@lru_cache(maxsize=CACHE_SIZE)
def entry_message(begin: str, slug: str) -> bytes:
    """``<begin>; CALL tenancy.enter('<slug>')`` as bytes (cached): the
    procedure's one output column is the ``search_path`` the tenant got, which
    keys the transaction's prepared statements.

    ``slug`` must already be validated; it is still rendered as a SQL literal
    by :class:`psycopg.sql.Literal`, never formatted into the text by hand.
    """
    query = sql.SQL("{}; CALL tenancy.enter({})").format(sql.SQL(begin), sql.Literal(slug))
    return query.as_bytes(None)


# -- per-tenant prepared statements ------------------------------------------
#
# psycopg prepares a statement on the server after it has run prepare_threshold
# times (5 by default), keyed by its text and parameter types. PostgreSQL
# re-plans a prepared statement whenever search_path differs from the one it
# was planned under, so one statement shared by tenants that switch on every
# transaction is re-planned on every transaction. While a connection is in a
# tenant transaction, the key below also carries the tenant's search_path:
# each search_path gets its own server-side statement, planned once (shared
# tenants, who all have the same search_path, share one). The query text is
# never changed. New per-tenant keys are admitted only while psycopg's caches
# have room (prepared_max, 100 by default), so with more tenants x hot
# statements than that the rest share the text-keyed statement as before:
# raise prepared_max on the connection for per-tenant plans of all of them.
# This relies on psycopg's private PrepareManager (tested with psycopg 3.3: its key()
# method and the connection's _prepared attribute); when
# they are not there, statements stay keyed by text alone, as without the kit.


if _PrepareManager is not None:

    class _TenantPrepareManager(_PrepareManager):
        """psycopg's manager, whose keys carry the tenant's search_path while it is set."""

        _pgtenancy_tag: bytes | None = None
        _pgtenancy_owner: object = None
        #: tenant slug -> the search_path it got (see _known_paths)
        _pgtenancy_paths: dict[str, bytes] | None = None

        def key(self, query: Any) -> Any:  # type: ignore[override]
            tag = self._pgtenancy_tag
            if tag is None:
                return (query.query, query.types)
            key: Any = (query.query, query.types, tag)
            if key in self._names or key in self._counts:
                return key
            # A new per-tenant key only while both of psycopg's LRU maps have
            # room: more tenants x statements than prepared_max would make
            # them evict each other (a DEALLOCATE round trip per eviction, and
            # statements that never reach prepare_threshold). Past that, a
            # statement is shared by the tenants as without the kit.
            room = self.prepared_max - 1
            if len(self._names) < room and len(self._counts) < room:
                return key
            return (query.query, query.types)

else:  # pragma: no cover
    _TenantPrepareManager = None  # type: ignore[assignment,misc]


def _manager(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> Any:
    """``conn``'s prepared-statement manager, made per-tenant capable; None if it cannot be."""
    manager = getattr(conn, "_prepared", None)
    if manager is None or _TenantPrepareManager is None:
        return None
    kind = type(manager)
    if kind is _TenantPrepareManager:
        return manager
    if kind is _PrepareManager:
        # Same class layout, one method more: the manager keeps its state.
        manager.__class__ = _TenantPrepareManager
        return manager
    return None  # somebody else's subclass: leave it alone


def tag_statements(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    search_path: bytes | None,
    owner: object,
) -> None:
    """Key ``conn``'s automatic prepared statements by ``search_path`` until :func:`untag`.

    Args:
        conn: a connection inside the tenant transaction that set ``search_path``.
        search_path: the value of ``search_path`` in that transaction (bytes as
            the server sent them); None does nothing.
        owner: the object that ends the transaction; only it clears the tag.
    """
    if search_path is None:
        return
    manager = _manager(conn)
    if manager is not None:
        manager._pgtenancy_tag = search_path
        manager._pgtenancy_owner = owner


def untag(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], owner: object) -> None:
    """Key ``conn``'s statements by text alone again, if ``owner`` set the current tag."""
    manager = getattr(conn, "_prepared", None)
    if manager is not None and getattr(manager, "_pgtenancy_owner", None) is owner:
        manager._pgtenancy_tag = None
        manager._pgtenancy_owner = None


def statement_tag(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bytes | None:
    """The search_path ``conn``'s prepared statements are keyed by now (None: text alone)."""
    return getattr(getattr(conn, "_prepared", None), "_pgtenancy_tag", None)


def _search_path(result: pq.abc.PGresult, column: int) -> bytes | None:
    """The search_path in ``column`` of the entry's one-row result (None without one)."""
    if result.nfields <= column or result.ntuples != 1:
        return None
    return result.get_value(0, column)


def _check(
    result: pq.abc.PGresult, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
) -> None:
    if result.status != pq.ExecStatus.TUPLES_OK:
        raise_translated(psycopg.errors.error_from_result(result, encoding=conn.info.encoding))


#: What a server whose SQL predates ``tenancy.enter`` answers the entry message.
_NO_PROCEDURE = "42883"
_ROLLBACK_VERSION = b"ROLLBACK; SELECT tenancy.version()"


def _old_sql(result: pq.abc.PGresult) -> bool:
    """The entry failed because the installed SQL has no ``tenancy.enter``
    (this package is newer than the database's SQL: an upgrade not run yet)."""
    if result.status != pq.ExecStatus.FATAL_ERROR:
        return False
    state = result.error_field(pq.DiagnosticField.SQLSTATE)
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b""
    return state == _NO_PROCEDURE.encode() and (
        b"tenancy.enter(" in primary or b"tenancy.enter_known(" in primary
    )


def _mismatch(result: pq.abc.PGresult) -> VersionMismatch:
    """:class:`VersionMismatch` from the ``tenancy.version()`` result (after the rollback)."""
    value = result.get_value(0, 0) if result.ntuples == 1 else None
    installed = value.decode() if value else "an earlier version"
    return VersionMismatch(installed)


#: SQLSTATE of tenancy.enter_known when the tenant's search_path is not the one given.
_PATH_CHANGED = b"PT023"

#: How many tenants' search_paths a connection remembers (then it starts over).
PATHS_SIZE = 4096


def _known_paths(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> dict[str, bytes] | None:
    """The search_path of each tenant ``conn`` has entered, kept on its
    per-tenant prepared-statement manager; None when its statements are not
    keyed by search_path (nothing to learn: it enters with NULL)."""
    manager = _manager(conn)
    if manager is None or manager.prepare_threshold is None:
        return None
    paths: dict[str, bytes] | None = manager._pgtenancy_paths
    if paths is None:
        paths = manager._pgtenancy_paths = {}
    return paths


def _quiet(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """False once ``conn`` found the quiet entry missing or not granted."""
    return not getattr(conn, "_pgtenancy_loud", False)


def _stop_quiet(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Enter with ``tenancy.enter`` on ``conn`` from now on (an attribute of the
    connection object: it outlives its pool checkouts, as the SQL does)."""
    conn._pgtenancy_loud = True  # type: ignore[union-attr]


def _learn(paths: dict[str, bytes] | None, slug: str, path: bytes | None) -> bytes | None:
    """Remember tenant ``slug``'s ``path`` in ``paths`` (when both are there); returns ``path``."""
    if paths is not None and path is not None:
        if len(paths) >= PATHS_SIZE:
            paths.clear()
        paths[slug] = path
    return path


def _path_changed(result: pq.abc.PGresult) -> bool:
    return (
        result.status == pq.ExecStatus.FATAL_ERROR
        and result.error_field(pq.DiagnosticField.SQLSTATE) == _PATH_CHANGED
    )


#: What the server answers when the installed SQL has no tenancy.enter_known
#: or tenancy.enter_token (an earlier build of this version) or the role may
#: not call it.
_NO_QUIET = (_NO_PROCEDURE.encode(), b"42501")


def _no_quiet_entry(result: pq.abc.PGresult) -> bool:
    """The quiet entry itself is missing or not granted: enter with
    ``tenancy.enter`` instead, on this connection from now on."""
    if result.status != pq.ExecStatus.FATAL_ERROR:
        return False
    state = result.error_field(pq.DiagnosticField.SQLSTATE)
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b""
    return state in _NO_QUIET and (b"enter_known" in primary or b"enter_token" in primary)


def _check_command(
    result: pq.abc.PGresult, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
) -> None:
    if result.status != pq.ExecStatus.COMMAND_OK:
        raise_translated(psycopg.errors.error_from_result(result, encoding=conn.info.encoding))


def begin_in_tenant(conn: psycopg.Connection[Any], slug: str) -> bytes | None:
    """Open a transaction on idle ``conn`` already in tenant ``slug``, in one round trip.

    Args:
        conn: a psycopg connection with no transaction open (autocommit or not).
        slug: a validated tenant slug.

    Returns:
        The ``search_path`` the tenant got (for :func:`tag_statements`); None
        when ``conn``'s statements are not keyed by it (it entered with
        ``tenancy.enter_known(slug, NULL)``).

    Raises:
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: refused by the database (PT003/PT004/PT005/PT007);
            the transaction is then open and aborted, and must be rolled back.
        pgtenancy.errors.VersionMismatch: the database's SQL has no
            ``tenancy.enter`` or ``tenancy.enter_known`` (upgrade it:
            ``pgtenancy install``); rolled back.
        psycopg.Error: any other database error.

    A ``search_path`` refused by ``tenancy.enter_known`` (PT023: the tenant's
    schema changed since this connection learnt it) is never raised: the
    transaction is rolled back and entered again with ``tenancy.enter``.
    """
    begin = begin_command(conn)
    paths = _known_paths(conn)
    with conn.lock:
        if _quiet(conn) and (paths is None or slug in paths):
            known = None if paths is None else paths[slug]
            result = conn.pgconn.exec_(known_entry_message(begin, slug, known))
            if result.status == pq.ExecStatus.COMMAND_OK:
                return known
            if _no_quiet_entry(result):
                _stop_quiet(conn)
            elif not _path_changed(result):
                _check_command(result, conn)
            # The tenant's schema changed (or no quiet entry here): roll
            # back, enter with tenancy.enter below.
            conn.pgconn.exec_(b"ROLLBACK")
            if paths is not None:
                paths.pop(slug, None)
        result = conn.pgconn.exec_(entry_message(begin, slug))
        if _old_sql(result):
            raise _mismatch(conn.pgconn.exec_(_ROLLBACK_VERSION))
    _check(result, conn)
    return _learn(paths, slug, _search_path(result, 0))


async def abegin_in_tenant(conn: psycopg.AsyncConnection[Any], slug: str) -> bytes | None:
    """:func:`begin_in_tenant` for an ``AsyncConnection``, without blocking the loop.

    Sends the message with libpq's non-blocking ``PQsendQuery`` and waits
    for the results on the event loop, as psycopg does for its own commands.

    Raises:
        The same as :func:`begin_in_tenant`.
    """
    begin = begin_command(conn)
    paths = _known_paths(conn)
    async with conn.lock:
        if _quiet(conn) and (paths is None or slug in paths):
            known = None if paths is None else paths[slug]
            conn.pgconn.send_query(known_entry_message(begin, slug, known))
            results = await conn.wait(generators.execute(conn.pgconn))
            if all(r.status == pq.ExecStatus.COMMAND_OK for r in results):
                return known
            if any(_no_quiet_entry(r) for r in results):
                _stop_quiet(conn)
            elif not any(_path_changed(r) for r in results):
                for result in results:
                    _check_command(result, conn)
            conn.pgconn.send_query(b"ROLLBACK")
            await conn.wait(generators.execute(conn.pgconn))
            if paths is not None:
                paths.pop(slug, None)
        conn.pgconn.send_query(entry_message(begin, slug))
        results = await conn.wait(generators.execute(conn.pgconn))
        if any(_old_sql(r) for r in results):
            conn.pgconn.send_query(_ROLLBACK_VERSION)
            answers = await conn.wait(generators.execute(conn.pgconn))
            raise _mismatch(answers[-1])
    # One result per statement: BEGIN's, then the CALL's (or an error).
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            _check(result, conn)
    _check(results[-1], conn)
    return _learn(paths, slug, _search_path(results[-1], 0))


# -- strict entry: a signed token instead of a slug ---------------------------


#: The token entry, with the token and slug as bind parameters: never in the
#: statement text, which pg_stat_activity shows to every session of the
#: same role (an attack run read a live token of another tenant's request
#: there and entered that tenant with it) and the server log may keep.
TOKEN_ENTRY = (
    b"SELECT tenancy.enter_tenant_token($1, $2), pg_catalog.current_setting('search_path')"
)

#: The quiet token entry (no row back), for a tenant whose search_path the
#: connection learnt from TOKEN_ENTRY: token, slug, search_path.
QUIET_TOKEN_ENTRY = b"CALL tenancy.enter_token($1, $2, $3)"


def _token_params(token: str, slug: str | None) -> list[bytes | None]:
    return [token.encode("utf-8"), None if slug is None else slug.encode("utf-8")]


def _token_slug(token: str) -> str | None:
    """The slug a token names (its third part; the form sign_tenant_token
    writes), None when it is not of that form: such a token enters with
    TOKEN_ENTRY, which refuses it."""
    parts = token.split(".")
    return parts[2] if len(parts) == 7 and parts[0] == "pt2" and parts[2] else None


class _EntryQuery:
    """What psycopg's prepared-statement manager keys a query by: its text and
    parameter types (none: the server infers text from the function)."""

    __slots__ = ("query", "types")

    def __init__(self, query: bytes) -> None:
        self.query = query
        self.types: tuple[int, ...] = ()


_TOKEN_QUERY = _EntryQuery(TOKEN_ENTRY)
_QUIET_TOKEN_QUERY = _EntryQuery(QUIET_TOKEN_ENTRY)

#: SQLSTATE of a prepared statement the server no longer has (invalid_sql_statement_name).
_NO_STATEMENT = "26000"


def _entry_plan(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], query: _EntryQuery
) -> Any:
    """psycopg's decision for a token entry statement, as for any statement
    psycopg runs: (Prepare, name) from the connection's manager, or None
    (never prepared: ``prepare_threshold=None``, or a psycopg the kit does
    not know)."""
    manager = _manager(conn)
    if manager is None or manager.prepare_threshold is None:
        return None
    # Entry runs before the tenant's search_path is known: keyed by text alone.
    tag, manager._pgtenancy_tag = manager._pgtenancy_tag, None
    try:
        return manager.get(query)
    finally:
        manager._pgtenancy_tag = tag


def _entry_done(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    plan: Any,
    results: list[pq.abc.PGresult],
    query: _EntryQuery,
) -> bool:
    """Record the entry's outcome in psycopg's manager as psycopg records a
    statement's own. True when something must be deallocated now (an old
    statement evicted: ``manager.maintain_gen``)."""
    if plan is None:
        return False
    manager = _manager(conn)
    if manager is None:
        return False
    prep, name = plan
    entry = results[-1:]
    if (
        prep == _Prepare.SHOULD
        and len(results) == 3
        and results[1].status == pq.ExecStatus.COMMAND_OK
        and results[2].status == pq.ExecStatus.FATAL_ERROR
    ):
        # A refused token: the statement itself was prepared (results: BEGIN,
        # Parse, entry), so psycopg keeps its name rather than leave it behind.
        entry = results[1:2]
    tag, manager._pgtenancy_tag = manager._pgtenancy_tag, None
    try:
        key = manager.maybe_add_to_cache(query, prep, name)
        if key is not None:
            manager.validate(key, prep, name, entry)
    finally:
        manager._pgtenancy_tag = tag
    return bool(manager._to_flush)


def _forget_entry(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], query: _EntryQuery
) -> None:
    """The server lost the entry's prepared statement (somebody's DEALLOCATE or
    DISCARD that psycopg did not see): psycopg forgets it too."""
    manager = _manager(conn)
    if manager is not None:
        key = (query.query, ())
        manager._names.pop(key, None)
        manager._counts.pop(key, None)


def _lost_statement(plan: Any, results: list[pq.abc.PGresult]) -> bool:
    return (
        plan is not None
        and plan[0] == _Prepare.YES
        and any(
            r.status == pq.ExecStatus.FATAL_ERROR
            and r.error_field(pq.DiagnosticField.SQLSTATE) == _NO_STATEMENT.encode()
            for r in results
        )
    )


def _token_entry(
    conn: psycopg.Connection[Any],
    begin: bytes,
    params: list[bytes | None],
    query: _EntryQuery,
) -> list[pq.abc.PGresult]:
    """``BEGIN`` and the token entry ``query`` in one round trip, prepared as
    psycopg prepares statements (a statement lost behind psycopg's back:
    rolled back and sent again unprepared, two more round trips, once)."""
    plan = _entry_plan(conn, query)
    results: list[pq.abc.PGresult] = conn.wait(
        _token_pipeline(conn.pgconn, begin, params, plan, query.query)
    )
    if _lost_statement(plan, results):
        conn.wait(generators.execute(_rollback(conn.pgconn)))
        _forget_entry(conn, query)
        plan = None
        results = conn.wait(_token_pipeline(conn.pgconn, begin, params, plan, query.query))
    if _entry_done(conn, plan, results, query):
        conn.wait(conn._prepared.maintain_gen(conn))
    return results


async def _atoken_entry(
    conn: psycopg.AsyncConnection[Any],
    begin: bytes,
    params: list[bytes | None],
    query: _EntryQuery,
) -> list[pq.abc.PGresult]:
    """:func:`_token_entry` for an ``AsyncConnection``."""
    plan = _entry_plan(conn, query)
    results: list[pq.abc.PGresult] = await conn.wait(
        _token_pipeline(conn.pgconn, begin, params, plan, query.query)
    )
    if _lost_statement(plan, results):
        await conn.wait(generators.execute(_rollback(conn.pgconn)))
        _forget_entry(conn, query)
        plan = None
        results = await conn.wait(_token_pipeline(conn.pgconn, begin, params, plan, query.query))
    if _entry_done(conn, plan, results, query):
        await conn.wait(conn._prepared.maintain_gen(conn))
    return results


def _quiet_outcome(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], results: list[pq.abc.PGresult]
) -> bool:
    """True when the quiet token entry entered; False when it must be rolled
    back and the token entered with TOKEN_ENTRY (the path changed, or the
    procedure is missing or not granted: then never again on ``conn``).
    Raises the entry's refusal otherwise."""
    if all(r.status == pq.ExecStatus.COMMAND_OK for r in results):
        return True
    if any(_no_quiet_entry(r) for r in results):
        _stop_quiet(conn)
        return False
    if any(_path_changed(r) for r in results):
        return False
    for result in results:
        _check_command(result, conn)
    raise AssertionError("unreachable: a failed entry without an error result")  # pragma: no cover


def begin_with_token(
    conn: psycopg.Connection[Any], token: str, slug: str | None = None
) -> bytes | None:
    """Open a tenant transaction on idle ``conn`` for entry token ``token``, one round trip.

    The entry statement is prepared on the server as psycopg prepares any
    statement (after ``prepare_threshold`` runs, in psycopg's cache, cleared
    by the kit's reset hooks; never with ``prepare_threshold=None``), so it
    is not parsed and planned again in every transaction. For a tenant whose
    ``search_path`` the connection learnt from an earlier token entry, the
    statement is ``CALL tenancy.enter_token($1, $2, $3)``, which returns
    nothing (as :func:`begin_in_tenant`'s quiet form); PT023 (its schema
    changed) is rolled back and entered again the other way, unseen.

    Args:
        conn: a psycopg connection with no transaction open.
        token: an entry token (:func:`pgtenancy.sign_tenant_token`).
        slug: when given, the tenant the token must be for.

    Returns:
        The ``search_path`` the tenant got, or None when ``conn``'s
        statements are not keyed by it.

    Raises:
        pgtenancy.errors.EntryTokenForged, EntryTokenExpired, EntryTokenWrongTenant:
            the token was refused (PT025/PT026/PT027/PT034), and the errors of
            :func:`begin_in_tenant`; the transaction is then open and aborted.
    """
    begin = begin_command(conn).encode()
    params = _token_params(token, slug)
    paths = _known_paths(conn)
    tenant = _token_slug(token)
    with conn.lock:
        if _quiet(conn) and tenant is not None and (paths is None or tenant in paths):
            known = None if paths is None else paths[tenant]
            results = _token_entry(conn, begin, [*params, known], _QUIET_TOKEN_QUERY)
            if _quiet_outcome(conn, results):
                return known
            conn.wait(generators.execute(_rollback(conn.pgconn)))
            if paths is not None:
                paths.pop(tenant, None)
        results = _token_entry(conn, begin, params, _TOKEN_QUERY)
    path = _token_results(results, conn)
    return path if tenant is None else _learn(paths, tenant, path)


async def abegin_with_token(
    conn: psycopg.AsyncConnection[Any], token: str, slug: str | None = None
) -> bytes | None:
    """:func:`begin_with_token` for an ``AsyncConnection``, without blocking the loop.

    Raises:
        The same as :func:`begin_with_token`.
    """
    begin = begin_command(conn).encode()
    params = _token_params(token, slug)
    paths = _known_paths(conn)
    tenant = _token_slug(token)
    async with conn.lock:
        if _quiet(conn) and tenant is not None and (paths is None or tenant in paths):
            known = None if paths is None else paths[tenant]
            results = await _atoken_entry(conn, begin, [*params, known], _QUIET_TOKEN_QUERY)
            if _quiet_outcome(conn, results):
                return known
            await conn.wait(generators.execute(_rollback(conn.pgconn)))
            if paths is not None:
                paths.pop(tenant, None)
        results = await _atoken_entry(conn, begin, params, _TOKEN_QUERY)
    path = _token_results(results, conn)
    return path if tenant is None else _learn(paths, tenant, path)


def _rollback(pgconn: pq.abc.PGconn) -> pq.abc.PGconn:
    pgconn.send_query(b"ROLLBACK")
    return pgconn


def _token_pipeline(
    pgconn: pq.abc.PGconn,
    begin: bytes,
    params: list[bytes | None],
    plan: Any,
    statement: bytes = TOKEN_ENTRY,
) -> Any:
    """``BEGIN`` and the token entry ``statement`` in libpq pipeline mode: the
    extended protocol (bind parameters) in one round trip, as the
    simple-query message of :func:`begin_in_tenant` is. ``plan``: psycopg's
    (Prepare, name) for the entry, or None (unnamed). A generator for
    ``conn.wait``: the results of BEGIN, of the entry's Parse when it is
    prepared now, and of the entry (an error result stands for any of
    them)."""
    pgconn.enter_pipeline_mode()
    try:
        pgconn.send_query_params(begin, None)
        if plan is None or plan[0] == _Prepare.NO:
            pgconn.send_query_params(statement, params)
        else:
            if plan[0] == _Prepare.SHOULD:
                pgconn.send_prepare(plan[1], statement)
            pgconn.send_query_prepared(plan[1], params)
        pgconn.pipeline_sync()
        yield from generators.send(pgconn)
        results: list[pq.abc.PGresult] = []
        while True:
            got = yield from generators.fetch_many(pgconn)
            for result in got:
                if result.status == pq.ExecStatus.PIPELINE_SYNC:
                    return results
                if result.status != pq.ExecStatus.PIPELINE_ABORTED:
                    results.append(result)
    finally:
        if pgconn.pipeline_status != pq.PipelineStatus.OFF:
            pgconn.exit_pipeline_mode()


def _token_results(
    results: list[pq.abc.PGresult], conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
) -> bytes | None:
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            _check(result, conn)
    _check(results[-1], conn)
    return _search_path(results[-1], 1)
