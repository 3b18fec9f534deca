"""Start-up of the command line and the no-op fleet run (issue 16, goals 5 and 6):
ratios against ``python -c "import psycopg"`` and psql, measured in the same run.

Run from the repository root (``make bench`` runs ``bench_entry.py``, which
measures the same with fewer rounds)::

    .venv/bin/python bench/bench_startup.py [--rounds 7] [--tenants 10000]
        [--provision-tenants 20] [--provision-rounds 5] [--chinook PATH] [--json]

Against one server (``DATABASE_URL`` when set, else what
:func:`pgtenancy.testing.find_server` finds or starts), in fresh databases
dropped at the end.

1. **Start-up** (goal 5: each within 1.5x of the baseline). Subprocesses, one
   after the other, the order rotating each round, after one warm-up round
   that is not counted: ``python -c "import psycopg"`` (the baseline: the
   driver the kit cannot do without), ``python -c "import pgtenancy"``,
   ``pgtenancy --help``, ``pgtenancy version`` and ``pgtenancy migrate`` with
   nothing to apply on ``--tenants`` tenants (each with one table, made by one
   registered migration), run as a user runs them (the console script, output
   to a pipe, no options besides ``DATABASE_URL``). Each gets the median wall
   time over ``--rounds`` rounds and its ratio to the baseline's median; the
   ratio of CPU time (user + system of the child, from ``getrusage``), which
   moves less with the machine's load, is printed beside it.
   Bytecode (``--bytecode``): ``compiled`` (the default) compiles pgtenancy's
   modules ahead, as pip does when it installs the wheel; ``none`` removes
   their ``__pycache__`` and runs the commands with
   ``PYTHONDONTWRITEBYTECODE=1``, so every start compiles them from source
   (an editable install in an environment that sets that variable; psycopg
   and click keep their bytecode); ``both`` runs the series twice, in that
   order, each with its own baseline, and leaves the bytecode compiled.
2. **The no-op fleet run** (goal 6: under 1 s for 10,000 tenants): the same
   ``pgtenancy migrate`` run's median wall time, start-up included.
3. **Provisioning with the Chinook DDL** (goal 6: at least 1.0x psql):
   ``Tenancy.create_tenant`` on one connection against one psql run of the
   same DDL per batch (``CREATE SCHEMA``, ``SET LOCAL search_path``, the DDL,
   one transaction per schema), ``--provision-tenants`` tenants per side and
   round, sides alternating, ``--provision-rounds`` rounds; medians of the
   per-round rates. psql's time includes its own start-up and connection
   (one per batch); ``create_tenant``'s connection is opened before timing.
"""

from __future__ import annotations

import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg

import pgtenancy
from bench_clone import DEFAULT_CHINOOK
from bench_core import RELATIONS, provision_psql, provision_tenancy
from common import (
    BaseResults,
    add_json_option,
    bench_parser,
    find_psql,
    log,
    positive_int,
    print_results,
    report_title,
)
from pgtenancy.admin import Tenancy
from pgtenancy.sqlscript import read_script
from pgtenancy.testing import find_server, fresh_database

CLI = [str(Path(sys.executable).with_name("pgtenancy"))]
BASELINE = 'python -c "import psycopg"'
#: Wall-time goals: a command's ratio to the baseline (goal 5), seconds (goal 6).
STARTUP_GOAL = 1.5
NOOP_GOAL_SECONDS = 1.0
PROVISION_GOAL = 1.0


def commands(tenants: int) -> dict[str, list[str]]:
    """Label -> argv of every timed command (the baseline first)."""
    return {
        BASELINE: [sys.executable, "-c", "import psycopg"],
        'python -c "import pgtenancy"': [sys.executable, "-c", "import pgtenancy"],
        "pgtenancy --help": [*CLI, "--help"],
        "pgtenancy version": [*CLI, "version"],
        f"pgtenancy migrate (no-op, {tenants:,} tenants)": [*CLI, "migrate"],
    }


def make_tenants(dsn: str, tenants: int) -> None:
    """``tenants`` tenants f00000.., each with the one registered migration."""
    pgtenancy.install(dsn)
    Tenancy(dsn).add_migration("0001_note", "CREATE TABLE note (id int PRIMARY KEY)")
    log(f"start-up: creating {tenants:,} tenants for the no-op migrate")
    with psycopg.connect(dsn) as conn:
        for i in range(0, tenants, 500):
            with conn.transaction():
                for j in range(i, min(i + 500, tenants)):
                    conn.execute("SELECT tenancy.create_tenant(%s)", (f"f{j:05d}",))


