"""The ``pgtenancy`` command line: install the SQL, manage tenants, run a listener.

Every command takes ``--dsn`` (default: the ``DATABASE_URL`` environment
variable). Errors print one line, ``error: ...``, on stderr and exit with
status 1 (2 for usage errors).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

# Commands import what they use when they run: `pgtenancy --help` loads click
# and this module only (not even psycopg), `pgtenancy version` and a no-op
# `pgtenancy migrate` add psycopg and the few modules they need, never
# SQLAlchemy, rich, pglast or the listener (tests/integration/test_import_cost.py).
if TYPE_CHECKING:
    from pgtenancy.admin import Isolation, Tenancy, Tenant
    from pgtenancy.fleet import FleetReport, TenantOutcome

F = TypeVar("F", bound=Callable[..., Any])


#: Optional dependency -> the extra that installs it.
_EXTRAS = {
    "sqlalchemy": "sqlalchemy",
    "rich": "cli",
    "pglast": "migrations",
    "alembic": "alembic",
    "mako": "alembic",
}


class _Group(click.Group):
    """Click group that turns pgtenancy and database errors into one line.

    ``migrate squash`` is a command of its own, although ``migrate`` takes
    slugs as arguments (migrate a tenant named squash with ``--tenants``)."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if len(args) >= 2 and args[0] == "migrate" and args[1] == "squash":
            return "migrate squash", migrate_squash, args[2:]
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            extra = _EXTRAS.get((exc.name or "").split(".")[0])
            if extra is None:
                click.echo(f"error: {_one_line(exc)}", err=True)
            else:
                click.echo(
                    f"error: this command needs {exc.name}: pip install 'pgtenancy[{extra}]'",
                    err=True,
                )
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors, --help and ^C: click prints them
        except Exception as exc:
            # Imported here, not at start-up: a command that failed has used them.
            import psycopg

            from pgtenancy.errors import TenancyError, translate

            if isinstance(exc, (TenancyError, psycopg.Error, ImportError, FileNotFoundError)):
                click.echo(f"error: {_one_line(translate(exc))}", err=True)
                sys.exit(1)
            if type(exc).__name__ == "CommandError" and type(exc).__module__.startswith("alembic"):
                click.echo(f"error: alembic: {_one_line(exc)}", err=True)
                sys.exit(1)
            orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError, when one leaks
            if not isinstance(orig, psycopg.Error):
                raise
            err = translate(exc)
            if err is exc:
                err = orig
            click.echo(f"error: {_one_line(err)}", err=True)
            sys.exit(1)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def dsn_option(func: F) -> F:
    """Add the ``--dsn`` option (env ``DATABASE_URL``) to a command."""
    return click.option(
        "--dsn",
        envvar="DATABASE_URL",
        show_envvar=True,
        required=True,
        help="Database URL or libpq string (required unless DATABASE_URL is set).",
    )(func)


def _tenant_dict(t: Tenant) -> dict[str, Any]:
    return {
        "slug": t.slug,
        "id": str(t.id),
        "schema": t.schema_name,
        "status": t.status,
        "isolation": t.isolation,
        "migration_version": t.migration_version,
        "metadata": t.metadata,
        "created_at": t.created_at.isoformat() if t.created_at else None,
    }


def _tenancy(dsn: str) -> Tenancy:
    from pgtenancy.admin import Tenancy

    return Tenancy(dsn)


def _print_tenant(verb: str, t: Tenant) -> None:
    where = f"schema {t.schema_name}" if t.schema_name else "shared tables"
    click.echo(
        f"{verb} {t.slug} ({where}, status {t.status}, migration {t.migration_version or '-'})"
    )


#: install's and uninstall's --lock-timeout: the values of
#: pgtenancy.installer.DEFAULT_LOCK_TIMEOUT and MAX_LOCK_TIMEOUT, written out
#: so that --help does not import the installer (and psycopg with it);
#: tests/integration/test_install_blocked.py checks they agree.
LOCK_TIMEOUT_DEFAULT = 5.0
LOCK_TIMEOUT_MAX = 2147483.647
lock_timeout_option = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0, max=LOCK_TIMEOUT_MAX),
    default=LOCK_TIMEOUT_DEFAULT,
    show_default=True,
    help="Seconds each lock may wait for other sessions before it gives up (nothing "
    "changed); 0 waits without limit. Another install running is waited for.",
)


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """pgtenancy: PostgreSQL-native multi-tenancy."""
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@main.command()
@dsn_option
@click.option(
    "--accelerator/--no-accelerator",
    default=None,
    help="Use (or not) the C accelerator of tenant entry where the server has it; "
    "default: as recorded, on for a first install.",
)
@lock_timeout_option
def install(dsn: str, accelerator: bool | None, lock_timeout: float) -> None:
    """Install or upgrade the SQL core in one transaction (idempotent)."""
    from pgtenancy.installer import install as install_sql
    from pgtenancy.installer import installed_accelerator

    version = install_sql(dsn, accelerate=accelerator, lock_timeout=lock_timeout)
    used = "in use" if installed_accelerator(dsn) else "not in use (PL/pgSQL)"
    click.echo(f"pgtenancy {version} installed; C accelerator {used}")


@main.command()
@dsn_option
@click.option("--drop-tenants", is_flag=True, help="Also drop every tenant schema and its data.")
@lock_timeout_option
def uninstall(dsn: str, drop_tenants: bool, lock_timeout: float) -> None:
    """Remove the SQL core. Refuses while tenants exist, unless --drop-tenants."""
    from pgtenancy.installer import uninstall as uninstall_sql

    uninstall_sql(dsn, drop_tenants=drop_tenants, lock_timeout=lock_timeout)
    click.echo("pgtenancy uninstalled")


@main.command()
@dsn_option
def version(dsn: str) -> None:
    """Print the installed SQL version ("not installed" and status 1 if absent)."""
    from pgtenancy.installer import installed_version

    found = installed_version(dsn)
    if found is None:
        click.echo("not installed")
        sys.exit(1)
    click.echo(found)


