"""The SQL API answers to the names the README documents (issue 14, item 6):
the README's table of SQL objects lists every argument of every function by
its real name, and each documented function is called here in named
notation with those names."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from helpers import ROOT
from pgtenancy import sign_tenant_token

README = ROOT / "README.md"
SQL = Callable[..., list[tuple[Any, ...]]]


def documented_functions() -> dict[str, list[str]]:
    """``{function: [argument names]}`` from the README's table of SQL objects."""
    text = README.read_text()
    table = text[text.index("What it installs, in schema `tenancy`:") :]
    table = table[: table.index("\n\n", table.index("| object |"))]
    found: dict[str, list[str]] = {}
    for row in table.splitlines():
        first = row.split("|")[1] if row.startswith("|") else ""
        for name, args in re.findall(r"`(\w+)\(([^`]*)\)`", first):
            found[name] = [a.split()[0] for a in args.split(",") if a.strip()]
    return found


def test_the_readme_names_every_argument_as_the_sql_does(sql: SQL) -> None:
    documented = documented_functions()
    assert len(documented) >= 30
    for name, args in documented.items():
        rows = sql(
            "SELECT coalesce(p.proargnames[1:p.pronargs], '{}') FROM pg_proc AS p "
            "WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname = %s",
            (name,),
        )
        assert len(rows) == 1, f"tenancy.{name}: {len(rows)} functions"
        assert list(rows[0][0]) == args, f"tenancy.{name}"


def test_no_public_function_keeps_a_prefixed_argument(sql: SQL) -> None:
    """Functions with p_ arguments are internal (not granted, named so in their comment)."""
    rows = sql(
        "SELECT p.proname FROM pg_proc AS p "
        "WHERE p.pronamespace = 'tenancy'::regnamespace "
        "  AND EXISTS (SELECT 1 FROM unnest(p.proargnames) AS a WHERE a LIKE 'p\\_%%') "
        "  AND (obj_description(p.oid, 'pg_proc') NOT LIKE '%%Internal%%' "
        "       OR p.proname = ANY(%s)) ORDER BY 1",
        (list(documented_functions()),),
    )
    # Helpers of the triggers and of track_changes, not granted to PUBLIC.
    assert [r[0] for r in rows] == ["assert_registry_trigger", "changes_function", "emit_event"]


