"""Cost of strict entry (issue 13 item 2): strict against plain entry, side by side in one run.

Run from the repository root::

    .venv/bin/python bench/bench_strict.py [--seconds 1] [--rounds 5] [--json]

One fresh database (``DATABASE_URL`` when set, else
:func:`pgtenancy.testing.find_server`), dropped at the end, with an
application role (NOSUPERUSER NOBYPASSRLS, ``tenancy.grant_app_role``)
dropped at the end too:

* schema tenant ``bench``: table ``item`` (1,000 rows) from a tenant migration;
* shared tenant ``sbench`` and 9 other shared tenants: ``public.sitem``,
  1,000 rows each, guarded by ``tenancy.enable_rls``.

Four transactions, each ``BEGIN`` + entry + one query + ``COMMIT`` through
``tenant_connection`` on one connection of the application role (psycopg,
default prepared statements):

* 1-row lookup: ``SELECT value FROM item WHERE id = %s`` (random id);
* 1,000-row aggregate: ``SELECT count(*), sum(length(value)) FROM item``;

each on the schema tenant and on the shared tenant (``sitem``).

Plain side: strict entry off, ``tenant_connection(conn, slug)``. Strict side:
``tenancy.set_strict_entry(true)``, a fresh token per transaction
(``sign_tenant_token``, counted in) and ``tenant_connection(conn,
token=token)``. The script switches the mode between the two halves of every
round (the same tables, the same server caches), so each ratio compares
rates measured in the same run, interleaved. A third side, strict with one
token per turn (signed before the turn, used by all its transactions, as a
request of several transactions would), separates the cost of signing and
first verifying a token from the rest of strict mode. Ratio = strict seconds per
transaction / plain seconds per transaction (median over rounds); the goal
of the issue is at most 1.05 for the one-query transactions.

When the server runs on this host (its backend's ``/proc/<pid>/stat`` is
readable), the report adds the backend's CPU time per transaction (user +
system, medians over rounds) and its ratio: the server's own cost, which
other load on a shared machine disturbs far less than wall-clock rates.
"""

from __future__ import annotations

import os
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

import pgtenancy
from common import (
    ITEM_DDL,
    ITEMS,
    BaseResults,
    add_json_option,
    add_round_options,
    bench_database,
    bench_parser,
    log,
    print_results,
    report_title,
)
from pgtenancy import Tenancy, sign_tenant_token, tenant_connection

SCHEMA_SLUG = "bench"
SHARED_SLUG = "sbench"
OTHER_SHARED = 9
LOOKUP = "SELECT value FROM {} WHERE id = %s"
AGGREGATE = "SELECT count(*), sum(length(value)) FROM {}"

WORKLOADS = (
    ("schema, 1-row lookup", SCHEMA_SLUG, "item", LOOKUP),
    ("schema, 1,000-row aggregate", SCHEMA_SLUG, "item", AGGREGATE),
    ("shared, 1-row lookup", SHARED_SLUG, "sitem", LOOKUP),
    ("shared, 1,000-row aggregate", SHARED_SLUG, "sitem", AGGREGATE),
)


@dataclass(frozen=True)
class Results(BaseResults):
    """Per workload: transactions per second, plain and strict (medians), and their ratio."""

    plain_rate: dict[str, float]
    strict_rate: dict[str, float]
    ratio: dict[str, float]
    plain_cpu_us: dict[str, float] | None
    strict_cpu_us: dict[str, float] | None
    cpu_ratio: dict[str, float] | None
    reused_rate: dict[str, float] | None = None
    reused_ratio: dict[str, float] | None = None


