"""The listener's timing and failure decisions, as pure functions.

Nothing here touches a database, a clock or a random source: every function
gets the current time (``time.monotonic()`` seconds) and the state it decides
on as arguments and returns the decision, so each rule is tested on its own
(tests/test_listener_decisions.py). :class:`pgtenancy.listener.Listener`
calls them and does the I/O.

The lease rules mirror the SQL of ``tenancy.acquire_lease`` and
``tenancy.advance_consumer``: a lease lasts until ``lease_until`` and another
holder may take it only once ``lease_until < clock_timestamp()``, so a lease is
still valid at exactly its end; a holder whose lease merely lapsed, with nobody
taking over, may renew it and move the cursor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeAlias

#: An interval given as float seconds or a :class:`datetime.timedelta`.
Interval: TypeAlias = float | int | timedelta

#: Where the listener stands with its consumer's lease (see :func:`lease_state`).
LeaseState: TypeAlias = Literal["standby", "held", "renew", "lapsed"]

#: What to do after a receiver raised (see :func:`after_failure`).
FailureAction: TypeAlias = Literal["retry", "park", "block"]


def seconds(value: Interval, name: str) -> float:
    """An interval in seconds.

    Args:
        value: float or int seconds, or a :class:`datetime.timedelta`.
        name: the parameter's name, for the error message.

    Returns:
        The interval as float seconds, greater than zero.

    Raises:
        TypeError: ``value`` is neither a number nor a timedelta (``bool`` is refused).
        ValueError: ``value`` is not a finite number greater than zero.
    """
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise TypeError(f"{name} must be seconds (float) or a timedelta, not {value!r}")
    if not math.isfinite(result) or result <= 0:
        raise ValueError(f"{name} must be greater than zero, not {value!r}")
    return result


def heartbeat_due(now: float, last_beat: float | None, interval: float) -> bool:
    """True when a heartbeat (``tenancy.consumer_heartbeat``) is due.

    Args:
        now: current monotonic time, seconds.
        last_beat: monotonic time of the last heartbeat; None when none was sent
            on this connection yet (one is due at once).
        interval: seconds between heartbeats.
    """
    return last_beat is None or now - last_beat >= interval


def lease_state(now: float, renewed_at: float | None, lease_seconds: float) -> LeaseState:
    """Where this listener stands with its lease.

    Args:
        now: current monotonic time, seconds.
        renewed_at: monotonic time taken just before the last successful
            ``acquire_lease`` (the server's ``lease_until`` is at least
            ``renewed_at + lease_seconds``); None when this listener does not hold
            the lease.
        lease_seconds: the lease's length.

    Returns:
        ``"standby"``: not held, try to take it; ``"held"``: valid for at least
        two thirds of its length more, nothing to do; ``"renew"``: a third or more
        of it has passed, renew now; ``"lapsed"``: strictly past its end, so
        another listener may have taken over (renew too: with nobody taking over
        the lease is still this listener's, as ``acquire_lease`` lets its holder
        renew a lapsed lease). At exactly the end the lease is still valid
        (``"renew"``), as in SQL.
    """
    if renewed_at is None:
        return "standby"
    age = now - renewed_at
    if age > lease_seconds:
        return "lapsed"
    if age >= lease_seconds / 3:
        return "renew"
    return "held"


def next_tick(
    now: float,
    last_beat: float | None,
    heartbeat_interval: float,
    renewed_at: float | None,
    lease_seconds: float,
) -> float | None:
    """Seconds until the next heartbeat or lease renewal is due, for the task
    that keeps both going while receivers run.

    Returns:
        Seconds from ``now`` (0 when one is due already); None when the lease is
        not held (nothing to keep: the listener stops delivering).
    """
    if renewed_at is None:
        return None
    beat = now if last_beat is None else last_beat + heartbeat_interval
    renew = renewed_at + lease_seconds / 3
    return max(0.0, min(beat, renew) - now)


def standby_wait(poll_interval: float, lease_seconds: float) -> float:
    """How long a listener without the lease waits before trying to take it:
    ``poll_interval``, at most a third of the lease, so it takes over within
    about 1.3 times the lease after the holder stops renewing."""
    return min(poll_interval, lease_seconds / 3)


def retry_delay(attempt: int, backoff_min: float, backoff_max: float) -> float:
    """Delay after failed attempt number ``attempt`` (1-based) of a receiver:
    ``backoff_min * 2 ** (attempt - 1)``, at most ``backoff_max``.

    Raises:
        ValueError: ``attempt`` is below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, not {attempt}")
    # 2.0 ** 1024 raises OverflowError; a product too large is inf, then capped.
    exponent = min(attempt - 1, 1000)
    return float(min(backoff_min * 2.0**exponent, backoff_max))


