"""The migration fence's C fast path (issue 16 goal 6: provisioning spent a
sixth of its server time in ``tenancy.fence_target``, run twice per DDL
command of a migration): ``tenancy.fence_target_c`` answers what the PL/pgSQL
``tenancy.fence_target_plpgsql`` answers, for the call stacks, roles and
settings the fence meets, and the accelerated ``fence_target`` is an inlined
call of it (no SET clause left on the wrapper) that goes back to PL/pgSQL,
pinned again, when the accelerator is switched off. The fence itself is
tested through real migrations in test_confinement.py and the unsafe
migrations corpus, which run with the accelerator as installed."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from pgtenancy import Tenancy
from pgtenancy.installer import installed_accelerator

RUNNER = "PL/pgSQL function tenancy.execute_migration(text,text) line 30 at EXECUTE"
STACKS = [
    "",
    'SQL statement "CREATE TABLE t ()"\n' + RUNNER,
    # The fence's own frames first, then the runner.
    "PL/pgSQL function tenancy.fence_ddl_start() line 7 at GET DIAGNOSTICS\n" + RUNNER,
    # The kit's own DDL run from a tenancy function inside a migration.
    "PL/pgSQL function tenancy.fence_ddl_end() line 9 at assignment\n"
    "PL/pgSQL function tenancy.hand_over_schema(text,boolean) line 40 at EXECUTE\n" + RUNNER,
    "PL/pgSQL function tenancy.called_from_migration() line 5 at GET DIAGNOSTICS\n"
    "PL/pgSQL function tenancy.execute_migration(text,text) line 2 at IF\n" + RUNNER,
    # A migration's own function first.
    "PL/pgSQL function tenant_acme.helper() line 3 at EXECUTE\n" + RUNNER,
    "PL/pgSQL function public.tenancy() line 1 at EXECUTE\n" + RUNNER,
    # LIKE's '_' matches any one character, multibyte ones too.
    "PL/pgSQL function tenancy.executeXmigration(text,text) line 1 at EXECUTE",
    "PL/pgSQL function tenancy.executeémigration(text,text) line 1 at EXECUTE",
    "PL/pgSQL function tenancy.execute_migration(text) line 1 at EXECUTE",
    "no frames at all",
]
TARGETS = [None, "", "tenant_acme", "tenant_globex", "public", "tenancy", "nowhere", "x" * 70]
OUTSIDE = [None, "", "tenant_acme", "nowhere"]


def _answers(conn: psycopg.Connection[Any], function: str) -> list[tuple[Any, ...]]:
    out = []
    for stack, target, outside in itertools.product(STACKS, TARGETS, OUTSIDE):
        conn.execute(
            "SELECT set_config('pgtenancy.migration_schema', %s, true),"
            " set_config('pgtenancy.outside_migration_schema', %s, true)",
            (target or "", outside or ""),
        )
        try:
            with conn.transaction():  # a savepoint: an error ends only this call
                row = conn.execute(f"SELECT tenancy.{function}(%s)", (stack,)).fetchone()
            answer: Any = row[0] if row else "no row"
        except psycopg.Error as exc:
            answer = ("error", exc.sqlstate)
        out.append((stack, target, outside, answer))
    return out


@pytest.mark.parametrize("as_migrator", [False, True], ids=["owner", "migrator"])
def test_the_c_fence_target_gives_what_the_plpgsql_gives(
    dsn: str, tenancy: Tenancy, as_migrator: bool
) -> None:
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    with psycopg.connect(dsn) as conn:
        migrator = conn.execute("SELECT tenancy.migrator_role()").fetchone()
        assert migrator is not None
        # The runner's grant, which makes tenant_acme the migration's target
        # (it never commits: rolled back below).
        conn.execute(
            pgsql.SQL("GRANT CREATE ON SCHEMA tenant_acme TO {}").format(
                pgsql.Identifier(migrator[0])
            )
        )
        if as_migrator:
            conn.execute(pgsql.SQL("SET LOCAL ROLE {}").format(pgsql.Identifier(migrator[0])))
        fast = _answers(conn, "fence_target_c")
        slow = _answers(conn, "fence_target_plpgsql")
        conn.rollback()
    assert fast == slow
    answers = {row[3] for row in fast}
    # The matrix reaches every kind of answer: the migrator may not read the
    # registry, which the PL/pgSQL's outside-migration branch does (42501).
    assert {None, "", "tenant_acme"} <= answers
    assert (("error", "42501") in answers) == as_migrator
    # The target only where the runner's grant is.
    assert answers <= {None, "", "tenant_acme", ("error", "42501")}


def test_the_accelerated_fence_target_is_an_inlined_call_and_goes_back(dsn: str, sql: Any) -> None:
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    shape = (
        "SELECT l.lanname, p.proconfig FROM pg_proc AS p JOIN pg_language AS l"
        " ON l.oid = p.prolang WHERE p.oid = 'tenancy.fence_target(text)'::regprocedure"
    )
    assert sql(shape) == [("sql", None)]
    [(plan,)] = sql("EXPLAIN (VERBOSE, FORMAT JSON) SELECT tenancy.fence_target('x')")[0:1]
    assert "tenancy.fence_target_c('x'::text)" in str(plan)
    oid = sql("SELECT 'tenancy.fence_target(text)'::regprocedure::oid")
    sql("SELECT tenancy.set_accelerator(false)")
    assert sql(shape) == [("plpgsql", ["search_path=pg_catalog, pg_temp"])]
    assert sql("SELECT 'tenancy.fence_target(text)'::regprocedure::oid") == oid
    sql("SELECT tenancy.set_accelerator(true)")
    assert sql(shape) == [("sql", None)]