@pytest.fixture
def role(dsn: str) -> Iterator[str]:
    name = f"pgt_names_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS").format(
                pgsql.Identifier(name)
            )
        )
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(name)))
        conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def test_every_documented_function_takes_named_arguments(sql: SQL, role: str) -> None:
    called: set[str] = set()

    def call(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        called.update(re.findall(r"tenancy\.(\w+)\(", statement))
        return sql(statement, params)

    assert call("SELECT tenancy.version()") != []
    # Without Citus: false, enter_tenant unchanged.
    assert call("SELECT tenancy.prepare_citus()") == [(False,)]
    call(
        "SELECT tenancy.add_migration(version => '0001', "
        "sql => 'CREATE TABLE note (id int PRIMARY KEY)', outside_transaction => false)"
    )
    call(
        "SELECT tenancy.add_migrations(versions => ARRAY['0002'], "
        "sqls => ARRAY['ALTER TABLE note ADD COLUMN v int'], outside_transaction => ARRAY[false])"
    )
    assert call("SELECT tenancy.validate_slug(slug => 'acme')") == [("acme",)]
    call("SELECT tenancy.create_tenant(slug => 'acme', metadata => '{}', isolation => 'schema')")
    call("SELECT tenancy.create_tenant('s1', isolation => 'shared')")
    assert call("SELECT (tenancy.get_tenant(slug => 's1')).schema_name") == [(None,)]
    call("SELECT tenancy.suspend_tenant(slug => 'acme')")
    call("SELECT tenancy.resume_tenant(slug => 'acme')")
    call("SELECT tenancy.migrate_tenant(slug => 'acme')")
    # Citus only: no node without it, and moving is refused (nothing changed).
    assert call("SELECT tenancy.tenant_node(slug => 'acme')") == [(None,)]
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        call("SELECT tenancy.move_tenant(slug => 'acme', node_host => 'h', node_port => 5432)")
    assert call(
        "SELECT tenancy.enter_tenant(slug => 'acme') IS NOT NULL, tenancy.current_tenant(), "
        "tenancy.current_tenant_id() IS NOT NULL"
    ) == [(True, "acme", True)]
    assert call(
        "SELECT (SELECT i.slug FROM tenancy.tenant_info() AS i) "
        "FROM (SELECT tenancy.enter_tenant(slug => 'acme')) AS e"
    ) == [("acme",)]
    # The procedure form, in a transaction block as the kit sends it.
    call("BEGIN")
    assert call("CALL tenancy.enter(slug => 'acme')") == [("tenant_acme, public, pg_temp",)]
    assert call("SELECT tenancy.current_tenant()") == [("acme",)]
    call("COMMIT")
    # Its quiet form: no row back.
    call("BEGIN")
    assert (
        call(
            "CALL tenancy.enter_known(slug => 'acme', search_path => 'tenant_acme, public, pg_temp')"
        )
        == []
    )
    assert call("SELECT tenancy.current_tenant()") == [("acme",)]
    call("COMMIT")
    call("SELECT tenancy.add_tenant_domain(slug => 'acme', domain => 'Acme-Corp.example.com.')")
    assert call("SELECT tenancy.resolve_domain(domain => 'acme-corp.EXAMPLE.com')") == [("acme",)]
    assert call("SELECT tenancy.normalize_domain(domain => ' A.b. ')") == [("a.b",)]
    assert call("SELECT tenancy.remove_tenant_domain(domain => 'acme-corp.example.com')") == [
        (True,)
    ]
    call("CREATE TABLE public.orders (id int PRIMARY KEY)")
    call("SELECT tenancy.enable_rls(table_name => 'public.orders', tenant_column => 'org_id')")
    assert call("SELECT tenancy.disable_rls(table_name => 'public.orders')") == [(True,)]
    call("SELECT tenancy.grant_app_role(role => %s)", (role,))
    call("SELECT tenancy.grant_listener_role(role => %s)", (role,))
    call("SELECT * FROM tenancy.check_isolation()")
    assert call("SELECT tenancy.check_metadata(metadata => '{\"a\": 1}')") == [({"a": 1},)]
    assert call("SELECT tenancy.active_tenant_id()") == [(None,)]
    call("SELECT tenancy.track_changes(table_name => 'tenant_acme.note')")
    call("SELECT tenancy.untrack_changes(table_name => 'tenant_acme.note')")
    # issue 10: baselines.
    assert call("SELECT tenancy.prepare_baseline(through_version => '0001')") == [("0001",)]
    assert call(
        "SELECT count(*) > 0 FROM tenancy.schema_catalog(schema_name => 'tenancy_check_baseline')"
    ) == [(True,)]
    assert call("SELECT tenancy.discard_baseline_scratch()") == [(True,)]
    call(
        "SELECT tenancy.add_baseline(through_version => '0001', "
        "sql => 'CREATE TABLE note (id int PRIMARY KEY)')"
    )
    assert call("SELECT tenancy.drop_baseline(through_version => '0001')") == [(True,)]
    # issue 15: operating on one tenant.
    call("SELECT tenancy.clone_tenant(source => 'acme', new_slug => 'acme_copy', metadata => NULL)")
    call("SELECT tenancy.rename_tenant(slug => 'acme_copy', new_slug => 'acme_twin')")
    call(
        "SELECT tenancy.set_tenant_limits(slug => 'acme_twin', statement_timeout => '5s', "
        "lock_timeout => '1s', idle_in_transaction_session_timeout => '1min', work_mem => '1MB')"
    )
    call("SELECT tenancy.max_work_mem()")
    call("SELECT tenancy.set_max_work_mem(maximum => '8MB')")
    call("SELECT tenancy.apply_tenant_limits(limits => ARRAY['lock_timeout', '2s'])")
    call("SELECT * FROM tenancy.tenant_sizes()")
    call("SELECT tenancy.drop_tenant(slug => 'acme_twin', destroy_data => true)")

    call("SELECT tenancy.register_consumer(consumer => 'billing')")
    call("SELECT tenancy.start_consumer(consumer => 'later', start_from => 'now')")
    assert call("SELECT tenancy.drop_consumer(consumer => 'later')") == [(True,)]
    call("SELECT tenancy.consumer_heartbeat(consumer => 'billing')")
    assert call(
        "SELECT tenancy.acquire_lease(consumer => 'billing', holder => 'h1', ttl => '10 s')"
    ) == [(True,)]
    call("SELECT tenancy.events_held_back(consumer => 'billing')")
    # The events are readable once no older transaction runs anywhere on the server.
    rows: list[tuple[Any, ...]] = []
    for _ in range(600):
        rows = call(
            "SELECT xid::text, id FROM tenancy.next_events(consumer => 'billing', max_events => 1)"
        )
        if rows:
            break
        sql("SELECT pg_sleep(0.1)")
    assert rows, "no event became readable within 60 s"
    xid, event_id = rows[0]
    assert call(
        "SELECT tenancy.advance_consumer(consumer => 'billing', xid => %s::xid8, id => %s, "
        "holder => 'h1')",
        (xid, event_id),
    ) == [(True,)]
    call(
        "SELECT tenancy.park_event(consumer => 'billing', event_id => %s, receiver => 'r', "
        "attempts => 1, error => 'boom')",
        (event_id,),
    )
    assert len(call("SELECT * FROM tenancy.parked_events(consumer_name => 'billing')")) == 1
    assert call(
        "SELECT tenancy.unpark_event(consumer => 'billing', event_id => %s, receiver => 'r')",
        (event_id,),
    ) == [(True,)]
    assert call("SELECT tenancy.inbox_claim(receiver => 'r', event_id => %s)", (event_id,)) == [
        (True,)
    ]
    assert call("SELECT tenancy.release_lease(consumer => 'billing', holder => 'h1')") == [(True,)]
    call("SELECT tenancy.prune_events(older_than => '1 day', inactive_after => '1 day')")
    call("SELECT tenancy.consumer_inactive_after()")
    call("SELECT * FROM tenancy.consumer_status()")
    call("SELECT * FROM tenancy.outbox_health()")

    # issue 13: strict entry.
    key = bytes(range(32))
    assert call("SELECT tenancy.add_entry_key(name => 'k1', key => %s)", (key,)) == [(True,)]
    assert call("SELECT tenancy.set_strict_entry(enabled => true)") == [(False,)]
    assert call("SELECT tenancy.strict_entry_enabled()") == [(True,)]
    token = sign_tenant_token(key, "s1", 60, key_name="k1")
    assert call(
        "SELECT tenancy.verify_entry_token(token => %s, at_entry => true) IS NOT NULL", (token,)
    ) == [(True,)]
    assert call(
        "SELECT tenancy.enter_tenant_token(token => %s, slug => 's1') IS NOT NULL", (token,)
    ) == [(True,)]
    # Its quiet form, in a transaction block as the kit sends it: no row back.
    call("BEGIN")
    assert (
        call(
            "CALL tenancy.enter_token(token => %s, slug => 's1', search_path => 'public, pg_temp')",
            (token,),
        )
        == []
    )
    assert call("SELECT tenancy.current_tenant()") == [("s1",)]
    call("COMMIT")
    assert call("SELECT tenancy.set_strict_entry(enabled => false)") == [(True,)]
    assert call("SELECT tenancy.drop_entry_key(name => 'k1')") == [(True,)]

    call("SELECT tenancy.drop_tenant(slug => 's1', destroy_data => false)")
    call("SELECT tenancy.drop_tenant('acme', destroy_data => true)")
    assert call("SELECT slug, status FROM tenancy.tenants") == [("s1", "deleted")]
    assert set(documented_functions()) <= called
