"""Helpers shared by the test modules of every folder (unit/, integration/,
crash/, sql/): ``from helpers import X``. No test module imports another test
module; whatever two of them share lives here (fixtures live in conftest.py).

pytest puts ``tests/`` on ``sys.path`` (``pythonpath = ["tests"]`` in
pyproject.toml), so this module, catalog.py, releases.py and record_handlers.py
import the same way from any folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgtenancy.testing import find_bindir

#: The tests/ folder (record_handlers.py lives here: child processes get it
#: on their PYTHONPATH).
TESTS = Path(__file__).resolve().parent
#: The repository root.
ROOT = TESTS.parent
#: The Chinook script in the shared data folder.
CHINOOK = ROOT.parent / "shared" / "data" / "chinook" / "Chinook_PostgreSql.sql"


# --- databases -------------------------------------------------------------


def outbox(dsn: str) -> list[tuple[str, str]]:
    """Every outbox event as (name, tenant slug), in id order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT name, tenant_slug FROM tenancy.events ORDER BY id").fetchall()
    return [(r[0], r[1]) for r in rows]


def as_role(dsn: str, role: str) -> str:
    """``dsn`` connecting as ``role`` (trust or the same password)."""
    return make_conninfo(dsn, user=role)


#: What an install creates in the tenancy schema, one row per object: its
#: kind, name and a fingerprint (oid, definition, trigger text, ACL).
SNAPSHOT = """
SELECT 'relation', c.relname || ':' || c.relkind::text, c.oid::text FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'tenancy'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)) FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tenancy'
UNION ALL
SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'tenancy' AND NOT t.tgisinternal
UNION ALL
SELECT 'acl', p.oid::regprocedure::text,
       -- The migrator role's name is derived from the database's.
       replace(coalesce(p.proacl::text, ''),
               (SELECT migrator_role FROM tenancy.confinement), '<migrator>')
  FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tenancy'
ORDER BY 1, 2
"""


def snapshot(dsn: str) -> list[tuple[Any, ...]]:
    """The rows of SNAPSHOT in the database of ``dsn``: (kind, name, fingerprint)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(SNAPSHOT).fetchall()


# --- processes -------------------------------------------------------------


def pgtenancy_cli() -> list[str]:
    """Command line that runs the pgtenancy CLI of this environment."""
    return [sys.executable, "-m", "pgtenancy.cli"]


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: ours, without DATABASE_URL surprises."""
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pgtenancy ARGS...`` in this process with click's CliRunner.

    ``args`` are the command-line arguments after ``pgtenancy``; ``env`` sets
    environment variables for the run (DATABASE_URL is cleared unless given).
    Returns what subprocess.run(..., capture_output=True, text=True) would:
    ``returncode`` (the exit status), ``stdout`` and ``stderr`` (kept apart).
    An exception the CLI lets escape (a traceback, for a real process) is
    raised here, so a test sees it as it would see "Traceback" on stderr.
    """
    from pgtenancy.cli import main

    environ: dict[str, str | None] = {"DATABASE_URL": None}
    environ.update(env or {})
    result = CliRunner().invoke(main, list(args), env=environ, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        ["pgtenancy", *args], result.exit_code, result.stdout, result.stderr
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``predicate`` every 50 ms until it is true; AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def recorded(path: Path) -> list[dict[str, Any]]:
    """The events record_handlers.py wrote to ``path`` (JSON lines), in order.

    Only complete lines count: a listener process may be appending the last
    one while it is read (the file can even show the new size before the
    bytes), so whatever follows the last newline is left for the next read.
    """
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


# --- the outbox on a shared server ----------------------------------------


def wait_until_readable(dsn: str, timeout: float = 300.0) -> None:
    """Wait until every outbox event of ``dsn``'s database is readable: its
    transaction below the current snapshot's xmin, which is server-wide, so a
    transaction open in any database of the server holds it back.

    This is the condition tenancy.next_events and tenancy.advance_consumer
    need; a test waits for it rather than assume nobody else uses the server.
    AssertionError after ``timeout`` seconds, naming the sessions that hold
    the xmin back.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:

        def readable() -> bool:
            row = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM tenancy.events "
                "WHERE xid >= pg_snapshot_xmin(pg_current_snapshot()))"
            ).fetchone()
            return bool(row and row[0])

        try:
            wait_for(readable, timeout)
        except AssertionError:
            holders = conn.execute(
                "SELECT pid, datname, application_name, state, xact_start, "
                "backend_xid, backend_xmin FROM pg_stat_activity "
                "WHERE backend_xid IS NOT NULL OR backend_xmin IS NOT NULL"
            ).fetchall()
            raise AssertionError(
                f"outbox events not readable after {timeout}s; sessions holding xids: {holders}"
            ) from None


