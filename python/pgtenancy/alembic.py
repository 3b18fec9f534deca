"""Alembic revisions as tenant migrations (the ``alembic`` extra).

SQLAlchemy models and Alembic revisions, with the registry as the one truth:

* **env.py helpers.** :func:`run_env` is the whole body of an ``env.py``.
  Offline (``--sql``) it renders revisions for PostgreSQL with literal values,
  one transaction per revision (``BEGIN``/``COMMIT`` mark Alembic's own
  ``autocommit_block()``); online it serves ``alembic revision
  --autogenerate`` and ``alembic check`` against a scratch tenant schema built
  from the registry (:func:`scratch_schema`), never a live tenant; anything
  else online (``alembic upgrade``) is refused: tenants are migrated by
  ``pgtenancy migrate --alembic alembic.ini``.
* **Tenant and shared metadata.** A table with ``schema=None`` is a tenant
  table (every tenant schema has it); a table with an explicit schema
  (``schema="public"``) is shared. ``info={"pgtenancy": "tenant"}`` or
  ``{"pgtenancy": "shared"}`` on a table overrides that rule
  (:func:`is_tenant_table`, :func:`split_metadata`,
  :func:`include_tenant_objects`). Autogenerate and the model check compare
  tenant tables only.
* **Registration.** :func:`render_revisions` renders the revision chain
  offline with ``alembic.command.upgrade(cfg, "down:rev", sql=True)``, one
  revision at a time, into an output buffer, drops Alembic's version-table
  statements (tenant schemas have no ``alembic_version`` table: the registry
  records what each tenant has) and splits a revision at its
  ``autocommit_block()`` boundaries. :func:`sync_alembic` checks every part
  with the ``--dir`` gate (pglast: no schema-qualified objects, so a revision
  that changes a shared table is refused; shared changes go through
  ``--shared-dir``) and registers the new ones with ``tenancy.add_migration``;
  the fleet runner (:mod:`pgtenancy.fleet`) applies them like any other.
* **Versions.** Revision *n* of the chain (1-based, base first) registers as
  ``alembic-NNNN-<revision id>`` (*n* zero-padded to 4 digits); the parts of
  a revision split by ``autocommit_block()`` are ``alembic-NNNN-<id>``,
  ``alembic-NNNN-<id>.02``, ``.03`` ... In the registry's C-collation order
  these sort in chain order, after ``--dir`` versions that start with a digit
  (``0007_x`` < ``alembic-0001-...``), so an app may move from SQL files to
  Alembic but not back.
* **Model check.** :func:`check_models` compares a ``MetaData`` with the
  latest registered schema (Alembic's ``compare_metadata`` against a fresh
  scratch schema); ``pgtenancy migrate --check-models module:metadata``.
* **create_all.** :func:`refuse_create_all` makes ``metadata.create_all()``
  refuse to create tenant tables: they would bypass the registry (the next
  ``pgtenancy migrate`` then fails with "relation already exists").
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from psycopg import sql
from sqlalchemy import MetaData, Table, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import InvalidMigration, raise_translated
from pgtenancy.fleet import SyncResult, sync_migrations
from pgtenancy.migration_files import MigrationCheckError, MigrationFile, check_migration
from pgtenancy.queries import QUERIES

if TYPE_CHECKING:
    from sqlalchemy.schema import SchemaItem

__all__ = [
    "APPLICATION_NAME",
    "DSN_ATTRIBUTE",
    "INFO_KEY",
    "VERSION_PREFIX",
    "AlembicPart",
    "MetadataSplit",
    "ModelCheck",
    "Scratch",
    "check_models",
    "describe_difference",
    "include_tenant_objects",
    "is_tenant_table",
    "load_metadata",
    "refuse_create_all",
    "render_revisions",
    "run_env",
    "scratch_schema",
    "split_metadata",
    "sync_alembic",
    "version_for",
]

#: ``Table.info`` key that marks a table ``"tenant"`` or ``"shared"``.
INFO_KEY = "pgtenancy"
#: Every version registered from an Alembic revision starts with this.
VERSION_PREFIX = "alembic-"
#: ``Config.attributes`` key: the DSN the online env.py connects to.
DSN_ATTRIBUTE = "pgtenancy.dsn"
#: ``application_name`` of the connections of this module.
APPLICATION_NAME = "pgtenancy alembic"
_REVISION_ID = re.compile(r"^[0-9A-Za-z_-]{1,100}$")
_VERSION = re.compile(r"^alembic-(?P<position>\d{4})-(?P<revision>[0-9A-Za-z_-]+)(?:\.\d{2})?$")
# Alembic's version-table statements, one per output chunk (static_output).
_VERSION_TABLE = re.compile(
    r"^\s*(?:CREATE\s+TABLE|INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"
    r"(?:\"?[^\s\".]+\"?\.)?\"?alembic_version\"?[\s(;]",
    re.IGNORECASE,
)
_MAX_POSITION = 9999
_MAX_PARTS = 99

_ROUTE = (
    "pgtenancy: tenant schemas are migrated by `pgtenancy migrate --alembic alembic.ini` "
    "(revisions rendered offline and registered, applied by the fleet runner), never by "
    "running Alembic online against a schema: that desyncs the registry. Online, this env.py "
    "serves `alembic revision --autogenerate` and `alembic check` only (against a scratch "
    "schema built from the registry); `alembic upgrade --sql` prints the SQL that would be "
    "registered, with Alembic's version-table statements, which pgtenancy drops."
)


# --- tenant and shared metadata ---------------------------------------------


def is_tenant_table(table: Table) -> bool:
    """Whether ``table`` is a tenant table (in every tenant schema).

    Rule: ``table.info["pgtenancy"]`` when set (``"tenant"`` or ``"shared"``),
    otherwise tenant when ``table.schema is None`` and shared when the table
    names a schema (``schema="public"``).

    Raises:
        ValueError: ``info["pgtenancy"]`` is neither ``"tenant"`` nor ``"shared"``.
    """
    marker = table.info.get(INFO_KEY)
    if marker is None:
        return table.schema is None
    if marker not in ("tenant", "shared"):
        raise ValueError(
            f"table {table.fullname}: info[{INFO_KEY!r}] is {marker!r}; use 'tenant' or 'shared'"
        )
    return bool(marker == "tenant")


@dataclass(frozen=True)
class MetadataSplit:
    """The tables of a ``MetaData``, split by :func:`is_tenant_table`.

    Attributes:
        tenant: tenant tables, in dependency order.
        shared: shared tables, in dependency order.
    """

    tenant: list[Table]
    shared: list[Table]


def split_metadata(metadata: MetaData) -> MetadataSplit:
    """Tenant and shared tables of ``metadata`` (see :func:`is_tenant_table`).

    Raises:
        ValueError: a bad ``info["pgtenancy"]`` marker; a tenant table that
            names a schema (a tenant table is created in each tenant's schema,
            so it cannot name one).
    """
    tenant: list[Table] = []
    shared: list[Table] = []
    for table in metadata.sorted_tables:
        if is_tenant_table(table):
            if table.schema is not None:
                raise ValueError(
                    f"table {table.fullname} is marked tenant but names schema {table.schema!r}: "
                    "a tenant table lives in every tenant schema; leave its schema unset"
                )
            tenant.append(table)
        else:
            shared.append(table)
    return MetadataSplit(tenant, shared)


def include_tenant_objects(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic ``include_object`` hook: compare tenant tables only.

    A model table is compared when it is a tenant table; a reflected one (the
    scratch schema holds tenant tables only) always is. Pass it to
    ``context.configure(include_object=...)``; :func:`run_env` does.
    """
    if type_ == "table" and not reflected and isinstance(obj, Table):
        return is_tenant_table(obj)
    return True


