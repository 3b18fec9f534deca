"""Tenant archives: export one tenant, import it into another database, move it
(issue 15).

An archive (``acme.pgtenancy``) is a gzip'd tar file:

* ``manifest.json``: format name and version, kit version, export time, the
  registry row (id, slug, schema, status, isolation, metadata, migration
  version, limits), every registered migration's version and checksum up to
  the tenant's, and per table its qualified name, columns, row count and an
  MD5 of its sorted rows; per sequence its value.
* ``schema.sql`` (schema tenants, when ``pg_dump`` is found): ``pg_dump
  --schema-only -n tenant_<slug>`` at the export's snapshot, for people and
  tools; the import does not run it.
* ``data/NNNN.copy``: each table's rows (for a shared tenant its rows of each
  guarded table) in COPY text format, in foreign-key order.

Export reads everything in one REPEATABLE READ transaction (pg_dump joins it
with ``--snapshot``), so the archive is consistent while the tenant is in use.

Import recreates the tenant in ONE transaction of the target: the registry row
(same id; ``as_slug`` renames) through the registry triggers, so a schema
tenant's schema is built by the target's own migrations, run confined, which
must be those of the archive (same versions and checksums up to the tenant's,
nothing later); then COPY of each table with user triggers off (for a schema
tenant into a text-columned temporary stage whose rows ``tenancy.load_stage``
writes as the tenant's owner role, so no code of the tenant's runs with the
owner's rights), sequences set, and every table's count and MD5 compared
with the manifest. Any failure
rolls it all back: nothing is left behind. ``tenant_created`` carries
``imported`` in its payload.

Move = export + import + verify + soft delete at the source, the tenant
suspended at the source for the copy; rerunning it after a failure picks up
where it stopped.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgtenancy._version import __version__
from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import ArchiveRefused, TenantExists, TenantNotFound, raise_translated
from pgtenancy.queries import QUERIES
from pgtenancy.slugs import validate_slug

#: The ``format`` of manifest.json, and its version.
ARCHIVE_FORMAT = "pgtenancy-tenant-archive"
ARCHIVE_VERSION = 1


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_tenant` did.

    Attributes:
        slug: the tenant's slug in the target.
        id: its id (the archive's).
        tables: tables loaded.
        rows: rows loaded.
    """

    slug: str
    id: str
    tables: int
    rows: int


