"""Row-change events: statement triggers with transition tables catch every
write, including bulk statements and COPY; signals per row after commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from helpers import wait_for
from pgtenancy import CannotTrackTable, Listener, Tenancy
from pgtenancy.events import Event, TenantRef
from pgtenancy.signals import row_deleted, row_inserted, row_updated

# Waits for event delivery: a stranger's transaction must not hold it back.
pytestmark = pytest.mark.own_server

SQL = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def tracked(tenancy: Tenancy) -> Tenancy:
    tenancy.add_migration(
        "0001",
        "CREATE TABLE item (id int PRIMARY KEY, name text, qty int);"
        "SELECT tenancy.track_changes('item');",  # every tenant's table is tracked
    )
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    return tenancy


@pytest.fixture
def received() -> Iterator[list[tuple[str, str, str, dict[str, Any], Any]]]:
    got: list[tuple[str, str, str, dict[str, Any], Any]] = []

    def on_row(
        signal: Any,
        sender: str,
        tenant: TenantRef,
        event: Event,
        key: dict[str, Any],
        columns: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        got.append((signal.name, sender, tenant.slug, key, columns))

    for sig in (row_inserted, row_updated, row_deleted):
        sig.connect(on_row, weak=False, dispatch_uid="test_changes")
    yield got
    for sig in (row_inserted, row_updated, row_deleted):
        sig.disconnect(dispatch_uid="test_changes")


def run_listener(dsn: str) -> tuple[Listener, threading.Thread]:
    listener = Listener(dsn, "rows", poll_interval=0.2)
    thread = threading.Thread(target=listener.run)
    thread.start()
    return listener, thread


def test_every_kind_of_write_becomes_row_signals(
    dsn: str, tracked: Tenancy, received: list[Any]
) -> None:
    listener, thread = run_listener(dsn)
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant('acme')")
            conn.execute("INSERT INTO item VALUES (1, 'anvil', 1)")
            conn.execute("INSERT INTO item SELECT g, 'bulk', 0 FROM generate_series(2, 1201) g")
            conn.execute("UPDATE item SET qty = qty + 1 WHERE id <= 3")
            conn.execute("DELETE FROM item WHERE id > 1100")
            with conn.cursor().copy("COPY item (id, name, qty) FROM STDIN") as copy:
                copy.write_row((5000, "copied", 7))
        with psycopg.connect(dsn) as conn:  # rolled back: nothing delivered
            conn.execute("SELECT tenancy.enter_tenant('globex')")
            conn.execute("INSERT INTO item VALUES (1, 'ghost', 1)")
            conn.rollback()
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant('globex')")
            conn.execute("INSERT INTO item VALUES (7, 'globex', 1)")
        wait_for(lambda: len(received) == 1 + 1200 + 3 + 101 + 1 + 1, timeout=30)
    finally:
        listener.stop()
        thread.join(10)
    inserts = [r for r in received if r[0] == "row_inserted"]
    assert [r[3]["id"] for r in inserts[:2]] == [1, 2]
    assert {r[1] for r in received} == {"tenant_acme.item", "tenant_globex.item"}
    assert len([r for r in inserts if r[2] == "acme"]) == 1 + 1200 + 1
    updates = [r for r in received if r[0] == "row_updated"]
    assert sorted(r[3]["id"] for r in updates) == [1, 2, 3]
    assert all(r[4] == ["qty"] for r in updates)
    deletes = [r for r in received if r[0] == "row_deleted"]
    assert sorted(r[3]["id"] for r in deletes) == list(range(1101, 1202))
    assert ("row_inserted", "tenant_acme.item", "acme", {"id": 5000}, None) in received
    assert [r for r in received if r[2] == "globex"] == [
        ("row_inserted", "tenant_globex.item", "globex", {"id": 7}, None)
    ]


def test_row_changes_do_not_notify(dsn: str, tracked: Tenancy) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN tenancy_events_v1")
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant('acme')")
            conn.execute("INSERT INTO item VALUES (1, 'anvil', 1)")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


def test_shared_table_and_untrack_and_errors(tenancy: Tenancy, sql: SQL, dsn: str) -> None:
    sql("CREATE TABLE public.orders (id serial PRIMARY KEY, item text)")
    tenancy.enable_rls("public.orders")
    tenancy.track_changes("public.orders")
    tenancy.track_changes("public.orders")  # idempotent
    tenancy.create_tenant("acme", isolation="shared")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO orders (item) VALUES ('anvil')")
    assert sql(
        "SELECT tenant_slug, payload->>'table', payload->>'op' FROM tenancy.events "
        "WHERE name = 'rows_changed'"
    ) == [("acme", "public.orders", "INSERT")]
    tenancy.untrack_changes("public.orders")
    tenancy.untrack_changes("public.orders")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO orders (item) VALUES ('rocket')")
    assert sql("SELECT count(*) FROM tenancy.events WHERE name = 'rows_changed'") == [(1,)]
    sql("CREATE TABLE public.nokey (x int)")
    with pytest.raises(CannotTrackTable, match="no primary key"):
        tenancy.track_changes("public.nokey")
    sql("CREATE VIEW public.v AS SELECT 1 AS x")
    with pytest.raises(CannotTrackTable, match="not a table"):
        tenancy.track_changes("public.v")


def test_uninstall_untracks_tables(tenancy: Tenancy, sql: SQL, dsn: str) -> None:
    from pgtenancy import install, uninstall

    sql("CREATE TABLE public.audit (id int PRIMARY KEY)")
    tenancy.track_changes("public.audit")
    uninstall(dsn)
    assert sql(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.audit'::regclass "
        "AND NOT tgisinternal"
    ) == [(0,)]
    sql("INSERT INTO public.audit VALUES (1)")
    install(dsn)


def test_key_changes_truncate_partitions_and_quoted_names(tenancy: Tenancy, sql: SQL) -> None:
    tenancy.create_tenant("acme", isolation="shared")
    sql('CREATE SCHEMA "My Sch"')
    sql('CREATE TABLE "My Sch"."Ord Er" (id int PRIMARY KEY, v text)')
    sql(
        "CREATE TABLE public.measure (day int, id int, v int, PRIMARY KEY (day, id)) "
        "PARTITION BY RANGE (day)"
    )
    sql("CREATE TABLE public.measure_1 PARTITION OF public.measure FOR VALUES FROM (0) TO (10)")
    tenancy.track_changes('"My Sch"."Ord Er"')
    tenancy.track_changes("public.measure")
    sql("INSERT INTO \"My Sch\".\"Ord Er\" VALUES (1, 'a'), (2, 'b')")
    sql('UPDATE "My Sch"."Ord Er" SET id = 10 WHERE id = 1')
    sql('TRUNCATE "My Sch"."Ord Er"')
    sql("INSERT INTO public.measure VALUES (1, 1, 5)")  # through the parent
    sql("INSERT INTO public.measure_1 VALUES (2, 2, 6)")  # straight into the partition
    rows = sql(
        "SELECT payload->>'table', payload->>'op', payload->'rows' FROM tenancy.events "
        "WHERE name = 'rows_changed' ORDER BY id"
    )
    assert rows == [
        ("My Sch.Ord Er", "INSERT", [{"key": {"id": 1}}, {"key": {"id": 2}}]),
        ("My Sch.Ord Er", "DELETE", [{"key": {"id": 1}}]),
        ("My Sch.Ord Er", "INSERT", [{"key": {"id": 10}}]),
        ("My Sch.Ord Er", "TRUNCATE", []),
        ("public.measure", "INSERT", [{"key": {"day": 1, "id": 1}}]),
        ("public.measure_1", "INSERT", [{"key": {"day": 2, "id": 2}}]),
    ]
    tenancy.untrack_changes("public.measure")
    assert sql(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tenancy\\_changes\\_%' "
        "AND tgrelid IN ('public.measure'::regclass, 'public.measure_1'::regclass)"
    ) == [(0,)]
