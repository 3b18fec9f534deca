"""Upgrades from the previous release (sql/releases/pgtenancy--0.1.0.sql, frozen):
a plain install upgraded in place by `pgtenancy install`, and the extension
upgraded by ALTER EXTENSION ... UPDATE. Tenants, events and cursors stay
intact and the new functions work."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from pgtenancy import SQL_VERSION, Listener, Tenancy, install, installed_version
from pgtenancy.signals import tenant_created, tenant_suspended
from test_install import snapshot

RELEASE = Path(__file__).resolve().parent.parent / "sql" / "releases" / "pgtenancy--0.1.0.sql"


def plain_release_sql() -> str:
    """The 0.1.0 script as a plain install: no psql guard, no extension-only calls."""
    lines = [
        line
        for line in RELEASE.read_text().splitlines()
        if not line.startswith("\\") and "pg_extension_config_dump" not in line
    ]
    return "\n".join(lines)


def populate_with_0_1_0(dsn: str) -> tuple[int, int]:
    """Use the 0.1.0 API: a migration, tenants, events, a consumer part-way."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT tenancy.version()").fetchone() == ("0.1.0",)
        conn.execute(
            "SELECT tenancy.add_migration('0001', 'CREATE TABLE note (id int PRIMARY KEY)')"
        )
        conn.execute("SELECT tenancy.create_tenant('acme')")
        conn.execute("SELECT tenancy.create_tenant('globex')")
        conn.execute("SELECT tenancy.suspend_tenant('globex')")
        with conn.transaction():
            conn.execute("SELECT tenancy.enter_tenant('acme')")
            conn.execute("INSERT INTO note VALUES (1)")
        conn.execute("SELECT tenancy.register_consumer('billing')")
        first = conn.execute(
            "SELECT xid::text, id FROM tenancy.events ORDER BY id LIMIT 1"
        ).fetchone()
        assert first is not None
        conn.execute("SELECT tenancy.advance_consumer('billing', %s::xid8, %s)", first)
        count = conn.execute("SELECT count(*) FROM tenancy.events").fetchone()
        assert count is not None
    return int(first[1]), int(count[0])


def check_upgraded(dsn: str, cursor_id: int, events: int) -> None:
    assert installed_version(dsn) == SQL_VERSION
    tenancy = Tenancy(dsn)
    assert [(t.slug, t.status, t.migration_version) for t in tenancy.list_tenants()] == [
        ("acme", "active", "0001"),
        ("globex", "suspended", "0001"),
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM tenancy.events").fetchone() == (events,)
        assert conn.execute(
            "SELECT last_id FROM tenancy.consumers WHERE name = 'billing'"
        ).fetchone() == (cursor_id,)
        with conn.transaction():
            conn.execute("SELECT tenancy.enter_tenant('acme')")
            assert conn.execute("SELECT id FROM note").fetchall() == [(1,)]
        # New in 0.2.0: shared tenants, guarded tables, row-change tracking.
        conn.execute("CREATE TABLE public.orders (id serial PRIMARY KEY, item text)")
        conn.execute("SELECT tenancy.enable_rls('public.orders')")
        conn.execute("SELECT tenancy.track_changes('tenant_acme.note')")
    assert tenancy.create_tenant("hooli", isolation="shared").schema_name is None
    # The consumer resumes from its 0.1.0 cursor: everything after it arrives.
    got: list[str] = []

    def on_event(sender: str, event: object, **kwargs: object) -> None:
        got.append(f"{event.name}:{sender}")

    tenant_created.connect(on_event)
    tenant_suspended.connect(on_event)
    listener = Listener(dsn, "billing", poll_interval=0.1)
    import threading
    import time

    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.stop()
        thread.join(10)
        tenant_created.disconnect(on_event)
        tenant_suspended.disconnect(on_event)
    assert got == ["tenant_created:globex", "tenant_suspended:globex", "tenant_created:hooli"]
    tenancy.engine.dispose()


def test_plain_install_upgrades_in_place(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(plain_release_sql().encode())
    cursor_id, events = populate_with_0_1_0(empty_dsn)
    assert install(empty_dsn) == SQL_VERSION
    check_upgraded(empty_dsn, cursor_id, events)


def test_extension_upgrades_with_alter_extension(empty_dsn: str, dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        versions = {
            r[0]
            for r in conn.execute(
                "SELECT version FROM pg_available_extension_versions WHERE name = 'pgtenancy'"
            )
        }
    if not {"0.1.0", SQL_VERSION} <= versions:
        pytest.skip("the pgtenancy extension is not installed (make install-extension, as root)")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgtenancy VERSION '0.1.0'")
    cursor_id, events = populate_with_0_1_0(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("ALTER EXTENSION pgtenancy UPDATE")
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pgtenancy'"
        ).fetchone() == (SQL_VERSION,)
    # The upgraded extension has the same objects as a fresh install.
    strip = lambda rows: [(*r[:2], r[2] if r[0] != "relation" else "") for r in rows]  # noqa: E731
    fresh = [r for r in strip(snapshot(dsn))]
    assert strip(snapshot(empty_dsn)) == fresh
    check_upgraded(empty_dsn, cursor_id, events)


def test_the_frozen_release_is_what_0_1_0_was() -> None:
    text = RELEASE.read_text()
    assert "SELECT '0.1.0'::text" in text
    assert re.search(r"Never edit it", text)
