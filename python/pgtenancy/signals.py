"""Django-style signals: the tenant context signals and the lifecycle signals.

A :class:`Signal` keeps its receivers in registration order and calls them
with ``signal=`` and ``sender=`` plus the keyword arguments of the send::

    from pgtenancy.signals import receiver, tenant_suspended

    @receiver(tenant_suspended, dispatch_uid="billing.pause")
    def pause_billing(sender, tenant, event, **kwargs):
        ...

Two families of signals:

* Context signals (:data:`tenant_activated`, :data:`tenant_deactivated`) are
  sent in-process when a tenant context is entered or left; ``sender`` is the
  slug and the receiver gets ``slug=``.
* Row-change signals (:data:`row_inserted`, :data:`row_updated`,
  :data:`row_deleted`) come through the listener too, one send per row of a
  table tracked with ``tenancy.track_changes``; ``sender`` is the table's
  qualified name and the receiver gets ``tenant=``, ``event=``, ``key=``
  (the primary key, a dict) and, for updates, ``columns=``.
* Lifecycle signals (:data:`tenant_created`, :data:`tenant_suspended`,
  :data:`tenant_resumed`, :data:`tenant_deleted`, :data:`tenant_migrated`) come
  from the database's outbox through a :class:`~pgtenancy.listener.Listener`,
  after commit and at least once; ``sender`` is the slug and the receiver gets
  ``tenant=`` (:class:`~pgtenancy.events.TenantRef`) and ``event=``
  (:class:`~pgtenancy.events.Event`). Use ``event.id`` as an idempotency key.

Senders match by value for ``str``, ``int``, ``bytes`` and ``uuid.UUID`` and by
identity for anything else.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger("pgtenancy.signals")

Receiver = Callable[..., Any]
R = TypeVar("R", bound=Receiver)

# (ids of muted signals, everything muted) for the current context.
_muted: ContextVar[tuple[frozenset[int], bool]] = ContextVar(
    "pgtenancy_muted_signals", default=(frozenset(), False)
)


def _make_id(target: object) -> Hashable:
    if inspect.ismethod(target):
        return (id(target.__self__), id(target.__func__))
    return id(target)


def _sender_key(sender: object) -> Hashable:
    if sender is None:
        return None
    if isinstance(sender, str | int | bytes | uuid.UUID):
        return ("value", sender)
    return ("id", id(sender))


def _is_async(receiver: Receiver) -> bool:
    if inspect.iscoroutinefunction(receiver):
        return True
    call = getattr(receiver, "__call__", None)  # noqa: B004 - callable objects
    return call is not None and inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class _Entry:
    key: tuple[Hashable, Hashable]
    ref: Callable[[], Receiver | None]
    sender_key: Hashable
    is_async: bool
    name: str


@dataclass(frozen=True)
class BoundReceiver:
    """A live receiver of a send, as :meth:`Signal.receivers` returns it.

    Attributes:
        name: stable name of the registration: its ``dispatch_uid`` when one
            was given (as text), else ``module.qualname`` of the receiver. Used
            to park and retry events per receiver across processes.
        receiver: the callable.
        is_async: whether it is an ``async def``.
    """

    name: str
    receiver: Receiver
    is_async: bool

    def call(self, signal: Signal, sender: object, **named: Any) -> Any:
        """Call the receiver as a send would; run it to completion if async.

        Raises:
            Exception: whatever the receiver raises.
        """
        value = self.receiver(signal=signal, sender=sender, **named)
        return _run_coroutine(value, self.receiver) if self.is_async else value

    async def acall(self, signal: Signal, sender: object, **named: Any) -> Any:
        """Call the receiver as :meth:`Signal.asend` would (awaiting it if async)."""
        value = self.receiver(signal=signal, sender=sender, **named)
        return await value if self.is_async else value


def _receiver_name(receiver: Receiver, dispatch_uid: Hashable | None) -> str:
    if dispatch_uid is not None:
        return str(dispatch_uid)
    func = getattr(receiver, "__func__", receiver)
    module = getattr(func, "__module__", None) or type(receiver).__module__
    qualname = getattr(func, "__qualname__", None) or type(receiver).__qualname__
    return f"{module}.{qualname}"


class Signal:
    """A signal that receivers connect to and senders send.

    Args:
        name: the signal's name, used in logs and ``repr``.
        doc: what the signal means and which keyword arguments it sends.

        ordering_critical: when a receiver of this signal keeps failing, the
            listener blocks its consumer (retrying with backoff) instead of
            parking the event for that receiver and going on. Settable later.

    Receivers are called in registration order as
    ``receiver(signal=self, sender=sender, **kwargs)``. They must accept
    ``**kwargs`` so new arguments can be added.
    """

    def __init__(self, name: str, doc: str = "", *, ordering_critical: bool = False) -> None:
        self.name = name
        self.ordering_critical = ordering_critical
        self.__doc__ = doc or f"Signal {name}."
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"

    # -- registration -------------------------------------------------------

    def connect(
        self,
        receiver: Receiver,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> None:
        """Register ``receiver`` for this signal.

        Args:
            receiver: a callable (sync or ``async def``) taking ``signal``,
                ``sender`` and ``**kwargs``.
            sender: only sends from this sender reach the receiver; None means
                every sender.
            weak: hold the receiver by weak reference, so it goes away with its
                owner; callables that cannot be weakly referenced (builtins) are
                held strongly.
            dispatch_uid: unique key of the registration; a second connect with
                the same key (and sender) is ignored. Defaults to the
                receiver's identity.

        Raises:
            TypeError: when ``receiver`` is not callable.
        """
        if not callable(receiver):
            raise TypeError(f"receiver {receiver!r} is not callable")
        key = (
            dispatch_uid if dispatch_uid is not None else _make_id(receiver),
            _sender_key(sender),
        )
        ref: Callable[[], Receiver | None]
        if weak:
            try:
                if inspect.ismethod(receiver):
                    ref = weakref.WeakMethod(receiver, self._prune)
                else:
                    ref = weakref.ref(receiver, self._prune)
            except TypeError:
                ref = _strong(receiver)
        else:
            ref = _strong(receiver)
        entry = _Entry(
            key, ref, key[1], _is_async(receiver), _receiver_name(receiver, dispatch_uid)
        )
        with self._lock:
            if any(e.key == key for e in self._entries):
                return
            self._entries.append(entry)

    def disconnect(
        self,
        receiver: Receiver | None = None,
        sender: object = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Unregister a receiver.

        Args:
            receiver: the receiver to remove (ignored when ``dispatch_uid`` is given).
            sender: the sender it was connected with.
            dispatch_uid: the key it was connected with.

        Returns:
            True when a registration was removed.
        """
        if dispatch_uid is None and receiver is None:
            raise TypeError("disconnect() needs a receiver or a dispatch_uid")
        ident = dispatch_uid if dispatch_uid is not None else _make_id(receiver)
        key = (ident, _sender_key(sender))
        with self._lock:
            before = len(self._entries)
            self._entries = [e for e in self._entries if e.key != key]
            return len(self._entries) != before

    def _prune(self, _ref: object = None) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e.ref() is not None]

    def has_listeners(self, sender: object = None) -> bool:
        """True when at least one live receiver would get a send from ``sender``."""
        return bool(self._live(sender))

    def _live(self, sender: object) -> list[tuple[Receiver, bool]]:
        return [(b.receiver, b.is_async) for b in self.receivers(sender)]

    def receivers(self, sender: object = None) -> list[BoundReceiver]:
        """The live receivers a send from ``sender`` would call, in order."""
        skey = _sender_key(sender)
        with self._lock:
            entries = list(self._entries)
        live = []
        for e in entries:
            if e.sender_key is not None and e.sender_key != skey:
                continue
            r = e.ref()
            if r is not None:
                live.append(BoundReceiver(e.name, r, e.is_async))
        return live

    # -- muting ------------------------------------------------------------

    def is_muted(self) -> bool:
        """True when this signal is muted in the current context."""
        ids, everything = _muted.get()
        return everything or id(self) in ids

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Mute this signal in the current context (thread or asyncio task).

        Sends return ``[]`` inside the block; receivers stay connected. Nests.
        """
        ids, everything = _muted.get()
        token = _muted.set((ids | {id(self)}, everything))
        try:
            yield
        finally:
            _muted.reset(token)

    # -- sending -----------------------------------------------------------

    def send(self, sender: object, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver, in registration order, and collect answers.

        Async receivers are run to completion with :func:`asyncio.run`; inside a
        running event loop use :meth:`asend` instead.

        Returns:
            ``[(receiver, return value), ...]``; ``[]`` when muted.

        Raises:
            Exception: the first exception a receiver raises; later receivers
                are not called.
            RuntimeError: an async receiver is connected and an event loop is
                running in this thread.
        """
        if self.is_muted():
            return []
        responses = []
        for r, is_async in self._live(sender):
            value = r(signal=self, sender=sender, **named)
            if is_async:
                value = _run_coroutine(value, r)
            responses.append((r, value))
        return responses

    def send_robust(self, sender: object, **named: Any) -> list[tuple[Receiver, Any]]:
        """Like :meth:`send`, but an exception from a receiver is logged and
        returned in place of its answer, and the next receivers still run.

        Returns:
            ``[(receiver, return value or the Exception raised), ...]``.
        """
        if self.is_muted():
            return []
        responses: list[tuple[Receiver, Any]] = []
        for r, is_async in self._live(sender):
            try:
                value = r(signal=self, sender=sender, **named)
                if is_async:
                    value = _run_coroutine(value, r)
            except Exception as exc:
                logger.error("receiver %r of %s raised", r, self.name, exc_info=exc)
                responses.append((r, exc))
            else:
                responses.append((r, value))
        return responses

    async def asend(self, sender: object, **named: Any) -> list[tuple[Receiver, Any]]:
        """Send from async code: async receivers are awaited and sync receivers
        called, one at a time, in registration order.

        Raises:
            Exception: the first exception a receiver raises.
        """
        if self.is_muted():
            return []
        responses = []
        for r, is_async in self._live(sender):
            value = r(signal=self, sender=sender, **named)
            if is_async:
                value = await value
            responses.append((r, value))
        return responses

    async def asend_robust(self, sender: object, **named: Any) -> list[tuple[Receiver, Any]]:
        """:meth:`asend` that logs and returns receivers' exceptions instead of raising."""
        if self.is_muted():
            return []
        responses: list[tuple[Receiver, Any]] = []
        for r, is_async in self._live(sender):
            try:
                value = r(signal=self, sender=sender, **named)
                if is_async:
                    value = await value
            except Exception as exc:
                logger.error("receiver %r of %s raised", r, self.name, exc_info=exc)
                responses.append((r, exc))
            else:
                responses.append((r, value))
        return responses


