"""Entering a tenant, at the physical limit: ratios against hand-written entry and plain
transactions, measured side by side in one run (issue 16).

Run from the repository root (``make bench`` does exactly this)::

    .venv/bin/python bench/bench_entry.py [--seconds 1] [--rounds 3] [--cli-tenants 10000]

Everything runs against one server (``DATABASE_URL`` when set, else what
:func:`pgtenancy.testing.find_server` finds or starts), in fresh databases
dropped at the end, as an application role (``NOSUPERUSER NOBYPASSRLS``,
granted with ``tenancy.grant_app_role``, so row-level security applies) that
is dropped at the end too.

Data: 10 schema tenants ``c0``..``c9`` made by one tenant migration (a
Chinook-like ``invoice``: 2,000 rows, primary key and an index on
``customer_id``), an identical ``public.invoice`` for the plain baselines, and
10 shared tenants ``s0``..``s9`` whose 2,000 rows each live in
``public.shared_invoice`` guarded by ``tenancy.enable_rls``. Every
transaction is one query, ``SELECT total FROM invoice WHERE invoice_id = $1``
for a random id (``shared_invoice`` for shared tenants), then commit.

Sides, grouped; every ratio compares two sides of the same group:

1. **Switching schema tenants on every transaction, psycopg, one connection**
   (default prepared statements): ``tenant_connection(conn, slug)``; raw
   psycopg ``with conn.transaction(): SET LOCAL search_path ...; query`` (four
   round trips, what one writes by hand); raw ``BEGIN; SET LOCAL search_path``
   sent as one message (three round trips, the physical limit of switching);
   the plain transaction on ``public.invoice``. Then the parts of the
   remaining gap: the same kit and raw-one-message sides staying in one
   tenant (no re-planning: the difference is what re-planning costs), the
   kit with a schema-qualified query text per tenant, the kit without
   prepared statements (``prepare_threshold=None``) against plain without
   them, and the kit followed by literal ``SET LOCAL`` statements in the same
   message (what Citus would need) against the kit alone; and the kit with its
   per-tenant prepared statements turned off on its connection (statements
   keyed by their text alone, as before issue 16's per-tenant keys: every
   switch re-plans); and the kit's entry message by hand, ``BEGIN; CALL
   tenancy.enter_known(slug, search_path)`` (no row back: what a connection
   sends for a tenant it has entered before), against the message with
   output it replaced, ``BEGIN; CALL tenancy.enter(...)``, and that against
   the one before it, ``BEGIN; SELECT tenancy.enter_tenant(...),
   current_setting('search_path')``.
2. **The same with SQLAlchemy** (engine ``pool_size=1``): ``tenant_session``;
   a hand-rolled ``after_begin`` listener (registered once, on the
   ``Session`` class) sending ``SET LOCAL search_path``; plain ``Session``;
   ``tenant_session`` with statements keyed by text alone.
3. **Async**: async ``tenant_connection`` against async raw ``SET LOCAL``
   and the async plain transaction; ``tenant_session(async_engine)`` against
   a hand-rolled async ``after_begin`` hook and a plain ``AsyncSession``.
4. **Staying in one tenant, and switching among shared (RLS) tenants**, at 1
   and 4 threads (one connection or engine per thread) and through PgBouncer
   in transaction mode (4 threads, ``default_pool_size=2``, no prepared
   statements): ``tenant_connection`` and ``tenant_session`` against plain;
   and ``SET LOCAL app.tenant_id`` by hand with the same RLS query (what the
   policy costs without the kit's entry and its status check), which splits
   the shared tenants' gap into the policy's part and the entry's.
5. **CLI start-up** (subprocesses, interleaved): ``pgtenancy --help``,
   ``pgtenancy version`` and a no-op ``pgtenancy migrate`` on
   ``--cli-tenants`` tenants against ``python -c "import psycopg"``.
6. **Provisioning with the Chinook DDL** (``bench_core.bench_provisioning``):
   ``create_tenant`` against the same DDL through psql.

Sides of a group take turns of 0.1 s within a round, the order rotating each
round, each side drawing the same keys; the tables show medians over
``--rounds`` rounds. Besides transactions per second, every side records its
CPU time per transaction: this process's CPU (``time.process_time``) plus the
CPU of the application role's server backends (``/proc/<pid>/schedstat``,
when the server runs on this machine; through PgBouncer, its server
connections; PgBouncer's own CPU is not counted). Only one side runs at a
time, so the deltas are that side's.
On a loaded machine wall-clock rates swing with the scheduler, while the CPU
a transaction costs (both ends, kernel included) barely moves; the "CPU
ratios" compare that cost (baseline CPU per transaction / the side's: above
1 is cheaper) and so estimate the ratios of an idle machine. Each side also
records its run-queue wait per transaction (``/proc/.../schedstat``, the
time this process's threads and those backends were runnable but had no
core): it shows how much other load took from a side, so a run whose ratios
move because of that load can be told from one whose code changed. Before
timing, the script checks that every side of a group reads the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg._preparing import PrepareManager
from psycopg.conninfo import make_conninfo
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session, SessionTransaction

from common import (
    DEFAULT_CHINOOK,
    BaseResults,
    add_json_option,
    bench_parser,
    install_kit,
    log,
    positive_float,
    positive_int,
    print_results,
    report_title,
)
from pgtenancy import Tenancy, tenant_connection, tenant_session
from pgtenancy._entry import begin_command, entry_message, known_entry_message
from pgtenancy.sqlscript import read_script
from pgtenancy.testing import TemporaryPgBouncer, find_server, fresh_database

TENANTS = 10
ROWS = 2000
TURN = 0.1
THREADS = 4
PGBOUNCER_POOL_SIZE = 2
SCHEMA_SLUGS = [f"c{i}" for i in range(TENANTS)]
SHARED_SLUGS = [f"s{i}" for i in range(TENANTS)]
INVOICE_DDL = (
    "CREATE TABLE invoice (invoice_id int PRIMARY KEY, customer_id int NOT NULL,"
    " invoice_date timestamp NOT NULL, billing_city text, total numeric(10,2) NOT NULL);"
    " CREATE INDEX invoice_customer_id_idx ON invoice (customer_id)"
)
INVOICE_ROWS = (
    "INSERT INTO {} SELECT g, 1 + g %% 59, timestamp '2021-01-01' + g * interval '1 hour',"
    " 'city ' || (g %% 50), round((g %% 2000) / 100.0 + 0.99, 2)"
    " FROM generate_series(1, %s) AS g"
)
QUERY = "SELECT total FROM invoice WHERE invoice_id = %s"
SHARED_QUERY = "SELECT total FROM shared_invoice WHERE invoice_id = %s"
SA_QUERY = text("SELECT total FROM invoice WHERE invoice_id = :id")
SA_SHARED_QUERY = text("SELECT total FROM shared_invoice WHERE invoice_id = :id")
CLI = [str(Path(sys.executable).with_name("pgtenancy"))]


# Sides and their interleaved rounds --------------------------------------------


class TextKeyed(PrepareManager):
    """psycopg's own manager under another class: pgtenancy leaves a manager
    subclass alone, so statements stay keyed by their text (the kit before its
    per-tenant keys)."""


def text_keyed(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """``conn`` with pgtenancy's per-tenant statement keys turned off."""
    conn._prepared.__class__ = TextKeyed
    return conn


