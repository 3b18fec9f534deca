"""Listener operations (issue 12, item 6): events status --json, events health
exit codes as the listener role, start-from now, drop-consumer, the stale
consumer warning, xid holders and prepared transactions in outbox_health, JSON
logs and Prometheus metrics of a running listener."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi_support import free_port
from psycopg import sql as pgsql

from conftest import as_role, pgtenancy_cli, subprocess_env
from helpers import TESTS, recorded, wait_for, wait_for_polls
from pgtenancy import Listener, Tenancy, install
from pgtenancy.doctor import check_isolation
from pgtenancy.testing import TemporaryCluster, find_bindir, fresh_database

# Waits for event delivery: a stranger's transaction must not hold it back.
pytestmark = pytest.mark.own_server

SQL = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def listener_role(dsn: str) -> Iterator[str]:
    name = f"pgtenancy_listen_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(name)))
        conn.execute("SELECT tenancy.grant_listener_role(%s)", (name,))
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(name)))
        conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pgtenancy_cli(), *args], capture_output=True, text=True, env=subprocess_env()
    )


def wait_readable(tenancy: Tenancy) -> None:
    """Until no event is held back by someone else's open transaction."""
    for _ in range(300):
        if tenancy.outbox_health().held_back_events == 0:
            return
        time.sleep(0.1)