def _strong(receiver: Receiver) -> Callable[[], Receiver]:
    return lambda: receiver


def _run_coroutine(value: Any, r: Receiver) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        coro: Coroutine[Any, Any, Any] = value
        return asyncio.run(coro)
    value.close()
    raise RuntimeError(f"receiver {r!r} is async and an event loop is running: use asend()")


def receiver(signal: Signal | list[Signal] | tuple[Signal, ...], **kwargs: Any) -> Callable[[R], R]:
    """Decorator that connects the decorated function to one or more signals.

    Args:
        signal: a :class:`Signal` or a list of them.
        **kwargs: passed to :meth:`Signal.connect` (``sender``, ``weak``,
            ``dispatch_uid``).
    """

    def decorator(func: R) -> R:
        for s in signal if isinstance(signal, list | tuple) else [signal]:
            s.connect(func, **kwargs)
        return func

    return decorator


@contextmanager
def muted(*signals: Signal) -> Iterator[None]:
    """Mute the given signals, or every signal when none is given, in the
    current context (thread or asyncio task). Nests; disconnects nothing."""
    ids, everything = _muted.get()
    if signals:
        token = _muted.set((ids | {id(s) for s in signals}, everything))
    else:
        token = _muted.set((ids, True))
    try:
        yield
    finally:
        _muted.reset(token)


