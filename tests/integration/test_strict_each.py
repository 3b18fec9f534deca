"""Work across tenants in strict entry (issue 13): for_each_tenant,
afor_each_tenant and ``pgtenancy each`` enter every tenant with a token
signed per tenant, stop with the kit's error before entering any tenant when
no key is given, and never put the key in argv, the commands' environment
or the output. Real server, the application role."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from strict_support import SCHEMA_TENANTS, SHARED_TENANTS, StrictWorld, build, marker

from helpers import as_role, pgtenancy_cli, subprocess_env
from pgtenancy import EntryTokenForged, Tenancy, current_tenant, sign_tenant_token
from pgtenancy.each import TokenSigner, afor_each_tenant, for_each_tenant, load_entry_key

ALL = (*SCHEMA_TENANTS, *SHARED_TENANTS)


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role))


def rows_sql(slug: str) -> str:
    if slug in SCHEMA_TENANTS:
        return "SELECT string_agg(body, ',' ORDER BY id) FROM invoice"
    return "SELECT string_agg(item, ',' ORDER BY id) FROM orders"


def rows_everywhere(session: Any) -> str:
    """What a job sees: its own rows, and every other tenant's it can reach."""
    slug = current_tenant()
    assert slug is not None
    own: str = session.execute(text(rows_sql(slug))).scalar_one()
    others = [
        session.execute(text(f"SELECT count(*) FROM tenant_{s}.invoice")).scalar_one()
        for s in SCHEMA_TENANTS
        if s != slug
    ]
    return f"{own}|{others}"


def engine_of(url: str) -> Any:
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))


def expected(slug: str) -> str:
    others = [0] * (len(SCHEMA_TENANTS) - (slug in SCHEMA_TENANTS))
    return (
        f"{marker(slug)},{marker(slug)} 2|{others}"
        if slug in SCHEMA_TENANTS
        else (f"{marker(slug)}|{others}")
    )


def test_for_each_tenant_signs_a_token_per_tenant(world: StrictWorld) -> None:
    engine = engine_of(world.app_dsn)
    try:
        signer = TokenSigner(world.key, key_name="k1", ttl_seconds=30)
        assert world.key.hex() not in repr(signer)
        report = for_each_tenant(engine, rows_everywhere, jobs=3, token_for=signer)
        assert report.failed == {} and report.skipped == {}
        assert report.done == {s: expected(s) for s in ALL}
    finally:
        engine.dispose()


def test_without_a_token_strict_mode_stops_before_any_tenant(world: StrictWorld) -> None:
    calls: list[str] = []

    def job(_session: Any) -> None:
        calls.append(str(current_tenant()))

    engine = engine_of(world.app_dsn)
    try:
        with pytest.raises(EntryTokenForged, match=r"strict entry is on.*token_for"):
            for_each_tenant(engine, job)
        with (
            ConnectionPool(world.app_dsn, min_size=1, max_size=2) as pool,
            pytest.raises(EntryTokenForged, match="token_for"),
        ):
            for_each_tenant(pool, job)
    finally:
        engine.dispose()
    assert calls == []
    # The kit's owner is trusted without a token.
    owner = engine_of(world.dsn)
    try:
        assert set(for_each_tenant(owner, job).done) == set(ALL)
    finally:
        owner.dispose()


def test_a_wrong_key_or_a_failing_token_for_fails_tenants_with_the_kit_s_error(
    world: StrictWorld,
) -> None:
    engine = engine_of(world.app_dsn)
    try:
        report = for_each_tenant(
            engine, rows_everywhere, token_for=TokenSigner(b"x" * 32, key_name="k1")
        )
        assert report.done == {} and set(report.failed) == set(ALL)
        assert all(isinstance(e, EntryTokenForged) for e in report.failed.values())

        def flaky(slug: str) -> str:
            if slug == "globex":
                raise RuntimeError("no token for globex")
            return sign_tenant_token(world.key, slug, 30, "k1")

        report = for_each_tenant(engine, rows_everywhere, token_for=flaky)
        assert set(report.done) == set(ALL) - {"globex"}
        assert str(report.failed["globex"]) == "no token for globex"
        # Suspended tenants are skipped, not failed, with tokens too.
        Tenancy(world.dsn).suspend_tenant("sb")
        report = for_each_tenant(engine, rows_everywhere, slugs=["sa", "sb"], token_for=flaky)
        assert set(report.done) == {"sa"} and set(report.skipped) == {"sb"}
    finally:
        engine.dispose()


