"""The isolation doctor on Citus: shard policies, undistributed schemas, local tables."""

from __future__ import annotations

import psycopg

from citus.conftest import make_app_role
from pgtenancy.doctor import check_isolation


def findings(dsn: str) -> set[tuple[str, str, str]]:
    return {(f.severity, f.check, f.object) for f in check_isolation(dsn)}


def test_doctor_reads_the_shards(citus_dsn: str) -> None:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.doc_t (tenant_id uuid, id int, PRIMARY KEY (tenant_id, id))"
        )
        conn.execute("SELECT tenancy.enable_rls('public.doc_t')")
        conn.execute("SELECT create_distributed_table('public.doc_t', 'tenant_id')")
    app = make_app_role(citus_dsn, "citus_app_doctor")
    assert not {f for f in findings(app) if f[2] == "public.doc_t"}
    assert not {f for f in findings(app) if f[1] == "policy_not_initplan"}
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        # What the kit did before: a restrictive check, which the shards get as permissive.
        conn.execute(
            "CREATE POLICY extra_check ON public.doc_t AS RESTRICTIVE FOR ALL USING (id > 0)"
        )
    try:
        got = findings(app)
        assert ("error", "citus_shard_policy_permissive", "public.doc_t") in got
    finally:
        with psycopg.connect(citus_dsn, autocommit=True) as conn:
            conn.execute("DROP POLICY extra_check ON public.doc_t")
    assert ("error", "citus_shard_policy_permissive", "public.doc_t") not in findings(app)


def test_doctor_reports_undistributed_schemas_and_local_tables(citus_dsn: str) -> None:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tenancy.add_migration('0001',"
            " 'CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)')"
        )
        conn.execute("SELECT tenancy.create_tenant('doc_a')")
        conn.execute("SELECT citus_schema_undistribute('tenant_doc_a')")
    got = findings(citus_dsn)
    assert ("warning", "citus_schema_not_distributed", "doc_a") in got
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute("SELECT citus_schema_distribute('tenant_doc_a')")
        conn.execute("SET citus.enable_schema_based_sharding = off")
        conn.execute("DO $$ BEGIN CREATE TABLE tenant_doc_a.stray (id int); END $$")
    got = findings(citus_dsn)
    assert ("warning", "citus_schema_not_distributed", "doc_a") not in got
    assert ("error", "citus_local_table_in_distributed_schema", "tenant_doc_a.stray") in got
