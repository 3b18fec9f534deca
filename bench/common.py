"""What the benchmark scripts share: set-up, timing, the ``item`` tables, options, report.

The scripts run as ``python bench/<script>.py``, so this directory is on
``sys.path`` and they import this module as ``common``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import psycopg
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import pgtenancy
from pgtenancy.admin import Tenancy
from pgtenancy.testing import find_bindir, find_server, fresh_database

# The schema tenant and its table ``item``, with an identical ``public.item``.
SLUG = "bench"
ITEMS = 1000
ITEM_QUERY = text("SELECT value FROM item WHERE id = :id")
ITEM_DDL = "CREATE TABLE item (id int PRIMARY KEY, value text NOT NULL)"
ITEM_ROWS = (
    "INSERT INTO item (id, value) SELECT g, md5(g::text) FROM generate_series(1, :rows) AS g"
)

K = TypeVar("K")
R = TypeVar("R", bound="BaseResults")


@dataclass(frozen=True)
class BaseResults:
    """The fields every run's results start with; ``--json`` prints all as one object."""

    server_version: str
    server_source: str
    seconds_per_round: float
    rounds: int


@dataclass(frozen=True)
class BenchDatabase:
    """A fresh database with pgtenancy installed, and the server it is on."""

    dsn: str
    server_version: str
    server_source: str


class TableRow(NamedTuple):
    """One row of the report table: a pgtenancy side, its baseline, and their ratio."""

    pgtenancy: str
    pgtenancy_rate: float
    baseline: str
    baseline_rate: float
    ratio: float


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def pooled_engine(dsn: str, **connect_kwargs: Any) -> Engine:
    """Engine on ``dsn`` with the psycopg driver and a single pooled connection."""
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn, **connect_kwargs),
        pool_size=1,
        max_overflow=0,
    )


def install_kit(dsn: str) -> bool:
    """Install pgtenancy into ``dsn``; with ``PGTENANCY_BENCH_ACCELERATOR=off`` in
    the environment without the C accelerator (``sql/011_accelerator.sql``), for
    before/after figures on one server. Returns whether the accelerator is in use."""
    off = os.environ.get("PGTENANCY_BENCH_ACCELERATOR", "") == "off"
    pgtenancy.install(dsn, accelerate=False if off else None)
    from pgtenancy.installer import installed_accelerator

    used = installed_accelerator(dsn)
    print(f"C accelerator: {'in use' if used else 'not in use'}", file=sys.stderr)
    return used


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """A server (``DATABASE_URL`` when set, else :func:`find_server`) and a fresh
    database ``pgtenancy_bench*`` on it with pgtenancy installed, dropped on exit."""
    source = "$DATABASE_URL" if os.environ.get("DATABASE_URL") else "find_server()"
    with (
        find_server(env=("DATABASE_URL",)) as admin,
        fresh_database(admin, "pgtenancy_bench") as dsn,
    ):
        install_kit(dsn)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        yield BenchDatabase(dsn, str(row[0]) if row else "?", source)


# Timing ----------------------------------------------------------------------


def repeat_for(
    seconds: float, tx: Callable[[Engine, K], object], engine: Engine, draw: Callable[[], K]
) -> tuple[int, float]:
    """Run ``tx(engine, draw())`` back to back for ``seconds``; the number of runs
    and the seconds they took."""
    count = 0
    start = now = time.perf_counter()
    deadline = start + seconds
    while now < deadline:
        tx(engine, draw())
        count += 1
        now = time.perf_counter()
    return count, now - start


# The item tables --------------------------------------------------------------


def tenant_tx(engine: Engine, ident: int) -> str:
    """One transaction in tenant ``bench``: enter, one query, commit."""
    with pgtenancy.tenant_session(engine, SLUG) as session:
        value: str = session.execute(ITEM_QUERY, {"id": ident}).scalar_one()
        session.commit()
    return value


def plain_tx(engine: Engine, ident: int) -> str:
    """The same transaction in a plain SQLAlchemy session (``public.item``)."""
    with Session(engine) as session:
        value: str = session.execute(ITEM_QUERY, {"id": ident}).scalar_one()
        session.commit()
    return value


def fill_tenant_items(engine: Engine, tenancy: Tenancy, migration: str) -> None:
    """Tenant ``bench`` with ``item`` (ITEMS rows), the table made by tenant
    migration ``migration``."""
    tenancy.add_migration(migration, ITEM_DDL)
    tenancy.create_tenant(SLUG)
    with pgtenancy.tenant_session(engine, SLUG) as session:
        session.execute(text(ITEM_ROWS), {"rows": ITEMS})
        session.commit()


