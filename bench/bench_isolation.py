"""Benchmarks of pgtenancy's isolation paths, as ratios against baselines run side by side.

Run from the repository root::

    .venv/bin/python bench/bench_isolation.py

Everything runs in one process against one server: ``DATABASE_URL`` when set,
else whatever :func:`pgtenancy.testing.find_server` finds or starts (a Docker
container or a throwaway local cluster, started with ``fsync=off``), in a
fresh database that is dropped at the end, with an application role that is
dropped at the end too. Absolute numbers depend on the machine and the server
settings; the ratios are the point, because both sides of each ratio ran on
the same server, in the same run, interleaved.

1. **Row-level security on a shared table.** ``public.orders`` holds
   ``--rows-per-tenant`` rows for each of ``--tenants`` shared tenants
   (``isolation="shared"``), loaded in arrival order, so each tenant's rows are
   spread over the whole table as they would be after months of orders, then
   guarded by ``tenancy.enable_rls('public.orders')`` (index on ``tenant_id``,
   ENABLE and FORCE ROW LEVEL SECURITY, the policy
   ``tenant_id = (SELECT tenancy.current_tenant_id())``, which the planner
   turns into an InitPlan and an index condition) and vacuumed and analyzed.
   The query is ``SELECT count(*), sum(amount) FROM orders`` for a random
   tenant, then commit; one thread, one engine per role with
   ``pool_size=1`` (psycopg driver, default prepared statements). Five sides:

   * ``tenant_session + RLS``: the application role (``NOSUPERUSER
     NOBYPASSRLS``, set up by ``tenancy.grant_app_role``) in
     ``tenant_session(engine, slug)``; the policy picks the tenant's rows.
   * ``plain Session + WHERE``: the baseline, the admin role (a superuser, which
     bypasses RLS) in a plain ``Session`` with an explicit
     ``WHERE tenant_id = :tid``.
   * ``enter_tenant + RLS``: the application role in a plain ``Session``
     sending ``SELECT tenancy.enter_tenant(:slug)`` and then the query.
   * ``SELECT 1 + WHERE``: the admin role in a plain ``Session`` sending
     ``SELECT 1`` and then the explicit-WHERE query.
   * ``enter_tenant + WHERE``: the admin role in a plain ``Session`` sending
     ``SELECT tenancy.enter_tenant(:slug)`` and then the explicit-WHERE query
     (the superuser bypasses RLS, so this side differs from
     ``enter_tenant + RLS`` only in how the rows are filtered).

   The first row of the table is the whole cost as an application sees it.
   The second sends as many statements on each side, so its ratio leaves out
   the round trip that entering the tenant adds and keeps the RLS filter and
   the work of ``enter_tenant`` (a registry lookup, three ``set_config``)
   compared with ``SELECT 1``. The third runs the same statements on each
   side but the filter: its ratio is the cost of the RLS filter alone (policy,
   InitPlan, ``current_setting``) against the explicit WHERE and its uuid
   parameter. A note under the table splits the extra time per
   query into these three parts. The plan of the RLS query, as the application
   role, goes to stderr once. Before timing, the script checks that all five
   sides return the same count and sum for two tenants, and that the
   application role sees no row outside a tenant.

2. **tenant_session through PgBouncer.** A schema-isolated tenant ``bench``
   whose table ``item`` (1000 rows) comes from a tenant migration, and an
   identical ``public.item``. The transaction is ``SELECT value FROM item
   WHERE id = :id`` for a random id, then commit. Four client threads, each
   with its own engine (``pool_size=1``) connected with
   ``prepare_threshold=None`` (no server-side prepared statements behind a
   transaction pooler), go through a throwaway PgBouncer in transaction pooling
   mode with ``default_pool_size=2``. Sides: ``tenant_session(engine,
   "bench")`` and a plain ``Session`` on ``public.item``, both through
   PgBouncer, as the admin role; for reference, the same ``tenant_session``
   transaction on four direct connections (same connection settings), whose
   ratio is PgBouncer's cost, not pgtenancy's.

Each side gets a short warm-up, then ``--rounds`` rounds of ``--seconds`` per
side. Within a round the sides take turns of 0.1 s (part 1) or 0.25 s (part
2), every side of a turn drawing the same random tenants or ids, and the order
of the turns rotates from round to round, so load from elsewhere on the
machine weighs on all sides alike; the table shows the median rate of each
side over the rounds. Reading the ratios: 1.0 means pgtenancy costs
nothing over the baseline; 0.9 means it reaches 90% of the baseline's rate
(each operation takes 1/0.9 = 1.11 times as long). The script asserts nothing
about timings; it only checks that both sides of each ratio read the same
rows (the same schemas, for part 2).
"""