Key = tuple[int, int]  # (tenant index, invoice id)


@dataclass
class Side:
    """One side: a label and a transaction ``tx(key)``, run by ``runs`` threads."""

    label: str
    tx: Callable[[Key], object]
    threads: int = 1
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)


class CpuProbe:
    """CPU nanoseconds used so far by this process and by a set of server backends."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self._source: tuple[str, str] | None = None

    def watch(self, admin_dsn: str, role: str) -> None:
        """From now on, :meth:`refresh` watches the backends of ``role``."""
        self._source = (admin_dsn, role)

    def refresh(self) -> None:
        """Look up the backends to watch (after a group's connections are open)."""
        if self._source is None:
            return
        admin_dsn, role = self._source
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)
            ).fetchall()
        self.pids = [int(r[0]) for r in rows if Path(f"/proc/{r[0]}/schedstat").exists()]

    def now(self) -> int:
        total = time.process_time_ns()
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        return total

    def waited(self) -> int:
        """Nanoseconds this process's threads and the watched backends have spent
        runnable but waiting for a core (``/proc/.../schedstat``, second field):
        what other load on the machine took from the measured transactions."""
        paths = [*Path("/proc/self/task").glob("*/schedstat")]
        paths += [Path(f"/proc/{pid}/schedstat") for pid in self.pids]
        total = 0
        for path in paths:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(path.read_text().split()[1])
        return total


CPU = CpuProbe()
#: Run-queue wait per transaction (microseconds) of each side, per round.
WAITS: dict[str, list[float]] = {}


def _draw(seed: int) -> Callable[[], Key]:
    rng = random.Random(seed)
    return lambda: (rng.randrange(TENANTS), rng.randint(1, ROWS))


def _run_for(tx: Callable[[Key], object], seconds: float, seed: int) -> tuple[int, float]:
    draw = _draw(seed)
    count = 0
    start = now = time.perf_counter()
    deadline = start + seconds
    while now < deadline:
        tx(draw())
        count += 1
        now = time.perf_counter()
    return count, now - start


def _measure(
    side: Side, seconds: float, seed: int, pool: ThreadPoolExecutor | None
) -> tuple[float, float, float]:
    """Transactions per second of ``side`` over ``seconds`` (all its threads together),
    CPU microseconds per transaction and run-queue wait microseconds per
    transaction (see :class:`CpuProbe`)."""
    cpu, waited = CPU.now(), CPU.waited()
    if side.threads == 1 or pool is None:
        count, taken = _run_for(side.tx, seconds, seed)
        n = max(count, 1)
        return count / taken, (CPU.now() - cpu) / 1e3 / n, (CPU.waited() - waited) / 1e3 / n
    barrier = threading.Barrier(side.threads)

    def worker(i: int) -> tuple[int, float]:
        barrier.wait()
        return _run_for(side.tx, seconds, seed * 16 + i)

    done = list(pool.map(worker, range(side.threads)))
    count = sum(c for c, _ in done)
    rate = count / statistics.fmean(t for _, t in done)
    n = max(count, 1)
    return rate, (CPU.now() - cpu) / 1e3 / n, (CPU.waited() - waited) / 1e3 / n


def interleave(group: str, sides: Sequence[Side], seconds: float, rounds: int) -> None:
    """Fill ``side.rates`` with one rate per round; sides take turns of TURN seconds."""
    pool = ThreadPoolExecutor(THREADS)
    try:
        for i, side in enumerate(sides):
            _measure(side, min(0.3, seconds), -1 - i, pool)
        CPU.refresh()
        turns = max(1, round(seconds / TURN))
        for r in range(rounds):
            shift = r % len(sides)
            order = [*range(shift, len(sides)), *range(shift)]
            totals = [0.0] * len(sides)
            cpus = [0.0] * len(sides)
            waits = [0.0] * len(sides)
            for t in range(turns):
                for i in order:
                    rate, cpu, wait = _measure(sides[i], seconds / turns, r * turns + t, pool)
                    totals[i] += rate
                    cpus[i] += cpu
                    waits[i] += wait
            for i, side in enumerate(sides):
                side.rates.append(totals[i] / turns)
                side.cpu.append(cpus[i] / turns)
                side.waits.append(waits[i] / turns)
                WAITS[side.label] = side.waits
            log(
                f"  {group} round {r + 1}/{rounds}: "
                + ", ".join(f"{s.label} {s.rates[-1]:.0f}" for s in sides)
            )
    finally:
        pool.shutdown()


