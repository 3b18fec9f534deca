"""track_changes on Citus: refused on distributed tables with a clear error,
and writes keep working."""

from __future__ import annotations

import psycopg
import pytest


@pytest.mark.parametrize("table", ["public.dist_tracked", "tenant_trk.item"])
def test_track_changes_refused_on_distributed_tables(citus_dsn: str, table: str) -> None:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        if table == "public.dist_tracked":
            conn.execute("CREATE TABLE public.dist_tracked (id int PRIMARY KEY)")
            conn.execute("SELECT create_distributed_table('public.dist_tracked', 'id')")
        else:
            conn.execute(
                "SELECT tenancy.add_migration('0001',"
                " 'CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)')"
            )
            conn.execute("SELECT tenancy.create_tenant('trk')")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT tenancy.track_changes(%s)", (table,))
        assert info.value.sqlstate == "PT016"
        assert "distributed by Citus" in str(info.value)
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
            (table,),
        ).fetchone()
        assert triggers == (0,)
        with conn.transaction():
            if table == "tenant_trk.item":
                conn.execute("INSERT INTO tenant_trk.item VALUES (1, 'x')")
            else:
                conn.execute("INSERT INTO public.dist_tracked VALUES (1)")