def test_a_pool_and_the_async_forms_with_tokens(world: StrictWorld) -> None:
    signer = TokenSigner(world.key, key_name="k1")

    def count(conn: psycopg.Connection[Any]) -> Any:
        slug = current_tenant()
        assert slug is not None
        return conn.execute(rows_sql(slug)).fetchone()[0]  # type: ignore[index]

    with ConnectionPool(world.app_dsn, min_size=1, max_size=2) as pool:
        report = for_each_tenant(pool, count, jobs=2, token_for=signer)
    assert report.done == {s: expected(s).split("|")[0] for s in ALL}

    async def acount(session: Any) -> Any:
        slug = current_tenant()
        assert slug is not None
        return (await session.execute(text(rows_sql(slug)))).scalar_one()

    async def apool_count(conn: psycopg.AsyncConnection[Any]) -> Any:
        slug = current_tenant()
        assert slug is not None
        return (await (await conn.execute(rows_sql(slug))).fetchone())[0]  # type: ignore[index]

    async def main() -> tuple[Any, Any, Any]:
        url = world.app_dsn
        engine = create_async_engine(
            "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(url)
        )
        try:
            by_engine = await afor_each_tenant(engine, acount, jobs=2, token_for=signer)
            with pytest.raises(EntryTokenForged, match="token_for"):
                await afor_each_tenant(engine, acount)
        finally:
            await engine.dispose()
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as apool:
            by_pool = await afor_each_tenant(apool, apool_count, token_for=signer)
            with pytest.raises(EntryTokenForged):
                await afor_each_tenant(apool, apool_count)
        return by_engine, by_pool, None

    by_engine, by_pool, _ = asyncio.run(main())
    assert by_engine.done == by_pool.done == {s: expected(s).split("|")[0] for s in ALL}


def test_load_entry_key(tmp_path: Path) -> None:
    key = os.urandom(32)
    (tmp_path / "k").write_text(key.hex() + "\n")
    assert load_entry_key(tmp_path / "k", environ={}) == key
    assert load_entry_key(None, environ={"PGTENANCY_ENTRY_KEY": key.hex()}) == key
    assert load_entry_key(None, environ={}) is None
    with pytest.raises(ValueError, match="not both"):
        load_entry_key(tmp_path / "k", environ={"PGTENANCY_ENTRY_KEY": key.hex()})
    (tmp_path / "bad").write_text("zz" + key.hex())
    with pytest.raises(ValueError) as info:
        load_entry_key(tmp_path / "bad", environ={})
    assert key.hex() not in str(info.value)


# -- pgtenancy each -------------------------------------------------------------

# A command run per tenant: what it sees through libpq (PGOPTIONS), and
# whether the key shows in its environment or in any process's argv (ps).
PROBE = """
import os, pathlib, sys
import psycopg
key = pathlib.Path(sys.argv[1]).read_text().strip()
slug = os.environ["PGTENANCY_TENANT"]
leak = [k for k, v in os.environ.items() if key in v]
for proc in pathlib.Path("/proc").iterdir():
    try:
        if key.encode() in (proc / "cmdline").read_bytes():
            leak.append("argv of " + proc.name)
    except OSError:
        pass
table = "invoice" if slug in ("acme", "globex") else "orders"
col = "body" if table == "invoice" else "item"
with psycopg.connect(os.environ["APP_URL"]) as c:
    own = c.execute(f"SELECT string_agg({col}, ',' ORDER BY id) FROM {table}").fetchone()[0]
    other = c.execute("SELECT count(*) FROM tenant_globex.invoice").fetchone()[0]
print(slug, own, other if slug != "globex" else "-", "token" if os.environ.get("PGTENANCY_TENANT_TOKEN") else "none", leak)
"""