from __future__ import annotations

import random
import statistics
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

import pgtenancy
from common import (
    ITEMS,
    BaseResults,
    TableRow,
    add_json_option,
    add_round_options,
    bench_database,
    bench_parser,
    check_items,
    fill_public_items,
    fill_tenant_items,
    log,
    plain_tx,
    pooled_engine,
    positive_int,
    print_results,
    ratio_table,
    repeat_for,
    report_title,
    tenant_tx,
)
from pgtenancy.admin import Tenancy
from pgtenancy.testing import TemporaryPgBouncer

APP_ROLE_PREFIX = "pgtenancy_bench_app"
THREADS = 4
PGBOUNCER_POOL_SIZE = 2
# Seconds per turn of a side within a round (see bench_sides).
RLS_TURN = 0.1
PGBOUNCER_TURN = 0.25

# Part 1: the shared table.
ORDERS_DDL = (
    "CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " tenant_id uuid NOT NULL, amount numeric(10,2) NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)
CREATE_SHARED_TENANTS = (
    "SELECT count(tenancy.create_tenant(s, '{}', 'shared')) FROM unnest(%(slugs)s::text[]) AS s"
)
# Outer loop on time, inner on tenants: each tenant's rows spread over the table.
LOAD_ORDERS = (
    "INSERT INTO public.orders (tenant_id, amount, created_at)"
    " SELECT t.id, round((random() * 500)::numeric, 2), now() - g * interval '1 minute'"
    " FROM generate_series(%(rows)s, 1, -1) AS g CROSS JOIN tenancy.tenants AS t"
    " WHERE t.isolation = 'shared' ORDER BY g DESC, t.slug"
)
SHARED_TENANTS = "SELECT slug, id FROM tenancy.tenants WHERE isolation = 'shared' ORDER BY slug"
RLS_QUERY = text("SELECT count(*), sum(amount) FROM orders")
WHERE_QUERY = text("SELECT count(*), sum(amount) FROM orders WHERE tenant_id = :tid")
ENTER = text("SELECT tenancy.enter_tenant(:slug)")
NOOP = text("SELECT 1")
EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) "
# Part 2 uses the schema tenant ``bench`` and the item tables of common.


@dataclass(frozen=True)
class SharedTenant:
    """A shared tenant: slug for the pgtenancy sides, id for the baselines."""

    slug: str
    id: uuid.UUID


Totals = tuple[int, Decimal | None]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a label and a function (seconds, seed) -> (operations,
    seconds taken) that runs the side's operation back to back for about that long."""

    label: str
    measure: Callable[[float, int], tuple[int, float]]


@dataclass(frozen=True)
class Results(BaseResults):
    """Everything the run measured; ``--json`` prints it as one object."""

    tenants: int
    rows_per_tenant: int
    rls_tenant_session_qps: float
    where_session_qps: float
    rls_ratio: float
    rls_enter_qps: float
    where_select1_qps: float
    rls_same_statements_ratio: float
    enter_where_qps: float
    rls_filter_ratio: float
    rls_extra_us: float
    rls_filter_us: float
    rls_enter_work_us: float
    rls_entry_round_trip_us: float
    threads: int
    pgbouncer_pool_size: int
    pgbouncer_tenant_session_tps: float
    pgbouncer_plain_session_tps: float
    pgbouncer_ratio: float
    direct_tenant_session_tps: float
    pgbouncer_direct_ratio: float
    rounds_per_side: dict[str, list[float]]
    setup_seconds: float
    elapsed_seconds: float


