"""Uninstall in strict mode (issue 13): `pgtenancy uninstall --drop-tenants`
refused while strict entry was on, because the strict policies on the tables
of tenant schemas (tenancy_strict_schema) counted as "objects outside
pgtenancy" using the kit. Uninstall, with --drop-tenants and without (all
tenants destroyed first), leaves nothing of the kit behind: no tenancy or
tenant schema, no policy or row-level security on the shared tables, no
privilege of the application role on them, no function or event trigger of
the kit, none of the roles it created. Real server, the CLI in process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from strict_support import SCHEMA_TENANTS, SHARED_TENANTS, StrictWorld, build

from helpers import as_role, run_cli
from pgtenancy import Tenancy, install


@pytest.fixture
def world(empty_dsn: str) -> Iterator[StrictWorld]:
    """strict_support's world in a database installed here, not copied from the
    template database: the migrator and group roles are then this database's
    alone, and uninstall drops them (a copy shares the template's and keeps them)."""
    install(empty_dsn)
    role = f"pgtenancy_app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(pgsql.Identifier(role))
        )
        conn.execute("SELECT tenancy.grant_app_role(%s)", (role,))
    try:
        yield build(empty_dsn, role, as_role(empty_dsn, role))
    finally:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(role)))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))


def kit_roles(dsn: str) -> list[str]:
    """The roles the kit created for this database: migrator, tenants' group, tenant owners."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrator = conn.execute("SELECT tenancy.migrator_role()").fetchone()
        assert migrator is not None and migrator[0]
        owners = conn.execute(
            "SELECT tenancy.tenant_role(schema_name) FROM tenancy.tenants"
            " WHERE schema_name IS NOT NULL"
        ).fetchall()
        group = conn.execute(
            "SELECT 'pgtenancy_tenants_' || left(md5(%s), 12)", (migrator[0],)
        ).fetchone()
        assert group is not None
        names = [migrator[0], group[0], *(o for (o,) in owners)]
        present = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname", (names,)
        ).fetchall()
    return [r for (r,) in present]


def leftovers(dsn: str, roles: list[str]) -> dict[str, Any]:
    """What of the kit remains in the database (and of its roles in the cluster)."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def rows(query: str, params: Any = None) -> list[Any]:
            return conn.execute(query, params).fetchall()

        return {
            "schemas": rows(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenan%' ORDER BY 1"
            ),
            "policies": rows("SELECT schemaname, tablename, policyname FROM pg_policies"),
            "rls": rows(
                "SELECT relname FROM pg_class WHERE relrowsecurity OR relforcerowsecurity"
                " AND relnamespace = 'public'::regnamespace"
            ),
            "functions": rows(
                "SELECT p.oid::regprocedure::text FROM pg_proc AS p"
                " JOIN pg_namespace AS n ON n.oid = p.pronamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                "   AND (p.prosrc LIKE '%tenancy%' OR p.proname LIKE 'tenancy%')"
            ),
            "triggers": rows(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'tenancy%'"
            ),
            "event triggers": rows("SELECT evtname FROM pg_event_trigger"),
            "roles": rows("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,)),
        }


NOTHING: dict[str, list[Any]] = {
    "schemas": [],
    "policies": [],
    "rls": [],
    "functions": [],
    "triggers": [],
    "event triggers": [],
    "roles": [],
}


def assert_app_role_shut_out(world: StrictWorld) -> None:
    with (
        psycopg.connect(world.app_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM public.orders")


def test_uninstall_drop_tenants_in_strict_mode_leaves_nothing(world: StrictWorld) -> None:
    roles = kit_roles(world.dsn)
    assert len(roles) == 2 + len(SCHEMA_TENANTS), roles
    result = run_cli("uninstall", "--drop-tenants", "--dsn", world.dsn)
    assert result.returncode == 0, result.stderr
    assert "pgtenancy uninstalled" in result.stdout
    assert leftovers(world.dsn, roles) == NOTHING
    # The shared table and its rows stay, unguarded, out of the app role's reach.
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (
            len(SHARED_TENANTS),
        )
    assert_app_role_shut_out(world)


def test_uninstall_in_strict_mode_after_destroying_every_tenant(world: StrictWorld) -> None:
    roles = kit_roles(world.dsn)
    tenancy = Tenancy(world.dsn)
    for slug in (*SCHEMA_TENANTS, *SHARED_TENANTS):
        tenancy.drop_tenant(slug, destroy_data=True)
    result = run_cli("uninstall", "--dsn", world.dsn)
    assert result.returncode == 0, result.stderr
    assert leftovers(world.dsn, roles) == NOTHING
    assert_app_role_shut_out(world)


def test_uninstall_in_strict_mode_still_refuses_while_tenants_exist(world: StrictWorld) -> None:
    before = world.data(), leftovers(world.dsn, kit_roles(world.dsn))
    result = run_cli("uninstall", "--dsn", world.dsn)
    assert result.returncode != 0
    assert "4 tenants are registered" in result.stderr
    assert (world.data(), leftovers(world.dsn, kit_roles(world.dsn))) == before