@contextmanager
def app_role(dsn: str) -> Iterator[str]:
    """A login role for the application, granted with grant_app_role; dropped on exit."""
    name = f"pgtenancy_bench_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(name))
        )
        conn.execute("SELECT tenancy.grant_app_role(%s)", (name,))
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def setup(dsn: str) -> bytes:
    """The tenants and tables of the module docstring; returns the entry key (added as k1)."""
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", ITEM_DDL)
    tenancy.create_tenant(SCHEMA_SLUG)
    shared = [SHARED_SLUG, *(f"other{i}" for i in range(OTHER_SHARED))]
    for slug in shared:
        tenancy.create_tenant(slug, isolation="shared")
    key = secrets.token_bytes(32)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO tenant_{SCHEMA_SLUG}.item SELECT g, md5(g::text)"
            " FROM generate_series(1, %s) AS g",
            (ITEMS,),
        )
        conn.execute(
            "CREATE TABLE public.sitem (id int NOT NULL, value text NOT NULL, tenant_id uuid,"
            " PRIMARY KEY (tenant_id, id))"
        )
        conn.execute("SELECT tenancy.enable_rls('public.sitem')")
        for slug in shared:
            with conn.transaction():
                conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
                conn.execute(
                    "INSERT INTO public.sitem (id, value) SELECT g, md5(g::text)"
                    " FROM generate_series(1, %s) AS g",
                    (ITEMS,),
                )
        conn.execute("VACUUM ANALYZE")
        conn.execute("SELECT tenancy.add_entry_key('k1', %s)", (key,))
    return key


def transaction(
    conn: psycopg.Connection[Any],
    query: str,
    table: str,
    slug: str,
    token: Callable[[], str] | None,
) -> Any:
    """One transaction: enter (plainly, or with a fresh token), one query, commit."""
    text = query.format(table)
    args = (random.randint(1, ITEMS),) if "%s" in text else None
    with (
        tenant_connection(conn, slug)
        if token is None
        else tenant_connection(conn, token=token()) as c
    ):
        return c.execute(text, args).fetchone()


def signer(key: bytes, slug: str) -> str:
    """A fresh one-minute token for ``slug`` (what the authenticating service does per request)."""
    return sign_tenant_token(key, slug, 60, "k1")