async def ainterleave(
    group: str,
    sides: Sequence[tuple[str, Callable[[Key], Awaitable[object]]]],
    seconds: float,
    rounds: int,
    cpu_out: dict[str, list[float]],
) -> dict[str, list[float]]:
    """:func:`interleave` for async transactions, all in the running loop; CPU
    microseconds per transaction per round go to ``cpu_out``."""

    async def run_for(
        atx: Callable[[Key], Awaitable[object]], secs: float, seed: int
    ) -> tuple[float, float, float]:
        draw = _draw(seed)
        count = 0
        cpu, waited = CPU.now(), CPU.waited()
        start = now = time.perf_counter()
        deadline = start + secs
        while now < deadline:
            await atx(draw())
            count += 1
            now = time.perf_counter()
        n = max(count, 1)
        return (
            count / (now - start),
            (CPU.now() - cpu) / 1e3 / n,
            (CPU.waited() - waited) / 1e3 / n,
        )

    for i, (_, atx) in enumerate(sides):
        await run_for(atx, min(0.3, seconds), -1 - i)
    CPU.refresh()
    rates: dict[str, list[float]] = {label: [] for label, _ in sides}
    for label, _ in sides:
        cpu_out[label] = []
    turns = max(1, round(seconds / TURN))
    for r in range(rounds):
        shift = r % len(sides)
        order = [*range(shift, len(sides)), *range(shift)]
        totals = [0.0] * len(sides)
        cpus = [0.0] * len(sides)
        waits = [0.0] * len(sides)
        for t in range(turns):
            for i in order:
                rate, cpu, wait = await run_for(sides[i][1], seconds / turns, r * turns + t)
                totals[i] += rate
                cpus[i] += cpu
                waits[i] += wait
        for i, (label, _) in enumerate(sides):
            rates[label].append(totals[i] / turns)
            cpu_out[label].append(cpus[i] / turns)
            WAITS.setdefault(label, []).append(waits[i] / turns)
        log(
            f"  {group} round {r + 1}/{rounds}: "
            + ", ".join(f"{label} {rates[label][-1]:.0f}" for label, _ in sides)
        )
    return rates


# Set-up ----------------------------------------------------------------------


def create_app_role(dsn: str) -> str:
    """A fresh ``NOSUPERUSER NOBYPASSRLS`` login role granted the tenants; its name."""
    role = f"pgtenancy_bench_entry_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role))
        )
    Tenancy(dsn).grant_app_role(role)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON public.invoice, public.shared_invoice TO {}").format(
                sql.Identifier(role)
            )
        )
    return role