def each_cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pgtenancy_cli(), "each", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_pgtenancy_each_command_with_a_key_in_the_environment(
    world: StrictWorld, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    hexkey = world.key.hex()
    env = subprocess_env() | {"PGTENANCY_ENTRY_KEY": hexkey, "APP_URL": world.app_dsn}
    # The probe reads the key to look for from a file (not its own argv).
    secret = tmp_path / "secret"
    secret.write_text(hexkey)
    r = each_cli(
        [
            "--dsn",
            world.app_dsn,
            "--entry-key-name",
            "k1",
            "--",
            sys.executable,
            str(probe),
            str(secret),
        ],
        env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for slug in ALL:
        other = "-" if slug == "globex" else "0"
        own = f"{marker(slug)},{marker(slug)} 2" if slug in SCHEMA_TENANTS else marker(slug)
        assert f"[{slug}] {slug} {own} {other} token []" in r.stdout, r.stdout
    assert "4 done, 0 skipped, 0 failed" in r.stdout
    assert hexkey[:16] not in r.stdout + r.stderr

    # Without the key: the kit's error, nothing run, no traceback.
    env.pop("PGTENANCY_ENTRY_KEY")
    r = each_cli(["--dsn", world.app_dsn, "--", sys.executable, str(probe), str(secret)], env)
    assert r.returncode == 1 and "[" not in r.stdout, r.stdout
    assert r.stderr.startswith("error: strict entry is on") and "Traceback" not in r.stderr


def test_pgtenancy_each_call_with_a_key_file_and_usage_errors(
    world: StrictWorld, tmp_path: Path
) -> None:
    (tmp_path / "jobs_mod.py").write_text(
        "from sqlalchemy import text\n"
        "from pgtenancy import current_tenant\n"
        "def tally(session):\n"
        "    table = 'invoice' if current_tenant() in ('acme', 'globex') else 'orders'\n"
        "    return session.execute(text(f'SELECT count(*) FROM {table}')).scalar()\n"
    )
    keyfile = tmp_path / "entry.key"
    keyfile.write_text(world.key.hex())
    env = subprocess_env()
    args = ["--dsn", world.app_dsn, "--call", "jobs_mod:tally"]
    r = each_cli([*args, "--entry-key-name", "k1", "--entry-key-file", str(keyfile)], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for slug in ALL:
        assert f"DONE     {slug}: {2 if slug in SCHEMA_TENANTS else 1}" in r.stdout
    # No key: stopped before any tenant with the kit's message.
    r = each_cli(args, env, tmp_path)
    assert r.returncode == 1 and "DONE" not in r.stdout
    assert r.stderr.startswith("error: strict entry is on") and "--entry-key-name" in r.stderr
    # The wrong key: every tenant fails with the token refusal.
    other = tmp_path / "other.key"
    other.write_text(os.urandom(32).hex())
    r = each_cli([*args, "--entry-key-name", "k1", "--entry-key-file", str(other)], env, tmp_path)
    assert r.returncode == 1 and r.stdout.count("FAILED") == 4 and "bad signature" in r.stdout
    # A key name without a key; a key that is not hex (not echoed); both sources.
    r = each_cli([*args, "--entry-key-name", "k1"], env, tmp_path)
    assert r.returncode == 2 and "PGTENANCY_ENTRY_KEY" in r.stderr
    r = each_cli(args, env | {"PGTENANCY_ENTRY_KEY": "zz" + world.key.hex()}, tmp_path)
    assert r.returncode == 2 and "not hex" in r.stderr and world.key.hex() not in r.stderr
    r = each_cli(
        [*args, "--entry-key-file", str(keyfile)],
        env | {"PGTENANCY_ENTRY_KEY": world.key.hex()},
        tmp_path,
    )
    assert r.returncode == 2 and "not both" in r.stderr