def load_metadata(spec: str) -> MetaData:
    """The ``MetaData`` named by ``"module:attribute"``.

    ``attribute`` may be dotted (``myapp.models:Base.metadata``) and may name a
    declarative base (its ``.metadata`` is used). The module is imported from
    ``sys.path`` or the current directory.

    Raises:
        ValueError: ``spec`` is not ``module:attribute`` or does not name a MetaData.
        ImportError: the module does not import.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec!r}: name the models as module:attribute (myapp.models:Base)")
    # The current directory is searched too (the command line's sys.path
    # starts at the script's directory), as `pgtenancy each --call` does.
    sys.path.insert(0, ".")
    try:
        found: Any = importlib.import_module(module_name)
    finally:
        sys.path.remove(".")
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"{spec!r}: {module_name} has no {attribute}") from None
    if not isinstance(found, MetaData):
        found = getattr(found, "metadata", None)
    if not isinstance(found, MetaData):
        raise ValueError(f"{spec!r} is not a sqlalchemy MetaData nor a declarative base")
    return found


def refuse_create_all(metadata: MetaData) -> MetaData:
    """Make ``metadata.create_all()`` refuse to create tenant tables.

    ``create_all`` in a tenant would create tables the registry knows nothing
    of (the next ``pgtenancy migrate`` fails with "relation already exists"),
    and outside one it would put tenant tables in ``public``. The supported
    route is a revision, registered by ``pgtenancy migrate --alembic``.
    ``create_all`` of shared tables only, and one that finds every table
    present (``checkfirst``), still run.

    Returns:
        ``metadata``, with a ``before_create`` listener.

    Raises (from ``create_all``):
        pgtenancy.errors.InvalidMigration: (PT008, raised in Python) tenant
            tables would be created; nothing was created.
    """

    def refuse(target: MetaData, connection: Connection, **kw: Any) -> None:
        tables = kw.get("tables") or target.sorted_tables
        tenant = [t.name for t in tables if is_tenant_table(t)]
        if tenant:
            raise InvalidMigration(
                f"metadata.create_all() would create tenant tables ({', '.join(tenant)}) "
                "outside the migration registry; write an Alembic revision and run "
                "`pgtenancy migrate --alembic alembic.ini`",
                hint="New tenants get the registered migrations from create_tenant.",
            )

    event.listen(metadata, "before_create", refuse)
    return metadata


# --- the scratch schema ------------------------------------------------------


@dataclass(frozen=True)
class Scratch:
    """A scratch tenant schema built from the registry.

    Attributes:
        schema: its name (``tenancy_scratch_<hex>``).
        version: the latest registered version applied (None: none registered).
        dsn: where it lives.
    """

    schema: str
    version: str | None
    dsn: str


@contextmanager
def scratch_schema(dsn: str) -> Iterator[Scratch]:
    """A fresh schema holding the registered migrations, dropped on exit.

    Every registered migration is applied to a new schema, one per
    transaction (so an enum value a migration adds is committed before a
    later one uses it), with the registry's own runner
    (``tenancy.apply_migrations``: as the migrator role, behind the fence, as
    ``add_migration``'s scratch check does). No live tenant is read. A
    process killed inside leaves the schema behind: drop it.

    Args:
        dsn: the database, connecting as the kit's owner.

    Yields:
        A :class:`Scratch`.

    Raises:
        pgtenancy.errors.MigrationFailed, UnsafeMigration: a registered
            migration failed on the fresh schema (PT006, PT017).
    """
    name = f"tenancy_scratch_{secrets.token_hex(4)}"
    ident = sql.Identifier(name)
    with psycopg.connect(
        libpq_dsn(dsn), autocommit=True, application_name=APPLICATION_NAME
    ) as conn:
        conn.execute(sql.SQL(QUERIES["alembic_create_scratch"]).format(schema=ident))
        try:
            versions = [
                r[0] for r in conn.execute(QUERIES["pending_migrations"], {"from_version": None})
            ]
            at: str | None = None
            for _ in versions:
                try:
                    with conn.transaction():
                        row = conn.execute(
                            QUERIES["alembic_apply_next"], {"schema": name, "from_version": at}
                        ).fetchone()
                except psycopg.Error as exc:
                    raise_translated(exc)
                at = None if row is None else row[0]
            yield Scratch(name, at, dsn)
        finally:
            if not conn.closed:
                conn.execute(sql.SQL(QUERIES["alembic_drop_scratch"]).format(schema=ident))


@contextmanager
def _scratch_connection(scratch: Scratch) -> Iterator[Connection]:
    """A SQLAlchemy connection, in a transaction rolled back at the end, whose
    ``search_path`` is the scratch schema alone: unqualified names are the
    tenant's, shared tables reflect with their schema."""
    dsn = libpq_dsn(scratch.dsn)
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn, application_name=APPLICATION_NAME),
        poolclass=NullPool,
    )
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            path = sql.Identifier(scratch.schema).as_string(driver)
            conn.exec_driver_sql(
                QUERIES["transaction_setting"], {"name": "search_path", "value": path}
            )
            try:
                yield conn
            finally:
                conn.rollback()
    finally:
        engine.dispose()


