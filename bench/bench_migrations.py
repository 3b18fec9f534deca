"""Benchmark of a fleet migration: ``pgtenancy migrate`` against one psql script.

Run from the repository root::

    .venv/bin/python bench/bench_migrations.py [--tenants 10000] [--chinook PATH]

``--chinook`` defaults to ``../shared/data/chinook/Chinook_PostgreSql.sql``.

Everything runs in one process against one server: ``DATABASE_URL`` when set,
else whatever :func:`pgtenancy.testing.find_server` finds or starts (a Docker
container or a throwaway local cluster, started with ``fsync=off``), in a
fresh database that is dropped at the end. Absolute numbers depend on the
machine and the server settings; the ratio is the point, because both sides
ran on the same server, in the same run, on the same schemas.

1. **Set-up (untimed for the report).** The Chinook script's DDL (11 tables,
   11 foreign keys, 11 indexes; see :mod:`pgtenancy.sqlscript`) is registered
   as tenant migration ``0001_chinook``; then ``--tenants`` tenants are
   created over one psycopg connection, ``--batch`` ``SELECT
   tenancy.create_tenant(slug)`` per transaction. Each tenant is a schema with
   about 30 relations, so 10,000 tenants make some 300,000 relations.

2. **Migration.** ``0002_add_column`` (``ALTER TABLE invoice ADD COLUMN note
   text; CREATE INDEX invoice_note_idx ON invoice (note);``) is registered,
   then the pgtenancy side times ``python -m pgtenancy.cli migrate --dsn DSN
   --jobs 2 --quiet`` run as a subprocess (start-up included): it plans the
   run, then migrates each tenant in its own transaction over 2 connections
   (lock timeout, migration, version recorded). The baseline is one ``psql``
   run (start-up included) of a script that applies the same DDL, with another
   column and index name (``note2``, ``invoice_note2_idx``), to the same
   schemas, each in its own ``BEGIN; ... COMMIT;``, one connection. So both
   sides add one column and one index to each of the same N ``invoice``
   tables. The baseline runs first, so pgtenancy works on a catalog that holds
   the baseline's N extra indexes. The report gives both times and
   ``migrate / psql``; the goal is a ratio of at most 1.5.

3. **No-op migration.** The same ``migrate --jobs 2 --quiet`` again, with
   nothing left to apply: start-up and planning over N tenants. Goal: under
   5 seconds for 10,000 tenants.

The script asserts nothing about timings; it checks that every tenant ended
at ``0002_add_column`` and that every schema has both columns and both indexes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from common import (
    DEFAULT_CHINOOK,
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
from pgtenancy.sqlscript import read_script

DEFAULT_TENANTS = 10_000
JOBS = 2
MIGRATION = "0002_add_column"
MIGRATION_DDL = (
    "ALTER TABLE invoice ADD COLUMN note text; CREATE INDEX invoice_note_idx ON invoice (note);"
)
RATIO_GOAL = 1.5
NOOP_GOAL_SECONDS = 5.0
MIGRATE = [sys.executable, "-m", "pgtenancy.cli", "migrate", "--jobs", str(JOBS), "--quiet"]
AT_VERSION = "SELECT count(*) FROM tenancy.tenants WHERE migration_version = %s"
COLUMNS = (
    "SELECT count(*) FROM pg_catalog.pg_attribute AS a"
    " JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid"
    " JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE c.relname = 'invoice' AND n.nspname LIKE 'tenant\\_%%'"
    " AND a.attname = %s AND NOT a.attisdropped"
)
INDEXES = (
    "SELECT count(*) FROM pg_catalog.pg_class AS c"
    " JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE c.relkind = 'i' AND c.relname = %s AND n.nspname LIKE 'tenant\\_%%'"
)


@dataclass(frozen=True)
class Results(BaseResults):
    """Everything the run measured; ``--json`` prints it as one object. Each side
    runs once (``rounds`` is 1, ``seconds_per_round`` 0: nothing is timed in rounds)."""

    tenants: int
    jobs: int
    create_batch: int
    create_seconds: float
    migrate_seconds: float
    psql_seconds: float
    migrate_ratio: float
    ratio_goal: float
    noop_migrate_seconds: float
    noop_goal_seconds: float
    cli_startup_seconds: float
    chinook_ddl_statements: int
    elapsed_seconds: float


def slugs_of(tenants: int) -> list[str]:
    """The tenants' slugs, ``t000000`` onward."""
    return [f"t{i:06d}" for i in range(tenants)]


