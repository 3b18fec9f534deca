"""Benchmark of migration registration: ``sync_migration_dir`` against psql.

Run from the repository root (``make procrastinate`` fetches the first series)::

    .venv/bin/python bench/bench_registration.py [--generated 250] [--rounds 5]

Two series, each registered into a fresh database on one server (as the other
benchmarks find it: ``DATABASE_URL``, Docker or a throwaway cluster), in one
run, ``--rounds`` times (default 5; the tables give medians over the rounds, and
the per-round ratios; the first round pays the pglast import, as one CLI run does):

1. **procrastinate** 3.10.0's 38 migration files, from its PyPI wheel
   (``.cache/``, see the Makefile). Its first line, ``CREATE EXTENSION IF NOT
   EXISTS plpgsql``, runs first as plain SQL: a tenant migration may not
   create extensions. The series adds enum values that later files use.
2. **generated**: ``--generated`` files (default 250), each creating a table
   with an index, every tenth also adding a column to the previous table.

The pgtenancy side times :func:`pgtenancy.fleet.sync_migration_dir` (the
library call behind ``pgtenancy migrate --dir``): read the directory, check
every file with pglast, register the files in batches (``tenancy.add_migrations``,
one transaction per batch), each file applied to and checked on the scratch
schema kept at the latest version. The baseline is one ``psql`` run applying
the same files to one empty schema, each in its own ``BEGIN; ... COMMIT;``.
Both sides run each migration's SQL once; registration adds its checks and
bookkeeping. Goal: registration within 2x of psql, and linear (per-file cost
flat as the series grows; compare the two series' seconds per file).

Where the server is local and the role a superuser, each side's CPU seconds
are reported too (the server backend's, read from ``/proc/self/stat`` with
``pg_read_file``, plus, for registration, the Python process's own: the
pglast checks, also reported alone): on a machine shared with other jobs they
move far less than the wall-clock seconds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

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
from pgtenancy.fleet import sync_migration_dir

ROOT = Path(__file__).resolve().parents[1]
PROCRASTINATE = ROOT / ".cache" / "procrastinate-3.10.0" / "migrations"
RATIO_GOAL = 2.0
DEFAULT_GENERATED = 250
DEFAULT_ROUNDS = 5


@dataclass(frozen=True)
class Results(BaseResults):
    """Seconds per series, both sides, and the ratios."""

    procrastinate_files: int
    procrastinate_register_seconds: float
    procrastinate_psql_seconds: float
    procrastinate_ratio: float
    generated_files: int
    generated_register_seconds: float
    generated_psql_seconds: float
    generated_ratio: float
    ratio_goal: float
    procrastinate_first_round_ratio: float = 0.0
    generated_first_round_ratio: float = 0.0
    procrastinate_round_ratios: tuple[float, ...] = ()
    generated_round_ratios: tuple[float, ...] = ()
    procrastinate_register_cpu_seconds: float | None = None
    procrastinate_psql_cpu_seconds: float | None = None
    generated_register_cpu_seconds: float | None = None
    generated_psql_cpu_seconds: float | None = None
    procrastinate_client_cpu_seconds: float | None = None
    generated_client_cpu_seconds: float | None = None


def procrastinate_series(directory: Path) -> str:
    """Copy procrastinate's files into ``directory``; return the extension line."""
    if not any(PROCRASTINATE.glob("*.sql")):
        raise SystemExit("procrastinate's migrations are missing: run `make procrastinate`")
    for path in sorted(PROCRASTINATE.glob("*.sql")):
        shutil.copy(path, directory / path.name)
    initial = directory / "00.00.00_01_initial.sql"
    first, rest = initial.read_text("utf-8").split("\n", 1)
    initial.write_text(rest, "utf-8")
    return first


def generated_series(directory: Path, count: int) -> None:
    """``count`` files: a table and an index each, every tenth a column more."""
    for i in range(1, count + 1):
        sql = f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);\nCREATE INDEX t{i}_v ON t{i} (v);\n"
        if i % 10 == 0:
            sql += f"ALTER TABLE t{i - 1} ADD COLUMN c{i} int;\n"
        (directory / f"{i:04d}_t{i}.sql").write_text(sql, "utf-8")


def psql_script(directory: Path, prelude: str) -> str:
    """The same files in version order, one transaction each, in schema bench_psql;
    last, the backend's CPU counters into table bench_cpu (NULL where unreadable)."""
    from pgtenancy.migration_files import read_migration_dir

    parts = [prelude, "CREATE SCHEMA bench_psql;", "SET search_path = bench_psql, public;"]
    for f in read_migration_dir(directory):
        parts += ["BEGIN;", f.sql, "COMMIT;"]
    parts.append(f"CREATE TABLE public.bench_cpu AS SELECT {BACKEND_STAT} AS stat;")
    return "\n".join(parts) + "\n"