@main.command()
@dsn_option
@click.argument("slug")
@click.option("--metadata", default="{}", help="JSON object stored with the tenant.")
@click.option(
    "--isolation",
    type=click.Choice(["schema", "shared"]),
    default="schema",
    show_default=True,
    help="schema: a schema of its own; shared: rows in RLS-guarded shared tables.",
)
def create(dsn: str, slug: str, metadata: str, isolation: str) -> None:
    """Create tenant SLUG: schema (or shared rows), migrations, registry row, event."""
    try:
        meta = json.loads(metadata)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from exc
    if not isinstance(meta, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--metadata")
    tenancy = _tenancy(dsn)
    _print_tenant(
        "created", tenancy.create_tenant(slug, meta, isolation=cast("Isolation", isolation))
    )


@main.command(name="list")
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.option("--sizes", is_flag=True, help="Bytes and rows per tenant (tenancy.tenant_sizes()).")
def list_(dsn: str, as_json: bool, sizes: bool) -> None:
    """List tenants (on Citus with each schema tenant's node)."""
    if sizes:
        _list_sizes(dsn, as_json)
        return
    tenancy = _tenancy(dsn)
    tenants = tenancy.list_tenants()
    if as_json:
        for t in tenants:
            click.echo(json.dumps(_tenant_dict(t)))
        return
    # On Citus, the node of each schema tenant (a column only when there is one).
    nodes = tenancy.tenant_nodes() if tenants else {}
    node_col = any(nodes.values())
    click.echo(
        f"{'slug':<24} {'status':<10} {'migration':<16} schema" + ("  node" if node_col else "")
    )
    for t in tenants:
        where = t.schema_name or "(shared)"
        line = f"{t.slug:<24} {t.status:<10} {t.migration_version or '-':<16} {where}"
        if node_col:
            line += f"  {nodes.get(t.slug) or '-'}"
        click.echo(line)


@main.command()
@dsn_option
@click.argument("slug")
@click.argument("node_host")
@click.argument("node_port", type=int)
def move(dsn: str, slug: str, node_host: str, node_port: int) -> None:
    """Citus: move schema tenant SLUG to worker NODE_HOST NODE_PORT (citus_schema_move)."""
    node = _tenancy(dsn).move_tenant(slug, node_host, node_port)
    click.echo(f"moved {slug} to {node}")


@main.command()
@dsn_option
@click.argument("slug")
def suspend(dsn: str, slug: str) -> None:
    """Suspend tenant SLUG: entering it fails until resumed."""
    _print_tenant("suspended", _tenancy(dsn).suspend_tenant(slug))


@main.command()
@dsn_option
@click.argument("slug")
def resume(dsn: str, slug: str) -> None:
    """Resume suspended tenant SLUG."""
    _print_tenant("resumed", _tenancy(dsn).resume_tenant(slug))


@main.command()
@dsn_option
@click.argument("slug")
@click.option(
    "--destroy-data", is_flag=True, help="Drop the schema and the row, not a soft delete."
)
def drop(dsn: str, slug: str, destroy_data: bool) -> None:
    """Delete tenant SLUG (soft by default)."""
    t = _tenancy(dsn).drop_tenant(slug, destroy_data=destroy_data)
    _print_tenant("destroyed" if destroy_data else "deleted", t)


@main.command(name="add-migration")
@dsn_option
@click.argument("migration_version", metavar="VERSION")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def add_migration(dsn: str, migration_version: str, file: Path) -> None:
    """Register the SQL in FILE as tenant migration VERSION."""
    m = _tenancy(dsn).add_migration(migration_version, file.read_text("utf-8"))
    click.echo(f"migration {m.version} registered ({m.checksum[:12]})")


@main.command()
@dsn_option
@click.argument("slugs", nargs=-1)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Register this directory's migration files first, checked (NNNN_name.sql, any "
    "<version>_<name>.sql, Flyway V<version>__<name>.sql, golang-migrate *.up.sql, or one "
    "directory per migration with up.sql; README: naming rules).",
)
@click.option(
    "--shared-dir",
    "shared_directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Apply the shared-schema migrations of this directory first (once per database).",
)
@click.option(
    "--alembic",
    "alembic_ini",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Register the revisions of this Alembic project (its alembic.ini), rendered offline.",
)
@click.option(
    "--check-models",
    "models",
    metavar="MODULE:METADATA",
    help="Only compare these SQLAlchemy models with the latest registered schema; "
    "exit 1 listing the differences.",
)
@click.option(
    "--shared-schema",
    "shared_schemas",
    multiple=True,
    default=("public",),
    show_default=True,
    help="Schema migrations may reference (repeatable).",
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Tenants migrated in parallel, one connection each.",
)
@click.option(
    "--lock-timeout",
    default="5s",
    show_default=True,
    help="A tenant whose tables stay locked longer fails instead of waiting.",
)
@click.option(
    "--tenants",
    "tenant_list",
    default=None,
    help="Comma-separated slugs to migrate (a canary); default all.",
)
@click.option(
    "--limit", type=click.IntRange(1, None), default=None, help="Migrate at most this many tenants."
)
@click.option("--dry-run", is_flag=True, help="Print per tenant what would run; change nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar; failures and the summary only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for CI).")
def migrate(
    dsn: str,
    slugs: tuple[str, ...],
    directory: Path | None,
    shared_directory: Path | None,
    alembic_ini: Path | None,
    models: str | None,
    shared_schemas: tuple[str, ...],
    jobs: int,
    lock_timeout: str,
    tenant_list: str | None,
    limit: int | None,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Apply missing migrations to every tenant (or SLUGS / --tenants), each in
    its own transaction, over --jobs connections. Exit status 1 when any tenant
    failed or is unaccounted for. `pgtenancy migrate squash --help`: baselines."""
    from pgtenancy.fleet import migrate_fleet, plan_fleet, sync_migration_dir

    if models is not None:
        if directory or shared_directory or alembic_ini or slugs or tenant_list or dry_run:
            raise click.UsageError("--check-models checks only: give it no other action")
        _check_models(dsn, models, as_json)
        return
    if shared_directory is not None and dry_run:
        from pgtenancy.shared_migrations import pending_shared_migrations

        for version in pending_shared_migrations(dsn, shared_directory):
            click.echo(f"shared: would apply {version}")
    if shared_directory is not None and not dry_run:
        from pgtenancy.shared_migrations import apply_shared_migrations

        shared = apply_shared_migrations(dsn, shared_directory)
        if not (quiet or as_json) or shared.applied:
            click.echo(
                f"shared migrations: {len(shared.applied)} applied, {len(shared.current)} current",
                err=True,
            )
    new_versions: list[str] = []
    if directory is not None:
        synced = sync_migration_dir(dsn, directory, shared_schemas=shared_schemas, dry_run=dry_run)
        for warning in synced.warnings:
            click.echo(f"warning: {warning}", err=True)
        if not synced.files:
            click.echo(f"warning: {directory} holds no migration files", err=True)
        elif not (quiet or as_json):
            click.echo(
                f"migrations: {len(synced.registered)} "
                f"{'to register' if dry_run else 'registered'}, {len(synced.current)} current",
                err=True,
            )
        new_versions = synced.registered if dry_run else []
    if alembic_ini is not None:
        from pgtenancy.alembic import sync_alembic

        revisions = sync_alembic(dsn, alembic_ini, shared_schemas=shared_schemas, dry_run=dry_run)
        for warning in revisions.warnings:
            click.echo(f"warning: {warning}", err=True)
        if not (quiet or as_json) and not dry_run:
            click.echo(
                f"alembic: {len(revisions.registered)} registered, "
                f"{len(revisions.current)} current",
                err=True,
            )
        new_versions += revisions.registered if dry_run else []
    wanted = [*slugs, *(tenant_list.split(",") if tenant_list else [])]
    selected = [s.strip() for s in wanted if s.strip()] or None
    if dry_run:
        fleet = plan_fleet(dsn, tenants=selected, limit=limit, new_versions=new_versions)
        if as_json:
            click.echo(json.dumps({"dry_run": fleet.as_dict()}))
            return
        for t in fleet.todo:
            click.echo(f"{t.slug}: at {t.from_version or '-'}, would apply {', '.join(t.versions)}")
        for slug in fleet.unknown:
            click.echo(f"{slug}: not found", err=True)
        for slug in fleet.deleted:
            click.echo(f"{slug}: deleted", err=True)
        click.echo(f"{len(fleet.todo)} tenants would be migrated, {fleet.current} current")
        return
    if quiet or as_json:  # no progress bar: rich is not even imported
        report = migrate_fleet(
            dsn, jobs=jobs, lock_timeout=lock_timeout, tenants=selected, limit=limit
        )
    else:
        report = _migrate_with_progress(dsn, jobs, lock_timeout, selected, limit)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        if not quiet:
            for o in report.migrated:
                click.echo(f"{o.slug}: migrated to {o.to_version}")
        for o in report.failed:
            click.echo(
                f"{o.slug}: FAILED at {o.from_version or '-'} [{o.sqlstate}] {o.message}", err=True
            )
        for slug, node in report.placements.moved_back.items():
            click.echo(f"{slug}: moved back to {node}")
        for slug, message in report.placements.failed.items():
            click.echo(f"{slug}: not moved back to its node: {message}", err=True)
        click.echo(
            f"{len(report.migrated)} migrated, {len(report.failed)} failed, "
            f"{report.current} already current of {report.planned} in {report.elapsed:.1f}s"
        )
    if not report.ok:
        missing = report.planned - len(report.migrated) - report.current - len(report.failed)
        extra = f", {missing} unaccounted for" if missing else ""
        click.echo(
            f"error: {len(report.failed)} of {report.planned} tenants failed{extra}", err=True
        )
        sys.exit(1)


@click.command(name="migrate squash")
@dsn_option
@click.option(
    "--through",
    "through",
    required=True,
    metavar="VERSION",
    help="Last registered migration the baseline stands for.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the baseline's SQL to this file.",
)
@click.option("--dry-run", is_flag=True, help="Make and print the baseline; register nothing.")
@click.option("--drop", is_flag=True, help="Remove the baseline through VERSION instead.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def migrate_squash(
    dsn: str, through: str, out: Path | None, dry_run: bool, drop: bool, as_json: bool
) -> None:
    """Squash the migrations up to --through into a baseline, checked against a
    replay and registered: new tenants run it and the migrations after it;
    existing tenants are not touched. Needs pg_dump."""
    if drop:
        dropped = _tenancy(dsn).drop_baseline(through)
        if as_json:
            click.echo(json.dumps({"dropped": dropped, "through_version": through}))
        elif dropped:
            click.echo(f"baseline through {through} dropped; new tenants replay from the next one")
        else:
            click.echo(f"error: no baseline through {through}", err=True)
            sys.exit(1)
        return
    from pgtenancy.fleet import squash_migrations

    result = squash_migrations(dsn, through, dry_run=dry_run)
    if out is not None:
        out.write_text(result.sql, "utf-8")
    if as_json:
        base = result.baseline
        click.echo(
            json.dumps(
                {
                    "through_version": through,
                    "registered": base is not None,
                    "checksum": base.checksum if base else None,
                    "squashed": result.squashed,
                    "steps": result.steps,
                    "bytes": len(result.sql.encode("utf-8")),
                    "warnings": result.warnings,
                    "seconds": result.seconds,
                }
            )
        )
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if dry_run:
        if out is None:
            click.echo(result.sql, nl=False)
        click.echo(
            f"baseline through {through} would squash {result.squashed} migrations "
            f"({len(result.sql.encode('utf-8'))} bytes); nothing registered",
            err=out is None,
        )
        return
    assert result.baseline is not None
    click.echo(
        f"baseline through {through} registered ({result.baseline.checksum[:12]}): "
        f"{result.squashed} migrations in one script of {result.baseline.size} bytes, "
        f"checked against a replay in {result.steps} transaction(s), {result.seconds:.1f}s; "
        "new tenants start from it"
    )


def _check_models(dsn: str, models: str, as_json: bool) -> None:
    """migrate --check-models: the differences, exit 1 when there are any."""
    from pgtenancy.alembic import check_models

    try:
        check = check_models(dsn, models)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--check-models") from exc
    at = check.version or "-"
    if as_json:
        click.echo(json.dumps({"version": check.version, "differences": check.differences}))
    elif check.ok:
        click.echo(f"models agree with the registered schema (migration {at})")
    else:
        click.echo(f"models differ from the registered schema (migration {at}):")
        for line in check.differences:
            click.echo(f"  {line}")
    if not check.ok:
        click.echo(
            f"error: {len(check.differences)} differences; write a revision "
            "(alembic revision --autogenerate) and run pgtenancy migrate --alembic",
            err=True,
        )
        sys.exit(1)


def _migrate_with_progress(
    dsn: str, jobs: int, lock_timeout: str, selected: list[str] | None, limit: int | None
) -> FleetReport:
    """migrate_fleet with a rich progress bar on standard error, shown (and
    rich imported) only once the plan has tenants to migrate: a run with
    nothing to do starts and ends without it."""
    from pgtenancy.fleet import migrate_fleet

    bar: dict[str, Any] = {}  # "progress", "task" once started
    started = time.monotonic()
    failures = [0]

    def on_plan(count: int) -> None:
        if count == 0:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn("migrating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]}/s"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        progress.start()
        bar["task"] = progress.add_task("migrate", total=count, failed=0, rate="0.0")
        bar["progress"] = progress

    def on_outcome(outcome: TenantOutcome) -> None:
        progress = bar.get("progress")
        if progress is None:
            return
        failures[0] += 0 if outcome.ok else 1
        done = progress.tasks[0].completed + 1
        rate = f"{done / max(time.monotonic() - started, 1e-9):.1f}"
        progress.update(bar["task"], advance=1, failed=failures[0], rate=rate)

    try:
        return migrate_fleet(
            dsn,
            jobs=jobs,
            lock_timeout=lock_timeout,
            tenants=selected,
            limit=limit,
            on_outcome=on_outcome,
            on_plan=on_plan,
        )
    finally:
        if "progress" in bar:
            bar["progress"].stop()


@main.group()
def template() -> None:
    """Existing single-tenant schemas as tenant templates."""


@template.command(name="import")
@click.argument("dump", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--keep-acl", is_flag=True, help="Keep GRANT and REVOKE on the dump's objects (never OWNER TO)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the migration here (default: standard output).",
)
@click.option(
    "--shared-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write objects of schemas other than public here (a shared migration);"
    " without it they are refused.",
)
@click.option(
    "--register",
    "version",
    default=None,
    metavar="VERSION",
    help="Also register it as tenant migration VERSION (needs --dsn).",
)
@click.option("--dsn", envvar="DATABASE_URL", default=None, help="Database for --register.")
def template_import(
    dump: Path,
    keep_acl: bool,
    out: Path | None,
    shared_out: Path | None,
    version: str | None,
    dsn: str | None,
) -> None:
    """Turn DUMP, a pg_dump --schema-only of a single-tenant app (names
    qualified with public., --clean or not), into a tenant migration. What was
    dropped, split off and warned about goes to standard error; statements that
    cannot be made tenant-local are refused (FILE:LINE: reason, exit status 1,
    nothing written)."""
    from pgtenancy.sqlscript import ScriptError
    from pgtenancy.templates import TemplateError, import_template

    try:
        result = import_template(
            dump.read_text("utf-8"), keep_acl=keep_acl, split_shared=shared_out is not None
        )
    except ScriptError as exc:
        click.echo(f"error: {dump}:{exc.line}: {str(exc).split(': ', 1)[-1]}", err=True)
        sys.exit(1)
    except TemplateError as exc:
        for number, reason in exc.problems:
            click.echo(f"error: {dump}:{number}: {reason}", err=True)
        click.echo(f"error: {len(exc.problems)} statements refused; nothing written", err=True)
        sys.exit(1)
    for line in result.dropped:
        click.echo(f"dropped: {line}", err=True)
    for line in result.shared:
        click.echo(f"shared: {line}", err=True)
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    if shared_out is not None:
        shared_out.write_text(result.shared_sql, "utf-8")
    if out is not None:
        out.write_text(result.sql, "utf-8")
    else:
        click.echo(result.sql)
    if version is not None:
        if not dsn:
            raise click.UsageError("--register needs --dsn or DATABASE_URL")
        m = _tenancy(dsn).add_migration(version, result.sql)
        click.echo(f"migration {m.version} registered", err=True)


@main.command(name="enable-rls")
@dsn_option
@click.argument("table")
@click.option("--column", default="tenant_id", show_default=True, help="Tenant column (uuid).")
def enable_rls(dsn: str, table: str, column: str) -> None:
    """Guard shared TABLE by tenant with row-level security (idempotent)."""
    g = _tenancy(dsn).enable_rls(table, column)
    click.echo(f"{g.table} guarded on {g.tenant_column}")


@main.command(name="disable-rls")
@dsn_option
@click.argument("table")
def disable_rls(dsn: str, table: str) -> None:
    """Remove the row-level security enable-rls added to TABLE (data kept)."""
    changed = _tenancy(dsn).disable_rls(table)
    click.echo(f"{table} {'no longer guarded' if changed else 'was not guarded'}")


@main.command(name="grant-app-role")
@dsn_option
@click.argument("role")
def grant_app_role(dsn: str, role: str) -> None:
    """Let ROLE use tenants without owning tables (refuses superuser/BYPASSRLS)."""
    _tenancy(dsn).grant_app_role(role)
    click.echo(f"{role} may use tenants")


@main.group()
def events() -> None:
    """Outbox operations: consumer status and retention."""


@events.command()
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(dsn: str, as_json: bool) -> None:
    """Per consumer: cursor, lag (events, seconds), listeners, heartbeat, lease
    holder; and the NOTIFY queue, the oldest open or prepared transaction and
    the events it holds back, which bound every consumer. Allowed for listener roles."""
    from pgtenancy.ops import prepared_fixes, status_document

    tenancy = _tenancy(dsn)
    if as_json:
        click.echo(json.dumps(status_document(tenancy)))
        return
    click.echo(
        f"{'consumer':<24} {'last_id':>8} {'lag':>8} {'lag_s':>8} {'listeners':>9}  "
        f"{'seen_at':<25} lease_holder"
    )
    for c in tenancy.consumer_status():
        seen = c.seen_at.isoformat(timespec="seconds") if c.seen_at else "-"
        click.echo(
            f"{c.consumer:<24} {c.last_id:>8} {c.lag_events:>8} {c.lag_seconds:>8.1f} "
            f"{c.listeners:>9}  {seen:<25} {c.lease_holder or '-'}"
        )
    h = tenancy.outbox_health()
    click.echo(
        f"outbox events: {h.events}; notification queue usage: "
        f"{h.notification_queue_usage:.1%}; oldest open transaction: "
        f"{h.oldest_transaction_seconds:.1f}s; held back: {h.held_back_events}; "
        f"prepared transactions: {h.prepared_transactions}"
    )
    for holder in h.xid_holders[:5]:
        click.echo(
            f"  xid holder: {holder['kind']} {holder['holder']} in {holder['database']} "
            f"({holder['role']}, {holder['state']}) for {holder['age_seconds']}s"
        )
    for fix in prepared_fixes(h):
        click.echo(f"  fix: {fix}")


@events.command()
@dsn_option
@click.option("--consumer", default=None, help="Judge only this consumer (default: every one).")
@click.option(
    "--max-lag-seconds",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Oldest undelivered event may be this old.",
)
@click.option("--max-lag-events", default=None, type=click.IntRange(0), help="Undelivered events.")
@click.option(
    "--max-stall-seconds",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Events held back by a transaction (open or prepared) older than this: stalled.",
)
@click.option("--no-lease-ok", is_flag=True, help="A consumer without a lease holder is fine.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def health(
    dsn: str,
    consumer: str | None,
    max_lag_seconds: float,
    max_lag_events: int | None,
    max_stall_seconds: float,
    no_lease_ok: bool,
    as_json: bool,
) -> None:
    """Health check for containers: exit 0 healthy, 2 lag over the limit, 3 no
    listener holds the lease, 4 delivery stalled behind an old (or prepared)
    transaction, 5 unknown consumer, 1 error (e.g. no connection). Allowed for
    listener roles."""
    from pgtenancy.ops import check_health

    tenancy = _tenancy(dsn)
    report = check_health(
        tenancy.consumer_status(),
        tenancy.outbox_health(),
        consumer=consumer,
        max_lag_seconds=max_lag_seconds,
        max_lag_events=max_lag_events,
        require_lease=not no_lease_ok,
        max_stall_seconds=max_stall_seconds,
    )
    if as_json:
        click.echo(json.dumps({"status": report.status, "problems": list(report.problems)}))
    else:
        click.echo(report.status)
        for line in report.problems:
            click.echo(f"  {line}")
    sys.exit(report.exit_code)


@events.command(name="drop-consumer")
@dsn_option
@click.argument("name")
def drop_consumer(dsn: str, name: str) -> None:
    """Forget consumer NAME: its cursor, lease and parked events. Exit status 1
    when there is no such consumer."""
    if not _tenancy(dsn).drop_consumer(name):
        click.echo(f"error: consumer {name} is not registered", err=True)
        sys.exit(1)
    click.echo(f"consumer {name} dropped")


@events.command()
@dsn_option
@click.option("--consumer", default=None, help="Only this consumer.")
def failed(dsn: str, consumer: str | None) -> None:
    """List parked events: consumer, event, receiver that failed, attempts, error."""
    rows = _tenancy(dsn).parked_events(consumer)
    for r in rows:
        click.echo(
            f"{r['consumer']} event {r['id']} ({r['name']} {r['tenant_slug'] or '-'}) "
            f"receiver {r['receiver']}: {r['attempts']} attempts: {r['error']}"
        )
    click.echo(f"{len(rows)} parked")


@events.command()
@dsn_option
@click.option("--consumer", required=True, help="Consumer whose parked events to retry.")
@click.option("--handlers", "handlers", multiple=True, help="Module that connects receivers.")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1, 100))
def retry(dsn: str, consumer: str, handlers: tuple[str, ...], max_attempts: int) -> None:
    """Deliver parked events again, each to the receiver that failed only.
    Exit status 1 when some still fail."""
    from pgtenancy.listener import Listener, import_handlers

    import_handlers(handlers)
    ok, failing = Listener(dsn, consumer, max_attempts=max_attempts).retry_parked()
    click.echo(f"{ok} delivered, {failing} still parked")
    if failing:
        sys.exit(1)


@events.command()
@dsn_option
@click.option("--older-than", required=True, help="Postgres interval, e.g. '7 days'.")
@click.option(
    "--inactive-after",
    default=None,
    help="Consumers unseen this long stop holding events back "
    "(default: setting pgtenancy.consumer_inactive_after, else 1 day).",
)
def prune(dsn: str, older_than: str, inactive_after: str | None) -> None:
    """Delete old events that every active consumer has passed."""
    deleted = _tenancy(dsn).prune_events(older_than, inactive_after)
    click.echo(f"{deleted} events deleted")


@main.command()
@dsn_option
@click.argument("table")
def track(dsn: str, table: str) -> None:
    """Record TABLE's row changes as events (row_inserted/updated/deleted signals)."""
    _tenancy(dsn).track_changes(table)
    click.echo(f"{table} tracked")


@main.command()
@dsn_option
@click.argument("table")
def untrack(dsn: str, table: str) -> None:
    """Stop recording TABLE's row changes."""
    _tenancy(dsn).untrack_changes(table)
    click.echo(f"{table} no longer tracked")


@main.command(name="grant-listener-role")
@dsn_option
@click.argument("role")
def grant_listener_role(dsn: str, role: str) -> None:
    """Let ROLE run outbox consumers (pgtenancy listen)."""
    _tenancy(dsn).grant_listener_role(role)
    click.echo(f"{role} may run listeners")


@main.command()
@dsn_option
@click.argument("state", type=click.Choice(["on", "off"]))
def strict(dsn: str, state: str) -> None:
    """Switch strict entry on or off: with it on, the application role enters a
    tenant only with a signed entry token (add a key first: pgtenancy entry-key add)."""
    was = _tenancy(dsn).set_strict_entry(state == "on")
    click.echo(f"strict entry {state} (was {'on' if was else 'off'})")


@main.group(name="entry-key")
def entry_key() -> None:
    """Entry keys of strict mode (tokens are signed with them)."""


@entry_key.command(name="add")
@dsn_option
@click.argument("name")
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A file holding the key as hex; or give it in $PGTENANCY_ENTRY_KEY. Never on the "
    "command line (ps shows it). Without either a random 32-byte key is made and printed once.",
)
def entry_key_add(dsn: str, name: str, key_file: str | None) -> None:
    """Add entry key NAME (32 bytes or more)."""
    import secrets

    from pgtenancy.each import load_entry_key

    try:
        given = load_entry_key(key_file)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--key-file") from exc
    key = given if given is not None else secrets.token_bytes(32)
    added = _tenancy(dsn).add_entry_key(name, key)
    click.echo(f"entry key {name} {'added' if added else 'already there'}")
    if given is None:
        click.echo(f"key (hex, shown once): {key.hex()}")


