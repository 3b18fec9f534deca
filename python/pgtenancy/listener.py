"""The outbox consumer: lifecycle events from the database, delivered as signals.

A :class:`Listener` runs in its own process (``pgtenancy listen``) or thread:

1. connects (autocommit) and LISTENs on ``tenancy.events_channel()`` first,
2. catches up: reads events after its durable cursor with
   ``tenancy.next_events()`` (only from transactions finished for every
   snapshot, ordered by (xid, id), so an event whose transaction took a
   smaller id but committed later is never skipped), sends each to its
   lifecycle signal, and moves the cursor after the receivers ran,
3. waits for a notification (or ``poll_interval``), then catches up again.

On a lost connection it reconnects with exponential backoff and catches up.
A receiver that raises blocks the consumer at that event, which is retried
with backoff: no event is lost, and delivery is at least once (use
``event.id`` as the idempotency key). SIGTERM and SIGINT stop it after the
event in hand, with the cursor saved.

``run()`` is the blocking form (receivers through ``send_robust``);
``await arun()`` is the asyncio form on ``psycopg.AsyncConnection``, where
async receivers are awaited in registration order (``asend_robust``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import LeaseLost, ListenNotSupported, TenancyError, raise_translated
from pgtenancy.events import Event
from pgtenancy.queries import QUERIES
from pgtenancy.signals import LIFECYCLE_SIGNALS, ROW_SIGNALS, BoundReceiver, Signal

logger = logging.getLogger("pgtenancy.listener")


class ReceiverFailed(TenancyError):
    """One or more receivers raised for an event; the cursor stays before it.

    Attributes:
        event: the event being delivered.
        errors: ``(receiver, exception)`` pairs.
    """

    def __init__(self, event: Event, errors: list[tuple[Any, BaseException]]) -> None:
        names = ", ".join(getattr(r, "__qualname__", repr(r)) for r, _ in errors)
        super().__init__(f"event {event.id} ({event.name}): receivers raised: {names}")
        self.event = event
        self.errors = errors


def check_listen_capable(dsn: str, connect_timeout: int = 5) -> None:
    """Refuse a DSN on which LISTEN cannot work.

    LISTEN belongs to one server backend; a transaction pooler hands each
    transaction to any backend, so notifications would go astray. Two client
    connections are compared: on a direct or session-pooled connection each
    keeps its own backend; behind a transaction pooler a client's backend
    changes between statements or is shared with the other client.

    Args:
        dsn: libpq DSN or URL.
        connect_timeout: seconds allowed to connect.

    Raises:
        pgtenancy.errors.ListenNotSupported: the backends are not stable.
        psycopg.OperationalError: the database cannot be reached.
    """
    dsn = libpq_dsn(dsn)
    query = "SELECT pg_catalog.pg_backend_pid()"
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": connect_timeout}
    with psycopg.connect(dsn, **kwargs) as one, psycopg.connect(dsn, **kwargs) as two:
        pids = []
        for conn in (one, two, one, two):
            row = conn.execute(query).fetchone()
            assert row is not None
            pids.append(int(row[0]))
    if pids[0] != pids[2] or pids[1] != pids[3] or pids[0] == pids[1]:
        raise ListenNotSupported(
            "this DSN does not keep one server backend per connection (a transaction pooler "
            "such as PgBouncer in transaction mode?): LISTEN would miss notifications; give the "
            "listener a direct or session-pooled connection"
        )


def import_handlers(modules: Iterable[str]) -> None:
    """Import the modules that connect receivers to the signals.

    Args:
        modules: dotted module paths, e.g. ``["myapp.handlers"]``, importable
            from ``sys.path`` or the current directory.

    Raises:
        ImportError: with the module name, when one cannot be imported.
    """
    # Like `python -m`, find modules of the current directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"cannot import handlers module {name!r}: {exc}") from exc


class Listener:
    """Consume the lifecycle outbox as consumer ``consumer`` and send signals.

    Args:
        dsn: libpq DSN or URL of the database. It must be a direct (or
            session-pooled) connection: LISTEN does not work through a
            transaction pooler.
        consumer: consumer name; its cursor in ``tenancy.consumers`` is
            created at the start of the outbox on first use.
        batch_size: events read per query (the cursor moves once per batch).
        poll_interval: seconds to wait for a notification before polling
            anyway; also bounds how long a stop request waits.
        retry_interval: seconds before re-reading when committed events wait
            for an older open transaction.
        backoff_min, backoff_max: bounds, in seconds, of the exponential
            backoff after a lost connection or a failing receiver.
        connect_timeout: seconds allowed to connect.
        heartbeat_interval: seconds between heartbeats (``consumers.seen_at``),
            which keep the consumer active for ``tenancy.prune_events``.
        lease_seconds: length of the consumer lease. Several listeners may run
            one consumer name: the one holding the lease dispatches and renews
            it every third of this (between events); the others wait and take
            over within about 1.3 times this after it stops renewing (at once
            after a clean stop). Make it longer than the slowest event takes
            (retries included), or a waiting listener takes over while the
            holder is still busy and the event runs twice.
        max_attempts: calls of a failing receiver for one event (with backoff
            from ``backoff_min``) before the event is parked for that receiver
            and the consumer goes on; for an ``ordering_critical`` signal the
            consumer blocks at the event instead, retrying with backoff.

    Attributes:
        holder: this listener's lease holder id, ``host:pid:random``.
        delivered: events delivered so far.
    """

    def __init__(
        self,
        dsn: str,
        consumer: str,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        retry_interval: float = 0.05,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
        connect_timeout: int = 5,
        heartbeat_interval: float = 10.0,
        lease_seconds: float = 10.0,
        max_attempts: int = 5,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.dsn = libpq_dsn(dsn)
        self.consumer = consumer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.heartbeat_interval = heartbeat_interval
        self.lease_seconds = lease_seconds
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_at = 0.0
        self._holding = False
        self._beat_at = 0.0
        self._stop = threading.Event()
        self._receiver_backoff = backoff_min
        self._held_wait = retry_interval
        self._flow_wait = poll_interval
        self.delivered = 0

    @property
    def application_name(self) -> str:
        """``application_name`` of the listener's connection, as seen in
        ``pg_stat_activity``: ``pgtenancy-listener:<consumer>``."""
        return f"pgtenancy-listener:{self.consumer}"[:63]

    # -- control -----------------------------------------------------------

    def stop(self) -> None:
        """Ask the listener to stop after the event in hand; safe from any thread
        or a signal handler."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT in the main thread).

        Raises:
            pgtenancy.errors.NotInstalled: the SQL core is missing.
            psycopg.Error: an SQL error that reconnecting cannot cure (e.g.
                authentication), at the first connection.
        """
        restore = self._install_signal_handlers()
        try:
            self._loop()
        finally:
            for signum, handler in restore.items():
                signal.signal(signum, handler)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def _handler(signum: int, _frame: FrameType | None) -> None:
            logger.info("received signal %d, stopping", signum)
            self.stop()

        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _handler)
        return previous

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    async def _asleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "connect_timeout": self.connect_timeout,
            "application_name": self.application_name,
            "row_factory": dict_row,
        }

    def _on_failure(self, exc: psycopg.Error, backoff: float, ever_connected: bool) -> float:
        """Log a lost connection; return the delay before reconnecting, or
        re-raise what reconnecting cannot cure."""
        if isinstance(exc, psycopg.OperationalError):
            if not ever_connected and _is_permanent(exc):
                raise exc
            delay = backoff * (1 + random.random() / 2)
            logger.warning("connection lost (%s); reconnecting in %.2fs", exc, delay)
            return delay
        raise_translated(exc)

    def _loop(self) -> None:
        backoff = self.backoff_min
        ever_connected = False
        while not self.stopping:
            try:
                if not ever_connected:
                    check_listen_capable(self.dsn, self.connect_timeout)
                with psycopg.connect(self.dsn, **self._connect_kwargs()) as conn:
                    self._listen(conn)
                    ever_connected = True
                    backoff = self.backoff_min
                    logger.info("consumer %s listening as %s", self.consumer, self.holder)
                    self._serve(conn)
            except psycopg.Error as exc:
                self._sleep(self._on_failure(exc, backoff, ever_connected))
                backoff = min(backoff * 2, self.backoff_max)
        logger.info("consumer %s stopped after %d events", self.consumer, self.delivered)

    def _listen(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        row = conn.execute(QUERIES["events_channel"]).fetchone()
        assert row is not None
        conn.execute(_listen_sql(row))
        conn.execute(QUERIES["register_consumer"], {"consumer": self.consumer})

    def _heartbeat_due(self) -> bool:
        now = time.monotonic()
        if now - self._beat_at < self.heartbeat_interval:
            return False
        self._beat_at = now
        return True

    def _lease_due(self) -> bool:
        return not self._holding or time.monotonic() - self._lease_at >= self.lease_seconds / 3

    def _standby_wait(self) -> float:
        return min(self.poll_interval, self.lease_seconds / 3)

    def _lease_params(self) -> dict[str, Any]:
        return {"consumer": self.consumer, "holder": self.holder, "seconds": self.lease_seconds}

    def _lease_result(self, row: dict[str, Any] | None) -> bool:
        held = bool(row and row["held"])
        if held and not self._holding:
            logger.info("consumer %s: %s holds the lease", self.consumer, self.holder)
        elif not held and self._holding:
            logger.warning("consumer %s: lease lost by %s", self.consumer, self.holder)
        self._holding = held
        self._lease_at = time.monotonic()
        return held

    def _keep_lease(self, conn: psycopg.Connection[dict[str, Any]]) -> bool:
        if self._lease_due():
            row = conn.execute(QUERIES["acquire_lease"], self._lease_params()).fetchone()
            return self._lease_result(row)
        return True

    def _serve(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self._beat_at = 0.0
        self._holding = False
        try:
            while not self.stopping:
                self._serve_once(conn)
        finally:
            if self._holding and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(QUERIES["release_lease"], self._lease_params())
                self._holding = False

    def _serve_once(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        if self._heartbeat_due():
            conn.execute(QUERIES["consumer_heartbeat"], {"consumer": self.consumer})
        if not self._keep_lease(conn):
            # Standby: wait for the holder's lease to lapse.
            for _ in conn.notifies(timeout=self._standby_wait(), stop_after=1):
                pass
            return
        try:
            delivered = self.catch_up(conn)
        except ReceiverFailed as exc:
            self._sleep(self._receiver_failed(exc))
            return
        except LeaseLost:
            self._holding = False
            return
        self._receiver_backoff = self.backoff_min
        if self.stopping:
            return
        held = conn.execute(QUERIES["events_held_back"], {"consumer": self.consumer}).fetchone()
        wait = min(self._wait_time(held, delivered), self.lease_seconds / 3)
        for _ in conn.notifies(timeout=wait, stop_after=1):
            pass

    def _receiver_failed(self, exc: ReceiverFailed) -> float:
        """Log a failed delivery; return the delay before retrying it. The delay
        doubles with each consecutive failure, up to ``backoff_max``."""
        delay = self._receiver_backoff
        logger.error("%s; retrying in %.2fs", exc, delay)
        self._receiver_backoff = min(delay * 2, self.backoff_max)
        return delay

    def _wait_time(self, held: dict[str, Any] | None, delivered: int) -> float:
        """How long to wait for a notification before reading again.

        Row-change events do not NOTIFY (it would serialize writers), so while
        events flow the listener polls: ``retry_interval`` after a batch was
        delivered, doubling on each empty read up to ``poll_interval``. The
        same short, growing delay applies while committed events wait behind
        an older open transaction. Idle, it waits ``poll_interval`` (or a
        NOTIFY of a lifecycle event, whichever comes first).
        """
        if delivered:
            self._flow_wait = self.retry_interval
            return self.retry_interval
        if held and next(iter(held.values())):
            wait = self._held_wait
            self._held_wait = min(wait * 2, self.poll_interval)
            return wait
        self._held_wait = self.retry_interval
        wait = self._flow_wait
        self._flow_wait = min(wait * 2, self.poll_interval)
        return wait

    # -- asyncio -----------------------------------------------------------

    async def arun(self) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when running in the
        main thread's event loop), awaiting async receivers in order.

        Raises:
            pgtenancy.errors.NotInstalled: the SQL core is missing.
            psycopg.Error: an error that reconnecting cannot cure, at the first
                connection.
        """
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
                handled.append(sig)
        try:
            await self._aloop()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _aloop(self) -> None:
        backoff = self.backoff_min
        ever_connected = False
        while not self.stopping:
            try:
                if not ever_connected:
                    await asyncio.to_thread(check_listen_capable, self.dsn, self.connect_timeout)
                conn = await psycopg.AsyncConnection.connect(self.dsn, **self._connect_kwargs())
                async with conn:
                    row = await (await conn.execute(QUERIES["events_channel"])).fetchone()
                    assert row is not None
                    await conn.execute(_listen_sql(row))
                    await conn.execute(QUERIES["register_consumer"], {"consumer": self.consumer})
                    ever_connected = True
                    backoff = self.backoff_min
                    logger.info("consumer %s listening (asyncio)", self.consumer)
                    await self._aserve(conn)
            except psycopg.Error as exc:
                await self._asleep(self._on_failure(exc, backoff, ever_connected))
                backoff = min(backoff * 2, self.backoff_max)
        logger.info("consumer %s stopped after %d events", self.consumer, self.delivered)

    async def _akeep_lease(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> bool:
        if self._lease_due():
            cur = await conn.execute(QUERIES["acquire_lease"], self._lease_params())
            return self._lease_result(await cur.fetchone())
        return True

    async def _aserve(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        self._beat_at = 0.0
        self._holding = False
        try:
            while not self.stopping:
                await self._aserve_once(conn)
        finally:
            if self._holding and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute(QUERIES["release_lease"], self._lease_params())
                self._holding = False

    async def _aserve_once(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        if self._heartbeat_due():
            await conn.execute(QUERIES["consumer_heartbeat"], {"consumer": self.consumer})
        if not await self._akeep_lease(conn):
            async for _ in conn.notifies(timeout=self._standby_wait(), stop_after=1):
                pass
            return
        try:
            delivered = await self.acatch_up(conn)
        except ReceiverFailed as exc:
            await self._asleep(self._receiver_failed(exc))
            return
        except LeaseLost:
            self._holding = False
            return
        self._receiver_backoff = self.backoff_min
        if self.stopping:
            return
        cur = await conn.execute(QUERIES["events_held_back"], {"consumer": self.consumer})
        held = await cur.fetchone()
        wait = min(self._wait_time(held, delivered), self.lease_seconds / 3)
        async for _ in conn.notifies(timeout=wait, stop_after=1):
            pass

    async def acatch_up(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> int:
        """Async :meth:`catch_up`: deliver every readable event after the cursor.

        Raises:
            ReceiverFailed: a receiver raised; the cursor stays before that event.
        """
        total = 0
        while not self.stopping:
            if self._heartbeat_due():
                await conn.execute(QUERIES["consumer_heartbeat"], {"consumer": self.consumer})
            cur = await conn.execute(QUERIES["next_events"], self._batch_params())
            rows = await cur.fetchall()
            if not rows:
                break
            done: Event | None = None
            try:
                for row in rows:
                    if not await self._akeep_lease(conn):
                        raise LeaseLost(f"consumer {self.consumer}: lease lost by {self.holder}")
                    event = Event.from_row(row)
                    await self.adispatch(event, conn)
                    done = event
                    total += 1
                    self.delivered += 1
                    if self.stopping:
                        break
            finally:
                if done is not None:
                    try:
                        await conn.execute(QUERIES["advance_consumer"], self._advance_params(done))
                    except psycopg.Error as exc:
                        raise_translated(exc)
            if len(rows) < self.batch_size:
                break
        return total

    async def adispatch(
        self, event: Event, conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
    ) -> None:
        """Async :meth:`dispatch`: async receivers are awaited, in registration
        order, with the same retries and parking.

        Raises:
            ReceiverFailed: as :meth:`dispatch`.
        """
        for sig, sender, kwargs in _sends(event):
            if sig.is_muted():
                continue
            for bound in sig.receivers(sender):
                error = await self._acall_with_retries(bound, sig, sender, kwargs, event)
                if error is None:
                    continue
                parked: list[dict[str, Any]] = []
                self._park_or_raise(conn, event, sig, bound, error, parked=parked)
                assert conn is not None
                for params in parked:
                    await conn.execute(QUERIES["park_event"], params)
                logger.error(
                    "event %d (%s) parked for receiver %s", event.id, event.name, bound.name
                )

    async def _acall_with_retries(
        self,
        bound: BoundReceiver,
        sig: Signal,
        sender: str | None,
        kwargs: dict[str, Any],
        event: Event,
    ) -> BaseException | None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await bound.acall(sig, sender, **kwargs)
                return None
            except Exception as exc:
                logger.warning(
                    "event %d (%s): receiver %s failed (attempt %d of %d): %s",
                    event.id,
                    event.name,
                    bound.name,
                    attempt,
                    self.max_attempts,
                    exc,
                )
                if attempt == self.max_attempts or self.stopping:
                    return exc
                await self._asleep(self._retry_delay(attempt))
        return None

    def _batch_params(self) -> dict[str, Any]:
        return {"consumer": self.consumer, "limit": self.batch_size}

    def _advance_params(self, done: Event) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "xid": str(done.xid),
            "id": done.id,
            "holder": self.holder,
        }

    # -- delivery ----------------------------------------------------------

    def catch_up(self, conn: psycopg.Connection[dict[str, Any]]) -> int:
        """Deliver every readable event after the cursor, batch by batch.

        Args:
            conn: an autocommit connection with ``dict_row`` rows.

        Returns:
            The number of events delivered.

        Raises:
            ReceiverFailed: a receiver raised; the cursor stays before that event.
        """
        total = 0
        while not self.stopping:
            if self._heartbeat_due():  # a long catch-up is still alive
                conn.execute(QUERIES["consumer_heartbeat"], {"consumer": self.consumer})
            rows = conn.execute(QUERIES["next_events"], self._batch_params()).fetchall()
            if not rows:
                break
            done: Event | None = None
            try:
                for row in rows:
                    if not self._keep_lease(conn):
                        raise LeaseLost(f"consumer {self.consumer}: lease lost by {self.holder}")
                    event = Event.from_row(row)
                    self.dispatch(event, conn)
                    done = event
                    total += 1
                    self.delivered += 1
                    if self.stopping:
                        break
            finally:
                if done is not None:
                    try:
                        conn.execute(QUERIES["advance_consumer"], self._advance_params(done))
                    except psycopg.Error as exc:
                        raise_translated(exc)
            if len(rows) < self.batch_size:
                break
        return total

    def dispatch(
        self, event: Event, conn: psycopg.Connection[dict[str, Any]] | None = None
    ) -> None:
        """Send ``event`` to its signals, every receiver in order: a lifecycle
        event to its lifecycle signal, a ``rows_changed`` event to
        ``row_inserted``/``row_updated``/``row_deleted`` once per row.

        A receiver that raises is called again, up to ``max_attempts`` times
        with backoff; then the event is parked for it (with ``conn``) and the
        next receivers run. Events whose name has no signal are skipped.

        Raises:
            ReceiverFailed: a receiver of an ordering-critical signal kept
                failing (or no ``conn`` to park with, or stop was requested).
        """
        for sig, sender, kwargs in _sends(event):
            if sig.is_muted():
                continue
            for bound in sig.receivers(sender):
                error = self._call_with_retries(bound, sig, sender, kwargs, event)
                if error is not None:
                    self._park_or_raise(conn, event, sig, bound, error)

    def retry_parked(self) -> tuple[int, int]:
        """Deliver this consumer's parked events again, each to the receiver
        that failed on it only (found by its name among the connected
        receivers; import the handlers first).

        Returns:
            ``(delivered, still_failing)``; a delivered event is unparked, a
            failing one stays parked with its attempts added.
        """
        delivered = failing = 0
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            rows = conn.execute(QUERIES["parked_events"], {"consumer": self.consumer}).fetchall()
            for row in rows:
                event = Event.from_row(row)
                name = row["receiver"]
                matches = [
                    (sig, sender, kwargs, bound)
                    for sig, sender, kwargs in _sends(event)
                    for bound in sig.receivers(sender)
                    if bound.name == name
                ]
                error: BaseException | None = None
                if not matches:
                    error = LookupError(f"receiver {name} is not connected (import its handlers)")
                for sig, sender, kwargs, bound in matches:
                    error = error or self._call_with_retries(bound, sig, sender, kwargs, event)
                key = {"consumer": self.consumer, "event_id": event.id, "receiver": name}
                if error is None:
                    conn.execute(QUERIES["unpark_event"], key)
                    delivered += 1
                else:
                    conn.execute(
                        QUERIES["park_event"],
                        {
                            **key,
                            "attempts": 1 if not matches else self.max_attempts,
                            "error": f"{type(error).__name__}: {error}",
                        },
                    )
                    failing += 1
        return delivered, failing

    def _retry_delay(self, attempt: int) -> float:
        return float(min(self.backoff_min * 2 ** (attempt - 1), self.backoff_max))

    def _call_with_retries(
        self,
        bound: BoundReceiver,
        sig: Signal,
        sender: str | None,
        kwargs: dict[str, Any],
        event: Event,
    ) -> BaseException | None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                bound.call(sig, sender, **kwargs)
                return None
            except Exception as exc:
                logger.warning(
                    "event %d (%s): receiver %s failed (attempt %d of %d): %s",
                    event.id,
                    event.name,
                    bound.name,
                    attempt,
                    self.max_attempts,
                    exc,
                )
                if attempt == self.max_attempts or self.stopping:
                    return exc
                self._sleep(self._retry_delay(attempt))
        return None

    def _park_or_raise(
        self,
        conn: Any,
        event: Event,
        sig: Signal,
        bound: BoundReceiver,
        error: BaseException,
        *,
        parked: list[dict[str, Any]] | None = None,
    ) -> None:
        if sig.ordering_critical or conn is None or self.stopping:
            raise ReceiverFailed(event, [(bound.receiver, error)])
        params = {
            "consumer": self.consumer,
            "event_id": event.id,
            "receiver": bound.name,
            "attempts": self.max_attempts,
            "error": f"{type(error).__name__}: {error}",
        }
        if parked is not None:  # async callers execute it themselves
            parked.append(params)
            return
        conn.execute(QUERIES["park_event"], params)
        logger.error("event %d (%s) parked for receiver %s", event.id, event.name, bound.name)


def _sends(event: Event) -> list[tuple[Signal, str | None, dict[str, Any]]]:
    """The signal sends an event stands for: (signal, sender, keyword arguments)."""
    if event.name == "rows_changed":
        sig = ROW_SIGNALS.get(str(event.payload.get("op")))
        if sig is None:
            return []
        table = str(event.payload.get("table"))
        if event.payload.get("op") == "TRUNCATE":
            return [(sig, table, {"tenant": event.tenant, "event": event})]
        return [
            (
                sig,
                table,
                {
                    "tenant": event.tenant,
                    "event": event,
                    "key": row.get("key"),
                    **({"columns": row["columns"]} if "columns" in row else {}),
                },
            )
            for row in event.payload.get("rows", [])
        ]
    lifecycle = LIFECYCLE_SIGNALS.get(event.name)
    if lifecycle is None:
        logger.debug("event %d: no signal named %s", event.id, event.name)
        return []
    return [(lifecycle, event.tenant.slug, {"tenant": event.tenant, "event": event})]


def _listen_sql(row: dict[str, Any]) -> sql.Composed:
    channel = str(next(iter(row.values())))
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def _is_permanent(exc: psycopg.OperationalError) -> bool:
    # Authentication, unknown database and similar refusals will not heal.
    return exc.sqlstate is not None and exc.sqlstate[:2] in ("28", "3D")