#: The backend's own ``/proc/self/stat`` (Linux, superuser), else NULL.
BACKEND_STAT = (
    "(SELECT CASE WHEN (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)"
    " THEN pg_catalog.pg_read_file('/proc/self/stat', 0, 1024, true) END)"
)


def backend_cpu(stat: str | None) -> float | None:
    """User + system CPU seconds from a ``/proc/<pid>/stat`` line (None: unknown)."""
    if not stat or ")" not in stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3, utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_series(
    psql: Path, directory: Path, prelude: str
) -> tuple[int, float, float, float | None, float | None, float]:
    """(files, registration seconds, psql seconds, registration CPU seconds, psql
    CPU seconds, the registering process's own CPU seconds), each side in a
    fresh database."""
    with bench_database() as db:
        if prelude:
            time_psql_script(psql, db.dsn, prelude)
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            start_stat = conn.execute(f"SELECT {BACKEND_STAT}").fetchone()
            start_client = time.process_time()
            start = time.perf_counter()
            synced = sync_migration_dir(conn, directory)
            register_s = time.perf_counter() - start
            client_s = time.process_time() - start_client
            end_stat = conn.execute(f"SELECT {BACKEND_STAT}").fetchone()
    before = backend_cpu(start_stat[0] if start_stat else None)
    after = backend_cpu(end_stat[0] if end_stat else None)
    register_cpu = None if before is None or after is None else after - before + client_s
    with bench_database() as db:
        psql_s = time_psql_script(psql, db.dsn, psql_script(directory, prelude))
        with psycopg.connect(db.dsn) as conn:
            row = conn.execute("SELECT stat FROM public.bench_cpu").fetchone()
    psql_cpu = backend_cpu(row[0] if row else None)
    return len(synced.registered), register_s, psql_s, register_cpu, psql_cpu, client_s


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def run(generated: int, rounds: int = DEFAULT_ROUNDS) -> Results:
    """Both series, both sides, ``rounds`` times; medians over the rounds. The
    first round pays the pglast import (a CLI run pays it once); its ratios are
    reported too."""
    psql = find_psql()
    with tempfile.TemporaryDirectory(prefix="pgtenancy-bench-") as tmp:
        proc_dir, gen_dir = Path(tmp) / "procrastinate", Path(tmp) / "generated"
        proc_dir.mkdir()
        gen_dir.mkdir()
        prelude = procrastinate_series(proc_dir)
        generated_series(gen_dir, generated)
        p_runs, g_runs = [], []
        for i in range(rounds):
            log(f"round {i + 1}/{rounds}: procrastinate, registering, then psql")
            p_runs.append(time_series(psql, proc_dir, prelude))
            log(f"  {p_runs[-1][0]} files: {p_runs[-1][1]:.2f} s vs {p_runs[-1][2]:.2f} s")
            log(f"round {i + 1}/{rounds}: generated, {generated} files")
            g_runs.append(time_series(psql, gen_dir, ""))
            log(f"  {g_runs[-1][0]} files: {g_runs[-1][1]:.2f} s vs {g_runs[-1][2]:.2f} s")

        def medians(
            runs: list[tuple[int, float, float, float | None, float | None, float]],
        ) -> tuple[int, float, float, float | None, float | None, float]:
            return (
                runs[0][0],
                statistics.median(r[1] for r in runs),
                statistics.median(r[2] for r in runs),
                _median([r[3] for r in runs]),
                _median([r[4] for r in runs]),
                statistics.median(r[5] for r in runs),
            )

        p_files, p_reg, p_psql, p_reg_cpu, p_psql_cpu, p_client = medians(p_runs)
        g_files, g_reg, g_psql, g_reg_cpu, g_psql_cpu, g_client = medians(g_runs)
        with bench_database() as db:
            version, source = db.server_version, db.server_source
    return Results(
        server_version=version,
        server_source=source,
        seconds_per_round=0.0,
        rounds=rounds,
        procrastinate_first_round_ratio=round(p_runs[0][1] / p_runs[0][2], 3),
        generated_first_round_ratio=round(g_runs[0][1] / g_runs[0][2], 3),
        procrastinate_round_ratios=tuple(round(r[1] / r[2], 3) for r in p_runs),
        generated_round_ratios=tuple(round(r[1] / r[2], 3) for r in g_runs),
        procrastinate_files=p_files,
        procrastinate_register_seconds=round(p_reg, 3),
        procrastinate_psql_seconds=round(p_psql, 3),
        procrastinate_ratio=round(p_reg / p_psql, 3),
        generated_files=g_files,
        generated_register_seconds=round(g_reg, 3),
        generated_psql_seconds=round(g_psql, 3),
        generated_ratio=round(g_reg / g_psql, 3),
        ratio_goal=RATIO_GOAL,
        procrastinate_register_cpu_seconds=_round(p_reg_cpu),
        procrastinate_psql_cpu_seconds=_round(p_psql_cpu),
        generated_register_cpu_seconds=_round(g_reg_cpu),
        generated_psql_cpu_seconds=_round(g_psql_cpu),
        procrastinate_client_cpu_seconds=_round(p_client),
        generated_client_cpu_seconds=_round(g_client),
    )


