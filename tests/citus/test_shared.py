"""Shared tenants on a distributed table: the tenant reaches the workers, the
policy Citus writes to the shards isolates, and nothing leaks without a tenant."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from citus.conftest import CitusCluster, make_app_role
from pgtenancy import tenant_connection

SLUGS = [f"s{i}" for i in range(6)]


@pytest.fixture(scope="module")
def shared(citus_dsn: str) -> dict[str, Any]:
    """public.orders guarded then distributed by tenant_id; 6 shared tenants with
    20 rows each; an application role. Returns ids by slug and the app DSN."""
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.orders (tenant_id uuid, id bigint, item text NOT NULL,"
            " PRIMARY KEY (tenant_id, id))"
        )
        conn.execute("SELECT tenancy.enable_rls('public.orders')")
        conn.execute("SELECT create_distributed_table('public.orders', 'tenant_id')")
        ids = {}
        for slug in SLUGS:
            row = conn.execute(
                "SELECT id FROM tenancy.create_tenant(%s, isolation => 'shared')", (slug,)
            ).fetchone()
            assert row is not None
            ids[slug] = str(row[0])
    app = make_app_role(citus_dsn, "citus_app_shared")
    for slug in SLUGS:
        with psycopg.connect(app) as conn, tenant_connection(conn, slug) as tc:
            # Multi-row VALUES: INSERT ... SELECT goes through COPY on the
            # workers, which row-level security refuses (README, Citus).
            tc.execute(
                "INSERT INTO orders (id, item) VALUES "
                + ", ".join(f"({g}, %(s)s)" for g in range(1, 21)),
                {"s": slug},
            )
    return {"ids": ids, "app": app}


def test_policy_on_shards_is_the_single_permissive_check(
    shared: dict[str, Any], citus_cluster: CitusCluster, citus_dsn: str
) -> None:
    with psycopg.connect(citus_dsn) as conn:
        rows = conn.execute(
            "SELECT result FROM run_command_on_shards('public.orders', $$SELECT string_agg("
            "polname || ':' || polpermissive::text, ',') FROM pg_policy"
            " WHERE polrelid = '%s'::regclass$$)"
        ).fetchall()
        shards = conn.execute(
            "SELECT count(*) FROM citus_shards WHERE table_name = 'public.orders'::regclass"
        ).fetchone()
    assert shards is not None and shards[0] >= 2
    assert rows and {r[0] for r in rows} == {"tenancy_tenant_isolation:true"}


def test_context_reaches_the_workers(shared: dict[str, Any]) -> None:
    """Reads and writes through the coordinator see the tenant's own rows only."""
    with psycopg.connect(shared["app"]) as conn:
        for slug in SLUGS:
            with tenant_connection(conn, slug) as tc:
                rows = tc.execute("SELECT DISTINCT item FROM orders").fetchall()
                assert rows == [(slug,)]
                n = tc.execute("SELECT count(*) FROM orders").fetchone()
                assert n == (20,)
                # Routed to one shard: the tenant id is known on the worker too.
                assert tc.execute("SELECT current_setting('app.tenant_id')").fetchone() == (
                    shared["ids"][slug],
                )


def test_nothing_visible_without_a_tenant(shared: dict[str, Any]) -> None:
    with psycopg.connect(shared["app"], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("INSERT INTO orders (id, item) VALUES (999, 'x')")
        assert info.value.sqlstate == "PT012"
        assert conn.execute("UPDATE orders SET item = 'y'").rowcount == 0
        assert conn.execute("DELETE FROM orders").rowcount == 0


def test_cross_tenant_writes_are_refused(shared: dict[str, Any], citus_dsn: str) -> None:
    other = shared["ids"]["s1"]
    with psycopg.connect(shared["app"]) as conn:
        with pytest.raises(psycopg.Error) as info, tenant_connection(conn, "s0") as tc:
            tc.execute("INSERT INTO orders (tenant_id, id, item) VALUES (%s, 500, 'x')", (other,))
        assert info.value.sqlstate == "42501", info.value
        with pytest.raises(psycopg.Error) as info, tenant_connection(conn, "s0") as tc:
            tc.execute("UPDATE orders SET tenant_id = %s WHERE id = 1", (other,))
        assert info.value.sqlstate is not None
        with tenant_connection(conn, "s0") as tc:
            assert tc.execute("DELETE FROM orders WHERE tenant_id = %s", (other,)).rowcount == 0
            assert (
                tc.execute("UPDATE orders SET item = 'z' WHERE tenant_id = %s", (other,)).rowcount
                == 0
            )
    with psycopg.connect(citus_dsn) as conn:
        rows = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE item = 's1') FROM orders WHERE tenant_id = %s",
            (other,),
        ).fetchone()
    assert rows == (20, 20)


