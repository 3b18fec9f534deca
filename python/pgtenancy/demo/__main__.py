"""``python -m pgtenancy.demo``: the kit end to end on the Chinook database.

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

Exit status 0 when everything above held, 1 otherwise.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from sqlalchemy import text

from pgtenancy import Tenancy, TenancyError, TenantSuspended, install, tenant_session
from pgtenancy.admin import engine_from_dsn
from pgtenancy.server import find_server, fresh_database
from pgtenancy.sqlscript import read_script

DEFAULT_CHINOOK = (
    Path(__file__).resolve().parents[3].parent / "shared/data/chinook/Chinook_PostgreSql.sql"
)
EXPECTED_EVENTS = [
    ("tenant_created", "acme"),
    ("tenant_created", "globex"),
    ("tenant_created", "initech"),
    ("tenant_suspended", "initech"),
]


def say(message: str = "") -> None:
    click.echo(message)


def _read_lines(stream: Any, out: queue.Queue[str]) -> None:
    for line in stream:
        out.put(line)


def run_demo(dsn: str, chinook: Path) -> bool:
    """Run the demo against the empty database ``dsn``; True when it all held."""
    ok = True
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
            "pgtenancy.demo.handlers",
            "--poll-interval",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        text=True,
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


@click.command()
@click.option(
    "--chinook",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_CHINOOK,
    show_default=True,
    help="Chinook_PostgreSql.sql to use.",
)
@click.option("--keep", is_flag=True, help="Keep the demo database instead of dropping it.")
def main(chinook: Path, keep: bool) -> None:
    """Run the demo: a fresh database on $DATABASE_URL's server, or a throwaway cluster."""
    try:
        with find_server(env=("DATABASE_URL",)) as admin:
            if keep:
                from pgtenancy.server import create_database

                dsn = create_database(admin, "pgtenancy_demo")
                ok = run_demo(dsn, chinook)
                say(f"kept database: {dsn}")
            else:
                with fresh_database(admin, "pgtenancy_demo") as dsn:
                    ok = run_demo(dsn, chinook)
    except TenancyError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    say("demo OK" if ok else "demo FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