def per_file_ms(seconds: float, files: int) -> str:
    """Milliseconds per file, one decimal (``-`` for no file)."""
    return f"{seconds * 1000 / files:.1f}" if files else "-"


def cpu_lines(r: Results) -> list[str]:
    """CPU seconds per side and their ratios, when they were read."""
    pairs = [
        (
            "procrastinate",
            r.procrastinate_files,
            r.procrastinate_register_cpu_seconds,
            r.procrastinate_psql_cpu_seconds,
        ),
        (
            "generated",
            r.generated_files,
            r.generated_register_cpu_seconds,
            r.generated_psql_cpu_seconds,
        ),
    ]
    lines = []
    for name, files, reg, base in pairs:
        if reg is None or base is None or not base:
            continue
        lines.append(
            f"CPU (server backend + registering process): {name} {reg:.2f} s vs psql's backend"
            f" {base:.2f} s, {per_file_ms(reg, files)} vs {per_file_ms(base, files)} ms per file,"
            f" ratio {reg / base:.2f}"
        )
    return lines


def report(r: Results) -> str:
    """A header and a three-column table."""
    ok = max(r.procrastinate_ratio, r.generated_ratio) <= r.ratio_goal
    return "\n".join(
        [
            report_title("registration", r),
            "sync_migration_dir (pglast checks, add_migrations batches on the scratch schema) vs "
            "one psql run of the same files, one transaction each, into an empty schema",
            "",
            *ratio_table(
                40,
                [
                    TableRow(
                        f"procrastinate, {r.procrastinate_files} files s",
                        r.procrastinate_register_seconds,
                        "psql s",
                        r.procrastinate_psql_seconds,
                        r.procrastinate_ratio,
                    ),
                    TableRow(
                        f"generated, {r.generated_files} files s",
                        r.generated_register_seconds,
                        "psql s",
                        r.generated_psql_seconds,
                        r.generated_ratio,
                    ),
                ],
            ),
            "",
            "registration per file (flat when linear): "
            f"procrastinate {per_file_ms(r.procrastinate_register_seconds, r.procrastinate_files)}"
            f" ms, generated {per_file_ms(r.generated_register_seconds, r.generated_files)} ms"
            f" (psql {per_file_ms(r.procrastinate_psql_seconds, r.procrastinate_files)}"
            f" and {per_file_ms(r.generated_psql_seconds, r.generated_files)} ms)",
            *cpu_lines(r),
            f"medians over {r.rounds} rounds; per-round ratios: procrastinate "
            + ", ".join(f"{x:.2f}" for x in r.procrastinate_round_ratios)
            + "; generated "
            + ", ".join(f"{x:.2f}" for x in r.generated_round_ratios)
            + " (the first round pays the pglast import, as one CLI run does: "
            f"{r.procrastinate_first_round_ratio:.2f} and {r.generated_first_round_ratio:.2f})",
            "the registering process's own CPU (pglast checks, psycopg) per file: procrastinate"
            f" {per_file_ms(r.procrastinate_client_cpu_seconds or 0.0, r.procrastinate_files)} ms,"
            " generated"
            f" {per_file_ms(r.generated_client_cpu_seconds or 0.0, r.generated_files)} ms",
            "ratio = pgtenancy seconds / baseline seconds (lower is better); "
            f"goal <= {r.ratio_goal:g}: {'met' if ok else 'MISSED'}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, print the table (or JSON)."""
    parser = bench_parser("registration")
    parser.add_argument(
        "--generated",
        type=positive_int,
        default=DEFAULT_GENERATED,
        help=f"files in the generated series (default: {DEFAULT_GENERATED})",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=DEFAULT_ROUNDS,
        help=f"rounds of both series and sides; medians are reported (default: {DEFAULT_ROUNDS})",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    print_results(run(args.generated, args.rounds), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
