"""The test cluster itself: Citus on every node, the workers registered."""

from __future__ import annotations

import psycopg

from citus.conftest import CitusCluster


def test_cluster_has_two_workers(citus_cluster: CitusCluster, citus_dsn: str) -> None:
    with psycopg.connect(citus_dsn) as conn:
        rows = conn.execute(
            "SELECT nodeport FROM pg_dist_node WHERE noderole = 'primary' AND groupid > 0"
            " ORDER BY nodeport"
        ).fetchall()
    assert [r[0] for r in rows] == sorted(citus_cluster.worker_ports)
    for w in citus_cluster.workers(citus_dsn):
        with psycopg.connect(w) as conn:
            assert conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'citus'"
            ).fetchone() == ("13.2-1",)


def test_enter_tenant_is_prepared_for_citus(citus_dsn: str) -> None:
    """Install specialized enter_tenant once: SET LOCAL statements, idempotent."""
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        src = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'tenancy.enter_tenant(text)'::regprocedure"
        ).fetchone()
        assert src is not None and "SET LOCAL app.tenant_id" in src[0]
        assert conn.execute("SELECT tenancy.prepare_citus()").fetchone() == (True,)
        again = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'tenancy.enter_tenant(text)'::regprocedure"
        ).fetchone()
        assert again == src