@entry_key.command(name="drop")
@dsn_option
@click.argument("name")
def entry_key_drop(dsn: str, name: str) -> None:
    """Drop entry key NAME."""
    dropped = _tenancy(dsn).drop_entry_key(name)
    click.echo(f"entry key {name} {'dropped' if dropped else 'not found'}")


@main.command()
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def doctor(dsn: str, as_json: bool) -> None:
    """Check tenant isolation as the connecting role (use the application's role).
    Exit status 1 when any finding is an error."""
    from pgtenancy.doctor import ERROR, check_isolation

    findings = check_isolation(dsn)
    for f in findings:
        if as_json:
            click.echo(json.dumps(f.__dict__))
        else:
            click.echo(
                f"{f.severity.upper():<8} {f.check:<28} {f.object}\n"
                f"         {f.message}\n         fix: {f.fix}"
            )
    errors = sum(f.severity == ERROR for f in findings)
    infos = sum(f.severity == "info" for f in findings)
    if not as_json:
        click.echo(f"{errors} errors, {len(findings) - errors - infos} warnings, {infos} info")
    if errors:
        sys.exit(1)


@main.command()
@dsn_option
@click.option("--consumer", required=True, help="Consumer name; its cursor is durable.")
@click.option(
    "--handlers",
    "handlers",
    multiple=True,
    help="Module that connects receivers (repeatable), e.g. myapp.handlers.",
)
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option(
    "--poll-interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.01, 60),
    help="Seconds between polls when no notification arrives.",
)
@click.option(
    "--lease-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5, 3600),
    help="Consumer lease; a waiting listener of the same consumer takes over within ~1.3x this.",
)
@click.option(
    "--asyncio",
    "use_asyncio",
    is_flag=True,
    help="Kept for compatibility: the listener always runs on asyncio (Listener.run "
    "drives Listener.arun).",
)
@click.option(
    "--start-from",
    type=click.Choice(["oldest", "now"]),
    default="oldest",
    show_default=True,
    help="Where a NEW consumer starts: the oldest retained event, or after the newest "
    "one (no replay). An existing consumer goes on from its cursor.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per log line (ts, level, logger, message).",
)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (/metrics; needs pgtenancy[metrics]).",
)
@click.option("--metrics-addr", default="0.0.0.0", show_default=True, help="Metrics bind address.")
def listen(
    dsn: str,
    consumer: str,
    handlers: tuple[str, ...],
    batch_size: int,
    poll_interval: float,
    lease_seconds: float,
    use_asyncio: bool,
    start_from: str,
    log_format: str,
    metrics_port: int | None,
    metrics_addr: str,
) -> None:
    """Deliver lifecycle events to signal receivers until SIGTERM. Several
    processes may run one consumer: one dispatches, the others wait to take over."""
    import asyncio
    import logging

    from pgtenancy.listener import Listener, import_handlers

    if log_format == "json":
        from pgtenancy.ops import use_json_logs

        use_json_logs()
    import_handlers(handlers)
    if start_from == "now":
        _tenancy(dsn).start_consumer(consumer, "now")
    listener = Listener(
        dsn,
        consumer,
        batch_size=batch_size,
        poll_interval=poll_interval,
        lease_seconds=lease_seconds,
    )
    # Say when it listens and when it takes or loses the lease, by default.
    listener_log = logging.getLogger("pgtenancy.listener")
    if listener_log.getEffectiveLevel() > logging.INFO:
        listener_log.setLevel(logging.INFO)
    if metrics_port is not None:
        try:
            from pgtenancy.ops import serve_metrics

            serve_metrics(listener, metrics_port, metrics_addr)
        except ModuleNotFoundError as exc:
            raise click.ClickException(
                "--metrics-port needs prometheus_client: pip install 'pgtenancy[metrics]'"
            ) from exc
        listener_log.info("metrics on http://%s:%d/metrics", metrics_addr, metrics_port)
    if use_asyncio:
        asyncio.run(listener.arun())
    else:
        listener.run()


