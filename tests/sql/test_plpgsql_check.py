"""plpgsql_check over every PL/pgSQL function of the kit, with every warning on.

Skipped, with the reason, where the plpgsql_check extension is not installed
(`make test` installs Debian's postgresql-NN-plpgsql-check when it can).
"""

from __future__ import annotations

import psycopg
import pytest

# Findings that are intended, each with why.
ALLOWED = {
    # Migrations are SQL text run by design; only registered migrations run.
    ("apply_migrations", "security", "text type variable is not sanitized"),
    ("execute_migration", "security", "text type variable is not sanitized"),
    # Shared migrations are the owner's own SQL, run with the owner's rights by design.
    ("apply_shared_migration", "security", "text type variable is not sanitized"),
    # Its ALTER ... OWNER statements are dynamic SQL, which the checker cannot see.
    ("hand_over_schema", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # Its INSERTs and ALTER TABLE ... TRIGGER statements are dynamic SQL as well.
    ("clone_schema_data", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # Names built with format('%I') (changes_function, the qualified table name).
    ("track_changes", "security", "text type variable is not sanitized"),
    ("untrack_changes", "security", "text type variable is not sanitized"),
    # It compares with 'tenancy.tenants'::regclass, a catalog lookup: STABLE is right.
    ("assert_registry_trigger", "performance", "routine is marked as STABLE, should be IMMUTABLE"),
    # Its Citus calls (citus_schema_distribute, ...) are dynamic SQL, which the checker cannot see.
    ("citus_distribute_schema", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # It recreates enter_tenant() with dynamic SQL, which the checker cannot see.
    ("prepare_citus", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # Citus's catalogs and run_command_on_shards exist only with Citus: dynamic SQL.
    ("check_citus", "warning", "cannot determinate a result of dynamic SQL"),
    ("check_citus", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # Tenant owner roles (CREATE/DROP ROLE, GRANT, ALTER ... OWNER TO, REASSIGN OWNED) and the
    # import's stage table are dynamic SQL, which the checker cannot see.
    ("ensure_tenant_role", "performance", "routine is marked as VOLATILE, should be STABLE"),
    ("drop_tenant_role", "performance", "routine is marked as VOLATILE, should be STABLE"),
    ("reown_schema", "performance", "routine is marked as VOLATILE, should be STABLE"),
    ("create_stage", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # It runs one statement of the kit's own (built with format('%I'/'%s' of regclass)) as
    # the tenant's owner role: SQL text by design, never from a caller outside the kit.
    ("run_as_rest_owner", "security", "text type variable is not sanitized"),
    # It calls citus_schema_undistribute through dynamic SQL, which the checker cannot see.
    ("citus_undistribute_schema", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # It calls citus_schema_move through dynamic SQL, which the checker cannot see.
    ("move_tenant", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # Strict entry: policies, RLS switches and grants are dynamic SQL the checker cannot see.
    ("strict_guard_schema", "performance", "routine is marked as VOLATILE, should be STABLE"),
    ("strict_unguard_schema", "performance", "routine is marked as VOLATILE, should be STABLE"),
    ("apply_strict_entry", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # It runs the kit's own function definitions (pg_get_functiondef), saved or specialized.
    ("strict_swap_body", "security", "text type variable is not sanitized"),
    # Its settings are one assignment (a simple expression) so that nothing with a cached
    # plan runs after search_path changes; the assigned value itself is not needed.
    ("enter_tenant", "warning extra", 'never read variable "v_set"'),
    # The same body, kept by the accelerator (011) as the C function's fallback.
    ("enter_tenant_plpgsql", "warning extra", 'never read variable "v_set"'),
    # The accelerator recreates the kit's own functions from their definitions
    # (pg_get_functiondef), and creates its C functions, with dynamic SQL.
    ("accelerator_swap", "security", "text type variable is not sanitized"),
    ("accelerator_swap", "performance", "routine is marked as VOLATILE, should be STABLE"),
    ("accelerator_create_c", "performance", "routine is marked as VOLATILE, should be STABLE"),
    # Its names and signatures come from its own fixed list (p_name is checked against it).
    ("accelerator_create_c", "security", "text type variable is not sanitized"),
}

CHECK = """
SELECT p.proname, c.lineno, c.level, c.message
  FROM pg_proc AS p
  JOIN pg_namespace AS n ON n.oid = p.pronamespace
  JOIN pg_language AS l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
 CROSS JOIN LATERAL plpgsql_check_function_tb(
        p.oid,
        CASE WHEN p.prorettype = 'trigger'::regtype THEN %s::regclass ELSE 0 END,
        fatal_errors => false, other_warnings => true, performance_warnings => true,
        extra_warnings => true, security_warnings => true) AS c
 WHERE n.nspname = 'tenancy'
   AND (p.prorettype <> 'trigger'::regtype OR p.proname = ANY(%s))
"""


def test_plpgsql_check_is_clean(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        available = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'plpgsql_check'"
        ).fetchone()
        if not available or not available[0]:
            pytest.skip("plpgsql_check is not installed (Debian: postgresql-NN-plpgsql-check)")
        conn.execute("CREATE EXTENSION plpgsql_check")
        conn.execute("CREATE TABLE public.guarded (id int)")
        conn.execute("SELECT tenancy.enable_rls('public.guarded')")
        findings = []
        for relation, triggers in (
            (
                "tenancy.tenants",
                [
                    "tenants_before_insert",
                    "tenants_before_update",
                    "tenants_after_change",
                    "tenants_refuse_truncate",
                ],
            ),
            ("public.guarded", ["guard_write"]),
        ):
            rows = conn.execute(CHECK, (relation, triggers)).fetchall()
            findings.extend(rows)
        checked = conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
            "WHERE p.pronamespace = 'tenancy'::regnamespace AND l.lanname = 'plpgsql'"
        ).fetchone()
    unexpected = [f for f in findings if (f[0], f[2], f[3]) not in ALLOWED]
    assert unexpected == [], "\n".join(map(str, unexpected))
    assert checked is not None and checked[0] >= 20