def count(dsn: str, query: str, arg: str) -> int:
    """The single number ``query`` returns for ``arg``."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (arg,)).fetchone()
    return int(row[0]) if row else -1


# Set-up ----------------------------------------------------------------------


def create_tenants(dsn: str, slugs: Sequence[str], batch: int) -> float:
    """Seconds to create ``slugs``, ``batch`` per transaction over one connection."""
    start = time.perf_counter()
    last_log = start
    with psycopg.connect(dsn) as conn:
        for i in range(0, len(slugs), batch):
            with conn.cursor() as cur, conn.transaction():
                for slug in slugs[i : i + batch]:
                    cur.execute("SELECT tenancy.create_tenant(%s)", (slug,))
            now = time.perf_counter()
            done = min(i + batch, len(slugs))
            if now - last_log >= 15 or done == len(slugs):
                last_log = now
                elapsed = now - start
                log(f"  {done}/{len(slugs)} tenants, {elapsed:.0f} s, {done / elapsed:.0f}/s")
    return time.perf_counter() - start


# The two sides ----------------------------------------------------------------


def run_cli(dsn: str) -> float:
    """Seconds for one ``pgtenancy migrate --jobs 2 --quiet`` subprocess."""
    start = time.perf_counter()
    done = subprocess.run([*MIGRATE, "--dsn", dsn], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def cli_startup() -> float:
    """Seconds for ``python -m pgtenancy.cli --help``: the start-up both migrate runs pay."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pgtenancy.cli", "--help"], capture_output=True)
    return time.perf_counter() - start


def run_psql(psql: Path, dsn: str, schemas: Sequence[str]) -> float:
    """Seconds for one ``psql`` run adding ``note2`` and its index to ``schemas``'
    ``invoice``, one transaction each."""
    text = "".join(
        f"BEGIN;\nALTER TABLE {schema}.invoice ADD COLUMN note2 text;\n"
        f"CREATE INDEX invoice_note2_idx ON {schema}.invoice (note2);\nCOMMIT;\n"
        for schema in schemas
    )
    return time_psql_script(psql, dsn, text)


def check_same_work(dsn: str, tenants: int) -> None:
    """Every tenant at ``0002_add_column``, with both columns and both indexes."""
    found = {
        "tenants at " + MIGRATION: count(dsn, AT_VERSION, MIGRATION),
        "note columns": count(dsn, COLUMNS, "note"),
        "note2 columns": count(dsn, COLUMNS, "note2"),
        "invoice_note_idx": count(dsn, INDEXES, "invoice_note_idx"),
        "invoice_note2_idx": count(dsn, INDEXES, "invoice_note2_idx"),
    }
    wrong = {k: v for k, v in found.items() if v != tenants}
    if wrong:
        raise RuntimeError(f"expected {tenants} of each, found {wrong}")


# Run -------------------------------------------------------------------------


