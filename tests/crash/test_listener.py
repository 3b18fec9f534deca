"""The listener as a separate process: ordering, out-of-order commits, crashes,
reconnects, failing receivers and clean shutdown."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import (
    TESTS,
    pgtenancy_cli,
    recorded,
    run_cli,
    subprocess_env,
    until_sentinel,
    wait_for,
    wait_for_polls,
    wait_until_readable,
)
from pgtenancy import Listener, Tenancy, install
from pgtenancy.events import Event, TenantRef
from pgtenancy.signals import muted, tenant_created, tenant_suspended
from pgtenancy.testing import TemporaryCluster, find_bindir, fresh_database

# Waits for event delivery: a stranger's transaction must not hold it back.
pytestmark = pytest.mark.own_server


class ListenerProcess:
    """A `pgtenancy listen` child process recording events to a file."""

    def __init__(self, dsn: str, record: Path, consumer: str = "test", **env: str) -> None:
        self.dsn = dsn
        self.record = record
        self.consumer = consumer
        self.env = env
        self.extra: list[str] = []
        self.log = record.parent / f"listener-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ListenerProcess:
        env = subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        env["RECORD_FILE"] = str(self.record)
        env.update(self.env)
        self.proc = subprocess.Popen(
            [
                *pgtenancy_cli(),
                "-v",
                "listen",
                "--dsn",
                self.dsn,
                "--consumer",
                self.consumer,
                "--handlers",
                "record_handlers",
                "--poll-interval",
                "0.2",
                "--batch-size",
                "10",
                *self.extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            text=True,
        )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def stderr(self) -> str:
        return self.log.read_text()


def all_event_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM tenancy.events ORDER BY id")]


@pytest.fixture
def listeners(dsn: str, tmp_path: Path) -> Iterator[Callable[..., ListenerProcess]]:
    started: list[ListenerProcess] = []

    def make(**env: str) -> ListenerProcess:
        lp = ListenerProcess(dsn, tmp_path / "events.jsonl", **env).start()
        started.append(lp)
        return lp

    yield make
    for lp in started:
        if lp.proc is not None and lp.proc.poll() is None:
            lp.kill()


def test_delivers_in_order_and_resumes_from_its_cursor(
    tenancy: Tenancy, listeners: Callable[..., ListenerProcess], tmp_path: Path, dsn: str
) -> None:
    record = tmp_path / "events.jsonl"
    tenancy.create_tenant("acme")  # before the listener starts: caught up
    lp = listeners()
    tenancy.create_tenant("globex")
    tenancy.suspend_tenant("globex")
    wait_for(lambda: len(recorded(record)) == 3)
    assert [(e["name"], e["slug"], e["status"]) for e in recorded(record)] == [
        ("tenant_created", "acme", "active"),
        ("tenant_created", "globex", "active"),
        ("tenant_suspended", "globex", "suspended"),
    ]
    assert lp.terminate() == 0
    # Restarted, the consumer does not see them again, only what is new.
    tenancy.resume_tenant("globex")
    listeners()
    before = until_sentinel(dsn, record)  # nothing else arrives before it
    assert [e["name"] for e in before] == [
        "tenant_created",
        "tenant_created",
        "tenant_suspended",
        "tenant_resumed",
    ]
    assert [e["id"] for e in before] == all_event_ids(dsn)[:-1]


def test_out_of_order_commit_is_not_skipped_sql(dsn: str, sql: Callable[..., Any]) -> None:
    sql("SELECT tenancy.register_consumer('c')")
    a = psycopg.connect(dsn)
    b = psycopg.connect(dsn)
    try:
        a.execute("SELECT tenancy.create_tenant('a')")  # takes the smaller event id
        b.execute("SELECT tenancy.create_tenant('b')")  # larger id, commits first
        b.commit()
        ids = dict(sql("SELECT tenant_slug, id FROM tenancy.events"))
        assert list(ids) == ["b"]
        # b is committed but a's transaction may still commit below it: held back.
        assert sql("SELECT count(*) FROM tenancy.next_events('c')") == [(0,)]
        assert sql("SELECT tenancy.events_held_back('c')") == [(True,)]
        a.commit()
        # Readable once no transaction anywhere on the server is older (the
        # snapshot's xmin is server-wide): wait for that, however long other
        # sessions hold it back.
        wait_until_readable(dsn)
        rows = sql("SELECT tenant_slug, id, xid::text FROM tenancy.next_events('c')")
        assert [r[0] for r in rows] == ["a", "b"]
        assert rows[0][1] < rows[1][1]
        last = rows[-1]
        sql("SELECT tenancy.advance_consumer('c', %s::xid8, %s)", (last[2], last[1]))
        assert sql("SELECT count(*) FROM tenancy.next_events('c')") == [(0,)]
    finally:
        a.close()
        b.close()


def test_out_of_order_commit_is_delivered_by_the_listener(
    dsn: str, listeners: Callable[..., ListenerProcess], tmp_path: Path
) -> None:
    record = tmp_path / "events.jsonl"
    listeners()
    a = psycopg.connect(dsn)
    b = psycopg.connect(dsn)
    try:
        a.execute("SELECT tenancy.create_tenant('alpha')")
        b.execute("SELECT tenancy.create_tenant('beta')")
        b.commit()
        wait_for_polls(dsn, "test")  # the listener read the outbox after beta's commit
        assert recorded(record) == []  # beta waits for alpha's transaction
        a.commit()
        wait_until_readable(dsn)
        wait_for(lambda: len(recorded(record)) == 2)
    finally:
        a.close()
        b.close()
    assert [e["slug"] for e in recorded(record)] == ["alpha", "beta"]
    assert sorted(e["id"] for e in recorded(record)) == all_event_ids(dsn)


def test_sigkill_while_events_are_produced_loses_nothing(
    dsn: str, tenancy: Tenancy, listeners: Callable[..., ListenerProcess], tmp_path: Path
) -> None:
    record = tmp_path / "events.jsonl"
    tenancy.create_tenant("acme")
    lp = listeners(RECORD_DELAY="0.002")
    done = threading.Event()

    def produce() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(150):
                fn = "suspend_tenant" if i % 2 == 0 else "resume_tenant"
                conn.execute(f"SELECT tenancy.{fn}('acme')")
                time.sleep(0.002)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: len(recorded(record)) >= 30)
    lp.kill()  # SIGKILL, mid-stream
    killed_at = len(recorded(record))
    time.sleep(0.3)
    listeners(RECORD_DELAY="0.002")
    producer.join()
    assert done.is_set()
    expected = all_event_ids(dsn)
    assert len(expected) == 151
    wait_for(lambda: {e["id"] for e in recorded(record)} >= set(expected), timeout=60)
    got = [e["id"] for e in recorded(record)]
    assert set(got) == set(expected)
    # At least once: duplicates only from the batch in flight at the kill.
    assert len(got) - len(set(got)) <= 10
    assert killed_at < len(expected)
    assert len({e["pid"] for e in recorded(record)}) == 2


def test_reconnects_after_its_backend_is_killed(
    dsn: str, tenancy: Tenancy, listeners: Callable[..., ListenerProcess], tmp_path: Path
) -> None:
    record = tmp_path / "events.jsonl"
    lp = listeners()
    tenancy.create_tenant("acme")
    wait_for(lambda: len(recorded(record)) == 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'pgtenancy-listener:test'"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    # Events committed while it is away are caught up after the reconnect.
    tenancy.create_tenant("globex")
    tenancy.suspend_tenant("globex")
    wait_for(lambda: len(recorded(record)) == 3)
    assert [e["slug"] for e in recorded(record)] == ["acme", "globex", "globex"]
    assert lp.terminate() == 0
    assert "reconnecting" in lp.stderr()


def test_failing_receiver_blocks_and_retries_without_loss(
    dsn: str, tenancy: Tenancy, listeners: Callable[..., ListenerProcess], tmp_path: Path
) -> None:
    record = tmp_path / "events.jsonl"
    lp = listeners(FAIL_ONCE_SLUG="globex")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    tenancy.create_tenant("initech")
    wait_for(lambda: len(recorded(record)) == 3)
    assert [e["slug"] for e in recorded(record)] == ["acme", "globex", "initech"]
    assert (tmp_path / "events.failed").exists()
    assert lp.terminate() == 0
    assert "failing once" in lp.stderr()


def test_listener_refuses_a_database_without_the_kit(empty_dsn: str) -> None:
    result = run_cli("listen", "--dsn", empty_dsn, "--consumer", "x")
    assert result.returncode == 1
    assert result.stderr.startswith("error: pgtenancy is not installed")


def test_in_process_listener_sends_signals_with_tenant_and_event(
    dsn: str, tenancy: Tenancy
) -> None:
    got: list[tuple[str, TenantRef, Event]] = []

    def on_created(sender: str, tenant: TenantRef, event: Event, **kwargs: Any) -> None:
        got.append((sender, tenant, event))

    def on_suspended_acme(sender: str, tenant: TenantRef, event: Event, **kwargs: Any) -> None:
        got.append(("acme-only", tenant, event))

    tenant_created.connect(on_created)
    tenant_suspended.connect(on_suspended_acme, sender="acme")
    listener = Listener(dsn, "inproc", poll_interval=0.1)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        acme = tenancy.create_tenant("acme")
        tenancy.create_tenant("globex")
        tenancy.suspend_tenant("globex")  # filtered out by sender
        tenancy.suspend_tenant("acme")
        wait_for(lambda: len(got) == 3)
    finally:
        listener.stop()
        thread.join(10)
        tenant_created.disconnect(on_created)
        tenant_suspended.disconnect(on_suspended_acme, sender="acme")
    assert not thread.is_alive()
    sender, tenant, event = got[0]
    assert sender == "acme"
    assert tenant == TenantRef("acme", acme.id, "tenant_acme", "active")
    assert event.name == "tenant_created" and event.id > 0 and event.time.tzinfo is not None
    assert [g[0] for g in got] == ["acme", "globex", "acme-only"]
    assert got[2][1].status == "suspended"


def test_a_listener_role_and_cursor_positions(
    dsn: str, sql: Callable[..., Any], tenancy: Tenancy
) -> None:
    import uuid as uuidlib

    from psycopg.conninfo import make_conninfo

    role = f"pgtenancy_listen_{uuidlib.uuid4().hex[:8]}"
    sql(f"CREATE ROLE {role} LOGIN")
    try:
        sql("SELECT tenancy.grant_listener_role(%s)", (role,))
        tenancy.create_tenant("acme")
        got: list[str] = []

        def on_created(sender: str, **kwargs: Any) -> None:
            got.append(sender)

        tenant_created.connect(on_created)
        listener = Listener(make_conninfo(dsn, user=role), "as-role", poll_interval=0.1)
        thread = threading.Thread(target=listener.run)
        thread.start()
        try:
            wait_for(lambda: got == ["acme"])
        finally:
            listener.stop()
            thread.join(10)
            tenant_created.disconnect(on_created)
        # A cursor only moves to a readable event.
        with pytest.raises(psycopg.Error) as info:
            sql("SELECT tenancy.advance_consumer('as-role', '999999'::xid8, 999)")
        assert info.value.sqlstate == "22023"
    finally:
        sql(f"DROP OWNED BY {role}")
        sql(f"DROP ROLE {role}")


def test_an_ordering_critical_failure_blocks_and_backs_off_on_one_connection(
    dsn: str, tenancy: Tenancy
) -> None:
    calls: list[float] = []

    def always_fails(sender: str, **kwargs: Any) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("down")

    tenant_created.connect(always_fails)
    tenant_created.ordering_critical = True  # block at the event instead of parking it
    listener = Listener(
        dsn, "backoff", poll_interval=0.1, backoff_min=0.05, backoff_max=0.4, max_attempts=2
    )
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        tenancy.create_tenant("acme")
        wait_for(lambda: len(calls) >= 8, timeout=20)
        with psycopg.connect(dsn) as conn:
            backends = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() "
                "AND application_name = 'pgtenancy-listener:backoff'"
            ).fetchone()
    finally:
        listener.stop()
        thread.join(10)
        tenant_created.disconnect(always_fails)
        tenant_created.ordering_critical = False
    # Each round is 2 attempts (0.05 s apart); rounds start further and further apart.
    starts = calls[::2]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] < gaps[1] < gaps[2] + 0.05  # grows ...
    assert max(gaps) < 0.4 + 0.05 + 0.3  # ... up to backoff_max
    assert backends == (1,)  # the same connection, not a reconnect per retry
    assert listener.delivered == 0
    with psycopg.connect(dsn) as conn:  # the cursor never passed the event
        assert conn.execute(
            "SELECT last_id FROM tenancy.consumers WHERE name = 'backoff'"
        ).fetchone() == (0,)


@pytest.mark.skipif(find_bindir() is None, reason="no local PostgreSQL binaries to restart")
def test_listener_survives_a_server_restart(tmp_path: Path) -> None:
    cluster = TemporaryCluster(find_bindir())  # type: ignore[arg-type]
    cluster.start()
    try:
        with fresh_database(cluster.dsn, "restart") as dsn:
            install(dsn)
            tenancy = Tenancy(dsn)
            record = tmp_path / "events.jsonl"
            lp = ListenerProcess(dsn, record).start()
            try:
                tenancy.create_tenant("before")
                wait_for(lambda: len(recorded(record)) == 1)
                tenancy.create_tenant("racing")  # committed just before the restart
                cluster.server_stop()
                time.sleep(0.5)
                cluster.server_start()
                tenancy.create_tenant("after")
                try:
                    wait_for(lambda: len(recorded(record)) == 3, timeout=60)
                except AssertionError:
                    raise AssertionError(f"{recorded(record)}\n{lp.stderr()}") from None
                assert [e["slug"] for e in recorded(record)] == ["before", "racing", "after"]
                assert lp.terminate() == 0
                assert "reconnecting" in lp.stderr()
            finally:
                if lp.proc is not None and lp.proc.poll() is None:
                    lp.kill()
    finally:
        cluster.stop()


def test_one_consumer_many_processes_one_dispatches_and_failover_after_kill(
    dsn: str, tenancy: Tenancy, tmp_path: Path
) -> None:
    record = tmp_path / "events.jsonl"
    lease = 2.0
    env = {"RECORD_DELAY": "0.002"}
    procs = []
    for _ in range(3):
        lp = ListenerProcess(dsn, record, consumer="group", **env)
        lp.extra = ["--lease-seconds", str(lease)]
        procs.append(lp.start())
    tenancy.create_tenant("acme")
    stop = threading.Event()

    def produce() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                fn = "suspend_tenant" if i % 2 == 0 else "resume_tenant"
                conn.execute(f"SELECT tenancy.{fn}('acme')")
                i += 1
                time.sleep(0.01)

    def lease_pid() -> int | None:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT lease_holder FROM tenancy.consumers "
                "WHERE name = 'group' AND lease_until > clock_timestamp()"
            ).fetchone()
        return int(row[0].split(":")[1]) if row and row[0] else None

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_for(lambda: len(recorded(record)) >= 40)
        holders = {e["pid"] for e in recorded(record)}
        assert len(holders) == 1  # exactly one process dispatches
        (holder_pid,) = holders
        holder = next(lp for lp in procs if lp.proc is not None and lp.proc.pid == holder_pid)
        killed_at = time.monotonic()
        holder.kill()
        count = len(recorded(record))
        # Measured on the lease, which no other session on the server can
        # delay (an event's delivery can: it waits for older transactions).
        wait_for(lambda: lease_pid() not in (None, holder_pid), timeout=20)
        takeover = time.monotonic() - killed_at
        assert takeover < 2 * lease + 1.0, takeover
        wait_for(lambda: any(e["pid"] != holder_pid for e in recorded(record)[count:]), timeout=60)
    finally:
        stop.set()
        producer.join()
    expected = all_event_ids(dsn)
    wait_until_readable(dsn)
    wait_for(lambda: {e["id"] for e in recorded(record)} >= set(expected), timeout=30)
    got = [e["id"] for e in recorded(record)]
    assert set(got) == set(expected)  # nothing skipped
    assert len(got) - len(set(got)) <= 10  # duplicates only from the batch in flight
    # A clean stop hands the lease over at once.
    survivors = [lp for lp in procs if lp.proc is not None and lp.proc.poll() is None]
    new_holder = recorded(record)[-1]["pid"]
    holder = next(lp for lp in survivors if lp.proc is not None and lp.proc.pid == new_holder)
    assert holder.terminate() == 0
    stopped_at = time.monotonic()
    wait_for(lambda: lease_pid() not in (None, holder_pid, new_holder), timeout=10)
    assert time.monotonic() - stopped_at < lease
    taker = lease_pid()
    tenancy.create_tenant("handover")
    wait_until_readable(dsn)
    wait_for(lambda: recorded(record)[-1]["pid"] == taker, timeout=30)
    for lp in survivors:
        if lp.proc is not None and lp.proc.poll() is None:
            lp.terminate()


def test_failing_receiver_is_parked_and_retried_alone(dsn: str, tenancy: Tenancy) -> None:
    calls: dict[str, list[int]] = {"good": [], "flaky": []}
    broken = {"on": True}

    def good(sender: str, event: Event, **kwargs: Any) -> None:
        calls["good"].append(event.id)

    def flaky(sender: str, event: Event, **kwargs: Any) -> None:
        calls["flaky"].append(event.id)
        if broken["on"] and sender == "globex":
            raise RuntimeError("billing is down")

    tenant_created.connect(good, dispatch_uid="tests.good")
    tenant_created.connect(flaky, dispatch_uid="tests.flaky")
    listener = Listener(dsn, "park", poll_interval=0.1, backoff_min=0.01, max_attempts=3)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        tenancy.create_tenant("acme")
        tenancy.create_tenant("globex")
        tenancy.create_tenant("initech")
        wait_for(lambda: listener.delivered == 3)
    finally:
        listener.stop()
        thread.join(10)
    ids = all_event_ids(dsn)
    assert calls["good"] == ids  # the consumer went on past the failure
    assert calls["flaky"] == [ids[0], ids[1], ids[1], ids[1], ids[2]]  # 3 attempts, then parked
    with psycopg.connect(dsn) as conn:
        parked = conn.execute(
            "SELECT receiver, event_id, attempts, error FROM tenancy.parked_events"
        ).fetchall()
    assert parked == [("tests.flaky", ids[1], 3, "RuntimeError: billing is down")]
    r = run_cli("events", "failed", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    assert "tests.flaky" in r.stdout and "billing is down" in r.stdout
    # Retry re-delivers to the receiver that failed only.
    broken["on"] = False
    good_before = list(calls["good"])
    retried = Listener(dsn, "park").retry_parked()
    assert retried == (1, 0)
    assert calls["flaky"][-1] == ids[1]
    assert calls["good"] == good_before
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM tenancy.parked_events").fetchone() == (0,)
    tenant_created.disconnect(dispatch_uid="tests.good")
    tenant_created.disconnect(dispatch_uid="tests.flaky")


def test_an_event_slower_than_the_lease_is_delivered_once(dsn: str, tenancy: Tenancy) -> None:
    calls: list[int] = []
    seen: list[tuple[Any, Any]] = []  # (seen_at, lease_until) as each receiver starts and ends

    def consumer_row() -> tuple[Any, Any]:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT seen_at, lease_until FROM tenancy.consumers WHERE name = 'slow'"
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    def slow(sender: str, event: Event, **kwargs: Any) -> None:
        calls.append(event.id)
        seen.append(consumer_row())
        time.sleep(0.8)
        seen.append(consumer_row())

    tenant_created.connect(slow)
    listener = Listener(
        dsn,
        "slow",
        poll_interval=0.1,
        lease_seconds=timedelta(milliseconds=300),
        heartbeat_interval=timedelta(milliseconds=200),
    )
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        tenancy.create_tenant("acme")
        tenancy.create_tenant("globex")
        wait_for(lambda: listener.delivered == 2, timeout=20)
        # Sentinel: an event after them (not a tenant_created, so not slow);
        # a second delivery of either would come before it.
        tenancy.suspend_tenant("globex")
        wait_for(lambda: listener.delivered == 3, timeout=20)
    finally:
        listener.stop()
        thread.join(10)
        tenant_created.disconnect(slow)
    ids = all_event_ids(dsn)
    assert calls == ids[:2]  # each slow event once, before the sentinel
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT last_id FROM tenancy.consumers WHERE name = 'slow'"
        ).fetchone() == (ids[-1],)
    # Heartbeats and lease renewals went on while each receiver slept.
    assert len(seen) == 4
    for (seen_before, until_before), (seen_after, until_after) in zip(
        seen[::2], seen[1::2], strict=True
    ):
        assert seen_after > seen_before
        assert until_after > until_before


def test_muting_holds_in_the_worker_thread_and_the_cursor_still_moves(
    dsn: str, tenancy: Tenancy
) -> None:
    calls: list[str] = []

    def on_created(sender: str, **kwargs: Any) -> None:
        calls.append(sender)

    tenant_created.connect(on_created)
    listener = Listener(dsn, "muted", poll_interval=0.1)

    def run_muted() -> None:
        with muted(tenant_created):
            listener.run()

    thread = threading.Thread(target=run_muted)
    thread.start()
    try:
        tenancy.create_tenant("acme")
        wait_for(lambda: listener.delivered == 1)
    finally:
        listener.stop()
        thread.join(10)
        tenant_created.disconnect(on_created)
    assert calls == []
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT last_id FROM tenancy.consumers WHERE name = 'muted'"
        ).fetchone() == (all_event_ids(dsn)[-1],)


def test_an_async_receiver_is_parked_and_retried_with_aretry_parked(
    dsn: str, tenancy: Tenancy
) -> None:
    broken = {"on": True}
    calls: list[int] = []

    async def flaky(sender: str, event: Event, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        calls.append(event.id)
        if broken["on"]:
            raise RuntimeError("mail is down")

    tenant_created.connect(flaky, dispatch_uid="tests.async_flaky")
    listener = Listener(dsn, "apark", poll_interval=0.1, backoff_min=0.01, max_attempts=2)

    async def consume() -> None:
        task = asyncio.create_task(listener.arun())
        while listener.delivered < 1:
            await asyncio.sleep(0.05)
        listener.stop()
        await task

    try:
        tenancy.create_tenant("acme")
        asyncio.run(asyncio.wait_for(consume(), 30))
        (event_id,) = all_event_ids(dsn)
        assert calls == [event_id, event_id]
        with psycopg.connect(dsn) as conn:
            parked = conn.execute(
                "SELECT receiver, event_id, attempts, error FROM tenancy.parked_events"
            ).fetchall()
        assert parked == [("tests.async_flaky", event_id, 2, "RuntimeError: mail is down")]
        # Still failing: stays parked, its attempts added.
        assert asyncio.run(Listener(dsn, "apark", max_attempts=1).aretry_parked()) == (0, 1)
        broken["on"] = False
        assert asyncio.run(Listener(dsn, "apark").aretry_parked()) == (1, 0)
        assert calls == [event_id] * 4
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM tenancy.parked_events").fetchone() == (0,)
    finally:
        tenant_created.disconnect(dispatch_uid="tests.async_flaky")


def test_a_sync_receiver_slower_than_the_lease_keeps_it_and_the_standby_waits(
    dsn: str, tenancy: Tenancy, tmp_path: Path
) -> None:
    """The point of the async core: while a sync receiver sleeps for several
    lease lengths in its worker thread, the holder goes on renewing the lease,
    so the standby process of the same consumer never takes over and never
    delivers the event a second time."""
    record = tmp_path / "events.jsonl"
    started = record.with_suffix(".started")
    lease, slow = 0.6, 3.0  # the receiver sleeps for 5 lease lengths
    procs = []
    for _ in range(2):
        lp = ListenerProcess(dsn, record, consumer="slowgroup", SLOW_SLUG="slow")
        lp.env["SLOW_DELAY"] = str(slow)
        lp.extra = ["--lease-seconds", str(lease)]
        procs.append(lp.start())
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:

            def both_listening() -> bool:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'pgtenancy-listener:slowgroup'"
                ).fetchone()
                return row == (2,)

            wait_for(both_listening)
            tenancy.create_tenant("slow")
            wait_for(lambda: len(recorded(started)) == 1)
            # While the receiver sleeps, the lease stays valid and with its holder.
            holders = set()
            deadline = time.monotonic() + slow - 0.5
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT lease_holder, lease_until > clock_timestamp() "
                    "FROM tenancy.consumers WHERE name = 'slowgroup'"
                ).fetchone()
                assert row is not None and row[1] is True, row
                holders.add(row[0])
                time.sleep(0.1)
            assert len(holders) == 1
        tenancy.create_tenant("sentinel")  # delivered after the slow event, by the holder
        wait_for(lambda: [e["slug"] for e in recorded(record)] == ["slow", "sentinel"])
    finally:
        stderr = "\n".join(lp.stderr() for lp in procs)
        for lp in procs:
            if lp.proc is not None and lp.proc.poll() is None:
                lp.terminate()
    ids = all_event_ids(dsn)
    assert [e["id"] for e in recorded(started)] == ids, stderr  # each started once
    assert len({e["pid"] for e in recorded(started)}) == 1, stderr  # by one process
    assert [e["id"] for e in recorded(record)] == ids
    assert "lease lost" not in stderr and "ran out" not in stderr, stderr


def test_a_lapsed_lease_is_still_its_holders_until_another_takes_over(
    dsn: str, sql: Callable[..., Any], tenancy: Tenancy
) -> None:
    """The rule the listener relies on when its lease ran out during an event
    (an event loop blocked past the lease): with nobody taking over, the holder
    still moves the cursor and renews; once another holder took the lease, the
    old holder's cursor moves are refused (PT015) and nothing changes."""
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    sql("SELECT tenancy.register_consumer('lapse')")
    wait_until_readable(dsn)
    (first, second) = sql("SELECT xid::text, id FROM tenancy.next_events('lapse')")
    assert sql("SELECT tenancy.acquire_lease('lapse', 'a', interval '50 ms')") == [(True,)]
    # The lease runs out, and nobody takes over.
    wait_for(
        lambda: sql("SELECT lease_until < clock_timestamp() FROM tenancy.consumers") == [(True,)]
    )
    assert sql("SELECT tenancy.advance_consumer('lapse', %s::xid8, %s, 'a')", first) == [(True,)]
    assert sql("SELECT tenancy.acquire_lease('lapse', 'a', interval '50 ms')") == [(True,)]
    wait_for(
        lambda: sql("SELECT lease_until < clock_timestamp() FROM tenancy.consumers") == [(True,)]
    )
    assert sql("SELECT tenancy.acquire_lease('lapse', 'b', interval '10 s')") == [(True,)]
    with pytest.raises(psycopg.Error) as info:
        sql("SELECT tenancy.advance_consumer('lapse', %s::xid8, %s, 'a')", second)
    assert info.value.sqlstate == "PT015"
    assert sql("SELECT last_id, lease_holder FROM tenancy.consumers") == [(first[1], "b")]
    assert sql("SELECT tenancy.acquire_lease('lapse', 'a', interval '10 s')") == [(False,)]
