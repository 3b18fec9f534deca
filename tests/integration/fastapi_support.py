"""Helpers for the FastAPI tests: tenants with data, a real uvicorn server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from pgtenancy import Tenancy

HERE = Path(__file__).resolve().parent
SLUGS = ("acme", "globex", "initech", "umbrella")


def make_tenants(tenancy: Tenancy, dsn: str, slugs: tuple[str, ...] = SLUGS) -> None:
    """Tenants ``slugs``, each with table item holding one row naming its owner."""
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)")
    for slug in slugs:
        tenancy.create_tenant(slug)
    with psycopg.connect(dsn) as conn:
        for slug in slugs:
            conn.execute(
                sql.SQL("INSERT INTO {}.item VALUES (1, %s)").format(
                    sql.Identifier("tenant_" + slug)
                ),
                (slug,),
            )


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uvicorn_server(
    app: str, env: Mapping[str, str], cwd: Path = HERE, workers_log: list[str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """Run ``uvicorn app`` on a free local port; yield (base url, stderr lines after exit)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                httpx.get(url + "/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url, lines
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        lines.extend(out.splitlines())
