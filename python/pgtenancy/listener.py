"""The outbox consumer: lifecycle and row-change events from the database,
delivered as signals.

A :class:`Listener` runs in its own process (``pgtenancy listen``), a thread
(:meth:`Listener.run`) or an event loop (``await`` :meth:`Listener.arun`). Both
entry points run the same asyncio core on one ``psycopg.AsyncConnection``
(autocommit), which:

1. LISTENs on ``tenancy.events_channel()`` and registers the consumer's durable
   cursor (``tenancy.register_consumer``), after checking once that the DSN
   keeps one server backend per connection (:func:`check_listen_capable`);
2. takes the consumer's lease (``tenancy.acquire_lease``): of several listeners
   of one consumer name only the holder delivers, the others wait on standby
   and take over within about 1.3 times the lease after it stops renewing (at
   once after a clean stop, which releases it);
3. catches up: reads events after the cursor with ``tenancy.next_events()``
   (only from transactions finished for every snapshot, ordered by (xid, id),
   so an event whose transaction took a smaller id but committed later is never
   skipped), sends each to its signal, and moves the cursor once per batch
   after the receivers ran (``tenancy.advance_consumer``, refused with
   :class:`~pgtenancy.errors.LeaseLost` once another listener took over);
4. waits for a notification, or polls: ``retry_interval`` while events flow or
   wait behind an older open transaction, growing to ``poll_interval`` when idle
   (row changes do not NOTIFY), never longer than a third of the lease.

Receivers run in registration order, one at a time, called from the
listener's worker thread (one thread, the same for every event): sync
receivers run there, async receivers are handed back to the listener's event
loop and awaited. Meanwhile the event loop, waiting for the worker, goes on
sending heartbeats (``tenancy.consumer_heartbeat``, for ``tenancy.prune_events``
and ``pgtenancy events status``) and renewing the lease every third of its
length, however long a receiver takes. An async receiver that blocks the event
loop stops both.

A receiver that raises is called again with backoff (``backoff_min`` doubling,
up to ``backoff_max``), up to ``max_attempts`` calls; then the event is parked
for that receiver alone (``tenancy.park_event``, retried later by
:meth:`Listener.retry_parked`) and the next receivers run; for an
ordering-critical signal the consumer blocks at the event instead and retries
it with growing backoff. Delivery is at least once: use ``event.id`` as the
idempotency key. On a lost connection the listener reconnects with jittered
exponential backoff and catches up. :meth:`Listener.stop`, SIGTERM and SIGINT
(when running in the main thread) stop it after the event in hand, with the
cursor saved and the lease released.

The timing and failure decisions are the pure functions of
:mod:`pgtenancy.delivery`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import importlib
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgtenancy import delivery
from pgtenancy.delivery import FailureAction, Interval, PollState
from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import LeaseLost, ListenNotSupported, TenancyError, raise_translated
from pgtenancy.events import Event
from pgtenancy.queries import QUERIES
from pgtenancy.signals import LIFECYCLE_SIGNALS, ROW_SIGNALS, BoundReceiver, Signal

logger = logging.getLogger("pgtenancy.listener")

AsyncConn = psycopg.AsyncConnection[dict[str, Any]]
_T = TypeVar("_T")


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

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its own arguments (pickling needs the receivers to be
        # importable, as for any function).
        return (type(self), (self.event, self.errors))


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
    query = QUERIES["backend_pid"]
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
    """Consume the outbox as consumer ``consumer`` and send signals.

    Intervals are float seconds or :class:`datetime.timedelta`.

    Args:
        dsn: libpq DSN or URL of the database. It must be a direct (or
            session-pooled) connection: LISTEN does not work through a
            transaction pooler.
        consumer: consumer name; its cursor in ``tenancy.consumers`` is
            created at the start of the outbox on first use.
        batch_size: events read per query (the cursor moves once per batch).
        poll_interval: longest wait for a notification before polling anyway;
            also bounds how long a stop request waits.
        retry_interval: first wait before reading again while events flow or
            wait for an older open transaction (it doubles up to
            ``poll_interval``).
        backoff_min, backoff_max: bounds of the exponential backoff between
            calls of a failing receiver, between rounds of a blocked event, and
            before reconnecting.
        connect_timeout: time allowed to connect (whole seconds, rounded up).
        heartbeat_interval: time between heartbeats (``consumers.seen_at``),
            which keep the consumer active for ``tenancy.prune_events``; sent
            while receivers run too.
        lease_seconds: length of the consumer lease. Several listeners may run
            one consumer name: the one holding the lease dispatches and renews
            it every third of this, also while a receiver runs; the others wait
            and take over within about 1.3 times this after it stops renewing
            (at once after a clean stop). A slow sync receiver (or an async one
            that awaits) does not lose the lease; an async receiver that blocks
            the event loop for longer than this does, and its event may then
            run twice.
        max_attempts: calls of a failing receiver for one event (with backoff
            from ``backoff_min``) before the event is parked for that receiver
            and the consumer goes on; for an ``ordering_critical`` signal the
            consumer blocks at the event instead, retrying with backoff.

    Raises:
        ValueError: ``batch_size`` or ``max_attempts`` below 1, an interval not
            greater than zero, or ``backoff_min`` above ``backoff_max``.
        TypeError: an interval that is neither a number nor a timedelta.

    Attributes:
        holder: this listener's lease holder id, ``host:pid:random``.
        delivered: events delivered so far.
        receiver_failures: failed receiver calls so far (each attempt counts).
        parked: events parked for a receiver so far.
        lease_held: whether this listener holds the consumer's lease now.
    """

    def __init__(
        self,
        dsn: str,
        consumer: str,
        *,
        batch_size: int = 100,
        poll_interval: Interval = 0.5,
        retry_interval: Interval = 0.05,
        backoff_min: Interval = 0.1,
        backoff_max: Interval = 10.0,
        connect_timeout: Interval = 5,
        heartbeat_interval: Interval = 10.0,
        lease_seconds: Interval = 10.0,
        max_attempts: int = 5,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.poll_interval = delivery.seconds(poll_interval, "poll_interval")
        self.retry_interval = delivery.seconds(retry_interval, "retry_interval")
        self.backoff_min = delivery.seconds(backoff_min, "backoff_min")
        self.backoff_max = delivery.seconds(backoff_max, "backoff_max")
        if self.backoff_min > self.backoff_max:
            raise ValueError("backoff_min must not be above backoff_max")
        self.connect_timeout = math.ceil(delivery.seconds(connect_timeout, "connect_timeout"))
        self.heartbeat_interval = delivery.seconds(heartbeat_interval, "heartbeat_interval")
        self.lease_seconds = delivery.seconds(lease_seconds, "lease_seconds")
        self.dsn = libpq_dsn(dsn)
        self.consumer = consumer
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.delivered = 0
        self.receiver_failures = 0
        self.parked = 0
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Per connection: monotonic times of the last lease renewal (None: not
        # held) and heartbeat; an error met renewing while receivers ran.
        self._renewed_at: float | None = None
        self._beat_at: float | None = None
        self._renew_error: psycopg.Error | None = None
        self._receiver_backoff = self.backoff_min
        self._poll = PollState(flow_wait=self.poll_interval, held_wait=self.retry_interval)

    @property
    def lease_held(self) -> bool:
        """Whether this listener holds the consumer's lease (dispatches) now."""
        return self._renewed_at is not None

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
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(wake.set)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when called in the main
        thread), blocking: runs :meth:`arun` in a new event loop
        (:func:`asyncio.run`), so it cannot be called from a running loop.

        Raises:
            pgtenancy.errors.NotInstalled: the SQL core is missing.
            psycopg.Error: an SQL error that reconnecting cannot cure (e.g.
                authentication), at the first connection.
            RuntimeError: an event loop is running in this thread.
        """
        asyncio.run(self.arun())

    async def arun(self) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when running in the
        main thread's event loop). Async receivers are awaited on this loop,
        sync receivers run in the listener's worker thread.

        Raises:
            pgtenancy.errors.NotInstalled: the SQL core is missing.
            psycopg.Error: an error that reconnecting cannot cure, at the first
                connection.
        """
        loop = asyncio.get_running_loop()
        self._loop, self._wake = loop, asyncio.Event()
        if self.stopping:
            self._wake.set()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.getsignal(signum)
                loop.add_signal_handler(signum, self._on_signal, signum)
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"pgtenancy-receiver-{self.consumer}")
        try:
            await self._loop_forever(executor)
        except asyncio.CancelledError:
            self._stop.set()  # the worker thread stops after the event in hand
            raise
        finally:
            for signum, handler in previous.items():
                loop.remove_signal_handler(signum)
                if handler is not None:  # None: not set from Python; left at the default
                    signal.signal(signum, handler)
            self._loop = self._wake = None
            executor.shutdown(wait=False)

    def _on_signal(self, signum: int) -> None:
        logger.info("received signal %d, stopping", signum)
        self.stop()

    async def _sleep(self, seconds: float) -> None:
        """Sleep in :meth:`arun`, waking early on :meth:`stop`."""
        assert self._wake is not None
        if not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)

    # -- connection --------------------------------------------------------

    async def _connect(self) -> AsyncConn:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=self.connect_timeout,
            application_name=self.application_name,
            row_factory=dict_row,
        )
        try:
            row = await (await conn.execute(QUERIES["events_channel"])).fetchone()
            assert row is not None
            await conn.execute(_listen_sql(row))
            await conn.execute(QUERIES["register_consumer"], {"consumer": self.consumer})
        except BaseException:
            await conn.close()
            raise
        return conn

    def _on_failure(self, exc: psycopg.Error, backoff: float, ever_connected: bool) -> float:
        """Log a lost connection; return the delay before reconnecting, or
        re-raise what reconnecting cannot cure."""
        if isinstance(exc, psycopg.OperationalError):
            if delivery.is_permanent(exc.sqlstate, ever_connected):
                raise exc
            delay = delivery.jittered(backoff, random.random())
            logger.warning("connection lost (%s); reconnecting in %.2fs", exc, delay)
            return delay
        raise_translated(exc)

    async def _loop_forever(self, executor: ThreadPoolExecutor) -> None:
        backoff = self.backoff_min
        ever_connected = False
        while not self.stopping:
            try:
                if not ever_connected:
                    await asyncio.to_thread(check_listen_capable, self.dsn, self.connect_timeout)
                conn = await self._connect()
                async with conn:
                    ever_connected = True
                    backoff = self.backoff_min
                    logger.info("consumer %s listening as %s", self.consumer, self.holder)
                    await self._serve(conn, executor)
            except psycopg.Error as exc:
                await self._sleep(self._on_failure(exc, backoff, ever_connected))
                backoff = delivery.next_backoff(backoff, self.backoff_max)
        logger.info("consumer %s stopped after %d events", self.consumer, self.delivered)

    # -- lease and heartbeat ----------------------------------------------

    def _lease_params(self) -> dict[str, Any]:
        return {"consumer": self.consumer, "holder": self.holder, "seconds": self.lease_seconds}

    async def _tick(self, conn: AsyncConn) -> bool:
        """Send a heartbeat and take or renew the lease, each when due.

        Returns:
            Whether this listener holds the lease.
        """
        now = time.monotonic()
        if delivery.heartbeat_due(now, self._beat_at, self.heartbeat_interval):
            await conn.execute(QUERIES["consumer_heartbeat"], {"consumer": self.consumer})
            self._beat_at = now
        state = delivery.lease_state(now, self._renewed_at, self.lease_seconds)
        if state == "held":
            return True
        if state == "lapsed":
            logger.warning(
                "consumer %s: lease of %s ran out (not renewed for %.2fs); renewing",
                self.consumer,
                self.holder,
                now - (self._renewed_at or now),
            )
        cur = await conn.execute(QUERIES["acquire_lease"], self._lease_params())
        row = await cur.fetchone()
        held = bool(row and row["held"])
        if held and self._renewed_at is None:
            logger.info("consumer %s: %s holds the lease", self.consumer, self.holder)
        elif not held and self._renewed_at is not None:
            logger.warning("consumer %s: lease lost by %s", self.consumer, self.holder)
        self._renewed_at = now if held else None
        return held

    def _check_lease(self) -> None:
        if self._renew_error is not None:
            exc, self._renew_error = self._renew_error, None
            raise exc
        if self._renewed_at is None:
            raise LeaseLost(f"consumer {self.consumer}: lease lost by {self.holder}")

    # -- serving -----------------------------------------------------------

    async def _serve(self, conn: AsyncConn, executor: ThreadPoolExecutor) -> None:
        self._beat_at = None
        self._renewed_at = None
        self._renew_error = None
        try:
            while not self.stopping:
                await self._serve_once(conn, executor)
        finally:
            if self._renewed_at is not None and not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute(QUERIES["release_lease"], self._lease_params())
            self._renewed_at = None

    async def _serve_once(self, conn: AsyncConn, executor: ThreadPoolExecutor) -> None:
        if not await self._tick(conn):
            # Standby: wait for the holder's lease to lapse.
            wait = delivery.standby_wait(self.poll_interval, self.lease_seconds)
            async for _ in conn.notifies(timeout=wait, stop_after=1):
                pass
            return
        try:
            delivered = await self._catch_up(conn, executor)
        except ReceiverFailed as exc:
            delay = self._receiver_backoff
            logger.error("%s; retrying in %.2fs", exc, delay)
            self._receiver_backoff = delivery.next_backoff(delay, self.backoff_max)
            await self._sleep(delay)
            return
        except LeaseLost:
            self._renewed_at = None
            return
        self._receiver_backoff = self.backoff_min
        if self.stopping:
            return
        cur = await conn.execute(QUERIES["events_held_back"], {"consumer": self.consumer})
        held = await cur.fetchone()
        wait, self._poll = delivery.next_wait(
            self._poll,
            delivered=delivered,
            held_back=bool(held and next(iter(held.values()))),
            retry_interval=self.retry_interval,
            poll_interval=self.poll_interval,
        )
        wait = min(wait, self.lease_seconds / 3)
        async for _ in conn.notifies(timeout=wait, stop_after=1):
            pass

    async def acatch_up(self, conn: AsyncConn) -> int:
        """Deliver every readable event after the cursor, batch by batch, as the
        lease holder; the lease is renewed and heartbeats sent while receivers
        run. Sync receivers run in a worker thread made for this call.

        Args:
            conn: an autocommit ``psycopg.AsyncConnection`` with ``dict_row``
                rows, LISTENing or not; the consumer must be registered.

        Returns:
            The number of events delivered.

        Raises:
            ReceiverFailed: a receiver raised; the cursor stays before that event.
            pgtenancy.errors.LeaseLost: another listener holds the consumer's lease.
        """
        self._renew_error = None
        if not await self._tick(conn):
            raise LeaseLost(f"consumer {self.consumer}: lease held by another listener")
        with ThreadPoolExecutor(1, thread_name_prefix="pgtenancy-receiver") as executor:
            return await self._catch_up(conn, executor)

    async def _catch_up(self, conn: AsyncConn, executor: ThreadPoolExecutor) -> int:
        total = 0
        while not self.stopping:
            cur = await conn.execute(QUERIES["next_events"], self._batch_params())
            rows = await cur.fetchall()
            if not rows:
                break
            self._check_lease()
            events = [Event.from_row(row) for row in rows]
            # The whole batch in one trip to the worker thread; it stops at a
            # failure, a stop request or a lost lease.
            count, error = await self._in_worker(
                executor, self._deliver_events, events, conn, keep=conn
            )
            total += count
            if count:
                try:
                    await conn.execute(
                        QUERIES["advance_consumer"], self._advance_params(events[count - 1])
                    )
                except psycopg.Error as exc:
                    raise_translated(exc)
            if error is not None:
                raise error
            self._check_lease()
            if len(rows) < self.batch_size or count < len(events):
                break
        return total

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
    #
    # Receivers are called from the listener's worker thread, so the event
    # loop stays free to renew the lease; async receivers are handed back to
    # the loop and awaited there, in their turn.

    async def _in_worker(
        self,
        executor: ThreadPoolExecutor,
        fn: Callable[..., _T],
        *args: Any,
        keep: AsyncConn | None = None,
    ) -> _T:
        """Run ``fn(*args, loop)`` in the worker thread, in this context (so
        muting holds there), and wait for it. With ``keep``, send heartbeats and
        renew the lease on that connection meanwhile, each when due; an SQL
        error doing so is kept for :meth:`_check_lease` (the worker stops after
        the event in hand)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, loop)
        future = loop.run_in_executor(executor, call)
        while keep is not None and self._renew_error is None:
            wait = delivery.next_tick(
                time.monotonic(),
                self._beat_at,
                self.heartbeat_interval,
                self._renewed_at,
                self.lease_seconds,
            )
            if wait is None:  # the lease is lost: the worker stops after this event
                break
            done, _ = await asyncio.wait({future}, timeout=wait)
            if done:
                break
            try:
                await self._tick(keep)
            except psycopg.Error as exc:
                self._renew_error = exc
        return await future

    def _deliver_events(
        self, events: list[Event], conn: AsyncConn, loop: asyncio.AbstractEventLoop
    ) -> tuple[int, BaseException | None]:
        """Worker thread: dispatch ``events`` in order until one fails, a stop
        is requested, the lease is lost or renewing it met an error.

        Returns:
            ``(events delivered, the exception that stopped it or None)``.
        """
        for i, event in enumerate(events):
            if i and self.stopping:
                return i, None
            if self._renew_error is not None:
                return i, None  # the delivering task raises it
            if self._renewed_at is None:
                return i, LeaseLost(f"consumer {self.consumer}: lease lost by {self.holder}")
            try:
                self._dispatch(event, conn, loop)
            except BaseException as exc:  # SystemExit too: the cursor keeps what was done
                return i, exc
            self.delivered += 1
        return len(events), None

    async def adispatch(self, event: Event, conn: AsyncConn | None = None) -> None:
        """Send ``event`` to its signals, every receiver in order: a lifecycle
        event to its lifecycle signal, a ``rows_changed`` event to
        ``row_inserted``/``row_updated``/``row_deleted`` once per row,
        ``table_truncated`` once. Sync receivers run in a worker thread made
        for this call, async receivers are awaited on this loop.

        A receiver that raises is called again, up to ``max_attempts`` times
        with backoff; then the event is parked for it (with ``conn``, an
        autocommit ``psycopg.AsyncConnection``) and the next receivers run.
        Events whose name has no signal are skipped.

        Raises:
            ReceiverFailed: a receiver of an ordering-critical signal kept
                failing (or no ``conn`` to park with, or stop was requested).
        """
        with ThreadPoolExecutor(1, thread_name_prefix="pgtenancy-receiver") as executor:
            await self._in_worker(executor, self._dispatch, event, conn)

    def _dispatch(
        self, event: Event, conn: AsyncConn | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Worker thread: one event to all its receivers (see :meth:`adispatch`)."""
        for sig, sender, kwargs in _sends(event):
            if sig.is_muted():
                continue
            for bound in sig.receivers(sender):
                error, action = self._deliver(
                    bound, sig, sender, kwargs, event, loop, can_park=conn is not None
                )
                if error is None:
                    continue
                if action == "block" or conn is None:
                    raise ReceiverFailed(event, [(bound.receiver, error)])
                params = {
                    "consumer": self.consumer,
                    "event_id": event.id,
                    "receiver": bound.name,
                    "attempts": self.max_attempts,
                    "error": _error_text(error),
                }
                _on_loop(loop, conn.execute(QUERIES["park_event"], params))
                self.parked += 1
                logger.error(
                    "event %d (%s) parked for receiver %s", event.id, event.name, bound.name
                )

    def _deliver(
        self,
        bound: BoundReceiver,
        sig: Signal,
        sender: str | None,
        kwargs: dict[str, Any],
        event: Event,
        loop: asyncio.AbstractEventLoop,
        *,
        can_park: bool,
    ) -> tuple[BaseException | None, FailureAction | None]:
        """Worker thread: call a receiver (an async one on ``loop``), retrying
        with backoff; return ``(None, None)`` when it succeeded, else its last
        error and ``"park"`` or ``"block"``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                if bound.is_async:
                    _on_loop(loop, bound.acall(sig, sender, **kwargs))
                else:
                    bound.call(sig, sender, **kwargs)
                return None, None
            except Exception as exc:
                self.receiver_failures += 1
                logger.warning(
                    "event %d (%s): receiver %s failed (attempt %d of %d): %s",
                    event.id,
                    event.name,
                    bound.name,
                    attempt,
                    self.max_attempts,
                    exc,
                )
                action = delivery.after_failure(
                    attempt,
                    self.max_attempts,
                    ordering_critical=sig.ordering_critical,
                    can_park=can_park,
                    stopping=self.stopping,
                )
                if action != "retry":
                    return exc, action
                self._stop.wait(delivery.retry_delay(attempt, self.backoff_min, self.backoff_max))

    # -- parked events -----------------------------------------------------

    def retry_parked(self) -> tuple[int, int]:
        """Blocking form of :meth:`aretry_parked` (runs it with :func:`asyncio.run`).

        Raises:
            RuntimeError: an event loop is running in this thread.
        """
        return asyncio.run(self.aretry_parked())

    async def aretry_parked(self) -> tuple[int, int]:
        """Deliver this consumer's parked events again, each to the receiver
        that failed on it only (found by its name among the connected
        receivers; import the handlers first), up to ``max_attempts`` calls.
        Sync receivers run in a worker thread made for this call.

        Returns:
            ``(delivered, still_failing)``; a delivered event is unparked, a
            failing one stays parked with its attempts added (1 when its
            receiver is not connected).

        Raises:
            psycopg.Error: the database cannot be reached.
        """
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=self.connect_timeout, row_factory=dict_row
        )
        async with conn:
            cur = await conn.execute(QUERIES["parked_events"], {"consumer": self.consumer})
            rows = await cur.fetchall()
            with ThreadPoolExecutor(1, thread_name_prefix="pgtenancy-receiver") as executor:
                return await self._in_worker(executor, self._retry_rows, rows, conn)

    def _retry_rows(
        self, rows: list[dict[str, Any]], conn: AsyncConn, loop: asyncio.AbstractEventLoop
    ) -> tuple[int, int]:
        """Worker thread: the body of :meth:`aretry_parked`."""
        delivered = failing = 0
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
                if error is None:
                    error, _ = self._deliver(bound, sig, sender, kwargs, event, loop, can_park=True)
            key = {"consumer": self.consumer, "event_id": event.id, "receiver": name}
            if error is None:
                _on_loop(loop, conn.execute(QUERIES["unpark_event"], key))
                delivered += 1
            else:
                attempts = 1 if not matches else self.max_attempts
                params = {**key, "attempts": attempts, "error": _error_text(error)}
                _on_loop(loop, conn.execute(QUERIES["park_event"], params))
                failing += 1
        return delivered, failing


def _on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T]) -> _T:
    """From the worker thread: run ``coro`` as a task on ``loop``, in the
    worker's context, and wait for its result (or exception).

    Raises:
        RuntimeError: the loop closed before the task finished.
    """
    context = contextvars.copy_context()
    result: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def finish(task: asyncio.Task[_T]) -> None:
        if task.cancelled():
            result.cancel()
        elif (exc := task.exception()) is not None:
            result.set_exception(exc)
        else:
            result.set_result(task.result())

    def start() -> None:
        loop.create_task(coro, context=context).add_done_callback(finish)

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:
        coro.close()
        raise
    while True:
        try:
            return result.result(timeout=1.0)
        except TimeoutError:
            if loop.is_closed():
                raise RuntimeError("the listener's event loop closed") from None


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


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
    return sql.SQL(QUERIES["listen"]).format(channel=sql.Identifier(channel))