def next_backoff(current: float, backoff_max: float) -> float:
    """The delay after ``current`` in a run of failures: doubled, at most ``backoff_max``."""
    return min(current * 2, backoff_max)


def jittered(delay: float, random_fraction: float) -> float:
    """``delay`` stretched by up to half, so reconnecting listeners spread out.

    Args:
        delay: seconds.
        random_fraction: a random number in [0, 1).
    """
    return delay * (1 + random_fraction / 2)


def after_failure(
    attempt: int,
    max_attempts: int,
    *,
    ordering_critical: bool,
    can_park: bool,
    stopping: bool,
) -> FailureAction:
    """What to do after attempt number ``attempt`` of a receiver raised.

    Args:
        attempt: 1-based number of the attempt that failed.
        max_attempts: calls allowed for one event.
        ordering_critical: the signal is ordering-critical
            (:attr:`pgtenancy.signals.Signal.ordering_critical`).
        can_park: a connection is at hand to park the event with.
        stopping: a stop was requested.

    Returns:
        ``"retry"``: call it again after :func:`retry_delay`; ``"park"``: park the
        event for this receiver and go on; ``"block"``: keep the cursor before
        the event (:class:`pgtenancy.listener.ReceiverFailed`), to be retried with
        backoff: for an ordering-critical signal, without a connection, or when
        stopping (the event is delivered again on the next start).
    """
    if attempt < max_attempts and not stopping:
        return "retry"
    if ordering_critical or not can_park or stopping:
        return "block"
    return "park"


@dataclass(frozen=True)
class PollState:
    """The growing delays of :func:`next_wait`.

    Attributes:
        flow_wait: next wait for new events when none arrived (seconds).
        held_wait: next wait while events are held back by an open transaction.
    """

    flow_wait: float
    held_wait: float


def next_wait(
    state: PollState,
    *,
    delivered: int,
    held_back: bool,
    retry_interval: float,
    poll_interval: float,
) -> tuple[float, PollState]:
    """How long to wait for a notification before reading again, and the state after.

    Row-change events do not NOTIFY (it would serialize writers), so while
    events flow the listener polls: ``retry_interval`` after a batch was
    delivered, doubling on each empty read up to ``poll_interval``. The same
    short, growing delay applies while committed events wait behind an older
    open transaction. Idle, it waits ``poll_interval`` (or a NOTIFY of a
    lifecycle event, whichever comes first).

    Args:
        state: the delays so far (start with both at ``retry_interval``).
        delivered: events delivered by the last catch-up.
        held_back: ``tenancy.events_held_back`` answered true.
        retry_interval, poll_interval: the listener's settings, seconds.

    Returns:
        ``(seconds to wait, new state)``.
    """
    if delivered:
        return retry_interval, PollState(retry_interval, state.held_wait)
    if held_back:
        wait = state.held_wait
        return wait, PollState(state.flow_wait, min(wait * 2, poll_interval))
    wait = state.flow_wait
    return wait, PollState(min(wait * 2, poll_interval), retry_interval)


def is_permanent(sqlstate: str | None, ever_connected: bool) -> bool:
    """Whether a connection failure is not worth retrying: an authentication
    (class 28) or catalog-name (class 3D, unknown database) refusal at the
    first connection. Once connected, every connection failure is retried."""
    if ever_connected or sqlstate is None:
        return False
    return sqlstate[:2] in ("28", "3D")