# --- env.py -----------------------------------------------------------------


def _refuse_server_default_comparison(configure: dict[str, Any] | None) -> None:
    """Refuse ``compare_server_default``: Alembic compares defaults by running
    ``SELECT <reflected default> = <model default>`` on the scratch connection,
    which is the kit owner's, so a default a migration made (a function of the
    tenant schema) would run as the owner (found by an attack run).

    Raises:
        ValueError: ``configure`` asks for it.
    """
    if (configure or {}).get("compare_server_default"):
        raise ValueError(
            "compare_server_default is not supported: Alembic evaluates the reflected "
            "default (migration code) on the kit owner's connection to compare it"
        )


def run_env(
    context: EnvironmentContext,
    metadata: MetaData,
    *,
    dsn: str | None = None,
    configure: dict[str, Any] | None = None,
) -> None:
    """The body of an Alembic ``env.py`` for a pgtenancy app::

        from alembic import context
        from myapp.models import Base
        from pgtenancy.alembic import run_env

        run_env(context, Base.metadata)

    Args:
        context: ``alembic.context`` (the :class:`EnvironmentContext` of the run).
        metadata: the models' ``MetaData`` (tenant and shared tables; only
            tenant tables are compared, see :func:`is_tenant_table`).
        dsn: the database for autogenerate; default the config's
            ``pgtenancy.dsn`` attribute, then ``sqlalchemy.url`` of the ini
            file, then ``DATABASE_URL``.
        configure: more ``context.configure`` options (``compare_type``,
            ``render_item``, ...).

    Offline (``--sql``, and ``pgtenancy migrate --alembic``): renders the
    revisions for PostgreSQL, literal values, a ``BEGIN``/``COMMIT`` pair per
    revision. Online with autogenerate (``alembic revision --autogenerate``,
    ``alembic check``): builds a scratch schema from the registry, stamps it
    at the latest registered revision, compares, drops it.

    Raises:
        alembic.util.CommandError: online for anything else (``alembic
            upgrade``): tenants migrate through ``pgtenancy migrate --alembic``;
            online without a DSN.
    """
    _refuse_server_default_comparison(configure)
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "include_object": include_tenant_objects,
        "compare_type": True,
        **(configure or {}),
    }
    if context.is_offline_mode():
        context.configure(
            dialect_name="postgresql+psycopg",
            literal_binds=True,
            transactional_ddl=True,
            transaction_per_migration=True,
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    # ``alembic.context`` is a module proxying the run's EnvironmentContext;
    # the command's own options (autogenerate's revision_context) live on it.
    environment = getattr(context, "_proxy", context)
    if environment.context_opts.get("revision_context") is None:
        raise CommandError(_ROUTE)
    url = (
        dsn
        or context.config.attributes.get(DSN_ATTRIBUTE)
        or context.config.get_main_option("sqlalchemy.url")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise CommandError(
            "pgtenancy: autogenerate needs the database: set sqlalchemy.url in alembic.ini, "
            "DATABASE_URL, or run_env(context, metadata, dsn=...)"
        )
    with scratch_schema(url) as scratch, _scratch_connection(scratch) as conn:
        head = _registered_revision(scratch.version)
        if head is not None:
            # Alembic compares against a database at the head revision; the
            # registry says which one, the scratch schema gets a version table
            # for the span of this (rolled back) transaction.
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            table = sql.Identifier(scratch.schema, "alembic_version")
            stamp = sql.SQL(QUERIES["alembic_stamp_table"]).format(table=table)
            conn.exec_driver_sql(stamp.as_string(driver))
            insert = sql.SQL(QUERIES["alembic_stamp"]).format(table=table)
            conn.exec_driver_sql(insert.as_string(driver), {"revision": head})
        context.configure(connection=conn, **options)
        with context.begin_transaction():
            context.run_migrations()


def _registered_revision(version: str | None) -> str | None:
    """The Alembic revision id of a registered version (None for a version
    that did not come from Alembic)."""
    if version is None:
        return None
    m = _VERSION.match(version)
    return None if m is None else m["revision"]


# --- rendering and registration ----------------------------------------------


@dataclass(frozen=True)
class AlembicPart:
    """One registered migration made from (part of) an Alembic revision.

    Attributes:
        revision: the revision id.
        position: its place in the chain, 1-based from the base.
        part: 1-based; more than one when ``autocommit_block()`` splits it.
        migration: the migration to register (version, SQL, checksum,
            ``outside_transaction`` for an autocommit block).
    """

    revision: str
    position: int
    part: int
    migration: MigrationFile


def version_for(position: int, revision: str, part: int = 1) -> str:
    """The registered version of part ``part`` of the revision at
    ``position`` of the chain: ``alembic-0003-ab12cd34ef56`` (part 1),
    ``alembic-0003-ab12cd34ef56.02`` (part 2).

    Raises:
        MigrationCheckError: a revision id outside ``[0-9A-Za-z_-]`` (1-100
            characters), more than 9999 revisions or 99 parts.
    """
    if not _REVISION_ID.match(revision):
        raise MigrationCheckError(
            revision, 0, "revision ids of letters, digits, '_' and '-' only (1-100 characters)"
        )
    if not 1 <= position <= _MAX_POSITION:
        raise MigrationCheckError(revision, 0, f"more than {_MAX_POSITION} revisions")
    if not 1 <= part <= _MAX_PARTS:
        raise MigrationCheckError(revision, 0, f"more than {_MAX_PARTS} autocommit blocks")
    base = f"{VERSION_PREFIX}{position:04d}-{revision}"
    return base if part == 1 else f"{base}.{part:02d}"


def _config(config: str | Path | Config) -> Config:
    if isinstance(config, Config):
        return config
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Alembic ini file")
    return Config(str(path))


def _chain(script: ScriptDirectory) -> list[Script]:
    """The revisions base first; refuses branches and merges (the registry is
    one linear order)."""
    heads = script.get_heads()
    if len(heads) > 1:
        raise MigrationCheckError(
            "alembic",
            0,
            f"{len(heads)} heads ({', '.join(sorted(heads))}): tenant migrations "
            "are one linear history; merge them (alembic merge) first",
        )
    chain = list(script.walk_revisions("base", "heads"))
    chain.reverse()
    for rev in chain:
        if isinstance(rev.down_revision, tuple | list) and len(rev.down_revision) > 1:
            raise MigrationCheckError(
                Path(rev.path).name,
                0,
                f"revision {rev.revision} merges {', '.join(rev.down_revision)}: tenant "
                "migrations are one linear history; make the merge a plain revision",
            )
    return chain


class _Capture:
    """Output buffer for offline rendering: one chunk per statement Alembic
    writes (``static_output`` writes a statement and its blank line at once)."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _parts(chunks: Sequence[str]) -> list[tuple[str, bool]]:
    """Split a revision's rendered chunks into ``(sql, outside_transaction)``
    parts: what ``BEGIN;``/``COMMIT;`` enclose runs in a transaction, what lies
    between a ``COMMIT;`` and the next ``BEGIN;`` (an ``autocommit_block()``)
    outside one; version-table statements are dropped."""
    marked = any(c.strip().upper() in ("BEGIN;", "COMMIT;") for c in chunks)
    parts: list[tuple[str, bool]] = []
    current: list[str] = []
    inside = not marked  # without markers the whole revision is one transaction

    def flush(outside: bool) -> None:
        text = "".join(current).strip()
        if any(_statement_line(line) for line in text.splitlines()):
            parts.append((text + "\n", outside))
            current.clear()
        # Comments alone (Alembic's "-- Running upgrade ...") go with the next part.

    for chunk in chunks:
        word = chunk.strip().upper()
        if word == "BEGIN;":
            flush(outside=True)
            inside = True
        elif word == "COMMIT;":
            flush(outside=False)
            inside = False
        elif not _VERSION_TABLE.match(chunk):
            current.append(chunk)
    flush(outside=not inside)
    return parts


def _statement_line(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("--")


def render_revisions(
    config: str | Path | Config, *, on_revision: Callable[[Script], None] | None = None
) -> list[AlembicPart]:
    """Render the Alembic revision chain as tenant migrations, offline.

    Each revision is rendered on its own with ``alembic.command.upgrade(cfg,
    "down:rev", sql=True)`` into an output buffer (so ``env.py`` runs in
    offline mode: use :func:`run_env`). Alembic's ``alembic_version``
    statements are dropped; ``BEGIN``/``COMMIT`` pairs split a revision that
    uses ``autocommit_block()`` into parts, the block's part registered as a
    no-transaction migration.

    Args:
        config: path of ``alembic.ini``, or an ``alembic.config.Config``.
        on_revision: called before each revision is rendered.

    Returns:
        The parts, in chain order (base first), with their versions
        (:func:`version_for`).

    Raises:
        FileNotFoundError: no such ini file.
        MigrationCheckError: branches, merges, a bad revision id. A revision
            whose ``upgrade()`` does nothing registers ``SELECT NULL``.
        alembic.util.CommandError: Alembic's own errors (a broken env.py,
            ``run_env`` refusing an online run, ...).
    """
    cfg = _config(config)
    script = ScriptDirectory.from_config(cfg)
    result: list[AlembicPart] = []
    for position, rev in enumerate(_chain(script), start=1):
        if on_revision is not None:
            on_revision(rev)
        capture = _Capture()
        previous = cfg.output_buffer
        cfg.output_buffer = capture  # type: ignore[assignment]
        try:
            command.upgrade(cfg, f"{rev.down_revision or 'base'}:{rev.revision}", sql=True)
        finally:
            cfg.output_buffer = previous
        parts = _parts(capture.chunks)
        if not parts:
            # An empty upgrade() still moves a tenant to this revision: the
            # registry records it (autogenerate is stamped from there).
            parts = [
                (
                    f"-- Running upgrade {rev.down_revision or ''} -> {rev.revision}\n"
                    "SELECT NULL;  -- the revision has no operations\n",
                    False,
                )
            ]
        for number, (text, outside) in enumerate(parts, start=1):
            version = version_for(position, rev.revision, number)
            migration = MigrationFile(
                version=version,
                path=Path(rev.path),
                sql=text,
                checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                outside_transaction=outside,
                name=f"{Path(rev.path).name} (revision {rev.revision}"
                + (f", part {number} of {len(parts)})" if len(parts) > 1 else ")"),
            )
            result.append(AlembicPart(rev.revision, position, number, migration))
    return result


def sync_alembic(
    dsn: str,
    config: str | Path | Config,
    *,
    shared_schemas: Sequence[str] = ("public",),
    dry_run: bool = False,
) -> SyncResult:
    """Register the Alembic revisions the registry lacks, as
    ``pgtenancy migrate --alembic alembic.ini`` does (it then runs the fleet).

    Renders the chain (:func:`render_revisions`), checks every part with the
    ``--dir`` gate (:func:`pgtenancy.migration_files.check_migration`) and
    compares with the registry before anything is registered.

    Args:
        dsn: the database, as the kit's owner.
        config: path of ``alembic.ini`` or an Alembic ``Config``.
        shared_schemas: schemas the revisions may reference (foreign keys to
            ``public.plans``, ...).
        dry_run: check and compare only; register nothing.

    Returns:
        A :class:`pgtenancy.fleet.SyncResult` (``files`` are the rendered parts).

    Raises:
        MigrationCheckError: a part was refused (the revision file, the line
            of the rendered SQL, the reason: a schema-qualified object means a
            shared change, which goes through ``--shared-dir``); nothing registered.
        InvalidMigration: PT008, a registered revision changed (its rendered
            SQL's checksum differs), or a registered ``alembic-`` version is
            no longer in the chain (a revision removed, reordered or split
            differently); nothing registered. Or the database refused one
            (the ones before it stay registered).
    """
    parts = render_revisions(config)
    files = [p.migration for p in parts]
    warnings: list[str] = []
    for f in files:
        try:
            warnings.extend(check_migration(f, shared_schemas))
        except MigrationCheckError as exc:
            hint = ""
            if "qualified" in exc.reason or "schema" in exc.reason:
                hint = (
                    "; a revision changes tenant tables only (schema=None): change shared "
                    "tables with a shared migration (pgtenancy migrate --shared-dir)"
                )
            raise MigrationCheckError(
                f"{f.name} rendered SQL", exc.line, exc.reason + hint
            ) from exc
    from pgtenancy.admin import Tenancy

    expected = {f.version for f in files}
    with psycopg.connect(
        libpq_dsn(dsn), autocommit=True, application_name=APPLICATION_NAME
    ) as conn:
        registered = Tenancy(conn).list_migrations()
        gone = [
            m.version
            for m in registered
            if m.version.startswith(VERSION_PREFIX) and m.version not in expected
        ]
        if gone:
            raise InvalidMigration(
                f"{gone[0]} is registered but the revision chain has no such revision at that "
                "place (a revision removed, reordered or split differently); registered "
                "revisions never change: add a new revision instead"
            )
        result = sync_migrations(conn, files, dry_run=dry_run)
    result.warnings = warnings
    return result


# --- the model check ------------------------------------------------------------


@dataclass
class ModelCheck:
    """Outcome of :func:`check_models`.

    Attributes:
        version: the latest registered version the models were compared with.
        differences: one line per difference (:func:`describe_difference`),
            empty when the models agree.
        raw: Alembic's ``compare_metadata`` result.
    """

    version: str | None
    differences: list[str] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The models agree with the registered schema."""
        return not self.differences


def _name(schema: str | None, table: str | None, column: str | None = None) -> str:
    return ".".join(p for p in (schema, table, column) if p)


def describe_difference(diff: Any) -> str:
    """One line for one entry of Alembic's ``compare_metadata`` result, from
    the models' side (``add_column`` = the models have a column the
    registered schema lacks)."""
    if isinstance(diff, list):  # modify_* entries come grouped per column
        return "; ".join(describe_difference(d) for d in diff)
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"{kind}: {diff[1].fullname}"
    if kind in ("add_column", "remove_column"):
        _, schema, table, column = diff
        return f"{kind}: {_name(schema, table, column.name)} {column.type}"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        columns = ", ".join(str(getattr(c, "name", c)) for c in index.expressions)
        return f"{kind}: {index.name} on {index.table.fullname} ({columns})"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        table = getattr(constraint, "table", None)
        where = f" on {table.fullname}" if table is not None else ""
        return f"{kind}: {constraint.name or type(constraint).__name__}{where}"
    if kind.startswith("modify_"):
        _, schema, table, column, _existing, old, new = diff
        return f"{kind}: {_name(schema, table, column)} {old!s} -> {new!s}"
    return f"{kind}: {diff[1:]!r}"


def check_models(
    dsn: str, metadata: MetaData | str, *, configure: dict[str, Any] | None = None
) -> ModelCheck:
    """Compare the tenant tables of ``metadata`` with the latest registered
    schema: Alembic's ``compare_metadata`` against a fresh scratch schema
    built from the registry (:func:`scratch_schema`), never a live tenant.

    Args:
        dsn: the database, as the kit's owner.
        metadata: a ``MetaData`` or ``"module:attribute"`` (:func:`load_metadata`).
        configure: more ``MigrationContext`` options (not ``compare_server_default``: ValueError);
            ``compare_type`` is on and :func:`include_tenant_objects` filters.

    Returns:
        A :class:`ModelCheck`; ``ok`` when they agree.

    Raises:
        ValueError, ImportError: as :func:`load_metadata`.
        pgtenancy.errors.MigrationFailed: a registered migration fails on a
            fresh schema.
    """
    if isinstance(metadata, str):
        metadata = load_metadata(metadata)
    split_metadata(metadata)  # bad markers fail before anything runs
    _refuse_server_default_comparison(configure)
    opts = {"include_object": include_tenant_objects, "compare_type": True, **(configure or {})}
    with scratch_schema(dsn) as scratch, _scratch_connection(scratch) as conn:
        context = MigrationContext.configure(connection=conn, opts=opts)
        raw = compare_metadata(context, metadata)
    return ModelCheck(scratch.version, [describe_difference(d) for d in raw], list(raw))
