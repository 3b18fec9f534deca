"""pgtenancy.testing as a pytest plugin (issue 12, item 5): an inner pytest
session in a temporary directory finds the fixtures through the pytest11
entry point, with a 10-table migration; it measures the tenant factory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import subprocess_env

CONFTEST = 'import pytest\n\nTABLES = 10\n\n\n@pytest.fixture(scope="session")\ndef pgtenancy_migrations():\n    ddl = "; ".join(\n        f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, body text NOT NULL, "\n        f"parent bigint REFERENCES t{i - 1} (id))" if i else\n        "CREATE TABLE t0 (id bigserial PRIMARY KEY, body text NOT NULL, parent bigint)"\n        for i in range(TABLES)\n    )\n    # A foreign key added later points at a newer table: the cheap\n    # newest-first DELETE order fails and the pool finds another.\n    late = (\n        "CREATE TABLE late_parent (id bigserial PRIMARY KEY); "\n        "ALTER TABLE t0 ADD COLUMN late bigint REFERENCES late_parent (id)"\n    )\n    return [("0001", ddl), ("0002", late)]\n'

TESTS = 'import time\n\nimport pytest\nfrom sqlalchemy import text\n\nfrom pgtenancy import tenant_session\nfrom pgtenancy.admin import engine_from_dsn\n\nTABLES = 10\nSEEN: list[str] = []\n\n\n@pytest.fixture(scope="module")\ndef engine(pgtenancy_dsn):\n    e = engine_from_dsn(pgtenancy_dsn)\n    yield e\n    e.dispose()\n\n\n@pytest.mark.parametrize("n", range(12))\ndef test_fresh_tenant_each_time(n, tenant, engine):\n    t = tenant(metadata={"public": {"n": n}})\n    assert t.status == "active" and t.metadata == {"public": {"n": n}}\n    with tenant_session(engine, t.slug) as s:\n        for i in range(TABLES):\n            assert s.execute(text(f"SELECT count(*) FROM t{i}")).scalar() == 0\n            new_id = s.execute(text(f"INSERT INTO t{i} (body) VALUES (\'x\') RETURNING id")).scalar()\n            assert new_id == 1  # identities restarted\n        s.commit()\n    SEEN.append(t.slug)\n\n\ndef test_foreign_key_order_fallback(tenant, engine):\n    t = tenant()\n    with tenant_session(engine, t.slug) as s:\n        s.execute(text("INSERT INTO late_parent DEFAULT VALUES"))\n        s.execute(text("INSERT INTO t0 (body, late) VALUES (\'x\', 1)"))\n        s.commit()\n    SEEN.append(t.slug)\n\n\ndef test_fallback_tenant_came_back_empty(tenant, engine):\n    t = tenant()\n    with tenant_session(engine, t.slug) as s:\n        assert s.execute(text("SELECT count(*) FROM late_parent")).scalar() == 0\n        assert s.execute(text("SELECT count(*) FROM t0")).scalar() == 0\n\n\ndef test_tenants_were_recycled():\n    assert len(SEEN) == 13 and len(set(SEEN)) <= 4\n\n\ndef test_suspended_or_dropped_by_a_test(tenant, pgtenancy_admin):\n    a, b = tenant(), tenant()\n    pgtenancy_admin.suspend_tenant(a.slug)\n    pgtenancy_admin.drop_tenant(b.slug, destroy_data=True)\n\n\ndef test_rollback_per_test(tenant_db, engine):\n    tenant_db.execute(text("INSERT INTO t0 (body) VALUES (\'kept only in this test\')"))\n    tenant_db.commit()  # a savepoint: the outer transaction rolls back at the end\n    assert tenant_db.execute(text("SELECT count(*) FROM t0")).scalar() == 1\n    slug = tenant_db.execute(text("SELECT tenancy.current_tenant()")).scalar()\n    assert slug is not None\n    # Nothing is committed: other sessions see no row.\n    with tenant_session(engine, slug) as other:\n        assert other.execute(text("SELECT count(*) FROM t0")).scalar() == 0\n\n\ndef test_cost_per_tenant(pgtenancy_tenant_pool, engine):\n    pool = pgtenancy_tenant_pool\n    pool.acquire()  # warm\n    rounds = 20\n    spent = 0.0\n    for _ in range(rounds):\n        start = time.perf_counter()\n        t = pool.acquire()\n        with tenant_session(engine, t.slug) as s:\n            pass\n        middle = time.perf_counter()\n        with tenant_session(engine, t.slug) as s:\n            for i in range(TABLES):\n                s.execute(text(f"INSERT INTO t{i} (body) VALUES (\'x\')"))\n            s.commit()\n        again = time.perf_counter()\n        assert pool.release(t.slug)\n        spent += (middle - start) + (time.perf_counter() - again)\n    print(f"PGTENANCY_TENANT_MS={spent / rounds * 1000:.2f}")\n'


def test_plugin_fixtures_and_tenant_cost(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(TESTS)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "18 passed" in r.stdout, r.stdout
    cost = re.search(r"PGTENANCY_TENANT_MS=([0-9.]+)", r.stdout)
    assert cost is not None, r.stdout
    ms = float(cost.group(1))
    print(f"tenant factory: {ms:.1f} ms per test (10-table migration; goal < 20 ms)")
    # create_tenant of the same schema costs ~400 ms on this machine.
    assert ms < 100, ms


def test_plugin_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "test_off.py").write_text(
        "def test_x(request):\n"
        "    assert 'tenant' not in request.fixturenames\n"
        "    assert request.config.pluginmanager.get_plugin('pgtenancy') is None\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:pgtenancy",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