def bench_sides(
    sides: Sequence[Side], seconds: float, rounds: int, turn: float, unit: str
) -> list[list[float]]:
    """Per-round rates (operations/s) of each side.

    In a round the sides take turns of about ``turn`` seconds, until each has run
    for ``seconds``; the order of the turns rotates every round, and every side
    of a turn draws the same random keys. So a burst of load from elsewhere on
    the machine falls on all sides alike instead of on one side's round.
    """
    warm_up = min(0.5, seconds / 2)
    for i, side in enumerate(sides):
        side.measure(warm_up, -1 - i)
    turns = max(1, round(seconds / turn))
    rates: list[list[float]] = [[] for _ in sides]
    for r in range(rounds):
        shift = r % len(sides)
        order = [*range(shift, len(sides)), *range(shift)]
        counts = [0] * len(sides)
        taken = [0.0] * len(sides)
        for t in range(turns):
            for i in order:
                count, elapsed = sides[i].measure(seconds / turns, r * turns + t)
                counts[i] += count
                taken[i] += elapsed
        for i in range(len(sides)):
            rates[i].append(counts[i] / taken[i])
        done = ", ".join(f"{s.label} {x[-1]:.0f}" for s, x in zip(sides, rates, strict=True))
        log(f"  round {r + 1}/{rounds} ({unit}): {done}")
    return rates


# Part 1: row-level security ----------------------------------------------------


def rls_tenant_session(engine: Engine, tenant: SharedTenant) -> Totals:
    """The tenant's totals through ``tenant_session``; RLS picks the rows."""
    with pgtenancy.tenant_session(engine, tenant.slug) as session:
        count, total = session.execute(RLS_QUERY).one()
        session.commit()
    return int(count), total


def where_session(engine: Engine, tenant: SharedTenant) -> Totals:
    """Baseline: the same totals with an explicit WHERE, RLS bypassed."""
    with Session(engine) as session:
        count, total = session.execute(WHERE_QUERY, {"tid": tenant.id}).one()
        session.commit()
    return int(count), total


def rls_enter(engine: Engine, tenant: SharedTenant) -> Totals:
    """``enter_tenant`` sent by hand, then the RLS query: two statements, no session hook."""
    with Session(engine) as session:
        session.execute(ENTER, {"slug": tenant.slug})
        count, total = session.execute(RLS_QUERY).one()
        session.commit()
    return int(count), total


def where_select1(engine: Engine, tenant: SharedTenant) -> Totals:
    """Baseline with as many statements: ``SELECT 1``, then the explicit-WHERE query."""
    with Session(engine) as session:
        session.execute(NOOP)
        count, total = session.execute(WHERE_QUERY, {"tid": tenant.id}).one()
        session.commit()
    return int(count), total


def where_enter(engine: Engine, tenant: SharedTenant) -> Totals:
    """Baseline with the same statements: ``enter_tenant``, then the explicit-WHERE query."""
    with Session(engine) as session:
        session.execute(ENTER, {"slug": tenant.slug})
        count, total = session.execute(WHERE_QUERY, {"tid": tenant.id}).one()
        session.commit()
    return int(count), total


def tenant_rate(
    tx: Callable[[Engine, SharedTenant], Totals],
    engine: Engine,
    tenants: Sequence[SharedTenant],
    seconds: float,
    seed: int,
) -> tuple[int, float]:
    """Queries of ``tx`` on random tenants run back to back for ``seconds``, and the time."""
    rng = random.Random(seed)
    return repeat_for(seconds, tx, engine, partial(rng.choice, tenants))


def load_orders(dsn: str, tenants: int, rows_per_tenant: int) -> list[SharedTenant]:
    """Shared tenants, ``public.orders`` filled and guarded; return the tenants."""
    slugs = [f"s{i:04d}" for i in range(tenants)]
    with psycopg.connect(dsn) as conn:
        conn.execute(ORDERS_DDL)
        conn.execute(CREATE_SHARED_TENANTS, {"slugs": slugs})
        conn.execute(LOAD_ORDERS, {"rows": rows_per_tenant})
        conn.commit()
        log(f"  {tenants} shared tenants, {tenants * rows_per_tenant} orders loaded")
        conn.execute("SELECT tenancy.enable_rls('public.orders')")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE public.orders")
        found = [SharedTenant(s, i) for s, i in conn.execute(SHARED_TENANTS).fetchall()]
    if [t.slug for t in found] != slugs:
        raise RuntimeError(f"expected {tenants} shared tenants, found {len(found)}")
    return found


