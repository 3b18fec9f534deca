"""Requests per second of one endpoint doing one query, through
pgtenancy.fastapi (resolve from a header, enter eagerly, a session in the
tenant) against the same endpoint with a plain SQLAlchemy session on an
identical ``public.item``; sync and async endpoints, under uvicorn, in one run.

    python bench/bench_fastapi.py [--seconds 3] [--rounds 3] [--concurrency 16] [--json]

The server is one uvicorn process; the load comes from an httpx AsyncClient
in this process (``--concurrency`` requests in flight). Rounds alternate
between the sides so both see the same machine load.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import BaseResults  # noqa: E402
from pgtenancy.admin import Tenancy  # noqa: E402

ENDPOINTS = ("sync", "async")

# The app (imported by uvicorn as bench_fastapi:app when BENCH_DSN is set) ------

if os.environ.get("BENCH_DSN"):
    import psycopg
    from fastapi import Depends, FastAPI
    from sqlalchemy import create_engine, text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import Session

    from pgtenancy.fastapi import Tenants, header

    _DSN = os.environ["BENCH_DSN"]
    _QUERY = text("SELECT value FROM item WHERE id = :id")
    _POOL = {"pool_size": 20, "max_overflow": 0}
    tenants = Tenants(
        _DSN,
        resolvers=[header("X-Tenant")],
        exclude=("/plain/",),
        engine_options=_POOL,
        pool_size=8,
    )
    plain_engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(_DSN), **_POOL
    )

    async def _aconnect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(_DSN)

    plain_async_engine = create_async_engine(
        "postgresql+psycopg://", async_creator=_aconnect, **_POOL
    )
    app = FastAPI(lifespan=tenants.lifespan)
    tenants.install(app)

    def plain_session() -> Iterator[Session]:
        with Session(plain_engine) as session:
            yield session

    async def plain_async_session() -> AsyncIterator[AsyncSession]:
        async with AsyncSession(plain_async_engine) as session:
            yield session

    @app.get("/tenant/sync/{ident}")
    def tenant_sync(ident: int, session: Session = Depends(tenants.session)) -> str:
        return str(session.execute(_QUERY, {"id": ident}).scalar_one())

    @app.get("/plain/sync/{ident}")
    def plain_sync(ident: int, session: Session = Depends(plain_session)) -> str:
        return str(session.execute(_QUERY, {"id": ident}).scalar_one())

    @app.get("/tenant/async/{ident}")
    async def tenant_async(
        ident: int, session: AsyncSession = Depends(tenants.async_session)
    ) -> str:
        return str((await session.execute(_QUERY, {"id": ident})).scalar_one())

    @app.get("/plain/async/{ident}")
    async def plain_async(ident: int, session: AsyncSession = Depends(plain_async_session)) -> str:
        return str((await session.execute(_QUERY, {"id": ident})).scalar_one())


# The benchmark -----------------------------------------------------------------


@dataclass(frozen=True)
class FastAPIResults(BaseResults):
    """Requests per second per endpoint kind, best round of each side."""

    concurrency: int
    tenant_sync_rps: float
    plain_sync_rps: float
    tenant_async_rps: float
    plain_async_rps: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _load(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> float:
    """Requests per second of GET url/<random id> with ``concurrency`` in flight."""
    import httpx

    from common import ITEMS

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as client:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                r = await client.get(f"{url}/{random.randint(1, ITEMS)}")
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text}")
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def main() -> None:
    import httpx

    import common

    parser = common.bench_parser("FastAPI")
    common.add_round_options(parser, "alternating")
    parser.add_argument("--concurrency", type=common.positive_int, default=16)
    common.add_json_option(parser)
    parser.set_defaults(seconds=3.0, rounds=3)
    args = parser.parse_args()
    with common.bench_database() as db:
        tenancy = Tenancy(db.dsn)
        engine = common.pooled_engine(db.dsn)
        common.fill_tenant_items(engine, tenancy, "0001")
        common.fill_public_items(db.dsn)
        engine.dispose()
        port = _free_port()
        env = dict(os.environ, BENCH_DSN=db.dsn, PYTHONPATH=str(HERE))
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench_fastapi:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=HERE,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    httpx.get(base + "/docs", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            best: dict[str, float] = {}
            for kind in ENDPOINTS:
                sides = {
                    f"tenant_{kind}": (f"{base}/tenant/{kind}", {"X-Tenant": common.SLUG}),
                    f"plain_{kind}": (f"{base}/plain/{kind}", {}),
                }
                for url, headers in sides.values():  # warm-up
                    asyncio.run(_load(url, headers, 0.5, args.concurrency))
                for round_ in range(args.rounds):
                    for name, (url, headers) in sides.items():
                        rps = asyncio.run(_load(url, headers, args.seconds, args.concurrency))
                        best[name] = max(best.get(name, 0.0), rps)
                        common.log(f"round {round_ + 1} {name}: {rps:.0f} req/s")
        finally:
            server.terminate()
            server.wait(30)
        results = FastAPIResults(
            db.server_version,
            db.server_source,
            args.seconds,
            args.rounds,
            args.concurrency,
            best["tenant_sync"],
            best["plain_sync"],
            best["tenant_async"],
            best["plain_async"],
        )
    common.print_results(results, report, args.json)


def report(r: FastAPIResults) -> str:
    """The results as a table: pgtenancy.fastapi | plain session | ratio, req/s."""
    import common

    rows = [
        common.TableRow(
            "sync endpoint",
            r.tenant_sync_rps,
            "sync endpoint",
            r.plain_sync_rps,
            r.tenant_sync_rps / r.plain_sync_rps,
        ),
        common.TableRow(
            "async endpoint",
            r.tenant_async_rps,
            "async endpoint",
            r.plain_async_rps,
            r.tenant_async_rps / r.plain_async_rps,
        ),
    ]
    lines = [
        common.report_title("FastAPI", r),
        f"requests/s, best of {r.rounds} rounds of {r.seconds_per_round:g} s, "
        f"{r.concurrency} in flight, one uvicorn process; one query per request",
        *common.ratio_table(34, rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