def timed(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its standard output) of one run.

    Raises:
        RuntimeError: the command exited non-zero (with its standard error).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(list(argv), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return wall, cpu, done.stdout


def set_bytecode(mode: str) -> dict[str, str]:
    """Put pgtenancy's bytecode in state ``mode`` ("compiled" or "none"); the
    environment the commands run in."""
    package = Path(pgtenancy.__file__).resolve().parent
    env = dict(os.environ)
    if mode == "compiled":
        compileall.compile_dir(str(package), quiet=1)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        for cache in package.rglob("__pycache__"):
            shutil.rmtree(cache)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def bench_startup(
    dsn: str, tenants: int, rounds: int, bytecode: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-round (wall seconds, CPU seconds) of each command, interleaved."""
    env = {**set_bytecode(bytecode), "DATABASE_URL": dsn}
    argvs = commands(tenants)
    noop = next(k for k in argvs if k.startswith("pgtenancy migrate"))
    wall: dict[str, list[float]] = {k: [] for k in argvs}
    cpu: dict[str, list[float]] = {k: [] for k in argvs}
    for r in range(rounds + 1):  # round 0 warms the file cache and is not counted
        names = list(argvs)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            took, used, out = timed(argvs[name], env)
            if name == noop and f"0 migrated, 0 failed, {tenants} already current" not in out:
                raise RuntimeError(f"the no-op migrate did something: {out.strip()[-300:]}")
            if r:
                wall[name].append(took)
                cpu[name].append(used)
        if r:
            log(
                f"  {bytecode} round {r}/{rounds}: "
                + ", ".join(f"{wall[k][-1]:.2f}" for k in argvs)
            )
    return wall, cpu


@dataclass(frozen=True)
class Series:
    """One start-up series: medians (seconds), ratios to the baseline, every round."""

    wall_seconds: dict[str, float]
    cpu_seconds: dict[str, float]
    wall_ratios: dict[str, float]
    cpu_ratios: dict[str, float]
    wall_rounds: dict[str, list[float]]
    noop_seconds: float


def series(wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> Series:
    walls = {k: median(v) for k, v in wall.items()}
    cpus = {k: median(v) for k, v in cpu.items()}
    noop = next(k for k in walls if k.startswith("pgtenancy migrate"))
    return Series(
        wall_seconds=walls,
        cpu_seconds=cpus,
        wall_ratios={k: round(v / walls[BASELINE], 3) for k, v in walls.items()},
        cpu_ratios={k: round(v / cpus[BASELINE], 3) for k, v in cpus.items() if cpus[BASELINE]},
        wall_rounds={k: [round(x, 3) for x in v] for k, v in wall.items()},
        noop_seconds=walls[noop],
    )


def bench_provisioning(
    dsn: str, ddl: str, per_round: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Per-round tenants/s of (create_tenant, psql), sides alternating."""
    psql = find_psql()
    tenancy_conn = psycopg.connect(dsn, autocommit=True)
    try:
        tenancy = Tenancy(tenancy_conn)
        tenancy.add_migration("0001_chinook", ddl)
        provision_tenancy(tenancy, ["warm"])  # first use: prepared statements, caches
        provision_psql(psql, dsn, ddl, ["p_warm"])
        ours: list[float] = []
        theirs: list[float] = []
        for r in range(rounds):
            slugs = [f"b{r}_{i}" for i in range(per_round)]
            schemas = [f"p_{r}_{i}" for i in range(per_round)]
            sides: list[tuple[list[float], Callable[[], float]]] = [
                (ours, partial(provision_tenancy, tenancy, slugs)),
                (theirs, partial(provision_psql, psql, dsn, ddl, schemas)),
            ]
            for out, side in sides if r % 2 == 0 else sides[::-1]:
                out.append(per_round / side())
            log(f"  provisioning round {r + 1}/{rounds}: {ours[-1]:.1f}/s vs {theirs[-1]:.1f}/s")
        one = tenancy_conn.execute(RELATIONS, ("tenant_b0_0",)).fetchone()
        other = tenancy_conn.execute(RELATIONS, ("p_0_0",)).fetchone()
        if one is None or other is None or one[0] != other[0] or one[0] == 0:
            raise RuntimeError(f"schemas differ: tenant_b0_0 {one}, p_0_0 {other} relations")
    finally:
        tenancy_conn.close()
    return ours, theirs


@dataclass(frozen=True)
class Results(BaseResults):
    """Start-up series by bytecode mode; provisioning medians (tenants/s) and rounds."""

    tenants: int
    load_average: list[float]
    startup: dict[str, Series]
    provision_tenants: int
    create_tenant_per_s: float
    psql_per_s: float
    provision_ratio: float
    provision_rounds: dict[str, list[float]]
    elapsed_seconds: float


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3)


@contextmanager
def fleet_database(admin: str, tenants: int, existing: str | None) -> Iterator[str]:
    """A database with ``tenants`` tenants at the latest migration: ``existing``
    as it is (``--fleet-database``), or a fresh one, dropped at the end."""
    if existing is not None:
        yield existing
        return
    with fresh_database(admin, "pgtenancy_bench_startup") as dsn:
        make_tenants(dsn, tenants)
        yield dsn


def run(
    tenants: int,
    rounds: int,
    per_round: int,
    provision_rounds: int,
    chinook: Path,
    bytecode: str,
    existing: str | None,
) -> Results:
    started = time.perf_counter()
    ddl = read_script(chinook.read_text("utf-8")).sql_of("ddl")
    modes = ["compiled", "none"] if bytecode == "both" else [bytecode]
    startup: dict[str, Series] = {}
    with find_server(env=("DATABASE_URL",)) as admin:
        source = "$DATABASE_URL" if os.environ.get("DATABASE_URL") else "find_server()"
        with fleet_database(admin, tenants, existing) as dsn:
            with psycopg.connect(dsn) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            version = str(row[0]) if row else "?"
            for mode in modes:
                log(f"start-up ({mode} bytecode): {rounds} rounds of {len(commands(tenants))}")
                startup[mode] = series(*bench_startup(dsn, tenants, rounds, mode))
            if modes[-1] != "compiled":
                set_bytecode("compiled")
            load = os.getloadavg()
        with fresh_database(admin, "pgtenancy_bench_provision") as dsn:
            pgtenancy.install(dsn)
            log(f"provisioning: {provision_rounds} rounds x {per_round} Chinook tenants per side")
            ours, theirs = bench_provisioning(dsn, ddl, per_round, provision_rounds)
    return Results(
        server_version=version,
        server_source=source,
        seconds_per_round=0.0,
        rounds=rounds,
        tenants=tenants,
        load_average=[round(x, 1) for x in load],
        startup=startup,
        provision_tenants=per_round,
        create_tenant_per_s=round(statistics.median(ours), 2),
        psql_per_s=round(statistics.median(theirs), 2),
        provision_ratio=round(statistics.median(ours) / statistics.median(theirs), 3),
        provision_rounds={
            "create_tenant": [round(x, 2) for x in ours],
            "psql": [round(x, 2) for x in theirs],
        },
        elapsed_seconds=round(time.perf_counter() - started, 1),
    )


def report(r: Results) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [
        report_title("start-up", r),
        f"{r.rounds} interleaved rounds per series (after one warm-up round), medians; "
        f"load average after the start-up series "
        + " / ".join(f"{x:g}" for x in r.load_average)
        + f" on {os.cpu_count()} cores; total run time {r.elapsed_seconds:g} s",
    ]
    for mode, sr in r.startup.items():
        what = {
            "compiled": "pgtenancy's bytecode compiled ahead (as pip installs the wheel)",
            "none": "no bytecode for pgtenancy: compiled from source at every start",
        }[mode]
        lines += [
            "",
            f"{what}",
            f"{'command':<46} {'wall s':>7} {'ratio':>6} {'CPU s':>6} {'ratio':>6}",
        ]
        for k, v in sr.wall_seconds.items():
            lines.append(
                f"{k:<46} {v:>7.3f} {sr.wall_ratios[k]:>6.2f} "
                f"{sr.cpu_seconds[k]:>6.3f} {sr.cpu_ratios.get(k, 0.0):>6.2f}"
            )
        worst = max(v for k, v in sr.wall_ratios.items() if k.startswith("pgtenancy"))
        lines += [
            f"goal 5, each pgtenancy command within {STARTUP_GOAL:g}x of {BASELINE} (wall): "
            f"worst {worst:.2f}, {met(worst <= STARTUP_GOAL)}",
            f"goal 6, no-op migrate on {r.tenants:,} tenants under {NOOP_GOAL_SECONDS:g} s: "
            f"{sr.noop_seconds:.3f} s, {met(sr.noop_seconds < NOOP_GOAL_SECONDS)}"
            + ("" if r.tenants >= 10_000 else f" [this run: {r.tenants:,} tenants, not 10,000]"),
        ]
    lines += [
        "",
        f"goal 6, provisioning ({r.provision_tenants} Chinook tenants per side and round): "
        f"create_tenant {r.create_tenant_per_s:g}/s, psql {r.psql_per_s:g}/s, "
        f"ratio {r.provision_ratio:.2f}, {met(r.provision_ratio >= PROVISION_GOAL)}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("start-up")
    parser.add_argument(
        "--rounds", type=positive_int, default=7, help="interleaved rounds (default: 7)"
    )
    parser.add_argument(
        "--tenants",
        type=positive_int,
        default=10_000,
        help="tenants for the no-op migrate (default: 10000)",
    )
    parser.add_argument(
        "--provision-tenants",
        type=positive_int,
        default=20,
        help="Chinook tenants provisioned per side and round (default: 20)",
    )
    parser.add_argument(
        "--provision-rounds",
        type=positive_int,
        default=5,
        help="provisioning rounds, sides alternating (default: 5)",
    )
    parser.add_argument(
        "--chinook",
        type=Path,
        default=DEFAULT_CHINOOK,
        help="Chinook_PostgreSql.sql (default: %(default)s)",
    )
    parser.add_argument(
        "--bytecode",
        choices=("compiled", "none", "both"),
        default="both",
        help="pgtenancy's bytecode during the start-up series (default: both)",
    )
    parser.add_argument(
        "--fleet-database",
        default=None,
        metavar="DSN",
        help="use this database, which already holds --tenants tenants at the latest "
        "migration, instead of making one (it is left as it is)",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    if not args.chinook.is_file():
        parser.error(f"Chinook script not found: {args.chinook}")
    results = run(
        args.tenants,
        args.rounds,
        args.provision_tenants,
        args.provision_rounds,
        args.chinook,
        args.bytecode,
        args.fleet_database,
    )
    print_results(results, report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
