"""``python examples/chinook/demo.py``: the kit end to end on the Chinook database.

Runs against an installed pgtenancy (a wheel or a source checkout) with the
extras it uses: ``pip install 'pgtenancy[binary,sqlalchemy,cli,migrations]'``.
The Chinook script is an argument (``--chinook PATH``); by default the
repository's ``../shared/data/chinook/Chinook_PostgreSql.sql`` when present.

1. finds or starts a PostgreSQL server and creates a fresh database on it;
2. installs the SQL core;
3. reads the Chinook script as it is, skipping its psql meta-commands and
   database-level statements, and registers its DDL as tenant migration
   ``0001_chinook``;
4. starts a listener in another process;
5. creates tenants acme, globex and initech, and loads the Chinook data into
   acme only, through ``tenant_session``;
6. shows that acme sees 412 invoices and globex none;
7. suspends initech and shows that entering it fails;
8. prints the events the listener process received, in order;
9. drops the demo database (unless ``--keep``).

Exit status 0 when everything above held, 1 otherwise (2 when the Chinook
file is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import text

from pgtenancy import Tenancy, TenancyError, TenantSuspended, install, tenant_session
from pgtenancy.admin import engine_from_dsn
from pgtenancy.sqlscript import read_script
from pgtenancy.testing import create_database, find_server, fresh_database

HERE = Path(__file__).resolve().parent
#: ``../shared/data/chinook/Chinook_PostgreSql.sql`` relative to the repository.
DEFAULT_CHINOOK = HERE.parents[1].parent / "shared/data/chinook/Chinook_PostgreSql.sql"
#: The receivers of the listener process, a module beside this script.
HANDLERS = "chinook_handlers"
EXPECTED_EVENTS = [
    ("tenant_created", "acme"),
    ("tenant_created", "globex"),
    ("tenant_created", "initech"),
    ("tenant_suspended", "initech"),
]


def say(message: str = "") -> None:
    print(message, flush=True)


def _read_lines(stream: Any, out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line)


def run_demo(dsn: str, chinook: Path) -> bool:
    """Run the demo against the empty database ``dsn``; True when it all held."""
    ok = True
    say(f"database {conninfo_to_dict(dsn)['dbname']}")
    say(f"pgtenancy {install(dsn)} installed")

    script = read_script(chinook.read_text("utf-8"))
    for line, command in script.skipped:
        say(f"  skipped psql meta-command at line {line}: {command}")
    for stmt in script.of_kind("database"):
        say(f"  skipped database statement at line {stmt.line}: {stmt.sql.splitlines()[0]}")
    ddl, data = script.of_kind("ddl"), script.of_kind("data")
    say(
        f"Chinook: {len(ddl)} DDL statements -> tenant migration 0001_chinook; "
        f"{len(data)} data statements"
    )

    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_chinook", script.sql_of("ddl"))

    listener = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgtenancy.cli",
            "listen",
            "--dsn",
            dsn,
            "--consumer",
            "demo",
            "--handlers",
            HANDLERS,
            "--poll-interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        },
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(listener.stdout, lines), daemon=True).start()
    say(f"listener process started (pid {listener.pid}, consumer 'demo')")

    engine = engine_from_dsn(dsn)
    try:
        for slug in ("acme", "globex", "initech"):
            t = tenancy.create_tenant(slug)
            say(f"created tenant {t.slug}: schema {t.schema_name}, migration {t.migration_version}")

        started = time.perf_counter()
        with tenant_session(engine, "acme") as session:
            raw = session.connection().connection.driver_connection
            assert raw is not None
            for stmt in data:
                raw.execute(stmt.sql)  # no parameters: '%' in the data stays literal
            session.commit()
        say(f"loaded the Chinook data into acme in {time.perf_counter() - started:.1f}s")

        for slug, expected in (("acme", 412), ("globex", 0)):
            with tenant_session(engine, slug) as session:
                count = session.execute(text("SELECT count(*) FROM invoice")).scalar_one()
                where = session.execute(text("SELECT current_schema()")).scalar_one()
            mark = "ok" if count == expected else f"EXPECTED {expected}"
            ok &= count == expected
            say(f"tenant_session(engine, {slug!r}): {count} invoices in {where} [{mark}]")

        tenancy.suspend_tenant("initech")
        say("suspended initech")
        try:
            with tenant_session(engine, "initech") as session:
                session.execute(text("SELECT count(*) FROM invoice"))
            say("entering initech succeeded [EXPECTED a refusal]")
            ok = False
        except TenantSuspended as exc:
            say(f"entering initech refused by the database: [{exc.sqlstate}] {exc}")

        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while len(received) < len(EXPECTED_EVENTS) and time.monotonic() < deadline:
            try:
                received.append(json.loads(lines.get(timeout=0.5)))
            except queue.Empty:
                continue
    finally:
        engine.dispose()
        listener.send_signal(signal.SIGTERM)
        code = listener.wait(15)

    say(f"events received by the listener process (pid {listener.pid}), in order:")
    for e in received:
        say(f"  #{e['id']:<3} {e['name']:<18} {e['slug']:<8} status={e['status']:<10} {e['time']}")
    got = [(e["name"], e["slug"]) for e in received]
    if got != EXPECTED_EVENTS:
        say(f"  EXPECTED {EXPECTED_EVENTS}")
        ok = False
    say(f"listener stopped on SIGTERM with exit status {code}")
    ok &= code == 0
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the demo on a fresh database of $DATABASE_URL's server, or a throwaway
    cluster. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--chinook",
        type=Path,
        default=DEFAULT_CHINOOK,
        help=f"Chinook_PostgreSql.sql to use (default: {DEFAULT_CHINOOK})",
    )
    parser.add_argument(
        "--keep", action="store_true", help="Keep the demo database instead of dropping it."
    )
    args = parser.parse_args(argv)
    chinook: Path = args.chinook
    if not chinook.is_file():
        print(
            f"error: Chinook script not found at {chinook}; pass --chinook PATH to "
            "Chinook_PostgreSql.sql (https://github.com/lerocha/chinook-database)",
            file=sys.stderr,
        )
        return 2
    try:
        with find_server(env=("DATABASE_URL",)) as admin:
            if args.keep:
                dsn = create_database(admin, "pgtenancy_demo")
                ok = run_demo(dsn, chinook)
                say(f"kept database: {dsn}")
            else:
                with fresh_database(admin, "pgtenancy_demo") as dsn:
                    ok = run_demo(dsn, chinook)
    except TenancyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    say("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
