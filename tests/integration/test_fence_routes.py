"""Three routes an attack run on the migration fence found, each refused.

1. ``track_changes`` built its trigger function inside ``$body$`` quotes and
   ran it as the kit's owner: a table (or key column) named
   ``x$body$;<SQL>;SELECT $body$`` ended the body early and the rest ran as
   the owner (it created a public table, and made a role SUPERUSER). The body
   is now passed as one quoted literal.
2. A deferred constraint trigger fired by the migration's own ``SET
   CONSTRAINTS ... IMMEDIATE`` deferred the constraints again and queued
   another event, which then fired at the scratch try's ``SET CONSTRAINTS ALL
   IMMEDIATE``, as the owner. Pending events left by a migration are now
   refused (PT017) before anything else runs.
3. A no-transaction ``VACUUM (FULL) pg_class, pg_authid`` passed the checker
   (its names are unqualified, but pg_catalog is searched first) and ran as
   the owner. Each name is now resolved under the tenant's search_path first.

Each test checks that nothing of the attack happened outside the tenant
schema (the public canary, the roles), and that the tenant is as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgtenancy import Tenancy, UnsafeMigration

SQL = Callable[..., list[tuple[Any, ...]]]

PUBLIC_P = "SELECT to_regclass('public.p') IS NOT NULL"


@pytest.mark.parametrize("where", ["table", "key column"])
def test_track_changes_with_a_dollar_quote_in_a_name_runs_nothing_as_the_owner(
    tenancy: Tenancy, sql: SQL, where: str
) -> None:
    name = "x$body$;CREATE TABLE IF NOT EXISTS public.p();SELECT $body$"
    if where == "table":
        ddl = f'CREATE TABLE "{name}" (id int PRIMARY KEY)'
        table, column = f'"{name}"', "id"
    else:
        ddl = f'CREATE TABLE tracked ("{name}" int PRIMARY KEY)'
        table, column = "tracked", name
    migration = (
        "SET LOCAL check_function_bodies = off;\n"
        f"{ddl};\n"
        f"SELECT tenancy.track_changes('{table}');\n"
        "SET LOCAL check_function_bodies = on;\n"
    )
    tenancy.add_migration("0001", migration)
    assert sql(PUBLIC_P) == [(False,)]  # the scratch try ran it as the owner before
    tenancy.create_tenant("acme")
    assert sql(PUBLIC_P) == [(False,)]
    # The tracking works, with the name intact in the events.
    relation = sql(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class AS c"
        " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'tenant_acme' AND c.relkind = 'r'"
    )[0][0]
    sql(f"INSERT INTO {relation} ({psycopg.sql.Identifier(column).as_string(None)}) VALUES (1)")
    rows = sql(
        "SELECT payload -> 'rows' -> 0 -> 'key' ->> %s FROM tenancy.events"
        " WHERE name = 'rows_changed'",
        (column,),
    )
    assert rows == [("1",)]


DEFERRED = """
CREATE TABLE t1 (id int);
CREATE TABLE t2 (id int);
CREATE FUNCTION f1() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    SET CONSTRAINTS ALL DEFERRED;
    EXECUTE pg_catalog.format('INSERT INTO %I.t2 VALUES (1)', TG_TABLE_SCHEMA);
    RETURN NULL;
END $f$;
CREATE FUNCTION f2() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    EXECUTE 'CREATE TABLE IF NOT EXISTS public.p (who name)';
    RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER c1 AFTER INSERT ON t1 DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION f1();
CREATE CONSTRAINT TRIGGER c2 AFTER INSERT ON t2 DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION f2();
INSERT INTO t1 VALUES (1);
"""


def test_deferred_events_a_migration_leaves_pending_are_refused(tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration("0001", "CREATE TABLE note (id int)")
    tenancy.create_tenant("acme")
    with pytest.raises(UnsafeMigration, match="left deferred trigger events pending"):
        tenancy.add_migration("0002", DEFERRED)
    assert sql(PUBLIC_P) == [(False,)]
    assert [m.version for m in tenancy.list_migrations()] == ["0001"]
    assert tenancy.get_tenant("acme").migration_version == "0001"
    # A deferred trigger that fires once, inside the migration, is fine.
    tenancy.add_migration(
        "0002",
        DEFERRED.replace("SET CONSTRAINTS ALL DEFERRED;", "").replace(
            "CREATE TABLE IF NOT EXISTS public.p (who name)", "SELECT 1"
        ),
    )
    tenancy.migrate_tenant("acme")
    assert sql("SELECT count(*) FROM tenant_acme.t2") == [(1,)]


def test_no_transaction_vacuum_of_a_catalog_is_refused(tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration("0001", "CREATE TABLE note (id int)")
    tenancy.create_tenant("acme")
    tenancy.add_migration("0002", "VACUUM pg_description", outside_transaction=True)
    report = tenancy.migrate_tenants(["acme"])
    assert [slug for slug, _ in report.failed] == ["acme"]
    error = report.failed[0][1]
    assert isinstance(error, UnsafeMigration), error
    assert "resolves to schema 'pg_catalog'" in str(error)
    assert tenancy.get_tenant("acme").migration_version == "0001"


def test_no_transaction_vacuum_of_a_tenant_table_runs(tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration("0001", "CREATE TABLE note (id int)")
    tenancy.create_tenant("acme")
    tenancy.add_migration("0002", "VACUUM note", outside_transaction=True)
    report = tenancy.migrate_tenants(["acme"])
    assert report.failed == [] and [t.slug for t in report.migrated] == ["acme"]
    assert tenancy.get_tenant("acme").migration_version == "0002"


def test_pending_events_of_a_deferrable_foreign_key_are_found_on_the_referenced_table(
    tenancy: Tenancy, sql: SQL
) -> None:
    """A deferrable foreign key's triggers on the referenced table have no
    pg_constraint row of that table: the check looks at every deferrable
    trigger of the schema, so a re-deferred event there is refused too."""
    tenancy.add_migration("0001", "CREATE TABLE note (id int)")
    tenancy.create_tenant("acme")
    migration = """
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE seen (id int);
CREATE FUNCTION redefer() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    SET CONSTRAINTS ALL DEFERRED;
    EXECUTE pg_catalog.format('DELETE FROM %I.parent', TG_TABLE_SCHEMA);
    RETURN NULL;
END $f$;
CREATE CONSTRAINT TRIGGER c1 AFTER INSERT ON seen DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION redefer();
INSERT INTO parent VALUES (1);
INSERT INTO seen VALUES (1);
"""
    with pytest.raises(UnsafeMigration, match="left deferred trigger events pending"):
        tenancy.add_migration("0002", migration)
    assert [m.version for m in tenancy.list_migrations()] == ["0001"]