def test_pool_safety_through_the_coordinator(shared: dict[str, Any]) -> None:
    """6 threads over a pool of 2 switch among the tenants, some transactions
    raising: never a foreign row, never a setting left on a pooled connection."""
    errors: list[BaseException] = []
    foreign = 0
    lock = threading.Lock()

    class Boom(Exception):
        pass

    with ConnectionPool(shared["app"], min_size=2, max_size=2, open=True) as pool:

        def body(seed: int) -> None:
            nonlocal foreign
            rnd = random.Random(seed)
            try:
                for _ in range(60):
                    slug = rnd.choice(SLUGS)
                    try:
                        with tenant_connection(pool, slug) as tc:
                            items = tc.execute("SELECT item FROM orders").fetchall()
                            bad = sum(1 for (i,) in items if i != slug)
                            tc.execute(
                                "UPDATE orders SET item = item WHERE id = %s", (rnd.randint(1, 20),)
                            )
                            if rnd.random() < 0.2:
                                raise Boom
                        with lock:
                            foreign += bad
                    except Boom:
                        pass
                    with pool.connection() as c:
                        left = c.execute(
                            "SELECT current_setting('app.tenant_id', true),"
                            " (SELECT count(*) FROM orders)"
                        ).fetchone()
                        assert left is not None and (left[0] or "") == "" and left[1] == 0, left
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert foreign == 0


def test_insert_select_and_copy_into_a_guarded_distributed_table(
    shared: dict[str, Any], citus_dsn: str
) -> None:
    """Citus copies the rows of an INSERT ... SELECT evaluated on the coordinator
    into the shards with COPY, which PostgreSQL refuses under row-level security
    (as it refuses COPY FROM into a guarded table anywhere): refused, nothing
    written. With RETURNING or ON CONFLICT, or a SELECT from the distributed
    table itself, Citus inserts with INSERT on the workers: the policy applies."""
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.bulk (tenant_id uuid, id bigint, v text, PRIMARY KEY (tenant_id, id))"
        )
        conn.execute("SELECT tenancy.enable_rls('public.bulk')")
        conn.execute("SELECT create_distributed_table('public.bulk', 'tenant_id')")
    gen = "SELECT g, 'x' FROM generate_series(1, 5) AS g"
    with psycopg.connect(shared["app"]) as conn:
        with pytest.raises(psycopg.Error) as info, tenant_connection(conn, "s0") as tc:
            tc.execute(f"INSERT INTO bulk (id, v) {gen}")
        assert info.value.sqlstate == "0A000", info.value
        assert "COPY FROM not supported with row-level security" in str(info.value)
        with (
            pytest.raises(psycopg.Error) as info,
            tenant_connection(conn, "s0") as tc,
            tc.cursor().copy("COPY bulk (id, v) FROM STDIN") as copy,
        ):
            copy.write_row((1, "x"))
        assert info.value.sqlstate == "0A000", info.value
        with tenant_connection(conn, "s0") as tc:
            assert tc.execute("SELECT count(*) FROM bulk").fetchone() == (0,)
            # The forms Citus runs as INSERT on the workers.
            assert len(tc.execute(f"INSERT INTO bulk (id, v) {gen} RETURNING id").fetchall()) == 5
            tc.execute(
                "INSERT INTO bulk (id, v) SELECT g, 'y' FROM generate_series(4, 8) AS g"
                " ON CONFLICT DO NOTHING"
            )
            tc.execute("INSERT INTO bulk (id, v) SELECT id + 100, v FROM bulk")
            # Bulk loads: COPY into a temporary table, then INSERT ... RETURNING.
            tc.execute("CREATE TEMP TABLE load (id bigint, v text) ON COMMIT DROP")
            with tc.cursor().copy("COPY load (id, v) FROM STDIN") as copy:
                for i in range(200, 210):
                    copy.write_row((i, "z"))
            tc.execute("INSERT INTO bulk (id, v) SELECT id, v FROM load RETURNING 1")
            assert tc.execute("SELECT count(*) FROM bulk").fetchone() == (26,)
        # Another tenant's id in the SELECT: refused by the policy on the shard.
        with pytest.raises(psycopg.Error) as info, tenant_connection(conn, "s0") as tc:
            tc.execute(
                "INSERT INTO bulk (tenant_id, id, v) SELECT %s::uuid, g, 'w'"
                " FROM generate_series(300, 302) AS g RETURNING id",
                (shared["ids"]["s1"],),
            )
        assert info.value.sqlstate == "42501", info.value
        with tenant_connection(conn, "s1") as tc:
            assert tc.execute("SELECT count(*) FROM bulk").fetchone() == (0,)
    with psycopg.connect(citus_dsn) as conn:
        rows = conn.execute(
            "SELECT tenant_id::text, count(*) FROM public.bulk GROUP BY 1"
        ).fetchall()
    assert rows == [(shared["ids"]["s0"], 26)]


