"""Tenant migrations as files, checked with pglast before anything runs.

A migrations directory holds ``NNNN_name.sql`` files, applied in name order;
the version of a file is its name without ``.sql``. :func:`check_migration`
parses each file with pglast and refuses, with the file, line and reason:
transaction control, ``SET``/``RESET`` of ``search_path`` or the role,
database-level statements, references to a schema other than the tenant's
own (unqualified names) or an allowed shared schema, and statements that
cannot run inside a transaction (``CREATE INDEX CONCURRENTLY``, ``VACUUM``,
...) unless the file's first line is ``-- pgtenancy: no-transaction``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pglast
from pglast import ast

from pgtenancy.errors import TenancyError
from pgtenancy.sqlscript import DATABASE_NODES, ScriptError, read_script

FILE_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")
NO_TRANSACTION = "-- pgtenancy: no-transaction"
#: Schemas a migration may name besides its own: system catalogs.
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_FORBIDDEN_SETTINGS = frozenset({"search_path", "role", "session_authorization"})
# Database-level statements (as the psql-script reader classifies them), and
# schemas: a migration works inside the tenant's schema.
_DATABASE_NODES = DATABASE_NODES | {"CreateSchemaStmt"}


class MigrationCheckError(TenancyError, ValueError):
    """A migration file was refused (Python only: found before any SQL runs).

    Attributes:
        file: the file's name.
        line: 1-based line of the offending statement (0 for the file itself).
        reason: why.
    """

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class MigrationFile:
    """One migration file.

    Attributes:
        version: file name without ``.sql``, e.g. ``0002_add_invoices``.
        path: where it was read.
        sql: its text.
        checksum: SHA-256 of the text (hex), as ``tenancy.migrations`` keeps it.
        outside_transaction: marked ``-- pgtenancy: no-transaction``.
    """

    version: str
    path: Path
    sql: str
    checksum: str
    outside_transaction: bool


def read_migration_dir(directory: Path) -> list[MigrationFile]:
    """Read the ``NNNN_name.sql`` files of ``directory``, in version order.

    Raises:
        MigrationCheckError: a ``.sql`` file whose name is not ``NNNN_name.sql``.
        FileNotFoundError: the directory does not exist.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"migrations directory {directory} not found")
    files = []
    for path in sorted(directory.glob("*.sql")):
        if not FILE_NAME.match(path.name):
            raise MigrationCheckError(path.name, 0, "name it NNNN_name.sql (digits, then a name)")
        text = path.read_text("utf-8")
        files.append(
            MigrationFile(
                version=path.stem,
                path=path,
                sql=text,
                checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                outside_transaction=text.lstrip().startswith(NO_TRANSACTION),
            )
        )
    return files


def _walk(node: Any) -> Iterator[ast.Node]:
    if isinstance(node, ast.Node):
        yield node
        for name in getattr(node, "__slots__", ()):
            yield from _walk(getattr(node, name, None))
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _walk(item)


def _names(items: Any) -> list[str]:
    return [getattr(i, "sval", "") for i in items or ()]


def _schemas(node: ast.Node) -> Iterator[str]:
    """Schema names a statement's tree refers to explicitly."""
    for n in _walk(node):
        if isinstance(n, ast.RangeVar) and n.schemaname:
            yield n.schemaname
        elif isinstance(n, ast.TypeName | ast.FuncCall | ast.CreateFunctionStmt | ast.DefineStmt):
            attr = {
                "TypeName": "names",
                "FuncCall": "funcname",
                "CreateFunctionStmt": "funcname",
                "DefineStmt": "defnames",
            }[type(n).__name__]
            parts = _names(getattr(n, attr))
            if len(parts) > 1:
                yield parts[0]
        elif isinstance(n, ast.CreateEnumStmt | ast.CreateDomainStmt):
            parts = _names(n.typeName if isinstance(n, ast.CreateEnumStmt) else n.domainname)
            if len(parts) > 1:
                yield parts[0]


def check_migration(migration: MigrationFile, shared_schemas: Sequence[str] = ("public",)) -> None:
    """Refuse a migration that cannot run safely inside every tenant schema.

    Args:
        migration: the file.
        shared_schemas: schemas a migration may name (to reference shared
            tables); the tenant's own objects are named without a schema.

    Raises:
        MigrationCheckError: with the file, line and reason, for the first
            offending statement; also when the file does not parse or is empty.
    """
    name = migration.path.name
    try:
        script = read_script(migration.sql)
    except ScriptError as exc:
        raise MigrationCheckError(name, exc.line, f"does not parse: {exc}") from exc
    if script.skipped:
        line, text = script.skipped[0]
        raise MigrationCheckError(name, line, f"psql meta-command {text!r} is not SQL")
    if not script.statements:
        raise MigrationCheckError(name, 1, "no SQL statement")
    allowed = set(shared_schemas) | SYSTEM_SCHEMAS
    for stmt in script.statements:
        node = pglast.parse_sql(stmt.sql)[0].stmt
        assert node is not None
        kind = type(node).__name__
        if isinstance(node, ast.TransactionStmt):
            raise MigrationCheckError(
                name,
                stmt.line,
                "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT): "
                "each tenant migrates in one transaction of its own",
            )
        if isinstance(node, ast.VariableSetStmt) and (
            node.name is None or node.name.lower() in _FORBIDDEN_SETTINGS
        ):
            what = "RESET ALL" if node.name is None else f"SET/RESET {node.name}"
            raise MigrationCheckError(
                name, stmt.line, f"{what}: the runner sets search_path to the tenant's schema"
            )
        if kind in _DATABASE_NODES:
            raise MigrationCheckError(
                name, stmt.line, f"{kind}: not a statement for a tenant schema"
            )
        no_transaction = (
            (isinstance(node, ast.IndexStmt) and node.concurrent)
            or isinstance(node, ast.VacuumStmt)
            or (
                isinstance(node, ast.ReindexStmt)
                and any(getattr(p, "defname", "") == "concurrently" for p in node.params or ())
            )
        )
        if no_transaction and not migration.outside_transaction:
            raise MigrationCheckError(
                name,
                stmt.line,
                f"{kind} cannot run inside a transaction; mark the file with "
                f"'{NO_TRANSACTION}' as its first line",
            )
        for schema in _schemas(node):
            if schema not in allowed:
                raise MigrationCheckError(
                    name,
                    stmt.line,
                    f"references schema {schema!r}: name the tenant's objects "
                    f"without a schema; allowed shared schemas: {sorted(shared_schemas)}",
                )