def fill_public_items(dsn: str) -> None:
    """``public.item`` with ITEMS rows; then both ``item`` tables analyzed."""
    with psycopg.connect(dsn) as conn:
        conn.execute(ITEM_DDL)
        conn.execute(ITEM_ROWS.replace(":rows", "%(rows)s"), {"rows": ITEMS})
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE public.item")
        conn.execute(f"ANALYZE tenant_{SLUG}.item")


def check_items(engine: Engine) -> None:
    """Both sides read the same rows, each from its own schema."""
    with pgtenancy.tenant_session(engine, SLUG) as session:
        where = session.execute(text("SELECT current_schema()")).scalar_one()
        tenant_value = session.execute(ITEM_QUERY, {"id": 7}).scalar_one()
    with Session(engine) as session:
        plain_where = session.execute(text("SELECT current_schema()")).scalar_one()
        plain_value = session.execute(ITEM_QUERY, {"id": 7}).scalar_one()
    if (where, plain_where) != (f"tenant_{SLUG}", "public") or tenant_value != plain_value:
        raise RuntimeError(f"unexpected setup: schemas {where}/{plain_where}")


# Options ---------------------------------------------------------------------


def positive_float(value: str) -> float:
    """argparse type: a float > 0."""
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return number


def positive_int(value: str) -> int:
    """argparse type: an int > 0."""
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return number


def bench_parser(benchmarks: str) -> argparse.ArgumentParser:
    """The parser of a script running pgtenancy's ``benchmarks`` (e.g. "core")."""
    return argparse.ArgumentParser(
        description=f"pgtenancy {benchmarks} benchmarks: ratios against same-run baselines."
    )


def add_round_options(parser: argparse.ArgumentParser, rounds: str) -> None:
    """``--seconds`` and ``--rounds``; ``rounds`` says how they are ordered
    (e.g. "alternating")."""
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=2.0,
        help="duration of one round per side, in seconds (default: 2)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help=f"{rounds} rounds per side (default: 5)"
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json``: print the results as one JSON object (see :func:`print_results`)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def print_results(results: R, report: Callable[[R], str], as_json: bool) -> None:
    """``results`` on stdout: as one JSON object, or as ``report`` formats them."""
    print(json.dumps(asdict(results)) if as_json else report(results))


# Report ----------------------------------------------------------------------


def report_title(benchmark: str, r: BaseResults) -> str:
    """The first line of a report: pgtenancy, the ``benchmark``, the server, Python."""
    return (
        f"pgtenancy {pgtenancy.__version__} {benchmark} benchmark: PostgreSQL "
        f"{r.server_version} ({r.server_source}), Python {sys.version.split()[0]}"
    )


def ratio_table(width: int, rows: Sequence[TableRow]) -> list[str]:
    """The lines of a three-column table, pgtenancy | baseline | ratio, with a
    header; the two first columns ``width`` characters wide."""
    label = width - 10
    lines = [
        f"{'pgtenancy':<{width}} | {'baseline':<{width}} | ratio",
        f"{'-' * width}-+-{'-' * width}-+------",
    ]
    lines.extend(
        f"{row.pgtenancy:<{label}}{row.pgtenancy_rate:>10.1f} | "
        f"{row.baseline:<{label}}{row.baseline_rate:>10.1f} | {row.ratio:.2f}"
        for row in rows
    )
    return lines


DEFAULT_CHINOOK = (
    Path(__file__).resolve().parents[1].parent / "shared/data/chinook/Chinook_PostgreSql.sql"
)


def find_psql() -> Path:
    """The ``psql`` executable: on PATH, else in the PostgreSQL bindir."""
    found = shutil.which("psql")
    if found:
        return Path(found)
    bindir = find_bindir()
    if bindir is not None and (bindir / "psql").is_file():
        return bindir / "psql"
    raise SystemExit("psql not found: put it on PATH or set PG_BINDIR")


def time_psql_script(psql: Path, dsn: str, script_text: str) -> float:
    """Seconds for one ``psql -X -q -v ON_ERROR_STOP=1`` run of ``script_text``.

    Raises:
        RuntimeError: psql failed (with its standard error).
    """
    with tempfile.NamedTemporaryFile(
        "w", suffix=".sql", prefix="pgtenancy-bench-", encoding="utf-8", delete=False
    ) as script:
        script.write(script_text)
    try:
        start = time.perf_counter()
        done = subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", script.name],
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
    finally:
        os.unlink(script.name)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed
