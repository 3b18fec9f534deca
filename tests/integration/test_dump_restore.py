"""pg_dump / restore of a database using the kit keeps it working: registry,
outbox, cursors, migrations, guarded tables and tracked tables come back."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from helpers import pg_dump, psql_restore, tool
from pgtenancy import Tenancy
from pgtenancy.testing import fresh_database


@pytest.mark.skipif(tool("pg_dump") is None or tool("psql") is None, reason="no pg_dump/psql")
def test_dump_and_restore(dsn: str, pg_admin_dsn: str, tenancy: Tenancy, tmp_path: Path) -> None:
    tenancy.add_migration(
        "0001",
        "CREATE TABLE note (id int PRIMARY KEY, body text);SELECT tenancy.track_changes('note');",
    )
    tenancy.create_tenant("acme")
    tenancy.create_tenant("hooli", isolation="shared")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id serial PRIMARY KEY, item text)")
        conn.execute("SELECT tenancy.enable_rls('public.orders')")
        conn.execute("SELECT tenancy.register_consumer('billing')")
        with conn.transaction():
            conn.execute("SELECT tenancy.enter_tenant('acme')")
            conn.execute("INSERT INTO note VALUES (1, 'kept')")
        with conn.transaction():
            conn.execute("SELECT tenancy.enter_tenant('hooli')")
            conn.execute("INSERT INTO orders (item) VALUES ('anvil')")
        before = conn.execute("SELECT count(*) FROM tenancy.events").fetchone()
    dump = tmp_path / "dump.sql"
    pg_dump(dsn, dump)
    with fresh_database(pg_admin_dsn, "pgtenancy_restored") as restored:
        result = psql_restore(restored, dump)
        assert result.returncode == 0, result.stderr
        again = Tenancy(restored)
        assert [(t.slug, t.isolation, t.migration_version) for t in again.list_tenants()] == [
            ("acme", "schema", "0001"),
            ("hooli", "shared", None),
        ]
        with psycopg.connect(restored, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM tenancy.events").fetchone() == before
            assert conn.execute("SELECT name FROM tenancy.consumers").fetchall() == [("billing",)]
            with conn.transaction():
                conn.execute("SELECT tenancy.enter_tenant('acme')")
                assert conn.execute("SELECT body FROM note").fetchall() == [("kept",)]
                conn.execute("INSERT INTO note VALUES (2, 'new')")  # tracked after restore
            with conn.transaction():
                conn.execute("SELECT tenancy.enter_tenant('hooli')")
                assert conn.execute("SELECT item FROM orders").fetchall() == [("anvil",)]
            rows_changed = conn.execute(
                "SELECT count(*) FROM tenancy.events WHERE name = 'rows_changed'"
            ).fetchone()
            assert rows_changed is not None and rows_changed[0] == 2
        # Provisioning still works, and new events follow the restored ones.
        assert again.create_tenant("globex").migration_version == "0001"
        again.engine.dispose()