def drop_app_role(dsn: str, role: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def prepare_data(dsn: str) -> dict[str, str]:
    """Tenants, tables and rows (see the module docstring); shared tenant ids by slug."""
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_invoice", INVOICE_DDL)
    ids = {slug: str(tenancy.create_tenant(slug).id) for slug in SCHEMA_SLUGS}
    ids |= {slug: str(tenancy.create_tenant(slug, isolation="shared").id) for slug in SHARED_SLUGS}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(INVOICE_DDL)
        conn.execute(sql.SQL(INVOICE_ROWS).format(sql.SQL("public.invoice")), (ROWS,))
        for slug in SCHEMA_SLUGS:
            table = sql.Identifier(f"tenant_{slug}", "invoice")
            conn.execute(sql.SQL(INVOICE_ROWS).format(table), (ROWS,))
        conn.execute(
            "CREATE TABLE public.shared_invoice (tenant_id uuid NOT NULL, invoice_id int NOT NULL,"
            " total numeric(10,2) NOT NULL, PRIMARY KEY (tenant_id, invoice_id))"
        )
        for slug in SHARED_SLUGS:
            conn.execute(
                "INSERT INTO public.shared_invoice SELECT %s, g,"
                " round((g %% 2000) / 100.0 + 0.99, 2) FROM generate_series(1, %s) AS g",
                (ids[slug], ROWS),
            )
        tenancy.enable_rls("public.shared_invoice")
        conn.execute("VACUUM ANALYZE")
    return ids


# Group 1: psycopg, switching schema tenants -------------------------------------


@cache
def set_local(slug: str, pg_temp: bool = False) -> bytes:
    """``SET LOCAL search_path TO tenant_<slug>, public`` (composed once)."""
    tail = ", public, pg_temp" if pg_temp else ", public"
    return (
        sql.SQL("SET LOCAL search_path TO {}")
        .format(sql.Identifier(f"tenant_{slug}"))
        .as_bytes(None)
        + tail.encode()
    )


@cache
def set_tenant_id(tenant_id: str) -> bytes:
    """``SET LOCAL app.tenant_id TO '<id>'`` (composed once)."""
    return sql.SQL("SET LOCAL app.tenant_id TO {}").format(sql.Literal(tenant_id)).as_bytes(None)


@cache
def qualified_query(slug: str) -> bytes:
    return (
        sql.SQL("SELECT total FROM {} WHERE invoice_id = %s")
        .format(sql.Identifier(f"tenant_{slug}", "invoice"))
        .as_bytes(None)
    )


def psycopg_sides(
    conn: psycopg.Connection[Any],
    unprepared: psycopg.Connection[Any],
    ids: dict[str, str],
    by_text: psycopg.Connection[Any],
) -> list[Side]:
    slugs = SCHEMA_SLUGS

    def kit_by_text(key: Key) -> object:
        with tenant_connection(by_text, slugs[key[0]]) as c:
            return c.execute(QUERY, (key[1],)).fetchone()

    def kit(key: Key) -> object:
        with tenant_connection(conn, slugs[key[0]]) as c:
            return c.execute(QUERY, (key[1],)).fetchone()

    def kit_stay(key: Key) -> object:
        with tenant_connection(conn, slugs[0]) as c:
            return c.execute(QUERY, (key[1],)).fetchone()

    def kit_qualified(key: Key) -> object:
        slug = slugs[key[0]]
        with tenant_connection(conn, slug) as c:
            return c.execute(qualified_query(slug), (key[1],)).fetchone()

    def kit_unprepared(key: Key) -> object:
        with tenant_connection(unprepared, slugs[key[0]]) as c:
            return c.execute(QUERY, (key[1],)).fetchone()

    # Each tenant's search_path, as a connection of the kit learns it.
    paths: dict[str, bytes] = {}
    for slug in slugs:
        learnt = conn.pgconn.exec_(entry_message(begin_command(conn), slug)).get_value(0, 0)
        conn.pgconn.exec_(b"ROLLBACK")
        assert learnt is not None
        paths[slug] = learnt

    def by_hand(key: Key) -> object:
        # The kit's own message sent directly: tenant_connection minus its Python
        # (enter_known, as it enters a tenant it has entered before).
        slug = slugs[key[0]]
        conn.pgconn.exec_(known_entry_message(begin_command(conn), slug, paths[slug]))
        row = conn.execute(QUERY, (key[1],)).fetchone()
        conn.commit()
        return row

    def by_hand_output(key: Key) -> object:
        # The message with output that enter_known replaced after a tenant's
        # first entry: CALL tenancy.enter, one row back (the search_path).
        conn.pgconn.exec_(entry_message(begin_command(conn), slugs[key[0]]))
        row = conn.execute(QUERY, (key[1],)).fetchone()
        conn.commit()
        return row

    def by_hand_select(key: Key) -> object:
        # The entry message before tenancy.enter: a SELECT of the function (planned,
        # executed as a query, one row back), with the search_path it set.
        conn.pgconn.exec_(select_entry(slugs[key[0]]))
        row = conn.execute(QUERY, (key[1],)).fetchone()
        conn.commit()
        return row

    def by_hand_citus(key: Key) -> object:
        # The same message followed by literal SET LOCAL statements, which a Citus
        # coordinator propagates to workers (set_config values it does not).
        slug = slugs[key[0]]
        message = (
            known_entry_message(begin_command(conn), slug, paths[slug])
            + b"; "
            + citus_sets(slug, ids[slug])
        )
        conn.pgconn.exec_(message)
        row = conn.execute(QUERY, (key[1],)).fetchone()
        conn.commit()
        return row

    def raw4(key: Key) -> object:
        with conn.transaction():
            conn.execute(set_local(slugs[key[0]]))
            return conn.execute(QUERY, (key[1],)).fetchone()

    def raw1(key: Key) -> object:
        conn.pgconn.exec_(b"BEGIN; " + set_local(slugs[key[0]]))
        row = conn.execute(QUERY, (key[1],)).fetchone()
        conn.commit()
        return row

    def raw1_stay(key: Key) -> object:
        conn.pgconn.exec_(b"BEGIN; " + set_local(slugs[0]))
        row = conn.execute(QUERY, (key[1],)).fetchone()
        conn.commit()
        return row

    def plain(key: Key) -> object:
        with conn.transaction():
            return conn.execute(QUERY, (key[1],)).fetchone()

    def plain_unprepared(key: Key) -> object:
        with unprepared.transaction():
            return unprepared.execute(QUERY, (key[1],)).fetchone()

    return [
        Side("tenant_connection", kit),
        Side("raw SET LOCAL (4 round trips)", raw4),
        Side("raw BEGIN; SET LOCAL (1 message)", raw1),
        Side("plain transaction", plain),
        Side("tenant_connection, one tenant", kit_stay),
        Side("raw 1 message, one schema", raw1_stay),
        Side("tenant_connection, qualified text", kit_qualified),
        Side("tenant_connection, unprepared", kit_unprepared),
        Side("plain, unprepared", plain_unprepared),
        Side("enter_tenant message by hand", by_hand),
        Side("enter_tenant message + literal SET LOCAL", by_hand_citus),
        Side("CALL tenancy.enter message by hand", by_hand_output),
        Side("SELECT enter_tenant message by hand", by_hand_select),
        Side("tenant_connection, statements keyed by text", kit_by_text),
    ]


@cache
def select_entry(slug: str) -> bytes:
    """``BEGIN; SELECT tenancy.enter_tenant('<slug>'), current_setting('search_path')``:
    the entry message before ``tenancy.enter`` (composed once)."""
    return (
        sql.SQL("BEGIN; SELECT tenancy.enter_tenant({}), pg_catalog.current_setting('search_path')")
        .format(sql.Literal(slug))
        .as_bytes(None)
    )


@cache
def citus_sets(slug: str, tenant_id: str) -> bytes:
    """``SET LOCAL search_path ...; SET LOCAL app.tenant_id ...; SET LOCAL app.tenant ...``
    for ``slug``, as literals."""
    return set_local(slug, pg_temp=True) + (
        sql.SQL("; SET LOCAL app.tenant_id TO {}; SET LOCAL app.tenant TO {}")
        .format(sql.Literal(tenant_id), sql.Literal(slug))
        .as_bytes(None)
    )


# Group 2: SQLAlchemy, switching schema tenants ---------------------------------

_HAND_KEY = "bench.hand_rolled_slug"


def _hand_rolled(session: Session, _tx: SessionTransaction, connection: Connection) -> None:
    slug = session.info.get(_HAND_KEY)
    if slug is not None:
        connection.exec_driver_sql(set_local(slug).decode())


event.listen(Session, "after_begin", _hand_rolled)


def sqlalchemy_sides(engine: Engine, by_text: Engine) -> list[Side]:
    slugs = SCHEMA_SLUGS

    def kit_by_text(key: Key) -> object:
        with tenant_session(by_text, slugs[key[0]]) as session:
            value = session.execute(SA_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    def kit(key: Key) -> object:
        with tenant_session(engine, slugs[key[0]]) as session:
            value = session.execute(SA_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    def kit_stay(key: Key) -> object:
        with tenant_session(engine, slugs[0]) as session:
            value = session.execute(SA_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    def hand(key: Key) -> object:
        with Session(engine, info={_HAND_KEY: slugs[key[0]]}) as session:
            value = session.execute(SA_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    def plain(key: Key) -> object:
        with Session(engine) as session:
            value = session.execute(SA_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    return [
        Side("tenant_session", kit),
        Side("hand-rolled after_begin SET LOCAL", hand),
        Side("plain Session", plain),
        Side("tenant_session, one tenant", kit_stay),
        Side("tenant_session, statements keyed by text", kit_by_text),
    ]


# Group 3: async ------------------------------------------------------------------


async def bench_async(
    dsn: str, seconds: float, rounds: int, cpu_out: dict[str, list[float]]
) -> dict[str, list[float]]:
    slugs = SCHEMA_SLUGS
    conn = await psycopg.AsyncConnection.connect(dsn)

    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(dsn)

    engine: AsyncEngine = create_async_engine(
        "postgresql+psycopg://", async_creator=connect, pool_size=1, max_overflow=0
    )
    try:

        async def kit(key: Key) -> object:
            async with tenant_connection(conn, slugs[key[0]]) as c:
                return await (await c.execute(QUERY, (key[1],))).fetchone()

        async def raw4(key: Key) -> object:
            async with conn.transaction():
                await conn.execute(set_local(slugs[key[0]]))
                return await (await conn.execute(QUERY, (key[1],))).fetchone()

        async def plain(key: Key) -> object:
            async with conn.transaction():
                return await (await conn.execute(QUERY, (key[1],))).fetchone()

        async def session_kit(key: Key) -> object:
            async with tenant_session(engine, slugs[key[0]]) as session:
                value = (await session.execute(SA_QUERY, {"id": key[1]})).scalar_one()
                await session.commit()
            return value

        async def session_hand(key: Key) -> object:
            async with AsyncSession(engine, info={_HAND_KEY: slugs[key[0]]}) as session:
                value = (await session.execute(SA_QUERY, {"id": key[1]})).scalar_one()
                await session.commit()
            return value

        async def session_plain(key: Key) -> object:
            async with AsyncSession(engine) as session:
                value = (await session.execute(SA_QUERY, {"id": key[1]})).scalar_one()
                await session.commit()
            return value

        def value(row: object) -> str:
            return str(row[0] if isinstance(row, tuple) else row)

        expected = value(await plain((3, 7)))
        for side in (kit, raw4, session_kit, session_hand, session_plain):
            if value(await side((3, 7))) != expected:
                raise RuntimeError(f"{side.__name__} read another row")
        rates = await ainterleave(
            "async psycopg",
            [
                ("async tenant_connection", kit),
                ("async raw SET LOCAL", raw4),
                ("async plain", plain),
            ],
            seconds,
            rounds,
            cpu_out,
        )
        rates |= await ainterleave(
            "async SQLAlchemy",
            [
                ("async tenant_session", session_kit),
                ("async hand-rolled hook", session_hand),
                ("async plain AsyncSession", session_plain),
            ],
            seconds,
            rounds,
            cpu_out,
        )
        return rates
    finally:
        await conn.close()
        await engine.dispose()


# Group 4: staying, shared tenants, threads, PgBouncer ----------------------------


def threaded_sides(
    label: str,
    conns: list[psycopg.Connection[Any]],
    engines: list[Engine],
    ids: dict[str, str] | None = None,
) -> list[Side]:
    """Sides with one connection/engine per thread, picked by the calling thread."""
    local = threading.local()
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def mine() -> int:
        index: int | None = getattr(local, "index", None)
        if index is None:
            with lock:
                index = next(counter) % len(conns)
            local.index = index
        return index

    def conn_stay(key: Key) -> object:
        with tenant_connection(conns[mine()], SCHEMA_SLUGS[0]) as c:
            return c.execute(QUERY, (key[1],)).fetchone()

    def conn_shared(key: Key) -> object:
        with tenant_connection(conns[mine()], SHARED_SLUGS[key[0]]) as c:
            return c.execute(SHARED_QUERY, (key[1],)).fetchone()

    def conn_plain(key: Key) -> object:
        c = conns[mine()]
        with c.transaction():
            return c.execute(QUERY, (key[1],)).fetchone()

    shared_sets = [b"BEGIN; " + set_tenant_id((ids or {}).get(slug, "")) for slug in SHARED_SLUGS]

    def raw_shared(key: Key) -> object:
        # The policy's cost without the kit: app.tenant_id set by hand (no
        # status check), the same RLS query; the kit's entry is the difference.
        c = conns[mine()]
        c.pgconn.exec_(shared_sets[key[0]])
        row = c.execute(SHARED_QUERY, (key[1],)).fetchone()
        c.commit()
        return row

    def session_stay(key: Key) -> object:
        with tenant_session(engines[mine()], SCHEMA_SLUGS[0]) as session:
            value = session.execute(SA_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    def session_shared(key: Key) -> object:
        with tenant_session(engines[mine()], SHARED_SLUGS[key[0]]) as session:
            value = session.execute(SA_SHARED_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    def session_plain(key: Key) -> object:
        with Session(engines[mine()]) as session:
            value = session.execute(SA_QUERY, {"id": key[1]}).scalar_one()
            session.commit()
        return value

    threads = len(conns)
    return [
        Side(f"{label}: tenant_connection, one tenant", conn_stay, threads),
        Side(f"{label}: tenant_connection, shared tenants", conn_shared, threads),
        Side(f"{label}: plain transaction", conn_plain, threads),
        Side(f"{label}: raw SET LOCAL app.tenant_id, shared tenants", raw_shared, threads),
        Side(f"{label}: tenant_session, one tenant", session_stay, threads),
        Side(f"{label}: tenant_session, shared tenants", session_shared, threads),
        Side(f"{label}: plain Session", session_plain, threads),
    ]


def engine_on(dsn: str, **connect_kwargs: Any) -> Engine:
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn, **connect_kwargs),
        pool_size=1,
        max_overflow=0,
    )


def bench_threads(
    app_dsn: str,
    role: str,
    seconds: float,
    rounds: int,
    cpu_out: dict[str, list[float]],
    ids: dict[str, str],
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {}
    pgb = TemporaryPgBouncer(
        app_dsn, [role], pool_mode="transaction", pool_size=PGBOUNCER_POOL_SIZE
    )
    pgb.start()
    try:
        configs: list[tuple[str, str, int, dict[str, Any]]] = [
            ("1 thread", app_dsn, 1, {}),
            (f"{THREADS} threads", app_dsn, THREADS, {}),
            ("PgBouncer", pgb.dsn(app_dsn), THREADS, {"prepare_threshold": None}),
        ]
        for label, dsn, threads, kwargs in configs:
            conns = [psycopg.connect(dsn, **kwargs) for _ in range(threads)]
            engines = [engine_on(dsn, **kwargs) for _ in range(threads)]
            try:
                sides = threaded_sides(label, conns, engines, ids)
                for side in sides:  # every side reads a row
                    if side.tx((2, 11)) is None:
                        raise RuntimeError(f"{side.label} read nothing")
                interleave(label, sides, seconds, rounds)
                rates |= {s.label: s.rates for s in sides}
                cpu_out |= {s.label: s.cpu for s in sides}
            finally:
                for c in conns:
                    c.close()
                for e in engines:
                    e.dispose()
    finally:
        pgb.stop()
    return rates


# Group 5: CLI start-up -----------------------------------------------------------


def bench_cli(admin: str, tenants: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each command per round (subprocesses, interleaved)."""
    with fresh_database(admin, "pgtenancy_bench_cli") as dsn:
        install_kit(dsn)
        log(f"CLI: creating {tenants} tenants for the no-op migrate")
        Tenancy(dsn).add_migration("0001_note", "CREATE TABLE note (id int PRIMARY KEY)")
        with psycopg.connect(dsn) as conn:
            for i in range(0, tenants, 500):
                with conn.transaction():
                    for j in range(i, min(i + 500, tenants)):
                        conn.execute("SELECT tenancy.create_tenant(%s)", (f"f{j:05d}",))
        env = {**os.environ, "DATABASE_URL": dsn}
        commands = {
            'python -c "import psycopg"': [sys.executable, "-c", "import psycopg"],
            "pgtenancy --help": [*CLI, "--help"],
            "pgtenancy version": [*CLI, "version"],
            f"pgtenancy migrate (no-op, {tenants} tenants)": [*CLI, "migrate", "--quiet"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for r in range(rounds + 1):  # the first round warms the file cache
            names = list(commands)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                start = time.perf_counter()
                done = subprocess.run(commands[name], env=env, capture_output=True, text=True)
                took = time.perf_counter() - start
                if done.returncode != 0:
                    raise RuntimeError(f"{name} failed: {done.stderr.strip()[-500:]}")
                if r:
                    times[name].append(took)
        return times


# Run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Results(BaseResults):
    """Medians per side (tx/s; seconds for the CLI), ratios, and every round."""

    rates: dict[str, float]
    ratios: dict[str, float]
    cpu_us: dict[str, float]
    wait_us: dict[str, float]
    cpu_ratios: dict[str, float]
    server_cpu_seen: bool
    load_average: list[float]
    cli_seconds: dict[str, float]
    provisioning: dict[str, float]
    rounds_per_side: dict[str, list[float]]
    elapsed_seconds: float


RATIOS: list[tuple[str, str, str]] = [
    # (name, pgtenancy side, baseline side)
    (
        "switching: tenant_connection / raw SET LOCAL",
        "tenant_connection",
        "raw SET LOCAL (4 round trips)",
    ),
    (
        "switching: tenant_connection / raw one message",
        "tenant_connection",
        "raw BEGIN; SET LOCAL (1 message)",
    ),
    ("switching: tenant_connection / plain", "tenant_connection", "plain transaction"),
    ("switching: raw one message / plain", "raw BEGIN; SET LOCAL (1 message)", "plain transaction"),
    ("one tenant: tenant_connection / plain", "tenant_connection, one tenant", "plain transaction"),
    ("one schema: raw one message / plain", "raw 1 message, one schema", "plain transaction"),
    ("re-planning: switching / one tenant", "tenant_connection", "tenant_connection, one tenant"),
    (
        "per-tenant statements: keyed / by text",
        "tenant_connection",
        "tenant_connection, statements keyed by text",
    ),
    (
        "by text: tenant_connection / raw SET LOCAL",
        "tenant_connection, statements keyed by text",
        "raw SET LOCAL (4 round trips)",
    ),
    (
        "by text: tenant_connection / plain",
        "tenant_connection, statements keyed by text",
        "plain transaction",
    ),
    ("qualified text / unqualified", "tenant_connection, qualified text", "tenant_connection"),
    ("unprepared: tenant_connection / plain", "tenant_connection, unprepared", "plain, unprepared"),
    (
        "literal SET LOCAL added / enter_tenant message",
        "enter_tenant message + literal SET LOCAL",
        "enter_tenant message by hand",
    ),
    (
        "tenant_connection / its message by hand",
        "tenant_connection",
        "enter_tenant message by hand",
    ),
    (
        "CALL tenancy.enter_known / CALL tenancy.enter message",
        "enter_tenant message by hand",
        "CALL tenancy.enter message by hand",
    ),
    (
        "CALL tenancy.enter / SELECT enter_tenant message",
        "CALL tenancy.enter message by hand",
        "SELECT enter_tenant message by hand",
    ),
    (
        "switching: tenant_session / hand-rolled hook",
        "tenant_session",
        "hand-rolled after_begin SET LOCAL",
    ),
    ("switching: tenant_session / plain", "tenant_session", "plain Session"),
    (
        "per-tenant statements: tenant_session keyed / by text",
        "tenant_session",
        "tenant_session, statements keyed by text",
    ),
    (
        "by text: tenant_session / hand-rolled hook",
        "tenant_session, statements keyed by text",
        "hand-rolled after_begin SET LOCAL",
    ),
    ("one tenant: tenant_session / plain", "tenant_session, one tenant", "plain Session"),
    ("async: tenant_connection / raw SET LOCAL", "async tenant_connection", "async raw SET LOCAL"),
    ("async: tenant_connection / plain", "async tenant_connection", "async plain"),
    ("async: tenant_session / hand-rolled hook", "async tenant_session", "async hand-rolled hook"),
    ("async: tenant_session / plain", "async tenant_session", "async plain AsyncSession"),
]
for _label in ("1 thread", f"{THREADS} threads", "PgBouncer"):
    RATIOS.append(
        (
            f"{_label}: RLS alone: raw SET LOCAL app.tenant_id, shared / plain",
            f"{_label}: raw SET LOCAL app.tenant_id, shared tenants",
            f"{_label}: plain transaction",
        )
    )
    RATIOS.append(
        (
            f"{_label}: entry alone: tenant_connection, shared / raw SET LOCAL",
            f"{_label}: tenant_connection, shared tenants",
            f"{_label}: raw SET LOCAL app.tenant_id, shared tenants",
        )
    )
    for _path, _plain in (
        ("tenant_connection", "plain transaction"),
        ("tenant_session", "plain Session"),
    ):
        for _what in ("one tenant", "shared tenants"):
            RATIOS.append(
                (
                    f"{_label}: {_path}, {_what} / plain",
                    f"{_label}: {_path}, {_what}",
                    f"{_label}: {_plain}",
                )
            )


def run(
    seconds: float, rounds: int, cli_tenants: int, provision_tenants: int, chinook: Path
) -> Results:
    started = time.perf_counter()
    all_rates: dict[str, list[float]] = {}
    all_cpu: dict[str, list[float]] = {}
    with find_server(env=("DATABASE_URL",)) as admin:
        source = "$DATABASE_URL" if os.environ.get("DATABASE_URL") else "find_server()"
        with fresh_database(admin, "pgtenancy_bench_entry") as dsn:
            install_kit(dsn)
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            version = str(row[0]) if row else "?"
            log(f"PostgreSQL {version}; loading {TENANTS} schema and {TENANTS} shared tenants")
            ids = prepare_data(dsn)
            role = create_app_role(dsn)
            app_dsn = make_conninfo(dsn, user=role)
            CPU.watch(dsn, role)
            try:
                conn = psycopg.connect(app_dsn)
                unprepared = psycopg.connect(app_dsn, prepare_threshold=None)
                by_text = text_keyed(psycopg.connect(app_dsn))
                engine = engine_on(app_dsn)
                engine_by_text = create_engine(
                    "postgresql+psycopg://",
                    creator=lambda: text_keyed(psycopg.connect(app_dsn)),
                    pool_size=1,
                    max_overflow=0,
                )
                try:
                    sides = psycopg_sides(conn, unprepared, ids, by_text)
                    same = {s.label: s.tx((4, 17)) for s in sides}
                    if len(set(same.values())) != 1:
                        raise RuntimeError(f"sides read different rows: {same}")
                    interleave("psycopg", sides, seconds, rounds)
                    all_rates |= {s.label: s.rates for s in sides}
                    all_cpu |= {s.label: s.cpu for s in sides}
                    sa_sides = sqlalchemy_sides(engine, engine_by_text)
                    interleave("SQLAlchemy", sa_sides, seconds, rounds)
                    all_rates |= {s.label: s.rates for s in sa_sides}
                    all_cpu |= {s.label: s.cpu for s in sa_sides}
                finally:
                    conn.close()
                    unprepared.close()
                    by_text.close()
                    engine.dispose()
                    engine_by_text.dispose()
                all_rates |= asyncio.run(bench_async(app_dsn, seconds, rounds, all_cpu))
                all_rates |= bench_threads(app_dsn, role, seconds, rounds, all_cpu, ids)
                load = os.getloadavg()
            finally:
                drop_app_role(dsn, role)
        cli = bench_cli(admin, cli_tenants, rounds)
        provisioning = bench_provisioning_run(admin, chinook, provision_tenants)
    medians = {k: round(statistics.median(v), 1) for k, v in all_rates.items()}
    ratios = {name: round(medians[a] / medians[b], 3) for name, a, b in RATIOS}
    cpu = {k: round(statistics.median(v), 1) for k, v in all_cpu.items()}
    cpu_ratios = {name: round(cpu[b] / cpu[a], 3) for name, a, b in RATIOS if cpu[a] > 0}
    cli_median = {k: round(statistics.median(v), 3) for k, v in cli.items()}
    return Results(
        server_version=version,
        server_source=source,
        seconds_per_round=seconds,
        rounds=rounds,
        rates=medians,
        ratios=ratios,
        cpu_us=cpu,
        wait_us={k: round(statistics.median(v), 1) for k, v in WAITS.items()},
        cpu_ratios=cpu_ratios,
        server_cpu_seen=bool(CPU.pids),
        load_average=[round(x, 1) for x in load],
        cli_seconds=cli_median,
        provisioning=provisioning,
        rounds_per_side={k: [round(x, 1) for x in v] for k, v in all_rates.items()},
        elapsed_seconds=round(time.perf_counter() - started, 1),
    )


def bench_provisioning_run(admin: str, chinook: Path, tenants: int) -> dict[str, float]:
    """``create_tenant`` against psql with the Chinook DDL (``bench_core``'s measurement)."""
    from bench_core import bench_provisioning

    ddl = read_script(chinook.read_text("utf-8")).sql_of("ddl")
    with fresh_database(admin, "pgtenancy_bench_prov") as dsn:
        install_kit(dsn)
        tenancy = Tenancy(dsn)
        tenancy.add_migration("0001_chinook", ddl)
        log(f"provisioning: {tenants} Chinook tenants per side")
        create_s, psql_s = bench_provisioning(dsn, tenancy, ddl, tenants)
    return {
        "tenants": tenants,
        "create_tenant_per_s": round(tenants / create_s, 2),
        "psql_per_s": round(tenants / psql_s, 2),
        "ratio": round(psql_s / create_s, 3),
    }


def report(r: Results) -> str:
    lines = [
        report_title("entry", r),
        f"{r.rounds} rounds x {r.seconds_per_round:g} s per side, turns of {TURN:g} s, "
        f"medians; {TENANTS} schema tenants and {TENANTS} shared tenants, {ROWS} rows each; "
        f"application role (RLS applies); PgBouncer transaction mode, pool {PGBOUNCER_POOL_SIZE}",
        f"total run time {r.elapsed_seconds:g} s; load average after the transaction groups "
        + " / ".join(f"{x:g}" for x in r.load_average)
        + f" on {os.cpu_count()} cores",
        "CPU per transaction: this process + the application role's backends"
        + ("" if r.server_cpu_seen else " (server CPU not readable here: client only)"),
        "wait per transaction: time the same threads and backends were runnable but waiting"
        " for a core (other load); where it is a large share of 1e6 / (tx/s), the side's rate"
        " measured the scheduler more than the kit",
        "",
        f"{'side':<52} {'tx/s':>9} {'CPU us/tx':>10} {'wait us/tx':>11}",
    ]
    lines += [
        f"{k:<52} {v:>9.1f} {r.cpu_us.get(k, 0.0):>10.1f} {r.wait_us.get(k, 0.0):>11.1f}"
        for k, v in r.rates.items()
    ]
    lines += ["", f"{'ratio (tx/s; CPU: baseline cost / side cost)':<60} {'tx/s':>6} {'CPU':>6}"]
    lines += [f"{k:<60} {v:>6.2f} {r.cpu_ratios.get(k, 0.0):>6.2f}" for k, v in r.ratios.items()]
    base = r.cli_seconds['python -c "import psycopg"']
    lines += ["", f"{'CLI start-up':<52} {'s':>7} {'/ import psycopg':>17}"]
    lines += [f"{k:<52} {v:>7.3f} {v / base:>17.2f}" for k, v in r.cli_seconds.items()]
    p = r.provisioning
    lines += [
        "",
        f"provisioning ({p['tenants']:g} Chinook tenants per side): create_tenant "
        f"{p['create_tenant_per_s']:g}/s, psql {p['psql_per_s']:g}/s, ratio {p['ratio']:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("tenant entry")
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=1.0,
        help="time per side per round, in seconds (default: 1)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="interleaved rounds (default: 3)"
    )
    parser.add_argument(
        "--cli-tenants",
        type=positive_int,
        default=10_000,
        help="tenants for the no-op migrate (default: 10000)",
    )
    parser.add_argument(
        "--provision-tenants",
        type=positive_int,
        default=40,
        help="Chinook tenants provisioned per side (default: 40)",
    )
    parser.add_argument(
        "--chinook",
        type=Path,
        default=DEFAULT_CHINOOK,
        help="Chinook_PostgreSql.sql (default: %(default)s)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    if not args.chinook.is_file():
        parser.error(f"Chinook script not found: {args.chinook}")
    results = run(args.seconds, args.rounds, args.cli_tenants, args.provision_tenants, args.chinook)
    print_results(results, report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
