"""Tenant migrations as files, checked with pglast before anything runs.

A migrations directory holds ``NNNN_name.sql`` files, or the other namings
:func:`read_migration_dir` reads (dotted versions, Flyway, golang-migrate,
diesel), applied in natural version order. :func:`check_migration`
parses each file with pglast and refuses, with the file, line and reason:
transaction control, ``SET``/``RESET`` of ``search_path`` or the role,
database-level statements, references to a schema other than the tenant's
own (unqualified names) or an allowed shared schema, and statements that
cannot run inside a transaction (``CREATE INDEX CONCURRENTLY``, ``VACUUM``,
...) unless the file's first line is ``-- pgtenancy: no-transaction``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pglast
from pglast import ast

from pgtenancy.errors import TenancyError
from pgtenancy.sqlscript import DATABASE_NODES, ScriptError, read_script

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
        outside_transaction: marked ``-- pgtenancy: no-transaction`` (or
            diesel's ``run_in_transaction = false``).
        name: the file as named in its directory (``0001_init.sql``,
            ``2024-01-31-120000_users/up.sql``); empty when not read from one.
    """

    version: str
    path: Path
    sql: str
    checksum: str
    outside_transaction: bool
    name: str = ""


#: The version text ``tenancy.add_migration`` accepts.
VERSION_RULE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")
#: Digit runs of a version part shorter than this are zero-padded when registered.
VERSION_PAD = 4
_NAMING_HELP = (
    "name it NNNN_name.sql or <version>_<name>.sql (version: digits separated by "
    "'.' or '-'), V<version>__<description>.sql (Flyway), NNNN_name.up.sql "
    "(golang-migrate), or a directory <version>_<name>/ holding up.sql (diesel)"
)
# <version>_<name>.sql, or <version>.sql: the version is digits separated by . or -.
_PLAIN = re.compile(r"^(?P<version>\d+(?:[.-]\d+)*)(?:_(?P<name>[0-9A-Za-z][0-9A-Za-z_.-]*))?$")
# Flyway: V<version>__<description>; its version separates numbers with . or _.
_FLYWAY = re.compile(r"^V(?P<version>\d+(?:[._]\d+)*)__(?P<name>[0-9A-Za-z][0-9A-Za-z_.-]*)$")
_DIGITS = re.compile(r"\d+")


def _pad(version: str) -> str:
    return _DIGITS.sub(lambda m: m.group().rjust(VERSION_PAD, "0"), version)


def natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Natural sort key of a version: runs of digits compare as numbers
    (``2.9`` < ``2.10``, ``9_a`` < ``10_a``), other runs as text (code points)."""
    return tuple(
        (0, int(part), part) if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", text)
        if part
    )


_Entry = tuple[str, tuple[int, ...], str, str, Path]


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _DIGITS.findall(version))


def _plain(form: str, text: str, path: Path) -> _Entry | None:
    m = _PLAIN.match(text)
    if m is None:
        return None
    version = m["version"]
    return form, _numbers(version), m["name"] or "", _pad(version) + text[len(version) :], path


def _classify(entry: Path) -> _Entry | str | None:
    """``(form, version numbers, name, registered version, sql_path)`` of a
    directory entry, a refusal reason, or None when the entry is not a
    migration (ignored)."""
    name = entry.name
    if name.startswith("."):
        return None
    if entry.is_dir():
        up = entry / "up.sql"
        if not up.is_file():
            return "a directory per migration must hold up.sql"
        return _plain("diesel", name, up) or "a migration directory is named <version>_<name>"
    if not name.endswith(".sql"):
        return None
    stem = name[: -len(".sql")]
    if stem.endswith(".down"):
        return None  # golang-migrate's down migration: pgtenancy never runs it
    if stem.endswith(".up"):
        found = _plain("golang-migrate", stem[: -len(".up")], entry)
        return found or "a golang-migrate file is named NNNN_name.up.sql"
    if stem.startswith("U") and re.match(r"^U\d", stem) and "__" in stem:
        return None  # Flyway's undo migration: pgtenancy never runs it
    if stem.startswith("R__"):
        return "a Flyway repeatable migration (R__) has no version: make it a versioned one"
    if stem.startswith("V"):
        m = _FLYWAY.match(stem)
        if m is None:
            return "a Flyway file is named V<version>__<description>.sql"
        # "-" ends the version: it sorts before ".", so V1 comes before V1.1.
        version = _pad(m["version"].replace("_", "."))
        return "flyway", _numbers(m["version"]), m["name"], f"V{version}-{m['name']}", entry
    return _plain("plain", stem, entry) or _NAMING_HELP


def read_migration_dir(directory: Path) -> list[MigrationFile]:
    """Read the migrations of ``directory``, in natural version order.

    Naming (one form per directory; hidden entries and files not ending in
    ``.sql`` are ignored):

    - ``<version>_<name>.sql`` or ``<version>.sql``, the version being digits
      separated by ``.`` or ``-`` (``0001_init.sql``,
      ``00.00.00_01_pre_cancel_notification.sql``, ``2024-01-31_add.sql``);
    - Flyway ``V<version>__<description>.sql`` (``V1.1__add_index.sql``; ``_``
      in the version reads as ``.``); undo files ``U<version>__*.sql`` are
      ignored, repeatable ``R__*.sql`` ones refused;
    - golang-migrate ``<version>_<name>.up.sql``; ``.down.sql`` files are ignored;
    - diesel: a directory ``<version>_<name>/`` holding ``up.sql`` (its
      ``down.sql`` ignored; ``run_in_transaction = false`` in its
      ``metadata.toml`` marks it no-transaction).

    Order: natural version sort: versions compare as sequences of numbers
    (``2.9`` < ``2.10`` < ``10``; ``1`` < ``1.1``; leading zeros do not
    count), then names with :func:`natural_key` (digit runs as numbers). The
    registered version is the name without ``.sql`` / ``.up.sql`` (a diesel
    directory's name), with every digit run of its version part zero-padded
    to :data:`VERSION_PAD` digits (``1.10_x`` -> ``0001.0010_x``; ``0001_init``
    stays); a Flyway file registers as ``V<padded version>-<description>``
    (``V1.1__fix`` -> ``V0001.0001-fix``: ``-`` sorts before ``.``, so ``V1``
    comes before ``V1.1``). The registry's C-collation order is then the
    natural order, and the reader refuses a directory where it would not be.

    Raises:
        MigrationCheckError: with the file and the reason: a name none of
            the forms above; a directory mixing forms; two names with the
            same version (Flyway: the same version number); names whose
            natural order and registered (C-collation) order disagree
            (numbers longer than :data:`VERSION_PAD` digits of different
            widths, digits in the name part); a version the registry refuses
            (over 128 characters).
        FileNotFoundError: the directory does not exist.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"migrations directory {directory} not found")
    found: list[tuple[Path, _Entry]] = []
    for entry in sorted(directory.iterdir()):
        kind = _classify(entry)
        if kind is None:
            continue
        if isinstance(kind, str):
            raise MigrationCheckError(entry.name + ("/" if entry.is_dir() else ""), 0, kind)
        if not VERSION_RULE.match(kind[3]):
            raise MigrationCheckError(
                entry.name,
                0,
                f"version {kind[3]!r} is not one the registry accepts (128 characters)",
            )
        found.append((entry, kind))
    forms = {kind[0] for _, kind in found}
    if len(forms) > 1:
        first: dict[str, str] = {}
        for entry, kind in found:
            first.setdefault(kind[0], entry.name)
        listed = ", ".join(f"{form} ({name})" for form, name in sorted(first.items()))
        raise MigrationCheckError(
            directory.name, 0, f"the directory mixes naming forms: {listed}; use one"
        )
    found.sort(key=lambda f: (f[1][1], natural_key(f[1][2])))
    for (ent_a, a), (ent_b, b) in itertools.pairwise(found):
        same = (
            a[1] == b[1]
            if a[0] == "flyway"
            else (a[1], natural_key(a[2]))
            == (
                b[1],
                natural_key(b[2]),
            )
        )
        if same or a[3] == b[3]:
            raise MigrationCheckError(
                ent_b.name, 0, f"ambiguous: same version as {ent_a.name} ({b[3]})"
            )
        if not a[3] < b[3]:  # code point order = the registry's C collation
            raise MigrationCheckError(
                ent_b.name,
                0,
                f"ambiguous: sorts after {ent_a.name} naturally but before it as registered "
                f"({b[3]} < {a[3]}); zero-pad the numbers to one width",
            )
    files = []
    for entry, (form, _, _, version, sql_path) in found:
        text = sql_path.read_text("utf-8")
        outside = text.lstrip().startswith(NO_TRANSACTION)
        if form == "diesel" and (entry / "metadata.toml").is_file():
            meta = tomllib.loads((entry / "metadata.toml").read_text("utf-8"))
            outside = outside or meta.get("run_in_transaction") is False
        files.append(
            MigrationFile(
                version=version,
                path=sql_path,
                sql=text,
                checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                outside_transaction=outside,
                name=str(sql_path.relative_to(directory)),
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