def until_sentinel(dsn: str, record: Path, timeout: float = 30.0) -> list[dict[str, Any]]:
    """What a record_handlers listener recorded before a sentinel event.

    Emits one more lifecycle event (creates the tenant ``sentinel``) in the
    database of ``dsn``, waits until the listener recording to ``record`` has
    recorded it, and returns the entries before it. A consumer delivers in
    outbox order, so once the sentinel arrived everything that was going to
    arrive before it (a redelivery, a duplicate) has: the result is final
    without a sleep. The sentinel commits last, so it is readable last.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('sentinel')")

    def arrived() -> bool:
        return any(e["slug"] == "sentinel" for e in recorded(record))

    wait_for(arrived, timeout)
    entries = recorded(record)
    return entries[: next(i for i, e in enumerate(entries) if e["slug"] == "sentinel")]


def wait_for_polls(dsn: str, consumer: str, polls: int = 2, timeout: float = 30.0) -> None:
    """Wait until the listener of ``consumer`` has finished ``polls`` polls
    that started after this call, seen in its session (pg_stat_activity of this
    database, application_name ``pgtenancy-listener:<consumer>``).

    Each poll ends with tenancy.events_held_back, after reading what is
    readable; with ``polls`` >= 2 the last poll read the outbox entirely after
    this call, so what it would deliver has been delivered: a sentinel for
    "nothing arrived" when no event can pass the one held back.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        since = row[0]
        seen: set[Any] = set()

        def polled() -> bool:
            for (started,) in conn.execute(
                "SELECT query_start FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s "
                "AND query LIKE '%%tenancy.events_held_back(%%' AND query_start > %s",
                (f"pgtenancy-listener:{consumer}", since),
            ):
                seen.add(started)
            return len(seen) >= polls

        wait_for(polled, timeout)


# --- pg_dump / psql --------------------------------------------------------


def tool(name: str) -> str | None:
    """Path of the PostgreSQL client program ``name`` (the server's binaries
    first, then PATH), None when there is none."""
    bindir = find_bindir()
    if bindir is not None and (bindir / name).exists():
        return str(bindir / name)
    return shutil.which(name)


def _connection_args(dsn: str) -> list[str]:
    params = conninfo_to_dict(dsn)
    return [
        "-h",
        str(params.get("host", "127.0.0.1")),
        "-p",
        str(params.get("port", 5432)),
        "-U",
        str(params.get("user", "postgres")),
        "-d",
        str(params["dbname"]),
    ]


def pg_dump(dsn: str, path: Path) -> None:
    """Dump the database of ``dsn`` as a plain SQL script to ``path``."""
    program = tool("pg_dump")
    assert program is not None
    subprocess.run(
        [program, *_connection_args(dsn), "-f", str(path)], check=True, capture_output=True
    )


