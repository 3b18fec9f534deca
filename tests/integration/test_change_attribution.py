"""Whose rows a rows_changed event reports (issue 13, attack B2): the tenant
comes from the data (the tenant column of a guarded shared table, the schema
of a tenant-schema table), never from app.tenant_id. An application role
entered as tenant A once wrote events attributed to tenant B by changing
app.tenant_id in the RETURNING clause of its own write: after the policy
check, before the statement trigger ran."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from strict_support import StrictWorld, build

from helpers import as_role
from pgtenancy import sign_tenant_token, tenant_connection

#: Statements of the home tenant, each switching app.tenant_id to the victim
#: while it runs. {victim}: the victim's id.
WRITES = {
    "INSERT": "INSERT INTO public.orders (id, item) VALUES (424242, 'forged') "
    "RETURNING set_config('app.tenant_id', '{victim}', true)",
    "UPDATE": "UPDATE public.orders SET item = item || ' changed' "
    "RETURNING set_config('app.tenant_id', '{victim}', true)",
    "DELETE": "DELETE FROM public.orders RETURNING set_config('app.tenant_id', '{victim}', true)",
}


def _events(dsn: str, after: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT tenant_slug, tenant_id::text, payload->>'op', payload->'rows' "
            "FROM tenancy.events WHERE name = 'rows_changed' AND id > %s ORDER BY id",
            (after,),
        ).fetchall()


def _last_event(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM tenancy.events").fetchone()
        assert row is not None
        return int(row[0])


def _shared_ids(dsn: str, slug: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT o.id FROM public.orders AS o JOIN tenancy.tenants AS t ON t.id = o.tenant_id "
                "WHERE t.slug = %s ORDER BY o.id",
                (slug,),
            )
        ]


def _world(dsn: str, app_role: str, strict: bool) -> StrictWorld:
    world = build(dsn, app_role, as_role(dsn, app_role), strict=strict)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.track_changes('public.orders')")
        for slug in ("acme", "globex"):
            conn.execute("SELECT tenancy.track_changes(%s)", (f"tenant_{slug}.invoice",))
    return world


def _write_as(world: StrictWorld, home: str, statement: str) -> None:
    """Run ``statement`` as the application role inside tenant ``home``: with a
    token in strict mode, with enter_tenant otherwise."""
    with psycopg.connect(world.app_dsn) as conn:
        token = sign_tenant_token(world.key, home, 60, key_name="k1")
        with tenant_connection(conn, token=token) as tx:
            tx.execute(statement)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
@pytest.mark.parametrize("op", list(WRITES))
@pytest.mark.parametrize(("home", "victim"), [("sa", "sb"), ("sb", "sa")])
def test_returning_set_config_cannot_attribute_shared_rows_to_another_tenant(
    dsn: str, app_role: str, strict: bool, op: str, home: str, victim: str
) -> None:
    world = _world(dsn, app_role, strict)
    home_rows = _shared_ids(dsn, home)
    victim_rows = _shared_ids(dsn, victim)
    before = _last_event(dsn)
    _write_as(world, home, WRITES[op].format(victim=world.ids[victim]))
    events = _events(dsn, before)
    keys = [424242] if op == "INSERT" else home_rows
    rows: list[dict[str, Any]] = [{"key": {"id": k}} for k in keys]
    if op == "UPDATE":
        rows = [{**r, "columns": ["item"]} for r in rows]
    assert events == [(home, world.ids[home], op, rows)]
    assert _shared_ids(dsn, victim) == victim_rows


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
def test_schema_tenant_events_follow_the_schema(dsn: str, app_role: str, strict: bool) -> None:
    world = _world(dsn, app_role, strict)
    before = _last_event(dsn)
    _write_as(
        world,
        "acme",
        "INSERT INTO invoice (id, body) VALUES (4242, 'x') "
        f"RETURNING set_config('app.tenant_id', '{world.ids['globex']}', true), "
        "set_config('search_path', 'tenant_globex', true)",
    )
    assert _events(dsn, before) == [("acme", world.ids["acme"], "INSERT", [{"key": {"id": 4242}}])]


def test_one_statement_over_many_tenants_gives_one_event_per_tenant(
    dsn: str, app_role: str
) -> None:
    """The maintenance path (a superuser, no tenant) changing every tenant's rows
    at once: each tenant gets its own events, with its own keys; a key change
    is the old key deleted and the new one inserted, per tenant; TRUNCATE of a
    shared table empties every tenant's rows and names none."""
    world = _world(dsn, app_role, strict=False)
    sa, sb = _shared_ids(dsn, "sa"), _shared_ids(dsn, "sb")
    before = _last_event(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE public.orders SET item = item || '!'")
        conn.execute("UPDATE public.orders SET id = id + 100")
        conn.execute("TRUNCATE public.orders")
    changed = [{"key": {"id": k}, "columns": ["item"]} for k in sa]
    changed_b = [{"key": {"id": k}, "columns": ["item"]} for k in sb]
    got = _events(dsn, before)
    by_tenant = sorted(got[:2], key=lambda e: str(e[0]))
    assert by_tenant == [
        ("sa", world.ids["sa"], "UPDATE", changed),
        ("sb", world.ids["sb"], "UPDATE", changed_b),
    ]
    moves = sorted(got[2:6], key=lambda e: (str(e[2]), str(e[0])))
    assert moves == [
        ("sa", world.ids["sa"], "DELETE", [{"key": {"id": k}} for k in sa]),
        ("sb", world.ids["sb"], "DELETE", [{"key": {"id": k}} for k in sb]),
        ("sa", world.ids["sa"], "INSERT", [{"key": {"id": k + 100}} for k in sa]),
        ("sb", world.ids["sb"], "INSERT", [{"key": {"id": k + 100}} for k in sb]),
    ]
    assert got[6:] == [(None, None, "TRUNCATE", [])]


def test_a_table_tracked_before_it_was_guarded_is_attributed_by_its_rows(
    dsn: str, app_role: str
) -> None:
    """The trigger finds the tenant column at run time: tracking first and
    guarding later attributes events just as well."""
    world = build(dsn, app_role, as_role(dsn, app_role), strict=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT tenancy.track_changes('public.notes')")
        conn.execute("SELECT tenancy.enable_rls('public.notes', 'owner_tenant')")
    before = _last_event(dsn)
    _write_as(
        world,
        "sa",
        "INSERT INTO public.notes (id, body) VALUES (1, 'x') "
        f"RETURNING set_config('app.tenant_id', '{world.ids['sb']}', true)",
    )
    assert _events(dsn, before) == [("sa", world.ids["sa"], "INSERT", [{"key": {"id": 1}}])]