def test_enable_rls_on_an_already_distributed_table(shared: dict[str, Any], citus_dsn: str) -> None:
    """Distributed first, guarded second: the single permissive policy reaches
    the shards and isolates; Citus refuses a default on the distribution
    column, so rows name their tenant_id (README)."""
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.late (tenant_id uuid, id bigint, v text, PRIMARY KEY (tenant_id, id))"
        )
        conn.execute("SELECT create_distributed_table('public.late', 'tenant_id')")
        conn.execute("SELECT tenancy.enable_rls('public.late')")
        policies = conn.execute(
            "SELECT DISTINCT result FROM run_command_on_shards('public.late', $$SELECT string_agg("
            "polname || ':' || polpermissive::text, ',') FROM pg_policy"
            " WHERE polrelid = '%s'::regclass$$)"
        ).fetchall()
    assert policies == [("tenancy_tenant_isolation:true",)]
    with psycopg.connect(shared["app"]) as conn:
        with pytest.raises(psycopg.Error), tenant_connection(conn, "s2") as tc:
            tc.execute("INSERT INTO late (id, v) VALUES (1, 'a')")
        with tenant_connection(conn, "s2") as tc:
            tc.execute(
                "INSERT INTO late (tenant_id, id, v) VALUES (tenancy.current_tenant_id(), 1, 'a')"
            )
        with pytest.raises(psycopg.Error) as info, tenant_connection(conn, "s2") as tc:
            tc.execute(
                "INSERT INTO late (tenant_id, id, v) VALUES (%s, 2, 'b')", (shared["ids"]["s3"],)
            )
        assert info.value.sqlstate == "42501", info.value
        with tenant_connection(conn, "s3") as tc:
            assert tc.execute("SELECT count(*) FROM late").fetchone() == (0,)
        with tenant_connection(conn, "s2") as tc:
            assert tc.execute("SELECT id, v FROM late").fetchall() == [(1, "a")]
        conn.autocommit = True
        assert conn.execute("SELECT count(*) FROM late").fetchone() == (0,)


@pytest.fixture
def owned(owner_dsn: str) -> Iterator[str]:
    yield owner_dsn


def test_drop_shared_tenant_destroys_its_rows_as_a_non_superuser_owner(
    owned: str,
) -> None:
    with psycopg.connect(owned, autocommit=True) as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        conn.execute(
            "CREATE TABLE public.notes (tenant_id uuid, id int, body text, PRIMARY KEY (tenant_id, id))"
        )
        conn.execute("SELECT tenancy.enable_rls('public.notes')")
        conn.execute("SELECT create_distributed_table('public.notes', 'tenant_id')")
        for slug in ("keep", "gone"):
            conn.execute("SELECT tenancy.create_tenant(%s, isolation => 'shared')", (slug,))
            with conn.transaction():
                conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
                conn.execute(
                    "INSERT INTO notes (id, body) VALUES "
                    + ", ".join(f"({g}, %(s)s)" for g in range(1, 8)),
                    {"s": slug},
                )
        gone = conn.execute("SELECT id FROM tenancy.tenants WHERE slug = 'gone'").fetchone()
        assert gone is not None
        conn.execute("SELECT tenancy.drop_tenant('gone', destroy_data => true)")
    # Counted through the coordinator as superuser (no row-level security).
    with psycopg.connect(make_superuser(owned)) as conn:
        rows = conn.execute("SELECT body, count(*) FROM public.notes GROUP BY body").fetchall()
    assert dict(rows) == {"keep": 7}


def make_superuser(dsn: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, user="postgres")