def psql_restore(dsn: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run the script ``path`` into the database of ``dsn``, stopping at the first error."""
    program = tool("psql")
    assert program is not None
    return subprocess.run(
        [program, *_connection_args(dsn), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        capture_output=True,
        text=True,
    )


# --- the Chinook demo ------------------------------------------------------

DEMO = ROOT / "examples" / "chinook" / "demo.py"
#: The Chinook script: $CHINOOK (as for `make demo CHINOOK=...`), else the
#: repository's ../shared/data/chinook/Chinook_PostgreSql.sql.
CHINOOK_FILE = Path(os.environ.get("CHINOOK") or CHINOOK)


def check_demo_output(result: subprocess.CompletedProcess[str], admin_dsn: str) -> None:
    """Assert what `make demo` promises, and that its database is gone."""
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "skipped psql meta-command at line 28: \\c chinook;" in out
    assert "tenant_session(engine, 'acme'): 412 invoices in tenant_acme [ok]" in out
    assert "tenant_session(engine, 'globex'): 0 invoices in tenant_globex [ok]" in out
    assert "entering initech refused by the database: [PT004]" in out
    events = [
        line.split()[1] + " " + line.split()[2]
        for line in out.splitlines()
        if line.startswith("  #")
    ]
    assert events == [
        "tenant_created acme",
        "tenant_created globex",
        "tenant_created initech",
        "tenant_suspended initech",
    ]
    assert out.rstrip().endswith("demo OK")
    name = out.splitlines()[0].removeprefix("database ")
    assert name.startswith("pgtenancy_demo")
    with psycopg.connect(admin_dsn) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert left.fetchone() == (0,)


# --- the pool-safety workload ----------------------------------------------

TENANTS = [f"t{i:02d}" for i in range(20)]
THREADS = 8
TRANSACTIONS_PER_THREAD = 400


class Boom(Exception):
    """Raised inside a tenant transaction to roll it back."""


def run_threads(work: Callable[[random.Random], None]) -> None:
    """Run ``work(rnd)`` TRANSACTIONS_PER_THREAD times in each of THREADS
    threads (one seeded Random each); assert that none raised."""
    errors: list[BaseException] = []

    def body(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(TRANSACTIONS_PER_THREAD):
                work(rnd)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def clean(settings: tuple[Any, ...]) -> None:
    """Assert that (search_path, tenancy.tenant_id, tenancy.tenant) carry no tenant."""
    path, tenant_id, tenant = settings
    assert path == '"$user", public', settings
    assert tenant_id in (None, ""), settings
    assert tenant in (None, ""), settings


#: Hostile and careless migrations, one file per case with its expected
#: verdict: read by the gate tests and run by the database in the confinement tests.
CORPUS = Path(__file__).parent / "corpus" / "unsafe_migrations"
HEADER = re.compile(r"^-- expect: (refused|warned|allowed): (.+)$")


@dataclass(frozen=True)
class Case:
    """One corpus file and what it expects."""

    path: Path
    expect: str
    what: str
    execution: str
    line: int
    text: str


def load(path: Path) -> Case:
    """Read the header of a corpus file."""
    lines = path.read_text("utf-8").splitlines()
    match = HEADER.match(lines[0])
    assert match, f"{path.name}: first line must be '-- expect: ...'"
    execution = lines[1].removeprefix("-- execution: ")
    line, text = 0, ""
    if match.group(1) == "refused":
        reason = re.match(r"^-- reason: line (\d+): (.+)$", lines[2])
        assert reason, f"{path.name}: third line must be '-- reason: line N: ...'"
        line, text = int(reason.group(1)), reason.group(2)
    elif match.group(1) == "warned":
        text = lines[2].removeprefix("-- warning: ")
    return Case(path, match.group(1), match.group(2), execution, line, text)


def kit_roles(conn: psycopg.Connection[Any], migrator: str | None) -> list[str]:
    """The roles the kit made for the database whose migrator is ``migrator``
    (tenants' owner roles, their group role, the migrator), in the order they
    can be dropped; empty for None."""
    if migrator is None:
        return []
    from pgtenancy.queries import QUERIES

    rows = conn.execute(QUERIES["testing_kit_roles"], {"migrator": migrator}).fetchall()
    return [str(r[0]) for r in rows] + [migrator]


#: Client messages that end a round trip: a simple Query, an extended-protocol Sync.
ENDS_ROUND_TRIP = ("Query", "Sync")


class Trace:
    """A libpq protocol trace of one connection (``PGconn.trace``), read back
    as the messages the client sent."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="pgtenancy-trace-")
        os.close(fd)
        self.path = Path(name)
        self._file = self.path.open("w")

    def attach(self, pgconn: pq.abc.PGconn) -> None:
        pgconn.trace(self._file.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def _lines(self) -> list[list[str]]:
        self._file.flush()
        return [
            fields
            for fields in (line.split("\t") for line in self.path.read_text().splitlines())
            if len(fields) >= 3 and fields[0] == "F"
        ]

    def mark(self) -> int:
        """Position after everything traced so far."""
        return len(self.sent())

    def sent(self) -> list[str]:
        """Names of the messages the client sent, in order."""
        return [fields[2].split()[0] for fields in self._lines()]

    def queries(self) -> list[str]:
        """The texts of the simple-query messages the client sent, in order."""
        return [f[3].strip()[1:-1] for f in self._lines() if f[2] == "Query" and len(f) >= 4]

    def parses(self) -> list[str]:
        """The statement texts of the Parse messages the client sent, in order."""
        out = []
        for fields in self._lines():
            if fields[2] == "Parse" and len(fields) >= 4:
                found = re.match(r'^ "[^"]*" "(.*)" \d+', fields[3])
                if found:
                    out.append(found.group(1))
        return out

    def round_trips_since(self, mark: int) -> int:
        return sum(1 for name in self.sent()[mark:] if name in ENDS_ROUND_TRIP)

    def close(self) -> None:
        self._file.close()
        self.path.unlink()