def test_status_json_and_health_as_the_listener_role(
    tenancy: Tenancy, dsn: str, sql: SQL, listener_role: str
) -> None:
    url = as_role(dsn, listener_role)
    tenancy.create_tenant("acme")
    sql("SELECT tenancy.register_consumer('billing')")
    r = cli("events", "status", "--dsn", url, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (billing,) = doc["consumers"]
    assert billing["consumer"] == "billing" and billing["lag_events"] == 1
    assert billing["lease_holder"] is None
    assert {"held_back_events", "prepared_transactions", "xid_holders"} <= set(doc["outbox"])

    # Nobody holds the lease: 3.
    r = cli("events", "health", "--dsn", url, "--consumer", "billing")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no listener holds the lease" in r.stdout
    # Lag over the limit: 2 (it wins over the missing lease).
    sql("UPDATE tenancy.events SET created_at = now() - interval '1 hour'")
    r = cli("events", "health", "--dsn", url, "--max-lag-seconds", "60", "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    assert json.loads(r.stdout)["status"] == "lag"
    r = cli(
        "events",
        "health",
        "--dsn",
        url,
        "--max-lag-events",
        "0",
        "--no-lease-ok",
        "--max-lag-seconds",
        "7200",
    )
    assert r.returncode == 2, r.stdout
    assert cli("events", "health", "--dsn", url, "--consumer", "nobody").returncode == 5

    # A listener running: healthy once it delivered.
    listener = Listener(url, "billing", poll_interval=0.1, lease_seconds=2)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            r = cli("events", "health", "--dsn", url, "--consumer", "billing")
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == "ok"
    finally:
        listener.stop()
        thread.join(30)
    # Unreachable database: 1.
    assert cli("events", "health", "--dsn", "postgresql://127.0.0.1:1/x").returncode == 1


def test_stalled_fence_names_its_xid_holder(
    tenancy: Tenancy, dsn: str, sql: SQL, listener_role: str
) -> None:
    url = as_role(dsn, listener_role)
    sql("SELECT tenancy.register_consumer('billing')")
    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT pg_catalog.txid_current()")  # an xid, held open
        pid = blocker.info.backend_pid
        tenancy.create_tenant("acme")  # committed after the blocker began: held back
        health = Tenancy(url).outbox_health()
        assert health.held_back_events >= 1
        assert any(
            h["kind"] == "transaction" and h["holder"] == str(pid) for h in health.xid_holders
        )
        r = cli("events", "health", "--dsn", url, "--no-lease-ok", "--max-stall-seconds", "0")
        assert r.returncode == 4, r.stdout + r.stderr
        # It names the oldest holder: ours, or an older one of another session.
        assert "held back" in r.stdout and "by transaction " in r.stdout
        r = cli("events", "status", "--dsn", url)
        assert "xid holder: transaction " in r.stdout
    wait_readable(tenancy)
    r = cli("events", "health", "--dsn", url, "--no-lease-ok", "--max-stall-seconds", "0")
    assert r.returncode == 0, r.stdout


@pytest.fixture(scope="module")
def prepared_server(pg_admin_dsn: str) -> Iterator[str]:
    """Admin DSN of a server that allows prepared transactions: a throwaway
    cluster from the machine's binaries with max_prepared_transactions = 10
    (the usual server has 0); the test server itself only when no binaries
    are installed and it allows them."""
    bindir = find_bindir()
    if bindir is None:
        with psycopg.connect(pg_admin_dsn) as conn:
            row = conn.execute("SHOW max_prepared_transactions").fetchone()
        if row is None or int(row[0]) == 0:
            pytest.skip("no PostgreSQL binaries and the server has max_prepared_transactions = 0")
        yield pg_admin_dsn
        return
    cluster = TemporaryCluster(bindir, settings={"max_prepared_transactions": 10})
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.stop()


def test_orphaned_prepared_transaction_is_reported_and_delivery_resumes(
    prepared_server: str, tmp_path: Path
) -> None:
    """What an operator sees: a PREPARE TRANSACTION whose manager is gone holds
    every consumer back; outbox_health, events status (text and --json), the
    health check (exit 4, as the listener role) and the doctor name it and the
    fix; after ROLLBACK PREPARED the running listener gets the held-back event
    and the health check is back to 0."""
    with fresh_database(prepared_server, "pgtenancy_prepared") as owner_dsn:
        install(owner_dsn)
        role = f"pgtenancy_listen_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(role)))
            conn.execute("SELECT tenancy.grant_listener_role(%s)", (role,))
            conn.execute("SELECT tenancy.register_consumer('billing')")
        url = as_role(owner_dsn, role)
        tenancy = Tenancy(owner_dsn)
        gid = f"pgtenancy-test-{uuid.uuid4().hex[:8]}"
        record = tmp_path / "events.jsonl"
        env = subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        env["RECORD_FILE"] = str(record)
        listener = subprocess.Popen(
            [
                *pgtenancy_cli(),
                "listen",
                "--dsn",
                url,
                "--consumer",
                "billing",
                "--handlers",
                "record_handlers",
                "--poll-interval",
                "0.1",
                "--lease-seconds",
                "2",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        prepared = False
        try:
            tenancy.create_tenant("acme")
            wait_for(lambda: [e["slug"] for e in recorded(record)] == ["acme"])
            wait_for(lambda: cli("events", "health", "--dsn", url).returncode == 0)

            # A two-phase transaction with an xid, prepared and left behind.
            with psycopg.connect(owner_dsn, autocommit=True) as conn:
                conn.execute("BEGIN")
                conn.execute("SELECT pg_catalog.txid_current()")
                conn.execute(pgsql.SQL("PREPARE TRANSACTION {}").format(pgsql.Literal(gid)))
            prepared = True
            tenancy.create_tenant("globex")  # commits, but behind the prepared xid
            wait_for(lambda: tenancy.outbox_health().oldest_prepared_seconds >= 1)

            health = Tenancy(url).outbox_health()  # as the listener role
            assert health.prepared_transactions == 1
            assert health.held_back_events == 1
            assert health.oldest_transaction_seconds >= 1  # not 0 as before issue 12
            assert health.xid_holders[0]["kind"] == "prepared"
            assert health.xid_holders[0]["holder"] == gid
            # The listener really is stuck: two full polls, nothing delivered.
            wait_for_polls(owner_dsn, "billing")
            assert [e["slug"] for e in recorded(record)] == ["acme"]

            fix = f"COMMIT PREPARED '{gid}' or ROLLBACK PREPARED '{gid}'"
            r = cli("events", "status", "--dsn", url)
            assert r.returncode == 0, r.stderr
            assert "prepared transactions: 1" in r.stdout and "held back: 1" in r.stdout
            assert f"xid holder: prepared {gid} in " in r.stdout
            assert f"fix: {fix}" in r.stdout, r.stdout
            r = cli("events", "status", "--dsn", url, "--json")
            assert r.returncode == 0, r.stderr
            doc = json.loads(r.stdout)
            assert doc["outbox"]["prepared_transactions"] == 1
            assert doc["outbox"]["held_back_events"] == 1
            assert doc["outbox"]["xid_holders"][0]["holder"] == gid
            assert doc["fixes"] and doc["fixes"][0].startswith(fix)
            (billing,) = doc["consumers"]
            assert billing["lag_events"] == 1 and billing["lease_holder"] is not None

            r = cli("events", "health", "--dsn", url, "--max-stall-seconds", "0")
            assert r.returncode == 4, r.stdout + r.stderr
            assert r.stdout.startswith("stalled")
            assert "1 events held back" in r.stdout and f"by prepared {gid} in " in r.stdout
            assert fix in r.stdout, r.stdout
            r = cli("events", "health", "--dsn", url, "--max-stall-seconds", "0", "--json")
            assert r.returncode == 4 and json.loads(r.stdout)["status"] == "stalled"
            # Under the default limit (300 s) it is not a stall yet.
            assert cli("events", "health", "--dsn", url).returncode == 0

            # The doctor: quiet under its default age limit, then names it and the fix.
            r = cli("doctor", "--dsn", owner_dsn)
            assert "prepared_transaction" not in r.stdout, r.stdout
            dbname = str(psycopg.conninfo.conninfo_to_dict(owner_dsn)["dbname"])
            with psycopg.connect(owner_dsn, autocommit=True) as conn:
                conn.execute(
                    pgsql.SQL(
                        "ALTER DATABASE {} SET pgtenancy.prepared_stale_after = '1 s'"
                    ).format(pgsql.Identifier(dbname))
                )
            r = cli("doctor", "--dsn", owner_dsn)
            assert "WARNING  prepared_transaction" in r.stdout and gid in r.stdout, r.stdout
            assert "1 held back now" in r.stdout
            assert f"fix: {fix}, in database {dbname}" in r.stdout, r.stdout

            # Finish it: the listener gets the held-back event, health is 0.
            with psycopg.connect(owner_dsn, autocommit=True) as conn:
                conn.execute(pgsql.SQL("ROLLBACK PREPARED {}").format(pgsql.Literal(gid)))
            prepared = False
            wait_for(lambda: [e["slug"] for e in recorded(record)] == ["acme", "globex"])
            health = Tenancy(url).outbox_health()
            assert (health.prepared_transactions, health.held_back_events) == (0, 0)
            r = cli("events", "health", "--dsn", url, "--max-stall-seconds", "0")
            assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stdout
            assert "prepared_transaction" not in cli("doctor", "--dsn", owner_dsn).stdout
        finally:
            if prepared:
                with psycopg.connect(owner_dsn, autocommit=True) as conn:
                    conn.execute(pgsql.SQL("ROLLBACK PREPARED {}").format(pgsql.Literal(gid)))
            listener.terminate()
            _, err = listener.communicate(timeout=30)
        assert listener.returncode == 0, err


def test_start_from_now_and_drop_consumer(tenancy: Tenancy, dsn: str, sql: SQL) -> None:
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug)
    wait_readable(tenancy)
    (newest,) = sql("SELECT max(id) FROM tenancy.events")[0]
    assert tenancy.start_consumer("fresh", "now") == newest
    assert tenancy.start_consumer("replay") == 0
    # An existing consumer is left where it is.
    assert tenancy.start_consumer("replay", "now") == 0
    lag = {c.consumer: c.lag_events for c in tenancy.consumer_status()}
    assert lag == {"fresh": 0, "replay": 2}
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        tenancy.start_consumer("other", "yesterday")
    assert "other" not in {c.consumer for c in tenancy.consumer_status()}

    sql(
        "INSERT INTO tenancy.parked_events (consumer, event_id, receiver, attempts, error) "
        "VALUES ('replay', %s, 'r', 3, 'boom')",
        (newest,),
    )
    r = cli("events", "drop-consumer", "--dsn", dsn, "replay")
    assert r.returncode == 0 and "dropped" in r.stdout, r.stderr
    assert {c.consumer for c in tenancy.consumer_status()} == {"fresh"}
    assert tenancy.parked_events() == []
    r = cli("events", "drop-consumer", "--dsn", dsn, "replay")
    assert r.returncode == 1 and "not registered" in r.stderr


def test_doctor_warns_about_stale_consumers(tenancy: Tenancy, dsn: str, sql: SQL) -> None:
    tenancy.create_tenant("acme")
    sql("SELECT tenancy.register_consumer('old_reports')")
    sql("SELECT tenancy.register_consumer('keeps_up')")
    wait_readable(tenancy)
    (xid, newest) = sql(
        "SELECT xid::text, max(id) FROM tenancy.events GROUP BY xid ORDER BY 1 DESC LIMIT 1"
    )[0]
    sql("SELECT tenancy.advance_consumer('keeps_up', %s::xid8, %s)", (xid, newest))
    assert not [f for f in check_isolation(dsn) if f.check == "consumer_stale"]
    sql("UPDATE tenancy.events SET created_at = now() - interval '20 minutes'")
    stale = [f for f in check_isolation(dsn) if f.check == "consumer_stale"]
    assert [(f.severity, f.object) for f in stale] == [("warning", "old_reports")]
    assert "drop-consumer old_reports" in stale[0].fix
    sql(
        "ALTER DATABASE "
        + str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
        + " SET pgtenancy.consumer_stale_after = '1 hour'"
    )
    assert not [f for f in check_isolation(dsn) if f.check == "consumer_stale"]


def test_listen_start_from_now_json_logs_and_metrics(
    tenancy: Tenancy, dsn: str, listener_role: str
) -> None:
    url = as_role(dsn, listener_role)
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug)
    wait_readable(tenancy)
    port = free_port()
    proc = subprocess.Popen(
        [
            *pgtenancy_cli(),
            "listen",
            "--dsn",
            url,
            "--consumer",
            "live",
            "--start-from",
            "now",
            "--log-format",
            "json",
            "--metrics-port",
            str(port),
            "--metrics-addr",
            "127.0.0.1",
            "--poll-interval",
            "0.1",
            "--lease-seconds",
            "2",
        ],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                if 'pgtenancy_listener_lease_held{consumer="live"} 1.0' in body:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert 'pgtenancy_listener_lease_held{consumer="live"} 1.0' in body, body
        assert 'pgtenancy_listener_events_delivered_total{consumer="live"} 0.0' in body
        assert "pgtenancy_up 1.0" in body
        # History was not replayed; a new event is delivered.
        tenancy.create_tenant("initech")
        while time.monotonic() < deadline:
            body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            if 'pgtenancy_listener_events_delivered_total{consumer="live"} 1.0' in body:
                break
            time.sleep(0.2)
        assert 'pgtenancy_listener_events_delivered_total{consumer="live"} 1.0' in body, body
        assert 'pgtenancy_consumer_lag_events{consumer="live"} 0.0' in body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines, err
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in lines)
    assert any("holds the lease" in d["message"] for d in lines)


def test_listen_start_from_oldest_replays_the_history(
    tenancy: Tenancy, dsn: str, listener_role: str, tmp_path: Path
) -> None:
    """A new consumer started with ``--start-from oldest`` (the default) gets
    every retained event, in order; ``now`` (above) skips them."""
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug)
    wait_readable(tenancy)
    record = tmp_path / "events.jsonl"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["RECORD_FILE"] = str(record)
    proc = subprocess.Popen(
        [
            *pgtenancy_cli(),
            "listen",
            "--dsn",
            as_role(dsn, listener_role),
            "--consumer",
            "replay",
            "--start-from",
            "oldest",
            "--handlers",
            "record_handlers",
            "--poll-interval",
            "0.1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(recorded(record)) >= 2)
        assert [(e["name"], e["slug"]) for e in recorded(record)] == [
            ("tenant_created", "acme"),
            ("tenant_created", "globex"),
        ]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert {c.consumer: c.lag_events for c in tenancy.consumer_status()} == {"replay": 0}