# Operating on one tenant (issue 15).


def _list_sizes(dsn: str, as_json: bool) -> None:
    sizes = _tenancy(dsn).tenant_sizes()
    if as_json:
        for s in sizes:
            click.echo(json.dumps({"slug": s.slug, "bytes": s.bytes, "rows": s.rows}))
        return
    click.echo(f"{'slug':<24} {'bytes':>14} {'rows':>12}")
    for s in sizes:
        click.echo(f"{s.slug:<24} {s.bytes:>14} {s.rows:>12}")
    click.echo(f"{len(sizes)} tenants, {sum(s.bytes for s in sizes)} bytes")


@main.group()
def tenant() -> None:
    """Operate on one tenant as a unit: rename, clone, export, import, move."""


@tenant.command(name="rename")
@dsn_option
@click.argument("slug")
@click.argument("new_slug")
def tenant_rename(dsn: str, slug: str, new_slug: str) -> None:
    """Rename tenant SLUG to NEW_SLUG (and its schema), atomically."""
    _print_tenant(f"renamed {slug} to", _tenancy(dsn).rename_tenant(slug, new_slug))


@tenant.command(name="clone")
@dsn_option
@click.argument("source")
@click.argument("new_slug")
def tenant_clone(dsn: str, source: str, new_slug: str) -> None:
    """Create NEW_SLUG as a copy of tenant SOURCE (schema, data, sequences)."""
    _print_tenant(f"cloned {source} as", _tenancy(dsn).clone_tenant(source, new_slug))