tenant_activated = Signal(
    "tenant_activated",
    "A tenant context was entered in this process. sender: slug; kwargs: slug.",
)
tenant_deactivated = Signal(
    "tenant_deactivated",
    "A tenant context was left in this process. sender: slug; kwargs: slug.",
)
tenant_created = Signal(
    "tenant_created",
    "A tenant was created (from the outbox). sender: slug; kwargs: tenant, event.",
)
tenant_suspended = Signal(
    "tenant_suspended",
    "A tenant's status became suspended (from the outbox). sender: slug; kwargs: tenant, event.",
)
tenant_resumed = Signal(
    "tenant_resumed",
    "A suspended tenant became active again (from the outbox). "
    "sender: slug; kwargs: tenant, event.",
)
tenant_deleted = Signal(
    "tenant_deleted",
    "A tenant was deleted, softly or with its data (event.payload['destroyed']). "
    "sender: slug; kwargs: tenant, event.",
)
tenant_migrated = Signal(
    "tenant_migrated",
    "Migrations were applied to a tenant (event.payload['versions']). "
    "sender: slug; kwargs: tenant, event.",
)
tenant_renamed = Signal(
    "tenant_renamed",
    "A tenant got a new slug and schema name (event.payload: old_slug, old_schema, new_slug, "
    "new_schema; event.tenant is the tenant under its new slug). sender: new slug; kwargs: "
    "tenant, event.",
)

row_inserted = Signal(
    "row_inserted",
    "Rows were inserted into a tracked table (from the outbox, one send per row). "
    "sender: the table's qualified name; kwargs: tenant, event, key (primary key as a dict).",
)
row_updated = Signal(
    "row_updated",
    "Rows of a tracked table were updated (one send per row). sender: the table's qualified "
    "name; kwargs: tenant, event, key, columns (names of the changed columns).",
)
row_deleted = Signal(
    "row_deleted",
    "Rows were deleted from a tracked table (one send per row). sender: the table's qualified "
    "name; kwargs: tenant, event, key.",
)

table_truncated = Signal(
    "table_truncated",
    "A tracked table was truncated (one send per statement). sender: the table's qualified "
    "name; kwargs: tenant, event.",
)

#: Row-change signals by SQL operation.
ROW_SIGNALS: dict[str, Signal] = {
    "INSERT": row_inserted,
    "UPDATE": row_updated,
    "DELETE": row_deleted,
    "TRUNCATE": table_truncated,
}

tenant_migration_failed = Signal(
    "tenant_migration_failed",
    "A migration run failed for a tenant, which stays at its previous version "
    "(event.payload: from_version, to_version, sqlstate, message). sender: slug; kwargs: "
    "tenant, event.",
)

#: Lifecycle signals by outbox event name.
LIFECYCLE_SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        tenant_created,
        tenant_suspended,
        tenant_resumed,
        tenant_deleted,
        tenant_migrated,
        tenant_migration_failed,
        tenant_renamed,
    )
}