def run(chinook: Path, tenants: int, batch: int) -> Results:
    """Set up a server, a fresh database and the tenants; time both sides and the no-op."""
    started = time.perf_counter()
    script = read_script(chinook.read_text("utf-8"))
    psql = find_psql()
    slugs = slugs_of(tenants)
    with bench_database() as db:
        dsn = db.dsn
        log(f"PostgreSQL {db.server_version}; database ready; {tenants} tenants")
        tenancy = Tenancy(dsn)
        tenancy.add_migration("0001_chinook", script.sql_of("ddl"))
        log(f"creating {tenants} tenants, {batch} per transaction")
        create_s = create_tenants(dsn, slugs, batch)
        if count(dsn, AT_VERSION, "0001_chinook") != tenants:
            raise RuntimeError("not every tenant is at 0001_chinook")
        tenancy.add_migration(MIGRATION, MIGRATION_DDL)
        tenancy.engine.dispose()
        log("psql script: note2 + index in every schema")
        psql_s = run_psql(psql, dsn, [f"tenant_{s}" for s in slugs])
        log(f"  {psql_s:.1f} s")
        log(f"pgtenancy migrate --jobs {JOBS}: {MIGRATION}")
        migrate_s = run_cli(dsn)
        log(f"  {migrate_s:.1f} s")
        check_same_work(dsn, tenants)
        log("pgtenancy migrate again: nothing to apply")
        noop_s = run_cli(dsn)
        log(f"  {noop_s:.2f} s")
        startup_s = cli_startup()
    return Results(
        server_version=db.server_version,
        server_source=db.server_source,
        seconds_per_round=0.0,
        rounds=1,
        tenants=tenants,
        jobs=JOBS,
        create_batch=batch,
        create_seconds=round(create_s, 2),
        migrate_seconds=round(migrate_s, 3),
        psql_seconds=round(psql_s, 3),
        migrate_ratio=round(migrate_s / psql_s, 3),
        ratio_goal=RATIO_GOAL,
        noop_migrate_seconds=round(noop_s, 3),
        noop_goal_seconds=NOOP_GOAL_SECONDS,
        cli_startup_seconds=round(startup_s, 3),
        chinook_ddl_statements=len(script.of_kind("ddl")),
        elapsed_seconds=round(time.perf_counter() - started, 1),
    )


def met(ok: bool) -> str:
    """ "met" or "MISSED"."""
    return "met" if ok else "MISSED"


def report(r: Results) -> str:
    """The results as a short header and a three-column table."""
    ratio_ok = r.migrate_ratio <= r.ratio_goal
    noop_ok = r.noop_migrate_seconds < r.noop_goal_seconds
    lines = [
        report_title("migrations", r),
        f"N = {r.tenants:,} tenants (Chinook DDL, {r.chinook_ddl_statements} statements each; "
        f"created in {r.create_seconds:g} s, {r.create_batch} per transaction)",
        f"migration {MIGRATION}: ADD COLUMN + CREATE INDEX on invoice in each of the N schemas, "
        "one transaction per schema",
        f"CLI start-up (--help) {r.cli_startup_seconds:.2f} s, included in both migrate times; "
        f"total run time {r.elapsed_seconds:g} s",
        "",
        *ratio_table(
            36,
            [
                TableRow(
                    f"migrate --jobs {r.jobs} s",
                    r.migrate_seconds,
                    "psql script (1 connection) s",
                    r.psql_seconds,
                    r.migrate_ratio,
                ),
                TableRow(
                    "no-op migrate s",
                    r.noop_migrate_seconds,
                    "goal s",
                    r.noop_goal_seconds,
                    round(r.noop_migrate_seconds / r.noop_goal_seconds, 3),
                ),
            ],
        ),
        "",
        "ratio = pgtenancy seconds / baseline seconds (lower is better)",
        f"goal migrate / psql <= {r.ratio_goal:g}: {met(ratio_ok)}; "
        f"goal no-op migrate < {r.noop_goal_seconds:g} s (for 10,000 tenants): {met(noop_ok)}"
        + ("" if r.tenants >= 10_000 else f" [this run: N = {r.tenants:,}, not 10,000]"),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, print the table (or JSON)."""
    parser = bench_parser("migrations")
    parser.add_argument(
        "--chinook",
        type=Path,
        default=DEFAULT_CHINOOK,
        help="Chinook_PostgreSql.sql (default: %(default)s)",
    )
    parser.add_argument(
        "--tenants",
        type=positive_int,
        default=DEFAULT_TENANTS,
        help=f"tenants in the fleet (default: {DEFAULT_TENANTS})",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=200,
        help="tenants created per transaction during set-up (default: 200)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    chinook: Path = args.chinook
    if not chinook.is_file():
        parser.error(f"Chinook script not found: {chinook}")
    results = run(chinook, args.tenants, args.batch)
    print_results(results, report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
