"""The listener's lease, heartbeat, backoff, polling and failure decisions,
tested as the pure functions of pgtenancy.delivery: no database, no clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pgtenancy import delivery
from pgtenancy.delivery import PollState


def test_seconds_takes_floats_ints_and_timedeltas_and_refuses_the_rest() -> None:
    assert delivery.seconds(0.25, "x") == 0.25
    assert delivery.seconds(3, "x") == 3.0
    assert delivery.seconds(timedelta(milliseconds=1500), "x") == 1.5
    assert delivery.seconds(timedelta(minutes=2), "x") == 120.0
    for bad in (0, 0.0, -1, timedelta(0), timedelta(seconds=-1), float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lease_seconds must be greater than zero"):
            delivery.seconds(bad, "lease_seconds")
    for wrong in ("10", None, True):
        with pytest.raises(TypeError, match="poll_interval must be seconds"):
            delivery.seconds(wrong, "poll_interval")  # type: ignore[arg-type]


def test_heartbeat_is_due_at_once_then_every_interval_inclusive() -> None:
    assert delivery.heartbeat_due(100.0, None, 10.0)  # first one on a connection
    assert not delivery.heartbeat_due(109.999, 100.0, 10.0)
    assert delivery.heartbeat_due(110.0, 100.0, 10.0)  # exactly one interval later
    assert delivery.heartbeat_due(500.0, 100.0, 10.0)


def test_lease_state_boundaries() -> None:
    lease = 9.0
    assert delivery.lease_state(50.0, None, lease) == "standby"
    assert delivery.lease_state(100.0, 100.0, lease) == "held"
    assert delivery.lease_state(102.999, 100.0, lease) == "held"
    assert delivery.lease_state(103.0, 100.0, lease) == "renew"  # a third of it has passed
    assert delivery.lease_state(108.9, 100.0, lease) == "renew"
    # At exactly its end the lease is still valid, as in SQL
    # (another holder may take it only once lease_until < clock_timestamp()).
    assert delivery.lease_state(109.0, 100.0, lease) == "renew"
    assert delivery.lease_state(109.000001, 100.0, lease) == "lapsed"
    # A lease that lapsed during a long event is renewed, not given up: only
    # acquire_lease answering false (someone took over) makes it lost.
    assert delivery.lease_state(1000.0, 100.0, lease) == "lapsed"


def test_next_tick_is_the_earlier_of_heartbeat_and_renewal() -> None:
    # Renewal every 3 s (lease 9 s), heartbeat every 10 s.
    assert delivery.next_tick(100.0, 100.0, 10.0, 100.0, 9.0) == pytest.approx(3.0)
    # A heartbeat due before the renewal comes first.
    assert delivery.next_tick(100.0, 91.0, 10.0, 100.0, 9.0) == pytest.approx(1.0)
    # Overdue: at once, never a negative wait.
    assert delivery.next_tick(200.0, 100.0, 10.0, 100.0, 9.0) == 0.0
    assert delivery.next_tick(100.0, None, 10.0, 100.0, 9.0) == 0.0
    # Not holding the lease: the keeper has nothing to keep.
    assert delivery.next_tick(100.0, 100.0, 10.0, None, 9.0) is None


def test_standby_waits_at_most_a_third_of_the_lease() -> None:
    assert delivery.standby_wait(0.5, 10.0) == 0.5
    assert delivery.standby_wait(5.0, 3.0) == 1.0


def test_retry_delay_grows_and_is_capped() -> None:
    delays = [delivery.retry_delay(a, 0.1, 1.0) for a in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert delivery.retry_delay(10_000, 0.1, 1.0) == 1.0  # no overflow far out
    with pytest.raises(ValueError, match="attempt must be at least 1"):
        delivery.retry_delay(0, 0.1, 1.0)


def test_backoff_doubles_up_to_its_cap_and_jitter_stretches_by_up_to_half() -> None:
    b = 0.1
    seen = []
    for _ in range(8):
        seen.append(b)
        b = delivery.next_backoff(b, 1.0)
    assert seen == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])
    assert delivery.jittered(2.0, 0.0) == 2.0
    assert delivery.jittered(2.0, 0.5) == 2.5
    assert delivery.jittered(2.0, 0.999) < 3.0


def test_failures_retry_then_park_or_block() -> None:
    def act(attempt: int, **kw: bool) -> str:
        opts = {"ordering_critical": False, "can_park": True, "stopping": False} | kw
        return delivery.after_failure(attempt, 3, **opts)

    assert [act(a) for a in (1, 2, 3)] == ["retry", "retry", "park"]
    # Ordering-critical signals block at the event instead of parking it.
    assert [act(a, ordering_critical=True) for a in (1, 2, 3)] == ["retry", "retry", "block"]
    # Without a connection to park with, block.
    assert act(3, can_park=False) == "block"
    # A stop request ends the retries at once and does not park (delivered again on restart).
    assert act(1, stopping=True) == "block"
    # max_attempts=1: no retry.
    assert (
        delivery.after_failure(1, 1, ordering_critical=False, can_park=True, stopping=False)
        == "park"
    )


def test_polling_waits_grow_while_idle_or_held_back_and_reset_on_delivery() -> None:
    retry, poll = 0.05, 0.5
    state = PollState(flow_wait=poll, held_wait=retry)  # a fresh listener

    def step(delivered: int, held_back: bool) -> float:
        nonlocal state
        wait, state = delivery.next_wait(
            state,
            delivered=delivered,
            held_back=held_back,
            retry_interval=retry,
            poll_interval=poll,
        )
        return wait

    assert step(0, False) == poll  # idle from the start: wait for a NOTIFY
    assert step(3, False) == retry  # events flow: poll soon
    assert [step(0, False) for _ in range(5)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])
    # Events held back by an older open transaction: short, growing waits.
    assert [step(0, True) for _ in range(5)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])
    # Not held back any more: the held-back delay starts over next time.
    assert step(0, False) == poll
    assert step(0, True) == retry


def test_only_refusals_at_the_first_connection_are_permanent() -> None:
    assert delivery.is_permanent("28P01", ever_connected=False)  # bad password
    assert delivery.is_permanent("3D000", ever_connected=False)  # no such database
    assert not delivery.is_permanent("08006", ever_connected=False)  # connection failure
    assert not delivery.is_permanent(None, ever_connected=False)
    assert not delivery.is_permanent("28P01", ever_connected=True)  # it worked before


def test_listener_intervals_take_timedeltas_and_bad_settings_are_refused() -> None:
    from pgtenancy import Listener

    dsn = "postgresql://nobody@127.0.0.1:1/none"  # never connected to
    listener = Listener(
        dsn,
        "c",
        poll_interval=timedelta(milliseconds=250),
        lease_seconds=timedelta(seconds=30),
        heartbeat_interval=2,
        backoff_min=timedelta(milliseconds=10),
        backoff_max=0.5,
        connect_timeout=timedelta(seconds=2.5),
    )
    assert (listener.poll_interval, listener.lease_seconds, listener.heartbeat_interval) == (
        0.25,
        30.0,
        2.0,
    )
    assert (listener.backoff_min, listener.backoff_max) == (0.01, 0.5)
    assert listener.connect_timeout == 3  # whole seconds for libpq, rounded up
    with pytest.raises(ValueError, match="lease_seconds must be greater than zero"):
        Listener(dsn, "c", lease_seconds=timedelta(0))
    with pytest.raises(ValueError, match="backoff_min must not be above backoff_max"):
        Listener(dsn, "c", backoff_min=2, backoff_max=1)
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        Listener(dsn, "c", max_attempts=0)
    with pytest.raises(TypeError, match="poll_interval must be seconds"):
        Listener(dsn, "c", poll_interval="1s")  # type: ignore[arg-type]


def _receiver_for_pickling(**kwargs: object) -> None:
    raise RuntimeError("down")


def test_receiver_failed_survives_pickling() -> None:
    import pickle
    from datetime import UTC, datetime

    from pgtenancy import TenancyError
    from pgtenancy.events import Event, TenantRef
    from pgtenancy.listener import ReceiverFailed

    event = Event(7, "tenant_created", datetime.now(UTC), 42, TenantRef("acme", None, None, None))
    exc = ReceiverFailed(event, [(_receiver_for_pickling, RuntimeError("down"))])
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy, ReceiverFailed) and isinstance(copy, TenancyError)
    assert (
        str(copy)
        == str(exc)
        == ("event 7 (tenant_created): receivers raised: _receiver_for_pickling")
    )
    assert copy.event == event
    assert [(r, str(e)) for r, e in copy.errors] == [(_receiver_for_pickling, "down")]
