"""Benchmarks of pgtenancy's core paths, as ratios against baselines run side by side.

Run from the repository root (``make bench`` does exactly this)::

    .venv/bin/python bench/bench_core.py --chinook ../shared/data/chinook/Chinook_PostgreSql.sql

Everything runs in one process against one server: ``DATABASE_URL`` when set,
else whatever :func:`pgtenancy.testing.find_server` finds or starts (a Docker
container or a throwaway local cluster, started with ``fsync=off``), in a
fresh database that is dropped at the end. Absolute numbers depend on the
machine and the server settings; the ratios are the point, because both sides
of each ratio ran on the same server, in the same run, interleaved.

1. **Transactions.** One web-request-like transaction: open a session, run
   ``SELECT value FROM item WHERE id = :id`` for a random id among 1000 rows,
   commit, close. The pgtenancy side is ``with tenant_session(engine, "bench")``
   (it calls ``tenancy.enter_tenant()`` at the start of the transaction, then the
   query finds ``item`` in the tenant's schema, where a tenant migration created
   it); the baseline is ``with Session(engine)`` on an identical ``public.item``.
   One thread, one engine with ``pool_size=1`` (psycopg driver), so both reuse
   the same connection. After a warm-up, ``--rounds`` rounds of ``--seconds``
   per side alternate which side goes first; the table shows the median
   transactions per second of each side and ``tenant / plain``. Round trips are
   not counted: the ratio is the whole per-transaction cost of entering the
   tenant (one more statement, a PL/pgSQL function, the session hook).

2. **Provisioning.** The Chinook script's DDL (11 tables, 11 foreign keys, 11
   indexes; psql meta-commands and database statements skipped by
   :mod:`pgtenancy.sqlscript`) is registered as tenant migration
   ``0001_chinook``; the pgtenancy side times ``Tenancy.create_tenant()`` (slug
   check, registry row, schema, migration, event in the outbox, one transaction
   each, over the same pooled engine). The baseline is the bare DDL run by
   ``psql`` from one script, one transaction per schema
   (``BEGIN; CREATE SCHEMA p_i; SET LOCAL search_path = p_i, public; <DDL>;
   COMMIT;``), psql start-up included. ``--tenants`` schemas are made per side,
   in two halves ordered pgtenancy, psql, psql, pgtenancy so the growing
   catalog weighs on both alike; the table shows tenants per second and
   ``create_tenant / psql``. psql sends the script one statement at a time
   (37 round trips per schema), while ``create_tenant`` is one call whose
   migration runs inside the server in one ``EXECUTE``; so this ratio can
   exceed 1.0 where round trips are dear, and means "pgtenancy's provisioning
   against hand-run DDL", not the registry's overhead alone.

Reading the ratios: 1.0 means pgtenancy costs nothing over the baseline; 0.8
means it reaches 80% of the baseline's rate (each operation takes 1/0.8 = 1.25
times as long). The script asserts nothing about timings; it only checks that
both sides did the same work (same tables, same schemas searched).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
from sqlalchemy import Engine

from common import (
    DEFAULT_CHINOOK,
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
    find_psql,
    log,
    plain_tx,
    pooled_engine,
    positive_int,
    print_results,
    ratio_table,
    repeat_for,
    report_title,
    tenant_tx,
    time_psql_script,
)
from pgtenancy.admin import Tenancy
from pgtenancy.sqlscript import read_script

RELATIONS = (
    "SELECT count(*) FROM pg_catalog.pg_class AS c"
    " JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = %s"
)


@dataclass(frozen=True)
class Results(BaseResults):
    """Everything the run measured; ``--json`` prints it as one object."""

    tenants: int
    tenant_session_tps: float
    plain_session_tps: float
    session_ratio: float
    tenant_session_tps_rounds: list[float]
    plain_session_tps_rounds: list[float]
    create_tenant_per_s: float
    psql_ddl_per_s: float
    provision_ratio: float
    create_tenant_seconds: float
    psql_ddl_seconds: float
    chinook_ddl_statements: int
    elapsed_seconds: float


# Transactions ----------------------------------------------------------------


def rate(tx: Callable[[Engine, int], str], engine: Engine, seconds: float, seed: int) -> float:
    """Transactions per second of ``tx`` run back to back for ``seconds``."""
    rng = random.Random(seed)
    count, elapsed = repeat_for(seconds, tx, engine, partial(rng.randint, 1, ITEMS))
    return count / elapsed


def prepare_items(dsn: str, engine: Engine, tenancy: Tenancy) -> None:
    """``item`` with ITEMS rows in ``public`` and, via a migration, in tenant ``bench``."""
    fill_tenant_items(engine, tenancy, "0002_item")
    fill_public_items(dsn)
    check_items(engine)


def bench_transactions(
    engine: Engine, seconds: float, rounds: int
) -> tuple[list[float], list[float]]:
    """Per-round tx/s of (tenant_session, plain Session), sides alternating."""
    warm_up = min(0.5, seconds / 2)
    rate(tenant_tx, engine, warm_up, seed=-1)
    rate(plain_tx, engine, warm_up, seed=-2)
    tenant: list[float] = []
    plain: list[float] = []
    for r in range(rounds):
        order = [(tenant_tx, tenant), (plain_tx, plain)]
        if r % 2:
            order.reverse()
        for tx, out in order:
            out.append(rate(tx, engine, seconds, seed=r))
        log(
            f"  round {r + 1}/{rounds}: tenant_session {tenant[-1]:.0f} tx/s, "
            f"plain Session {plain[-1]:.0f} tx/s"
        )
    return tenant, plain


# Provisioning ----------------------------------------------------------------


def provision_tenancy(tenancy: Tenancy, slugs: Sequence[str]) -> float:
    """Seconds to create ``slugs`` with ``Tenancy.create_tenant``."""
    start = time.perf_counter()
    for slug in slugs:
        tenancy.create_tenant(slug)
    return time.perf_counter() - start


def provision_psql(psql: Path, dsn: str, ddl: str, schemas: Sequence[str]) -> float:
    """Seconds for one ``psql`` run making ``schemas``, each with ``ddl``, one transaction each."""
    if not schemas:
        return 0.0
    text = "".join(
        f"BEGIN;\nCREATE SCHEMA {schema};\nSET LOCAL search_path = {schema}, public;\n"
        f"{ddl}COMMIT;\n"
        for schema in schemas
    )
    return time_psql_script(psql, dsn, text)


def bench_provisioning(dsn: str, tenancy: Tenancy, ddl: str, tenants: int) -> tuple[float, float]:
    """Seconds for (create_tenant, psql DDL) to make ``tenants`` schemas each."""
    psql = find_psql()
    half = tenants // 2
    slugs = [f"b{i}" for i in range(tenants)]
    schemas = [f"p_{i}" for i in range(tenants)]
    create_s = provision_tenancy(tenancy, slugs[:half])
    psql_s = provision_psql(psql, dsn, ddl, schemas[:half])
    psql_s += provision_psql(psql, dsn, ddl, schemas[half:])
    create_s += provision_tenancy(tenancy, slugs[half:])
    # Same work on both sides: the same relations in tenant_b0 and p_0.
    with psycopg.connect(dsn) as conn:
        ours = conn.execute(RELATIONS, ("tenant_b0",)).fetchone()
        theirs = conn.execute(RELATIONS, ("p_0",)).fetchone()
    if ours is None or theirs is None or ours[0] != theirs[0] or ours[0] == 0:
        raise RuntimeError(f"schemas differ: tenant_b0 {ours}, p_0 {theirs} relations")
    return create_s, psql_s


# Run -------------------------------------------------------------------------


def run(chinook: Path, seconds: float, rounds: int, tenants: int) -> Results:
    """Set up a server and a fresh database, run both benchmarks, return the numbers."""
    started = time.perf_counter()
    script = read_script(chinook.read_text("utf-8"))
    ddl = script.sql_of("ddl")
    with bench_database() as db:
        dsn = db.dsn
        log(f"PostgreSQL {db.server_version}; database ready")
        engine = pooled_engine(dsn)
        try:
            tenancy = Tenancy(engine)
            tenancy.add_migration("0001_chinook", ddl)
            log(f"provisioning: {tenants} tenants per side")
            create_s, psql_s = bench_provisioning(dsn, tenancy, ddl, tenants)
            prepare_items(dsn, engine, tenancy)
            log(f"transactions: {rounds} rounds x {seconds:g} s per side")
            tenant_tps, plain_tps = bench_transactions(engine, seconds, rounds)
        finally:
            engine.dispose()
    tenant_median = statistics.median(tenant_tps)
    plain_median = statistics.median(plain_tps)
    create_rate = tenants / create_s
    psql_rate = tenants / psql_s
    return Results(
        server_version=db.server_version,
        server_source=db.server_source,
        seconds_per_round=seconds,
        rounds=rounds,
        tenants=tenants,
        tenant_session_tps=round(tenant_median, 1),
        plain_session_tps=round(plain_median, 1),
        session_ratio=round(tenant_median / plain_median, 3),
        tenant_session_tps_rounds=[round(x, 1) for x in tenant_tps],
        plain_session_tps_rounds=[round(x, 1) for x in plain_tps],
        create_tenant_per_s=round(create_rate, 2),
        psql_ddl_per_s=round(psql_rate, 2),
        provision_ratio=round(create_rate / psql_rate, 3),
        create_tenant_seconds=round(create_s, 3),
        psql_ddl_seconds=round(psql_s, 3),
        chinook_ddl_statements=len(script.of_kind("ddl")),
        elapsed_seconds=round(time.perf_counter() - started, 1),
    )


def report(r: Results) -> str:
    """The results as a short header and a three-column table."""
    lines = [
        report_title("core", r),
        f"transactions: {r.rounds} rounds x {r.seconds_per_round:g} s per side, alternating, "
        f"1 thread, pool_size=1, medians; round trips not counted",
        f"provisioning: {r.tenants} tenants per side, Chinook DDL "
        f"({r.chinook_ddl_statements} statements), one transaction per tenant",
        f"total run time {r.elapsed_seconds:g} s",
        "",
        *ratio_table(
            36,
            [
                TableRow(
                    "tenant_session tx/s",
                    r.tenant_session_tps,
                    "plain Session tx/s",
                    r.plain_session_tps,
                    r.session_ratio,
                ),
                TableRow(
                    "create_tenant tenants/s",
                    r.create_tenant_per_s,
                    "psql DDL tenants/s",
                    r.psql_ddl_per_s,
                    r.provision_ratio,
                ),
            ],
        ),
        "",
        "ratio = pgtenancy / baseline (1.00: no overhead; 0.80: 80% of the baseline's rate)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, print the table (or JSON)."""
    parser = bench_parser("core")
    parser.add_argument(
        "--chinook",
        type=Path,
        default=DEFAULT_CHINOOK,
        help="Chinook_PostgreSql.sql (default: %(default)s)",
    )
    add_round_options(parser, "alternating")
    parser.add_argument(
        "--tenants",
        type=positive_int,
        default=100,
        help="tenants provisioned per side (default: 100)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    chinook: Path = args.chinook
    if not chinook.is_file():
        parser.error(f"Chinook script not found: {chinook}")
    results = run(chinook, args.seconds, args.rounds, args.tenants)
    print_results(results, report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
