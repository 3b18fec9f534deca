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
"""

from __future__ import annotations

import importlib
import logging
import random
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgtenancy.errors import TenancyError, translate
from pgtenancy.events import Event
from pgtenancy.queries import QUERIES
from pgtenancy.signals import LIFECYCLE_SIGNALS

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


def import_handlers(modules: Iterable[str]) -> None:
    """Import the modules that connect receivers to the signals.

    Args:
        modules: dotted module paths, e.g. ``["myapp.handlers"]``.

    Raises:
        ImportError: with the module name, when one cannot be imported.
    """
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
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.dsn = dsn
        self.consumer = consumer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self._stop = threading.Event()
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

    def _loop(self) -> None:
        backoff = self.backoff_min
        ever_connected = False
        while not self.stopping:
            try:
                with psycopg.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=self.connect_timeout,
                    application_name=self.application_name,
                    row_factory=dict_row,
                ) as conn:
                    self._listen(conn)
                    ever_connected = True
                    backoff = self.backoff_min
                    logger.info("consumer %s listening", self.consumer)
                    self._serve(conn)
            except ReceiverFailed as exc:
                logger.error("%s; retrying in %.2fs", exc, backoff)
                self._sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
            except psycopg.OperationalError as exc:
                if not ever_connected and _is_permanent(exc):
                    raise
                delay = backoff * (1 + random.random() / 2)
                logger.warning("connection lost (%s); reconnecting in %.2fs", exc, delay)
                self._sleep(delay)
                backoff = min(backoff * 2, self.backoff_max)
            except psycopg.Error as exc:
                raise translate(exc) from exc
        logger.info("consumer %s stopped after %d events", self.consumer, self.delivered)

    def _listen(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        row = conn.execute(QUERIES["events_channel"]).fetchone()
        assert row is not None
        channel = str(next(iter(row.values())))
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        conn.execute(QUERIES["register_consumer"], {"consumer": self.consumer})

    def _serve(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        while not self.stopping:
            self.catch_up(conn)
            if self.stopping:
                return
            held = conn.execute(QUERIES["events_held_back"], {"consumer": self.consumer}).fetchone()
            waiting = bool(held and next(iter(held.values())))
            timeout = self.retry_interval if waiting else self.poll_interval
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass

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
            rows = conn.execute(
                QUERIES["next_events"], {"consumer": self.consumer, "limit": self.batch_size}
            ).fetchall()
            if not rows:
                break
            done: Event | None = None
            try:
                for row in rows:
                    event = Event.from_row(row)
                    self.dispatch(event)
                    done = event
                    total += 1
                    self.delivered += 1
                    if self.stopping:
                        break
            finally:
                if done is not None:
                    conn.execute(
                        QUERIES["advance_consumer"],
                        {"consumer": self.consumer, "xid": str(done.xid), "id": done.id},
                    )
            if len(rows) < self.batch_size:
                break
        return total

    def dispatch(self, event: Event) -> None:
        """Send ``event`` to its lifecycle signal, every receiver in order.

        Events whose name has no signal are skipped (logged at debug level).

        Raises:
            ReceiverFailed: when any receiver raised (all receivers still ran).
        """
        sig = LIFECYCLE_SIGNALS.get(event.name)
        if sig is None:
            logger.debug("event %d: no signal named %s", event.id, event.name)
            return
        results = sig.send_robust(sender=event.tenant.slug, tenant=event.tenant, event=event)
        errors = [(r, v) for r, v in results if isinstance(v, BaseException)]
        if errors:
            raise ReceiverFailed(event, errors)


def _is_permanent(exc: psycopg.OperationalError) -> bool:
    # Authentication, unknown database and similar refusals will not heal.
    return exc.sqlstate is not None and exc.sqlstate[:2] in ("28", "3D")
