"""Outbox operations: heartbeats, retention that never drops what an active
consumer still needs, consumer status, and the doctor's inactive-consumer check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from helpers import run_cli, wait_for, wait_until_readable
from pgtenancy import Listener, Tenancy
from pgtenancy.admin import ConsumerStatus
from pgtenancy.doctor import check_isolation

# Waits for event delivery: a stranger's transaction must not hold it back.
pytestmark = pytest.mark.own_server

SQL = Callable[..., list[tuple[Any, ...]]]


def age_events(sql: SQL, seconds: int) -> None:
    sql("UPDATE tenancy.events SET created_at = created_at - make_interval(secs => %s)", (seconds,))


def test_prune_keeps_what_an_active_consumer_has_not_passed(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:

    for slug in ("a1", "a2", "a3"):
        tenancy.create_tenant(slug)
    sql("SELECT tenancy.register_consumer('fast')")
    sql("SELECT tenancy.register_consumer('slow')")
    # A cursor moves only to readable events: wait until no transaction on
    # the server (ours or anybody's) is older than them.
    wait_until_readable(dsn)
    first, second, third = (r[0] for r in sql("SELECT id FROM tenancy.events ORDER BY id"))
    (xid,) = sql("SELECT xid::text FROM tenancy.events WHERE id = %s", (third,))[0]
    sql("SELECT tenancy.advance_consumer('fast', %s::xid8, %s)", (xid, third))
    (xid1,) = sql("SELECT xid::text FROM tenancy.events WHERE id = %s", (first,))[0]
    sql("SELECT tenancy.advance_consumer('slow', %s::xid8, %s)", (xid1, first))
    sql("SELECT tenancy.consumer_heartbeat('fast'), tenancy.consumer_heartbeat('slow')")
    age_events(sql, 3600)
    # Too young: nothing goes.
    assert tenancy.prune_events("2 hours") == 0
    # Old enough: only what both active consumers passed.
    assert tenancy.prune_events("30 minutes") == 1
    assert [r[0] for r in sql("SELECT id FROM tenancy.events ORDER BY id")] == [second, third]
    # 'slow' goes quiet for longer than inactive_after: it stops holding events back.
    sql(
        "UPDATE tenancy.consumers SET seen_at = now() - interval '2 days', "
        "updated_at = now() - interval '2 days' WHERE name = 'slow'"
    )
    assert tenancy.prune_events("30 minutes", inactive_after="1 day") == 2
    assert sql("SELECT count(*) FROM tenancy.events") == [(0,)]
    with pytest.raises(psycopg.Error) as info:
        sql("SELECT tenancy.prune_events('-1 day')")
    assert info.value.sqlstate == "22023"


def test_status_heartbeat_and_the_doctor(dsn: str, tenancy: Tenancy, sql: SQL) -> None:
    listener = Listener(dsn, "ops", poll_interval=0.1, heartbeat_interval=0.2)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        tenancy.create_tenant("acme")
        wait_for(lambda: listener.delivered == 1)

        def ops() -> ConsumerStatus:
            (status,) = [s for s in tenancy.consumer_status() if s.consumer == "ops"]
            return status

        # The cursor moves once the event is delivered.
        wait_for(lambda: ops().lag_events == 0)
        status = ops()
        assert (status.lag_events, status.listeners) == (0, 1)
        assert status.seen_at is not None
        seen_before = status.seen_at
        # Heartbeats (every 0.2 s) move seen_at while nothing happens.
        wait_for(lambda: (ops().seen_at or seen_before) > seen_before, timeout=5)
    finally:
        listener.stop()
        thread.join(10)
    tenancy.create_tenant("globex")  # not delivered: the listener is gone
    (status,) = tenancy.consumer_status()
    assert (status.lag_events, status.listeners) == (1, 0)
    assert status.lag_seconds >= 0
    health = tenancy.outbox_health()
    assert health.events == 2
    assert 0 <= health.notification_queue_usage < 1
    r = run_cli("events", "status", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:5] == [
        "ops",
        str(status.last_id),
        "1",
        r.stdout.splitlines()[1].split()[3],
        "0",
    ]
    assert "outbox events: 2" in r.stdout
    # A consumer unseen for a day with work waiting is reported.
    sql(
        "UPDATE tenancy.consumers SET seen_at = now() - interval '2 days', "
        "updated_at = now() - interval '2 days'"
    )
    assert ("warning", "consumer_inactive", "ops") in {
        (f.severity, f.check, f.object) for f in check_isolation(dsn)
    }
    r = run_cli("events", "prune", "--older-than", "0 seconds", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2 events deleted"


def test_oldest_transaction_is_reported(dsn: str, tenancy: Tenancy) -> None:
    with psycopg.connect(dsn) as other:
        other.execute("SELECT txid_current()")
        time.sleep(1.1)
        assert tenancy.outbox_health().oldest_transaction_seconds >= 1.0
        other.rollback()


def run_until_delivered(listener: Listener, count: int) -> None:
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        wait_for(lambda: listener.delivered == count)
    finally:
        listener.stop()
        thread.join(10)


def test_inbox_makes_redelivery_effectively_once(dsn: str, tenancy: Tenancy, sql: SQL) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from pgtenancy.inbox import claim

    sql("CREATE TABLE public.accounts (slug text PRIMARY KEY)")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    applied: list[str] = []

    def open_account(sender: str, event: Any, **kwargs: Any) -> None:
        with psycopg.connect(dsn) as conn:
            if not claim(conn, "billing.open_account", event):
                return
            conn.execute("INSERT INTO public.accounts VALUES (%s)", (sender,))
            applied.append(sender)
            if sender == "globex" and len(applied) == 2:
                raise RuntimeError("crash before commit")  # rolls back effect and claim

    from pgtenancy.signals import tenant_created

    tenant_created.connect(open_account, dispatch_uid="billing.open_account")
    try:
        for _ in range(3):  # deliver everything three times over
            sql("UPDATE tenancy.consumers SET last_xid = '0', last_id = 0")
            run_until_delivered(Listener(dsn, "inbox", poll_interval=0.1, backoff_min=0.01), 2)
    finally:
        tenant_created.disconnect(dispatch_uid="billing.open_account")
    assert sql("SELECT slug FROM public.accounts ORDER BY 1") == [("acme",), ("globex",)]
    assert applied == ["acme", "globex", "globex"]  # the crashed attempt, then the real one
    assert sql("SELECT count(*) FROM tenancy.inbox") == [(2,)]
    # The SQLAlchemy forms.
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    try:
        first = sql("SELECT min(id) FROM tenancy.events")[0][0]
        with Session(engine) as session:
            assert claim(session, "other", first) is True
            assert claim(session, "other", first) is False
            assert claim(session, "other", 10**9) is False  # no such event: nothing to claim
            session.rollback()
        with engine.begin() as conn:
            assert claim(conn, "other", first) is True
    finally:
        engine.dispose()


def test_consumers_fan_out_with_their_own_cursors(dsn: str, tenancy: Tenancy, sql: SQL) -> None:
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    run_until_delivered(Listener(dsn, "billing", poll_interval=0.1), 2)
    tenancy.suspend_tenant("acme")
    run_until_delivered(Listener(dsn, "search", poll_interval=0.1), 3)
    run_until_delivered(Listener(dsn, "billing", poll_interval=0.1), 1)
    assert sql("SELECT name, last_id FROM tenancy.consumers ORDER BY name") == [
        ("billing", 3),
        ("search", 3),
    ]


def test_inactivity_threshold_is_a_database_setting(dsn: str, tenancy: Tenancy, sql: SQL) -> None:
    tenancy.create_tenant("acme")
    sql("SELECT tenancy.register_consumer('quiet')")
    sql(
        "UPDATE tenancy.consumers SET seen_at = now() - interval '2 hours', "
        "updated_at = now() - interval '2 hours'"
    )
    assert ("warning", "consumer_inactive", "quiet") not in {
        (f.severity, f.check, f.object) for f in check_isolation(dsn)
    }
    dbname = sql("SELECT current_database()")[0][0]
    sql(f"ALTER DATABASE {dbname} SET pgtenancy.consumer_inactive_after = '1 hour'")
    assert ("warning", "consumer_inactive", "quiet") in {
        (f.severity, f.check, f.object) for f in check_isolation(dsn)
    }
    age_events(sql, 7200)
    assert tenancy.prune_events("1 minute") == 1