def backend_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) backend ``pid`` has used, or None when the
    server is not on this host (no readable ``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 of proc(5) (utime, stime), counted after the command.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rate(run: Callable[[], object], seconds: float, pid: int) -> tuple[float, float | None]:
    """Transactions per second of ``run`` over ``seconds``, and the CPU
    microseconds per transaction of backend ``pid`` (None when unreadable)."""

    count = 0
    cpu_start = backend_cpu(pid)
    start = now = time.perf_counter()
    while now < start + seconds:
        run()
        count += 1
        now = time.perf_counter()
    cpu_end = backend_cpu(pid)
    cpu = None if cpu_start is None or cpu_end is None else (cpu_end - cpu_start) / count * 1e6
    return count / (now - start), cpu


def main() -> None:
    parser = bench_parser("strict entry")
    add_round_options(parser, "interleaved (plain, strict)")
    add_json_option(parser)
    args = parser.parse_args()
    with bench_database() as db, app_role(db.dsn) as role:
        log("setting up tenants and tables")
        key = setup(db.dsn)
        app_dsn = psycopg.conninfo.make_conninfo(db.dsn, user=role)
        plain: dict[str, list[float]] = {w[0]: [] for w in WORKLOADS}
        strict: dict[str, list[float]] = {w[0]: [] for w in WORKLOADS}
        cpu: dict[str, dict[str, list[float]]] = {
            "plain": {w[0]: [] for w in WORKLOADS},
            "strict": {w[0]: [] for w in WORKLOADS},
        }
        with (
            psycopg.connect(db.dsn, autocommit=True) as owner,
            psycopg.connect(app_dsn, autocommit=True) as conn,
        ):
            pid_row = conn.execute("SELECT pg_backend_pid()").fetchone()
            pid = int(pid_row[0]) if pid_row else 0
            # Both sides return the same rows before anything is timed.
            for name, slug, table, query in WORKLOADS:
                if "%s" in query:
                    continue
                owner.execute("SELECT tenancy.set_strict_entry(false)")
                a = transaction(conn, query, table, slug, None)
                owner.execute("SELECT tenancy.set_strict_entry(true)")
                b = transaction(conn, query, table, slug, partial(signer, key, slug))
                if a != b or a[0] != ITEMS:
                    raise RuntimeError(f"{name}: plain {a} and strict {b} differ")
            reused: dict[str, list[float]] = {w[0]: [] for w in WORKLOADS}
            for round_no in range(args.rounds):
                for mode in ("plain", "strict", "strict, one token"):
                    owner.execute("SELECT tenancy.set_strict_entry(%s)", (mode != "plain",))
                    for name, slug, table, query in WORKLOADS:
                        token: Callable[[], str] | None = None
                        if mode == "strict":
                            token = partial(signer, key, slug)
                        elif mode == "strict, one token":
                            # One token for the turn (a request of many
                            # transactions): no signing, and the database's
                            # verification of a token it verified before.
                            token = partial(lambda t: t, signer(key, slug))

                        # Warm the plans of this mode first.
                        for _ in range(20):
                            transaction(conn, query, table, slug, token)
                        measured, cpu_us = rate(
                            partial(transaction, conn, query, table, slug, token),
                            args.seconds,
                            pid,
                        )
                        if mode == "strict, one token":
                            reused[name].append(measured)
                            continue
                        (plain if mode == "plain" else strict)[name].append(measured)
                        if cpu_us is not None:
                            cpu[mode][name].append(cpu_us)
                log(f"round {round_no + 1}/{args.rounds} done")
            owner.execute("SELECT tenancy.set_strict_entry(false)")
        plain_rate = {k: statistics.median(v) for k, v in plain.items()}
        strict_rate = {k: statistics.median(v) for k, v in strict.items()}
        plain_cpu = strict_cpu = cpu_ratio = None
        if all(cpu["plain"].values()) and all(cpu["strict"].values()):
            plain_cpu = {k: statistics.median(v) for k, v in cpu["plain"].items()}
            strict_cpu = {k: statistics.median(v) for k, v in cpu["strict"].items()}
            cpu_ratio = {k: strict_cpu[k] / plain_cpu[k] for k in plain_cpu}
        results = Results(
            server_version=db.server_version,
            server_source=db.server_source,
            seconds_per_round=args.seconds,
            rounds=args.rounds,
            plain_rate=plain_rate,
            strict_rate=strict_rate,
            ratio={k: plain_rate[k] / strict_rate[k] for k in plain_rate},
            plain_cpu_us=plain_cpu,
            strict_cpu_us=strict_cpu,
            cpu_ratio=cpu_ratio,
            reused_rate={k: statistics.median(v) for k, v in reused.items()},
            reused_ratio={k: plain_rate[k] / statistics.median(v) for k, v in reused.items()},
        )
    print_results(results, report, args.json)


def report(r: Results) -> str:
    """The results as a table: workload, plain tx/s, strict tx/s, cost ratio."""
    lines = [
        report_title("strict entry", r),
        f"{r.rounds} interleaved rounds of {r.seconds_per_round:g} s per side and workload; "
        "one connection of the application role, tenant_connection,"
        " BEGIN + entry + 1 query + COMMIT",
        "",
        f"{'workload':<30} {'plain tx/s':>12} {'strict tx/s':>12} {'strict/plain time':>18}",
    ]
    for name in r.ratio:
        lines.append(
            f"{name:<30} {r.plain_rate[name]:>12,.0f} {r.strict_rate[name]:>12,.0f}"
            f" {r.ratio[name]:>17.3f}x"
        )
    if r.cpu_ratio is not None and r.plain_cpu_us is not None and r.strict_cpu_us is not None:
        lines.append("")
        lines.append(
            f"{'backend CPU per transaction':<30} {'plain us':>12} {'strict us':>12}"
            f" {'strict/plain CPU':>18}"
        )
        for name in r.cpu_ratio:
            lines.append(
                f"{name:<30} {r.plain_cpu_us[name]:>12.1f} {r.strict_cpu_us[name]:>12.1f}"
                f" {r.cpu_ratio[name]:>17.3f}x"
            )
    if r.reused_rate is not None and r.reused_ratio is not None:
        lines.append("")
        lines.append(
            f"{'one token per turn':<30} {'plain tx/s':>12} {'strict tx/s':>12}"
            f" {'strict/plain time':>18}"
        )
        for name in r.reused_ratio:
            lines.append(
                f"{name:<30} {r.plain_rate[name]:>12,.0f} {r.reused_rate[name]:>12,.0f}"
                f" {r.reused_ratio[name]:>17.3f}x"
            )
    lines.append("")
    lines.append(
        "strict side: a fresh token signed per transaction (sign_tenant_token), verified at entry"
        " and by every statement (active_tenant_id() in the policies' InitPlan); one token per"
        " turn: one token signed before each 'seconds' turn and used by all its transactions"
        " (a request of many transactions: no signing per transaction)."
    )
    lines.append(f"pgtenancy {pgtenancy.__version__}; goal: <= 1.05x on the one-query transactions")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
