"""Benchmark of provisioning from a baseline: procrastinate's series replayed
vs squashed.

Run from the repository root (``make procrastinate`` fetches the series)::

    .venv/bin/python bench/bench_baselines.py [--tenants 20]

In one fresh database (as the other benchmarks find a server: ``DATABASE_URL``,
Docker or a throwaway cluster), in one run:

1. procrastinate 3.10.0's 38 migration files are registered
   (:func:`pgtenancy.fleet.sync_migration_dir`; its first line, ``CREATE
   EXTENSION IF NOT EXISTS plpgsql``, runs first as plain SQL). The series adds
   enum values that later files use, so a new tenant is provisioned one
   migration per transaction (status ``provisioning``, then ``active``).
2. **replayed**: ``--tenants`` tenants are created with
   :meth:`pgtenancy.Tenancy.create_tenant`, which replays the 38 migrations.
3. The series is squashed (:func:`pgtenancy.fleet.squash_migrations`, what
   ``pgtenancy migrate squash --through`` runs; its time is reported too).
4. **from a baseline**: as many tenants again, each running the one baseline
   script in one transaction.

Reported: milliseconds per tenant, both ways, and their ratio (baseline /
replay: lower is better). Both sides make the same catalog and rows (see
tests/integration/test_baselines.py), emit one ``tenant_created`` each, on
the same connection kind.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_registration import procrastinate_series
from common import (
    BaseResults,
    TableRow,
    add_json_option,
    bench_database,
    bench_parser,
    find_psql,
    log,
    positive_int,
    print_results,
    ratio_table,
    report_title,
    time_psql_script,
)
from pgtenancy.admin import Tenancy
from pgtenancy.fleet import squash_migrations, sync_migration_dir

DEFAULT_TENANTS = 20


@dataclass(frozen=True)
class Results(BaseResults):
    """Milliseconds per tenant, both ways, and the ratio."""

    migrations: int
    tenants: int
    replay_ms_per_tenant: float
    baseline_ms_per_tenant: float
    ratio: float
    squash_seconds: float
    squash_steps: int
    baseline_bytes: int


def provision(tenancy: Tenancy, prefix: str, count: int) -> float:
    """Seconds to create ``count`` tenants, each active and current at the end."""
    start = time.perf_counter()
    for i in range(count):
        tenant = tenancy.create_tenant(f"{prefix}{i}")
        if tenant.status != "active":
            raise RuntimeError(f"tenant {tenant.slug} is {tenant.status}")
    return time.perf_counter() - start


def run(tenants: int) -> Results:
    """Register, provision by replay, squash, provision from the baseline."""
    psql = find_psql()
    with tempfile.TemporaryDirectory(prefix="pgtenancy-bench-") as tmp, bench_database() as db:
        directory = Path(tmp)
        prelude = procrastinate_series(directory)
        time_psql_script(psql, db.dsn, prelude)
        synced = sync_migration_dir(db.dsn, directory)
        latest = synced.registered[-1]
        tenancy = Tenancy(db.dsn)
        provision(tenancy, "warm", 1)  # first-call costs on neither side
        log(f"replaying {len(synced.registered)} migrations into {tenants} tenants")
        replay_s = provision(tenancy, "replayed", tenants)
        log(f"  {replay_s:.2f} s; squashing through {latest}")
        squashed = squash_migrations(db.dsn, latest)
        log(f"  {squashed.seconds:.2f} s; provisioning {tenants} tenants from the baseline")
        baseline_s = provision(tenancy, "based", tenants)
        log(f"  {baseline_s:.2f} s")
        version, source = db.server_version, db.server_source
    return Results(
        server_version=version,
        server_source=source,
        seconds_per_round=0.0,
        rounds=1,
        migrations=len(synced.registered),
        tenants=tenants,
        replay_ms_per_tenant=round(1000 * replay_s / tenants, 2),
        baseline_ms_per_tenant=round(1000 * baseline_s / tenants, 2),
        ratio=round(baseline_s / replay_s, 3),
        squash_seconds=round(squashed.seconds, 3),
        squash_steps=squashed.steps,
        baseline_bytes=len(squashed.sql.encode("utf-8")),
    )


def report(r: Results) -> str:
    """A header and a three-column table."""
    return "\n".join(
        [
            report_title("baselines", r),
            f"create_tenant with procrastinate's {r.migrations} migrations: from a baseline "
            f"(one script, {r.baseline_bytes} bytes) vs replayed (one transaction per "
            f"migration); {r.tenants} tenants each way",
            "",
            *ratio_table(
                40,
                [
                    TableRow(
                        "from a baseline, ms/tenant",
                        r.baseline_ms_per_tenant,
                        "replayed, ms/tenant",
                        r.replay_ms_per_tenant,
                        r.ratio,
                    )
                ],
            ),
            "",
            "ratio = baseline ms / replay ms (lower is better); the squash itself took "
            f"{r.squash_seconds:.1f} s ({r.squash_steps} transactions of replay, pg_dump, "
            "rewrite, check)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, print the table (or JSON)."""
    parser = bench_parser("baselines")
    parser.add_argument(
        "--tenants",
        type=positive_int,
        default=DEFAULT_TENANTS,
        help=f"tenants provisioned each way (default: {DEFAULT_TENANTS})",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    print_results(run(args.tenants), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