def create_app_role(dsn: str) -> str:
    """A fresh ``NOSUPERUSER NOBYPASSRLS`` login role granted the tenants; its name."""
    role = f"{APP_ROLE_PREFIX}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role))
        )
    try:
        Tenancy(dsn).grant_app_role(role)
    except BaseException:
        drop_app_role(dsn, role)
        raise
    return role


def drop_app_role(dsn: str, role: str) -> None:
    """Drop ``role`` and what it was granted in the benchmark database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def check_rls(app: Engine, admin: Engine, tenants: Sequence[SharedTenant], rows: int) -> None:
    """Every side returns the same totals; no tenant, no rows; the plan goes to stderr."""
    for tenant in (tenants[0], tenants[-1]):
        totals = [
            rls_tenant_session(app, tenant),
            where_session(admin, tenant),
            rls_enter(app, tenant),
            where_select1(admin, tenant),
            where_enter(admin, tenant),
        ]
        if len(set(totals)) != 1 or totals[0][0] != rows:
            raise RuntimeError(f"sides disagree for {tenant.slug}: {totals}")
    with Session(app) as session:
        outside = session.execute(RLS_QUERY).one()
    if outside[0] != 0:
        raise RuntimeError(f"the app role sees {outside[0]} rows outside any tenant")
    with pgtenancy.tenant_session(app, tenants[0].slug) as session:
        plan = session.execute(text(EXPLAIN + RLS_QUERY.text)).scalars().all()
    log(f"  plan of the RLS query as the app role, tenant {tenants[0].slug}:")
    for line in plan:
        log(f"    {line}")


def bench_rls(
    dsn: str,
    role: str,
    tenants: Sequence[SharedTenant],
    rows: int,
    seconds: float,
    rounds: int,
) -> list[list[float]]:
    """Per-round q/s of the five sides of part 1, in the order of :func:`check_rls`."""
    app = pooled_engine(make_conninfo(dsn, user=role))
    admin = pooled_engine(dsn)
    try:
        check_rls(app, admin, tenants, rows)
        sides = [
            Side("tenant_session+RLS", partial(tenant_rate, rls_tenant_session, app, tenants)),
            Side("Session+WHERE", partial(tenant_rate, where_session, admin, tenants)),
            Side("enter_tenant+RLS", partial(tenant_rate, rls_enter, app, tenants)),
            Side("SELECT 1+WHERE", partial(tenant_rate, where_select1, admin, tenants)),
            Side("enter_tenant+WHERE", partial(tenant_rate, where_enter, admin, tenants)),
        ]
        log(f"RLS: {rounds} rounds x {seconds:g} s per side")
        return bench_sides(sides, seconds, rounds, RLS_TURN, "q/s")
    finally:
        app.dispose()
        admin.dispose()


# Part 2: PgBouncer -------------------------------------------------------------


def threaded_rate(
    tx: Callable[[Engine, int], str], engines: Sequence[Engine], seconds: float, seed: int
) -> tuple[int, float]:
    """Transactions of one thread per engine running ``tx`` back to back for ``seconds``,
    all threads together, and the mean time the threads took."""
    barrier = threading.Barrier(len(engines))

    def worker(index: int) -> tuple[int, float]:
        rng = random.Random(seed * len(engines) + index)
        engine = engines[index]
        draw = partial(rng.randint, 1, ITEMS)
        barrier.wait()
        return repeat_for(seconds, tx, engine, draw)

    with ThreadPoolExecutor(len(engines)) as pool:
        done = list(pool.map(worker, range(len(engines))))
    return sum(c for c, _ in done), statistics.fmean(t for _, t in done)


def prepare_items(dsn: str) -> None:
    """``item`` with ITEMS rows in ``public`` and, via a migration, in tenant ``bench``."""
    engine = pooled_engine(dsn)
    try:
        fill_tenant_items(engine, Tenancy(engine), "0001_item")
    finally:
        engine.dispose()
    fill_public_items(dsn)


def bench_pgbouncer(dsn: str, seconds: float, rounds: int) -> list[list[float]]:
    """Per-round tx/s of tenant_session and plain Session via PgBouncer, and tenant_session
    on direct connections."""
    prepare_items(dsn)
    user = str(conninfo_to_dict(dsn).get("user") or "postgres")
    pgb = TemporaryPgBouncer(dsn, [user], pool_mode="transaction", pool_size=PGBOUNCER_POOL_SIZE)
    pgb.start()
    engines: list[Engine] = []
    try:
        url = pgb.dsn(dsn)
        bounced = [pooled_engine(url, prepare_threshold=None) for _ in range(THREADS)]
        direct = [pooled_engine(dsn, prepare_threshold=None) for _ in range(THREADS)]
        engines = bounced + direct
        for engine in (bounced[0], direct[0]):
            check_items(engine)
        sides = [
            Side("tenant_session pgbouncer", partial(threaded_rate, tenant_tx, bounced)),
            Side("Session pgbouncer", partial(threaded_rate, plain_tx, bounced)),
            Side("tenant_session direct", partial(threaded_rate, tenant_tx, direct)),
        ]
        log(
            f"PgBouncer: {THREADS} threads, transaction pooling, pool_size="
            f"{PGBOUNCER_POOL_SIZE}, {rounds} rounds x {seconds:g} s per side"
        )
        return bench_sides(sides, seconds, rounds, PGBOUNCER_TURN, "tx/s")
    finally:
        for engine in engines:
            engine.dispose()
        pgb.stop()


# Run -------------------------------------------------------------------------


def run(seconds: float, rounds: int, tenants: int, rows_per_tenant: int) -> Results:
    """Set up a server, a fresh database and an app role, run both benchmarks."""
    started = time.perf_counter()
    with bench_database() as db:
        dsn = db.dsn
        log(f"PostgreSQL {db.server_version}; database ready; loading public.orders")
        shared = load_orders(dsn, tenants, rows_per_tenant)
        role = create_app_role(dsn)
        setup = time.perf_counter() - started
        log(f"  setup done in {setup:.1f} s; app role {role}")
        try:
            rls = bench_rls(dsn, role, shared, rows_per_tenant, seconds, rounds)
            bouncer = bench_pgbouncer(dsn, seconds, rounds)
        finally:
            drop_app_role(dsn, role)
    ts_rls, ts_where, enter_rls, select1_where, enter_where = (statistics.median(x) for x in rls)
    pgb_tenant, pgb_plain, direct_tenant = (statistics.median(x) for x in bouncer)
    # Extra time per query (us), split into the RLS filter (same statements on both
    # sides), the work of enter_tenant over SELECT 1, and the rest: the round trip
    # that entering the tenant adds, and the session hook.
    extra = 1e6 / ts_rls - 1e6 / ts_where
    same_statements = 1e6 / enter_rls - 1e6 / select1_where
    filter_cost = 1e6 / enter_rls - 1e6 / enter_where
    labels = [
        "tenant_session_rls",
        "session_where",
        "enter_tenant_rls",
        "select1_where",
        "enter_tenant_where",
        "pgbouncer_tenant_session",
        "pgbouncer_plain_session",
        "direct_tenant_session",
    ]
    return Results(
        server_version=db.server_version,
        server_source=db.server_source,
        seconds_per_round=seconds,
        rounds=rounds,
        tenants=tenants,
        rows_per_tenant=rows_per_tenant,
        rls_tenant_session_qps=round(ts_rls, 1),
        where_session_qps=round(ts_where, 1),
        rls_ratio=round(ts_rls / ts_where, 3),
        rls_enter_qps=round(enter_rls, 1),
        where_select1_qps=round(select1_where, 1),
        rls_same_statements_ratio=round(enter_rls / select1_where, 3),
        rls_extra_us=round(extra, 1),
        enter_where_qps=round(enter_where, 1),
        rls_filter_ratio=round(enter_rls / enter_where, 3),
        rls_filter_us=round(filter_cost, 1),
        rls_enter_work_us=round(same_statements - filter_cost, 1),
        rls_entry_round_trip_us=round(extra - same_statements, 1),
        threads=THREADS,
        pgbouncer_pool_size=PGBOUNCER_POOL_SIZE,
        pgbouncer_tenant_session_tps=round(pgb_tenant, 1),
        pgbouncer_plain_session_tps=round(pgb_plain, 1),
        pgbouncer_ratio=round(pgb_tenant / pgb_plain, 3),
        direct_tenant_session_tps=round(direct_tenant, 1),
        pgbouncer_direct_ratio=round(pgb_tenant / direct_tenant, 3),
        rounds_per_side={
            label: [round(x, 1) for x in xs]
            for label, xs in zip(labels, rls + bouncer, strict=True)
        },
        setup_seconds=round(setup, 1),
        elapsed_seconds=round(time.perf_counter() - started, 1),
    )


def report(r: Results) -> str:
    """The results as a short header and a three-column table."""
    w = 42
    lines = [
        report_title("isolation", r),
        f"RLS: public.orders, {r.tenants} shared tenants x {r.rows_per_tenant} rows, "
        "SELECT count(*), sum(amount) for a random tenant, 1 thread, pool_size=1",
        f"PgBouncer: transaction pooling, default_pool_size={r.pgbouncer_pool_size}, "
        f"{r.threads} threads, one-query transactions in a schema tenant, prepare_threshold=None",
        f"{r.rounds} rounds x {r.seconds_per_round:g} s per side in turns of {RLS_TURN:g} s "
        f"(RLS) or {PGBOUNCER_TURN:g} s (PgBouncer), medians; "
        f"setup {r.setup_seconds:g} s, total run time {r.elapsed_seconds:g} s",
        "",
        *ratio_table(
            w,
            [
                TableRow(
                    "tenant_session + RLS q/s",
                    r.rls_tenant_session_qps,
                    "plain Session + WHERE q/s",
                    r.where_session_qps,
                    r.rls_ratio,
                ),
                TableRow(
                    "enter_tenant + RLS q/s",
                    r.rls_enter_qps,
                    "SELECT 1 + WHERE q/s",
                    r.where_select1_qps,
                    r.rls_same_statements_ratio,
                ),
                TableRow(
                    "enter_tenant + RLS q/s",
                    r.rls_enter_qps,
                    "enter_tenant + WHERE q/s",
                    r.enter_where_qps,
                    r.rls_filter_ratio,
                ),
                TableRow(
                    "tenant_session, PgBouncer tx/s",
                    r.pgbouncer_tenant_session_tps,
                    "plain Session, PgBouncer tx/s",
                    r.pgbouncer_plain_session_tps,
                    r.pgbouncer_ratio,
                ),
                TableRow(
                    "tenant_session, PgBouncer tx/s",
                    r.pgbouncer_tenant_session_tps,
                    "tenant_session, direct tx/s",
                    r.direct_tenant_session_tps,
                    r.pgbouncer_direct_ratio,
                ),
            ],
        ),
        "",
    ]
    notes = (
        "ratio = pgtenancy / baseline (1.00: no overhead; 0.90: 90% of the baseline's rate); "
        "the last row compares PgBouncer with direct connections (a reference, not pgtenancy's "
        "cost).",
        f"RLS query: tenant_session takes {r.rls_extra_us:.0f} us more per query than the "
        f"baseline (first row): {r.rls_filter_us:+.0f} us for the RLS filter (third row, same "
        f"statements), {r.rls_enter_work_us:+.0f} us for the work of enter_tenant over SELECT 1 "
        f"(second row minus third), {r.rls_entry_round_trip_us:+.0f} us for the round trip that "
        "entering the tenant adds and the session hook (first row minus second). Differences "
        "of rates: expect noise of some tens of us.",
    )
    lines.extend(textwrap.fill(note, width=2 * w + 11) for note in notes)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, print the table (or JSON)."""
    parser = bench_parser("isolation")
    add_round_options(parser, "rotating")
    parser.add_argument(
        "--tenants",
        type=positive_int,
        default=1000,
        help="shared tenants in public.orders (default: 1000)",
    )
    parser.add_argument(
        "--rows-per-tenant",
        type=positive_int,
        default=1000,
        help="rows of public.orders per shared tenant (default: 1000)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    results = run(args.seconds, args.rounds, args.tenants, args.rows_per_tenant)
    print_results(results, report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
