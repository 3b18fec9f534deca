"""Listener operations (issue 12, item 6): events status --json, events health
exit codes as the listener role, start-from now, drop-consumer, the stale
consumer warning, xid holders and prepared transactions in outbox_health, JSON
logs and Prometheus metrics of a running listener."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi_support import free_port
from psycopg import sql as pgsql

from conftest import as_role, pgtenancy_cli, subprocess_env
from pgtenancy import Listener, Tenancy
from pgtenancy.doctor import check_isolation

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


def test_prepared_transaction_is_reported(tenancy: Tenancy, dsn: str, sql: SQL) -> None:
    (setting,) = sql("SHOW max_prepared_transactions")[0]
    if int(setting) == 0:
        pytest.skip("the server has max_prepared_transactions = 0")
    gid = f"pgtenancy-test-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_catalog.txid_current()")
        conn.execute(pgsql.SQL("PREPARE TRANSACTION {}").format(pgsql.Literal(gid)))
    try:
        tenancy.create_tenant("acme")
        time.sleep(1.1)
        health = tenancy.outbox_health()
        assert health.prepared_transactions >= 1
        assert health.oldest_prepared_seconds >= 1
        assert health.oldest_transaction_seconds >= 1
        assert any(h["kind"] == "prepared" and h["holder"] == gid for h in health.xid_holders)
    finally:
        sql(pgsql.SQL("ROLLBACK PREPARED {}").format(pgsql.Literal(gid)).as_string(None))


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