@tenant.command(name="export")
@dsn_option
@click.argument("slug")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Archive to write (default: SLUG.pgtenancy).",
)
def tenant_export(dsn: str, slug: str, out: Path | None) -> None:
    """Write tenant SLUG to one self-describing archive, at one snapshot."""
    path = out or Path(f"{slug}.pgtenancy")
    manifest = _tenancy(dsn).export_tenant(slug, path)
    rows = sum(t["rows"] for t in manifest["tables"])
    click.echo(f"exported {slug}: {len(manifest['tables'])} tables, {rows} rows -> {path}")


@tenant.command(name="import")
@dsn_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--as", "as_slug", default=None, help="Slug in this database (default: the archive's)."
)
def tenant_import(dsn: str, file: Path, as_slug: str | None) -> None:
    """Recreate the tenant of archive FILE here, in one transaction."""
    _print_tenant("imported", _tenancy(dsn).import_tenant(file, as_slug))


@tenant.command(name="move")
@dsn_option
@click.argument("slug")
@click.option("--to", "to", required=True, help="DSN of the target database.")
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep the archive here (default: a temporary file, removed on success).",
)
def tenant_move(dsn: str, slug: str, to: str, archive: Path | None) -> None:
    """Move tenant SLUG to database --to: suspended here during the copy,
    imported and verified there, then soft-deleted here. Rerun to resume."""
    _print_tenant("moved", _tenancy(dsn).move_tenant_to_database(slug, to, archive))


