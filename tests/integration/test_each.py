"""for_each_tenant / afor_each_tenant and ``pgtenancy each`` (issue 12, item 4)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi_support import make_tenants
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from conftest import as_role, pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy, TenantSuspended, current_tenant
from pgtenancy.each import afor_each_tenant, for_each_tenant

SLUGS = ("acme", "globex", "hooli", "initech", "umbrella", "wayne")


@pytest.fixture
def app_url(tenancy: Tenancy, dsn: str, app_role: str) -> str:
    make_tenants(tenancy, dsn, SLUGS)
    tenancy.create_tenant("soylent")
    tenancy.suspend_tenant("soylent")
    tenancy.create_tenant("gone")
    tenancy.drop_tenant("gone")
    return as_role(dsn, app_role)


def owners(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            slug: conn.execute(f"SELECT count(*) FROM tenant_{slug}.item").fetchone()[0]  # type: ignore[index]
            for slug in SLUGS
        }


def test_for_each_tenant_sync(app_url: str, dsn: str, tenancy: Tenancy) -> None:
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(app_url))

    def work(session: Session) -> str:
        slug = current_tenant()
        assert slug is not None
        session.execute(text("INSERT INTO item VALUES (2, current_setting('app.tenant'))"))
        if slug == "acme":
            # Suspended after the listing: skipped when its turn comes.
            tenancy.suspend_tenant("initech")
        if slug == "globex":
            raise RuntimeError("globex is broken")
        if slug == "hooli":
            raise TenantSuspended("raised by fn, not by entering: a failure")
        owner: str = session.execute(text("SELECT tenancy.current_tenant()")).scalar_one()
        return owner

    report = for_each_tenant(engine, work, jobs=1)
    assert report.done == {"acme": "acme", "umbrella": "umbrella", "wayne": "wayne"}
    assert set(report.failed) == {"globex", "hooli"}
    assert str(report.failed["globex"]) == "globex is broken"
    assert list(report.skipped) == ["initech"] and "suspended" in report.skipped["initech"]
    assert not report.ok and report.summary() == "3 done, 1 skipped, 2 failed"
    # Committed where fn returned, rolled back where it raised or never ran.
    assert owners(dsn) == {
        "acme": 2,
        "globex": 1,
        "hooli": 1,
        "initech": 1,
        "umbrella": 2,
        "wayne": 2,
    }
    # status=None: every tenant not deleted (the suspended ones are skipped on entry).
    report = for_each_tenant(engine, lambda s: None, status=None)
    assert set(report.done) == {"acme", "globex", "hooli", "umbrella", "wayne"}
    assert set(report.skipped) == {"initech", "soylent"}
    with pytest.raises(ValueError):
        for_each_tenant(engine, lambda s: None, jobs=0)
    engine.dispose()


def test_for_each_tenant_runs_jobs_at_once(app_url: str) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(conn: psycopg.Connection[Any]) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.3)
        with lock:
            running -= 1

    with ConnectionPool(app_url, min_size=1, max_size=6, open=True) as pool:
        report = for_each_tenant(pool, work, jobs=3)
    assert report.ok and set(report.done) == set(SLUGS)
    assert peak == 3


def test_afor_each_tenant(app_url: str, dsn: str) -> None:
    async def main() -> tuple[Any, Any]:
        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(app_url)

        engine = create_async_engine("postgresql+psycopg://", async_creator=connect)

        async def work(session: Any) -> str:
            await session.execute(text("INSERT INTO item VALUES (3, 'x')"))
            if current_tenant() == "wayne":
                raise RuntimeError("no")
            return str((await session.execute(text("SELECT tenancy.current_tenant()"))).scalar())

        by_engine = await afor_each_tenant(engine, work, jobs=3, slugs=[*SLUGS, "soylent", "nope"])
        await engine.dispose()

        async def count(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT count(*) FROM item")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        async with AsyncConnectionPool(app_url, min_size=1, max_size=3) as pool:
            by_pool = await afor_each_tenant(pool, count, jobs=2)
        return by_engine, by_pool

    by_engine, by_pool = asyncio.run(main())
    assert by_engine.done == {s: s for s in SLUGS if s != "wayne"}
    assert set(by_engine.failed) == {"wayne"}
    assert set(by_engine.skipped) == {"soylent", "nope"}
    assert by_pool.done == {s: (1 if s == "wayne" else 2) for s in SLUGS}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pgtenancy_cli(), *args], capture_output=True, text=True, env=subprocess_env(), cwd=cwd
    )


def test_each_command(app_url: str) -> None:
    probe = (
        "import os, psycopg, sys\n"
        "slug = os.environ['PGTENANCY_TENANT']\n"
        "with psycopg.connect(os.environ['URL']) as c:\n"
        "    owner = c.execute('SELECT owner FROM item').fetchone()[0]\n"
        "    tid = c.execute(\"SELECT current_setting('app.tenant_id')\").fetchone()[0]\n"
        "print(slug, owner, tid == os.environ['PGTENANCY_TENANT_ID'])\n"
        "sys.exit(3 if slug == 'globex' else 0)\n"
    )
    import os

    os.environ["URL"] = app_url
    try:
        r = run_cli("each", "--dsn", app_url, "--jobs", "3", "--", sys.executable, "-c", probe)
    finally:
        del os.environ["URL"]
    assert r.returncode == 1, r.stderr
    for slug in SLUGS:
        assert f"[{slug}] {slug} {slug} True" in r.stdout
    assert "FAILED   globex: exit status 3" in r.stdout
    assert r.stdout.rstrip().endswith("5 done, 0 skipped, 1 failed")

    r = run_cli("each", "--dsn", app_url, "--status", "suspended", "--", "true")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SKIPPED  soylent" in r.stdout
    r = run_cli("each", "--dsn", app_url)
    assert r.returncode == 2 and "COMMAND" in r.stderr


def test_each_call(app_url: str, tmp_path: Path) -> None:
    (tmp_path / "jobs_mod.py").write_text(
        "from sqlalchemy import text\n"
        "from pgtenancy import current_tenant\n"
        "def tally(session):\n"
        "    if current_tenant() == 'hooli':\n"
        "        raise ValueError('hooli says no')\n"
        "    return session.execute(text('SELECT count(*) FROM item')).scalar()\n"
    )
    r = run_cli("each", "--dsn", app_url, "--jobs", "2", "--call", "jobs_mod:tally", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "DONE     acme: 1" in r.stdout
    assert "FAILED   hooli: hooli says no" in r.stdout
    r = run_cli("each", "--dsn", app_url, "--call", "jobs_mod:tally", "--json", cwd=tmp_path)
    import json

    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert {(d["tenant"], d["outcome"]) for d in lines} == {
        *((s, "done") for s in SLUGS if s != "hooli"),
        ("hooli", "failed"),
    }
    r = run_cli("each", "--dsn", app_url, "--call", "nonsense", cwd=tmp_path)
    assert r.returncode == 2