def _q(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(QUERIES[name].strip()).format(**parts)


def _table_ident(qualified: str) -> sql.Composable:
    # regclass text is already quoted as needed ("tenant_acme"."Album", public.orders).
    return sql.SQL(qualified)


def _columns(columns: str) -> sql.Composable:
    return sql.SQL(columns)


def _filter(tenant_column: str | None, tenant_id: str) -> sql.Composable:
    if tenant_column is None:
        return sql.SQL("true")
    return sql.SQL("{} = {}::uuid").format(sql.Identifier(tenant_column), sql.Literal(tenant_id))


def _pg_dump() -> str | None:
    from shutil import which

    from pgtenancy.testing import find_bindir

    bindir = find_bindir()
    if bindir is not None and (bindir / "pg_dump").is_file():
        return str(bindir / "pg_dump")
    return which("pg_dump")


def _tables_of(conn: psycopg.Connection[Any], tenant: dict[str, Any]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    if tenant["isolation"] == "schema":
        rows = cur.execute(QUERIES["archive_schema_tables"], {"schema": tenant["schema_name"]})
        return [
            {"table": r["name"], "qualified": r["qualified"], "columns": r["columns"]}
            for r in rows.fetchall()
        ]
    rows = cur.execute(QUERIES["archive_guarded_tables"])
    return [
        {
            "table": r["qualified"],
            "qualified": r["qualified"],
            "columns": r["columns"],
            "tenant_column": r["tenant_column"],
        }
        for r in rows.fetchall()
    ]


def _checksum(
    conn: psycopg.Connection[Any], table: dict[str, Any], tenant_id: str
) -> tuple[int, str]:
    row = conn.execute(
        _q(
            "archive_checksum",
            columns=_columns(table["columns"]),
            table=_table_ident(table["qualified"]),
            filter=_filter(table.get("tenant_column"), tenant_id),
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def export_tenant(dsn: str, slug: str, out: Path | str) -> dict[str, Any]:
    """Write tenant ``slug`` of database ``dsn`` to the archive ``out``,
    consistent at one snapshot; the tenant may be in use meanwhile.

    Args:
        dsn: libpq DSN or URL of the source database (pg_dump connects too).
        slug: the tenant.
        out: archive path; written to a temporary file first, so a failed
            export leaves nothing at ``out``.

    Returns:
        The manifest (a JSON object).

    Raises:
        TenantNotFound: no such tenant.
        psycopg.Error: the database failed.
    """
    url = libpq_dsn(dsn)
    out = Path(out)
    with psycopg.connect(url) as conn:
        try:
            conn.execute(QUERIES["repeatable_read"])
            cur = conn.cursor(row_factory=dict_row)
            tenant = cur.execute(QUERIES["archive_tenant_row"], {"slug": slug}).fetchone()
            if tenant is None:
                raise TenantNotFound(f"tenant {slug!r} not found", sqlstate="PT003")
            snapshot = cur.execute(QUERIES["export_snapshot"]).fetchone()
            assert snapshot is not None
            tenant_id = tenant["id"]
            conn.execute(QUERIES["archive_enter"], {"id": tenant_id})
            migrations = [
                {"version": r["version"], "checksum": r["checksum"]}
                for r in cur.execute(QUERIES["archive_migrations"]).fetchall()
                if tenant["migration_version"] is not None
                and r["version"] <= tenant["migration_version"]
            ]
            tables = _tables_of(conn, tenant)
            sequences: list[dict[str, Any]] = []
            if tenant["isolation"] == "schema":
                for r in cur.execute(
                    QUERIES["archive_schema_sequences"], {"schema": tenant["schema_name"]}
                ).fetchall():
                    value = conn.execute(
                        _q(
                            "archive_sequence_value",
                            sequence=sql.Identifier(tenant["schema_name"], r["name"]),
                        )
                    ).fetchone()
                    assert value is not None
                    sequences.append(
                        {"sequence": r["name"], "last_value": int(value[0]), "is_called": value[1]}
                    )
            fd, tmp_name = tempfile.mkstemp(prefix=".pgtenancy-", dir=out.parent or Path("."))
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                with tarfile.open(tmp, "w:gz") as tar:
                    for n, table in enumerate(tables):
                        table["rows"], table["md5"] = _checksum(conn, table, tenant_id)
                        table["file"] = f"data/{n:04d}.copy"
                        buf = io.BytesIO()
                        with conn.cursor().copy(
                            _q(
                                "archive_copy_out",
                                columns=_columns(table["columns"]),
                                table=_table_ident(table["qualified"]),
                                filter=_filter(table.get("tenant_column"), tenant_id),
                            )
                        ) as copy:
                            for chunk in copy:
                                buf.write(bytes(chunk))
                        _add(tar, table["file"], buf.getvalue())
                    ddl = None
                    pg_dump = _pg_dump()
                    if tenant["isolation"] == "schema" and pg_dump is not None:
                        ddl = subprocess.run(
                            [
                                pg_dump,
                                "--schema-only",
                                "--no-owner",
                                "--no-privileges",
                                "--snapshot",
                                snapshot["snapshot"],
                                "-n",
                                tenant["schema_name"],
                                "--dbname",
                                url,
                            ],
                            capture_output=True,
                            check=True,
                        ).stdout
                        _add(tar, "schema.sql", ddl)
                    manifest = {
                        "format": ARCHIVE_FORMAT,
                        "format_version": ARCHIVE_VERSION,
                        "kit_version": __version__,
                        "exported_at": dt.datetime.now(dt.UTC).isoformat(),
                        "tenant": {k: v for k, v in tenant.items()},
                        "migrations": migrations,
                        "tables": tables,
                        "sequences": sequences,
                        "schema_ddl": "schema.sql" if ddl is not None else None,
                    }
                    _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
                tmp.replace(out)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except psycopg.Error as exc:
            raise_translated(exc)
    return manifest


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of archive ``path``.

    Raises:
        ArchiveRefused: not a pgtenancy tenant archive, or of a newer format.
    """
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            manifest: dict[str, Any] = json.loads(member.read())
    except (tarfile.TarError, KeyError, json.JSONDecodeError, AssertionError, OSError) as exc:
        raise ArchiveRefused(f"{path}: not a pgtenancy tenant archive ({exc})") from exc
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise ArchiveRefused(f"{path}: not a pgtenancy tenant archive")
    if int(manifest.get("format_version", 0)) > ARCHIVE_VERSION:
        raise ArchiveRefused(
            f"{path}: archive format {manifest['format_version']} is newer than this "
            f"pgtenancy's ({ARCHIVE_VERSION}): upgrade pgtenancy"
        )
    return manifest


def _check_migrations(conn: psycopg.Connection[Any], manifest: dict[str, Any]) -> None:
    tenant = manifest["tenant"]
    if tenant["isolation"] != "schema":
        return
    target = {r[0]: r[1] for r in conn.execute(QUERIES["archive_migrations"]).fetchall()}
    wanted = {m["version"]: m["checksum"] for m in manifest["migrations"]}
    missing = sorted(set(wanted) - set(target))
    if missing:
        raise ArchiveRefused(
            f"the target's migrations are behind the archive's: it lacks {', '.join(missing)}",
            hint="Register the same migrations in the target first (pgtenancy migrate --dir).",
        )
    changed = sorted(v for v in wanted if target[v] != wanted[v])
    version = tenant["migration_version"] or ""
    extra = sorted(v for v in target if v not in wanted and v <= version)
    if changed or extra:
        raise ArchiveRefused(
            "the target's migrations differ from the archive's: "
            + ", ".join(
                [f"{v} has other SQL" for v in changed]
                + [f"{v} is not in the archive" for v in extra]
            )
        )
    later = sorted(v for v in target if v > version)
    if later:
        raise ArchiveRefused(
            f"the target has migrations after the archive's {version or 'none'} "
            f"({', '.join(later)}): migrate the tenant at the source first",
        )


def import_tenant(
    dsn: str, path: Path | str, as_slug: str | None = None, *, _fail_after: int | None = None
) -> ImportResult:
    """Recreate the tenant of archive ``path`` in database ``dsn``, in one
    transaction; see the module docstring.

    Args:
        dsn: libpq DSN or URL of the target (pgtenancy installed).
        path: the archive.
        as_slug: the slug in the target (default: the archive's).
        _fail_after: testing only: raise after loading this many tables.

    Raises:
        ArchiveRefused: see the class; nothing changed.
        TenantExists: PT002, the slug (or its schema) exists in the target.
        InvalidTenantSlug: PT001.
    """
    manifest = read_manifest(path)
    tenant = manifest["tenant"]
    slug = as_slug or tenant["slug"]
    validate_slug(slug)
    loaded = 0
    with psycopg.connect(libpq_dsn(dsn)) as conn, tarfile.open(path, "r:gz") as tar:
        try:
            found = conn.execute(QUERIES["archive_tenant_by_id"], {"id": tenant["id"]}).fetchone()
            if found is not None:
                raise ArchiveRefused(
                    f"tenant id {tenant['id']} exists in the target (as {found[0]!r})"
                )
            if conn.execute(QUERIES["archive_slug_exists"], {"slug": slug}).fetchone():
                raise TenantExists(f"tenant {slug!r} already exists", sqlstate="PT002")
            _check_migrations(conn, manifest)
            payload = {
                "imported": {
                    "from_slug": tenant["slug"],
                    "kit_version": manifest["kit_version"],
                    "exported_at": manifest["exported_at"],
                }
            }
            conn.execute(QUERIES["archive_created_payload"], {"payload": json.dumps(payload)})
            row = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    QUERIES["archive_insert_tenant"],
                    {
                        "id": tenant["id"],
                        "slug": slug,
                        "metadata": json.dumps(tenant["metadata"]),
                        "isolation": tenant["isolation"],
                        "limits": tenant["limits"],
                    },
                )
                .fetchone()
            )
            assert row is not None
            conn.execute(QUERIES["archive_created_payload"], {"payload": ""})
            conn.execute(QUERIES["archive_enter"], {"id": tenant["id"]})
            schema = row["schema_name"]
            for table in manifest["tables"]:
                if _fail_after is not None and loaded >= _fail_after:
                    raise RuntimeError(f"failing on purpose after {loaded} tables")
                qualified = (
                    sql.Identifier(schema, table["table"]).as_string(conn)
                    if schema
                    else table["qualified"]
                )
                target = dict(table, qualified=qualified)
                member = tar.extractfile(table["file"])
                assert member is not None
                data = member.read()
                ident = _table_ident(qualified)
                copy_into = ident
                if schema:
                    conn.execute(_q("archive_disable_triggers", table=ident))
                    # COPY into a stage of text columns; the rows reach the
                    # tenant's table as its own role, so the code its
                    # migrations attached (checks, domains, index
                    # expressions) never runs with the owner's rights.
                    stage = conn.execute(
                        QUERIES["archive_create_stage"], {"table": qualified}
                    ).fetchone()
                    assert stage is not None
                    copy_into = sql.SQL(str(stage[0]))
                with conn.cursor().copy(
                    _q("archive_copy_in", table=copy_into, columns=_columns(table["columns"]))
                ) as copy:
                    copy.write(data)
                if schema:
                    conn.execute(QUERIES["archive_load_stage"], {"table": qualified})
                    conn.execute(_q("archive_enable_triggers", table=ident))
                got = _checksum(conn, target, tenant["id"])
                if got != (table["rows"], table["md5"]):
                    raise ArchiveRefused(
                        f"{qualified}: imported {got[0]} rows (md5 {got[1]}), the archive says "
                        f"{table['rows']} (md5 {table['md5']})"
                    )
                if not schema:
                    _bump_sequences(conn, target, tenant["id"])
                loaded += 1
            for seq in manifest["sequences"]:
                conn.execute(
                    QUERIES["archive_setval"],
                    {
                        "sequence": sql.Identifier(schema, seq["sequence"]).as_string(conn),
                        "value": seq["last_value"],
                        "called": seq["is_called"],
                    },
                )
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            raise_translated(exc)
    return ImportResult(slug, tenant["id"], loaded, sum(t["rows"] for t in manifest["tables"]))


def _bump_sequences(conn: psycopg.Connection[Any], table: dict[str, Any], tenant_id: str) -> None:
    """Sequences behind the columns of a shared table go past the imported values."""
    for seq, column in conn.execute(
        QUERIES["archive_serial_sequences"], {"table": table["qualified"]}
    ).fetchall():
        conn.execute(
            _q(
                "archive_bump_sequence",
                sequence=_table_ident(seq),
                column=sql.Identifier(column),
                table=_table_ident(table["qualified"]),
                filter=_filter(table["tenant_column"], tenant_id),
            ),
            {"sequence": seq},
        )


@contextmanager
def _conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        yield conn


def move_tenant(
    source_dsn: str, slug: str, target_dsn: str, archive: Path | str | None = None
) -> ImportResult:
    """Move tenant ``slug`` from ``source_dsn`` to ``target_dsn``: suspend it at
    the source (entry refused from then on: the downtime), export, import into
    the target (verified table by table), then soft-delete it at the source
    and resume it at the target... it is created active there. Rerun after a
    failure: a suspended source is exported again, an import already done
    (same id in the target) is verified and kept, a deleted source is left so.

    Args:
        source_dsn, target_dsn: the two databases.
        slug: the tenant (its slug at the source; it keeps it at the target).
        archive: where to keep the archive (default: a temporary file, removed
            after success).

    Raises:
        TenantNotFound: not at the source. ArchiveRefused: see import_tenant.
    """
    from pgtenancy.admin import Tenancy

    source = Tenancy(source_dsn)
    row = source.get_tenant(slug)
    done_at_target = _at_target(target_dsn, str(row.id))
    if row.status == "deleted" and done_at_target:
        return ImportResult(slug, str(row.id), 0, 0)
    if row.status == "active":
        source.suspend_tenant(slug)
    keep = archive is not None
    path = (
        Path(archive)
        if archive is not None
        else Path(tempfile.mkdtemp(prefix="pgtenancy-move-")) / f"{slug}.pgtenancy"
    )
    manifest = export_tenant(source_dsn, slug, path)
    if done_at_target:
        _verify(target_dsn, manifest)
        result = ImportResult(slug, str(row.id), len(manifest["tables"]), 0)
    else:
        result = import_tenant(target_dsn, path)
    source.drop_tenant(slug)
    if not keep:
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    return result


def _at_target(dsn: str, tenant_id: str) -> bool:
    with _conn(dsn) as conn:
        return (
            conn.execute(QUERIES["archive_tenant_by_id"], {"id": tenant_id}).fetchone() is not None
        )


def _verify(dsn: str, manifest: dict[str, Any]) -> None:
    """Compare the target's copy of the tenant with the manifest."""
    tenant = manifest["tenant"]
    with _conn(dsn) as conn:
        row = (
            conn.cursor(row_factory=dict_row)
            .execute(QUERIES["archive_tenant_by_id"], {"id": tenant["id"]})
            .fetchone()
        )
        assert row is not None
        slug = row["slug"]
        with conn.transaction():
            schema = conn.execute(QUERIES["archive_tenant_row"], {"slug": slug}).fetchone()
            assert schema is not None
            conn.execute(QUERIES["archive_enter"], {"id": tenant["id"]})
            for table in manifest["tables"]:
                qualified = (
                    sql.Identifier(schema[2], table["table"]).as_string(conn)
                    if schema[2]
                    else table["qualified"]
                )
                got = _checksum(conn, dict(table, qualified=qualified), tenant["id"])
                if got != (table["rows"], table["md5"]):
                    raise ArchiveRefused(
                        f"{qualified} in the target differs from the source: {got[0]} rows, "
                        f"the source has {table['rows']}"
                    )