@main.command()
@dsn_option
@click.argument("slug")
@click.option("--statement-timeout", default=None, help="e.g. 50ms, 2s (0: none).")
@click.option("--lock-timeout", default=None, help="e.g. 1s.")
@click.option(
    "--idle-in-transaction-session-timeout", "idle_timeout", default=None, help="e.g. 1min."
)
@click.option("--work-mem", default=None, help="e.g. 4MB (at most tenancy.max_work_mem()).")
@click.option("--clear", is_flag=True, help="Remove every limit of SLUG.")
def limits(
    dsn: str,
    slug: str,
    statement_timeout: str | None,
    lock_timeout: str | None,
    idle_timeout: str | None,
    work_mem: str | None,
    clear: bool,
) -> None:
    """Show or set the resource limits of tenant SLUG, applied at entry.

    With no option it prints them. Setting gives the whole set: limits not
    given are cleared."""
    tenancy = _tenancy(dsn)
    given = (statement_timeout, lock_timeout, idle_timeout, work_mem)
    if clear or any(v is not None for v in given):
        now = tenancy.set_tenant_limits(
            slug,
            statement_timeout=statement_timeout,
            lock_timeout=lock_timeout,
            idle_in_transaction_session_timeout=idle_timeout,
            work_mem=work_mem,
        )
    else:
        now = tenancy.tenant_limits(slug)
    if not now:
        click.echo(f"{slug}: no limits")
    for name, value in now.items():
        click.echo(f"{slug}: {name} = {value}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@dsn_option
@click.option("--jobs", "-j", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--status",
    default="active",
    show_default=True,
    type=click.Choice(["active", "suspended", "all"]),
    help="Which tenants to visit (all: every tenant not deleted).",
)
@click.option(
    "--call",
    "call",
    default=None,
    metavar="MODULE:FUNCTION",
    help="Call FUNCTION(session) inside each tenant (a SQLAlchemy Session, committed "
    "when it returns) instead of running a command.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per tenant.")
@click.option(
    "--entry-key-name",
    envvar="PGTENANCY_ENTRY_KEY_NAME",
    show_envvar=True,
    default=None,
    metavar="NAME",
    help="Strict entry: sign a token per tenant with entry key NAME; the key itself "
    "(hex) comes from $PGTENANCY_ENTRY_KEY or --entry-key-file, never the command line.",
)
@click.option(
    "--entry-key-file",
    envvar="PGTENANCY_ENTRY_KEY_FILE",
    show_envvar=True,
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the entry key as hex (instead of $PGTENANCY_ENTRY_KEY).",
)
@click.option(
    "--token-ttl",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    metavar="SECONDS",
    help="Lifetime of each tenant's entry token, from the moment it is entered.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def each(
    dsn: str,
    jobs: int,
    status: str,
    call: str | None,
    as_json: bool,
    entry_key_name: str | None,
    entry_key_file: str | None,
    token_ttl: float,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (after --) or --call MODULE:FUNCTION once per tenant, JOBS at
    a time. A command gets PGTENANCY_TENANT, PGTENANCY_TENANT_ID and PGOPTIONS
    putting libpq clients (psql) in the tenant's search_path and app.tenant_id.
    Tenants suspended or deleted since the listing are skipped. Exit status 1
    when any tenant failed.

    Strict entry: with an entry key ($PGTENANCY_ENTRY_KEY or --entry-key-file,
    named with --entry-key-name, default "default"), each tenant is entered
    with a fresh token valid --token-ttl seconds; a command also gets it as
    PGTENANCY_TENANT_TOKEN and in PGOPTIONS (app.tenant_token), never the key.
    Without a key on a strict database, it stops before entering any tenant.

        pgtenancy each --jobs 8 -- psql -c 'SELECT count(*) FROM invoice'
        pgtenancy each --call myapp.jobs:close_month
        PGTENANCY_ENTRY_KEY=... pgtenancy each --entry-key-name k1 --call myapp.jobs:close_month
    """
    from pgtenancy.each import EachReport, TokenSigner, for_each_tenant, load_entry_key

    if (call is None) == (not command):
        raise click.UsageError("give either a COMMAND after -- or --call MODULE:FUNCTION")
    try:
        key = load_entry_key(entry_key_file)
        signer = (
            None
            if key is None
            else TokenSigner(key, key_name=entry_key_name or "default", ttl_seconds=token_ttl)
        )
    except ValueError as bad_key:
        raise click.UsageError(str(bad_key)) from None
    if signer is None and entry_key_name is not None:
        raise click.UsageError(
            "--entry-key-name needs the key: set $PGTENANCY_ENTRY_KEY (hex) or --entry-key-file"
        )
    wanted = None if status == "all" else status
    report: EachReport
    if call is not None:
        from pgtenancy.admin import engine_from_dsn

        fn = _import_callable(call)
        report = for_each_tenant(
            engine_from_dsn(dsn), fn, jobs=jobs, status=wanted, token_for=signer
        )
        for slug, value in sorted(report.done.items()):
            _each_line(as_json, slug, "done", None if value is None else repr(value))
    else:
        report = _each_command(dsn, list(command), jobs, wanted, as_json, signer)
    for slug, reason in sorted(report.skipped.items()):
        _each_line(as_json, slug, "skipped", reason)
    for slug, exc in sorted(report.failed.items()):
        _each_line(as_json, slug, "failed", _one_line(exc))
    if not as_json:
        click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


def _each_line(as_json: bool, slug: str, outcome: str, text: str | None) -> None:
    if as_json:
        click.echo(json.dumps({"tenant": slug, "outcome": outcome, "detail": text}))
    else:
        click.echo(f"{outcome.upper():<8} {slug}" + (f": {text}" if text else ""))


def _import_callable(spec: str) -> Callable[..., Any]:
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter("expected MODULE:FUNCTION", param_hint="--call")
    sys.path.insert(0, ".")
    try:
        target: Any = importlib.import_module(module_name)
    finally:
        sys.path.remove(".")
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise click.BadParameter(f"{spec} is not callable", param_hint="--call")
    return cast(Callable[..., Any], target)


def _each_command(
    dsn: str,
    command: list[str],
    jobs: int,
    status: str | None,
    as_json: bool,
    token_for: Callable[[str], str] | None = None,
) -> Any:
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from psycopg_pool import ConnectionPool

    from pgtenancy.dsn import libpq_dsn
    from pgtenancy.each import EachReport, _probe_sync, _run_sync, list_tenants

    url = libpq_dsn(dsn)
    report = EachReport()
    rows = {t.slug: t for t in list_tenants(url, status)}
    # What the commands inherit: never the entry key.
    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PGTENANCY_ENTRY_KEY", "PGTENANCY_ENTRY_KEY_FILE")
    }
    with ConnectionPool(url, min_size=1, max_size=jobs, open=True) as pool:
        if rows and token_for is None:
            _probe_sync(pool)  # strict entry without a key: stop before any tenant

        def one(slug: str) -> None:
            # Enter once right before: a tenant suspended meanwhile is skipped.
            token = None
            if token_for is not None:
                try:
                    token = token_for(slug)
                except Exception as exc:
                    report.failed[slug] = exc
                    return
            kind, value = _run_sync(pool, slug, lambda _conn: None, token)
            if kind != "done":
                getattr(report, kind)[slug] = value
                return
            row = rows[slug]
            env = dict(base_env)
            path = f"{row.schema_name},public" if row.schema_name else "public"
            options = f"-c search_path={path} -c app.tenant_id={row.id} -c app.tenant={slug}"
            if token is not None:
                options += f" -c app.tenant_token={token}"
                env["PGTENANCY_TENANT_TOKEN"] = token
            env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " " + options).strip()
            env["PGTENANCY_TENANT"] = slug
            env["PGTENANCY_TENANT_ID"] = str(row.id)
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            out = (done.stdout + done.stderr).rstrip()
            if not as_json and out:
                click.echo("\n".join(f"[{slug}] {line}" for line in out.splitlines()))
            if done.returncode == 0:
                report.done[slug] = out
                if as_json:
                    _each_line(True, slug, "done", out or None)
            else:
                report.failed[slug] = RuntimeError(f"exit status {done.returncode}: {out}")

        with ThreadPoolExecutor(max_workers=jobs) as threads:
            list(threads.map(one, sorted(rows)))
    return report


if __name__ == "__main__":
    main()
