"""Tenant migrations as files, checked with pglast before anything runs.

A migrations directory holds ``NNNN_name.sql`` files, or the other namings
:func:`read_migration_dir` reads (dotted versions, Flyway, golang-migrate,
diesel), applied in natural version order. :func:`check_migration`
parses each file with pglast and refuses, with the file, line and reason,
what the database refuses at execution time (SQLSTATE PT017,
``UnsafeMigration``): a migration creates, changes and writes only objects
of its own tenant schema, named without a schema (the tenant's schema name
is not known when the file is registered). Refused:

* DDL or DML whose object is schema-qualified (any schema): CREATE, ALTER,
  DROP, COMMENT ON, SECURITY LABEL, GRANT/REVOKE on objects, TRUNCATE,
  INSERT/UPDATE/DELETE/MERGE (CTEs and rules included), COPY, REINDEX,
  CLUSTER, VACUUM, REFRESH MATERIALIZED VIEW, CREATE INDEX/TRIGGER/POLICY/RULE
  on a qualified table, a partition or child of a qualified table, ``SET
  SCHEMA``. References are allowed: foreign keys, types, functions,
  operators and operator classes of the shared schemas, tables read;
* extensions, schemas, roles and role membership, ``ALTER ... OWNER TO``,
  default privileges, GRANT/REVOKE on schemas, databases, ``ALL ... IN
  SCHEMA``, languages, tablespaces, foreign data wrappers and servers,
  large objects and parameters; database-wide statements (ALTER DATABASE,
  ALTER SYSTEM, CREATE/DROP DATABASE and TABLESPACE, event triggers,
  FDWs, servers, user mappings, publications, subscriptions, languages,
  casts, access methods, transforms), LOAD, CHECKPOINT, DISCARD;
* ``COPY ... PROGRAM`` and COPY to or from a server file (``FROM STDIN``
  and ``TO STDOUT`` stay allowed);
* ``SET``/``RESET`` (``LOCAL`` or not) of ``search_path``, ``role`` and
  ``session_authorization``, ``SET ROLE``, ``SET SESSION AUTHORIZATION``,
  ``RESET ALL``; transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT,
  PREPARE TRANSACTION ...);
* statements that cannot run in a transaction unless the file is marked
  ``-- pgtenancy: no-transaction`` (in its leading comment lines); a marked
  file holds only what :mod:`pgtenancy.confinement` allows (CREATE INDEX
  CONCURRENTLY of plain columns, DROP INDEX CONCURRENTLY, VACUUM, ALTER TYPE
  ... ADD VALUE), unqualified.

DO blocks are checked the same way for the SQL they run directly
(PL/pgSQL statements, parsed); they, dynamic SQL (``EXECUTE``, ``format``)
in DO blocks and functions, and ``set_config`` calls are reported as
warnings: the database confines them at execution.
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
from pgtenancy.sqlscript import (
    DATABASE_NODES,
    ScriptError,
    read_script,
    statement_name,
    statement_targets,
    walk,
)

NO_TRANSACTION = "-- pgtenancy: no-transaction"
#: Schemas a migration may always reference besides the shared ones.
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "tenancy", "pg_temp"})
_FORBIDDEN_SETTINGS = frozenset({"search_path", "role", "session_authorization"})


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
    "'.' or '-', optionally ending with one lowercase letter: 1.2.10a), "
    "V<version>__<description>.sql (Flyway), NNNN_name.up.sql "
    "(golang-migrate), or a directory <version>_<name>/ holding up.sql (diesel)"
)
# <version>_<name>.sql, or <version>.sql: the version is digits separated by . or -,
# optionally ending with one lowercase letter, a patch after it (DAViCal's
# 1.2.10.sql, 1.2.10a.sql, 1.2.11.sql).
_PLAIN = re.compile(
    r"^(?P<version>\d+(?:[.-]\d+)*(?P<suffix>[a-z])?)(?:_(?P<name>[0-9A-Za-z][0-9A-Za-z_.-]*))?$"
)
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


#: (form, version numbers, letter suffix + name, registered version, sql path).
_Entry = tuple[str, tuple[int, ...], str, str, Path]


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _DIGITS.findall(version))


def _plain(form: str, text: str, path: Path) -> _Entry | None:
    m = _PLAIN.match(text)
    if m is None:
        return None
    version = m["version"]
    # The suffix letter sorts with the name: "" < "a" (no suffix first), and
    # "a" + name comes after "" + name, so 1.2.10_x < 1.2.10a < 1.2.11.
    name = (m["suffix"] or "") + "\0" + (m["name"] or "")
    return form, _numbers(version), name, _pad(version) + text[len(version) :], path


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
        if name.lower().endswith(".sql"):
            # Ignoring it would silently leave a gap in the history.
            return "name it with .sql in lowercase (other files are ignored)"
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
    ``.sql`` are ignored, but ``.SQL`` in another case is refused: it would
    leave a gap):

    - ``<version>_<name>.sql`` or ``<version>.sql``, the version being digits
      separated by ``.`` or ``-`` (``0001_init.sql``,
      ``00.00.00_01_pre_cancel_notification.sql``, ``2024-01-31_add.sql``),
      optionally ending with one lowercase letter, read as a patch after
      that version (DAViCal's ``1.2.10.sql``, ``1.2.10a.sql``, ``1.2.11.sql``);
    - Flyway ``V<version>__<description>.sql`` (``V1.1__add_index.sql``; ``_``
      in the version reads as ``.``); undo files ``U<version>__*.sql`` are
      ignored, repeatable ``R__*.sql`` ones refused;
    - golang-migrate ``<version>_<name>.up.sql``; ``.down.sql`` files are ignored;
    - diesel: a directory ``<version>_<name>/`` holding ``up.sql`` (its
      ``down.sql`` ignored; ``run_in_transaction = false`` in its
      ``metadata.toml`` marks it no-transaction).

    Order: natural version sort: versions compare as sequences of numbers
    (``2.9`` < ``2.10`` < ``10``; ``1`` < ``1.1``; leading zeros do not
    count), then the letter suffix (none first: ``1.2.10`` < ``1.2.10a`` <
    ``1.2.10b`` < ``1.2.11``), then names with :func:`natural_key` (digit runs as numbers). The
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
        outside = marked_no_transaction(text)
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
    """Every node of a tree, depth first, in attribute order (without recursion)."""
    yield from walk(node)  # type: ignore[misc]


def _names(items: Any) -> list[str]:
    return [getattr(i, "sval", "") for i in items or ()]


# Node attributes that hold a possibly qualified name (a list of String).
_REFERENCE_NAMES: dict[str, tuple[str, ...]] = {
    "TypeName": ("names",),
    "FuncCall": ("funcname",),
    "CreateFunctionStmt": ("funcname",),
    "DefineStmt": ("defnames",),
    "CreateEnumStmt": ("typeName",),
    "CreateDomainStmt": ("domainname",),
    "IndexElem": ("opclass", "collation"),
    "CollateClause": ("collname",),
    "ObjectWithArgs": ("objname",),
    "A_Expr": ("name",),
    "CreateTrigStmt": ("funcname",),
}


def _schemas(node: ast.Node, nodes: Sequence[Any] | None = None) -> Iterator[str]:
    """Schema names a statement's tree refers to explicitly (targets and references);
    ``nodes``: the tree's walk, when the caller has it."""
    for n in _walk(node) if nodes is None else nodes:
        if isinstance(n, ast.RangeVar) and n.schemaname:
            yield n.schemaname
            continue
        for attr in _REFERENCE_NAMES.get(type(n).__name__, ()):
            parts = _names(getattr(n, attr, None))
            if len(parts) > 1 and not (isinstance(n, ast.TypeName) and n.pct_type):
                yield parts[-2]


def marked_no_transaction(text: str) -> bool:
    """``-- pgtenancy: no-transaction`` is one of the file's leading comment lines."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            return False
        if line == NO_TRANSACTION:
            return True
    return False


# Statement kinds refused whatever their object, with the reason.
_REFUSED_KINDS: dict[str, str] = {
    **{kind: "not a statement for a tenant schema (database-wide)" for kind in DATABASE_NODES},
    "CreateSchemaStmt": "a migration works inside its tenant's schema",
    "CreateExtensionStmt": "extensions are installed once per database, not by a tenant migration",
    "AlterExtensionStmt": "extensions are installed once per database, not by a tenant migration",
    "AlterExtensionContentsStmt": "extensions are changed once per database, not per tenant",
    "AlterRoleSetStmt": "roles are database-wide",
    "GrantRoleStmt": "role membership is database-wide",
    "ReassignOwnedStmt": "it acts on every schema",
    "DropOwnedStmt": "it acts on every schema",
    "AlterOwnerStmt": "the kit owns tenant objects",
    "AlterDefaultPrivilegesStmt": "default privileges are database-wide",
    "AlterTableSpaceOptionsStmt": "tablespaces are database-wide",
    "AlterTableMoveAllStmt": "it acts on every schema",
    "CreateEventTrigStmt": "event triggers are database-wide",
    "AlterEventTrigStmt": "event triggers are database-wide",
    "CreateFdwStmt": "foreign data wrappers are database-wide",
    "AlterFdwStmt": "foreign data wrappers are database-wide",
    "CreateForeignServerStmt": "foreign servers are database-wide",
    "AlterForeignServerStmt": "foreign servers are database-wide",
    "CreateUserMappingStmt": "user mappings are database-wide",
    "AlterUserMappingStmt": "user mappings are database-wide",
    "DropUserMappingStmt": "user mappings are database-wide",
    "ImportForeignSchemaStmt": "it names a local schema",
    "CreatePublicationStmt": "publications are database-wide",
    "AlterPublicationStmt": "publications are database-wide",
    "CreateSubscriptionStmt": "subscriptions are database-wide",
    "AlterSubscriptionStmt": "subscriptions are database-wide",
    "DropSubscriptionStmt": "subscriptions are database-wide",
    "CreatePLangStmt": "languages are database-wide",
    "CreateCastStmt": "casts are database-wide",
    "CreateTransformStmt": "transforms are database-wide",
    "CreateAmStmt": "access methods are database-wide",
    "LoadStmt": "LOAD loads a library into the server process",
    "CheckPointStmt": "CHECKPOINT acts on the whole server",
    "DiscardStmt": "DISCARD resets the session the runner uses",
    "AlterObjectSchemaStmt": "SET SCHEMA moves an object between schemas",
    "AlterSystemStmt": "not a statement for a tenant schema (server-wide)",
}
# DROP/COMMENT/RENAME/SECURITY LABEL of these object kinds: outside any schema.
_DATABASE_OBJECTS = frozenset(
    {
        "OBJECT_SCHEMA",
        "OBJECT_EXTENSION",
        "OBJECT_DATABASE",
        "OBJECT_ROLE",
        "OBJECT_TABLESPACE",
        "OBJECT_EVENT_TRIGGER",
        "OBJECT_FDW",
        "OBJECT_FOREIGN_SERVER",
        "OBJECT_USER_MAPPING",
        "OBJECT_PUBLICATION",
        "OBJECT_SUBSCRIPTION",
        "OBJECT_LANGUAGE",
        "OBJECT_ACCESS_METHOD",
        "OBJECT_CAST",
        "OBJECT_TRANSFORM",
        "OBJECT_LARGEOBJECT",
        "OBJECT_PARAMETER_ACL",
    }
)
_NO_TRANSACTION_KINDS = (
    "CREATE INDEX CONCURRENTLY, DROP INDEX CONCURRENTLY, REINDEX ... CONCURRENTLY,"
    " VACUUM, ANALYZE and ALTER TYPE ... ADD VALUE"
)


def _object_kind(node: ast.Node) -> str:
    for attr in ("removeType", "objtype", "objectType", "renameType"):
        value = getattr(node, attr, None)
        if value is not None:
            return str(getattr(value, "name", value))
    return ""


def _kind_refusal(node: ast.Node) -> str | None:
    """Why a statement is refused whatever it names (None: look further)."""
    kind = type(node).__name__
    if isinstance(node, ast.TransactionStmt):
        return (
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION):"
            " each tenant migrates in one transaction of its own"
        )
    if isinstance(node, ast.VariableSetStmt) and (
        node.name is None or node.name.lower() in _FORBIDDEN_SETTINGS
    ):
        what = "RESET ALL" if node.name is None else f"SET/RESET {node.name}"
        return f"{what}: the runner sets search_path and the role for the tenant"
    if kind in DATABASE_NODES:
        return f"{statement_name(node)}: not a statement for a tenant schema (database-wide)"
    if kind in _REFUSED_KINDS:
        return f"{statement_name(node)}: {_REFUSED_KINDS[kind]}"
    if isinstance(node, ast.AlterTableStmt) and any(
        getattr(getattr(c, "subtype", None), "name", "") == "AT_ChangeOwner"
        for c in node.cmds or ()
    ):
        return "ALTER ... OWNER TO: the kit owns tenant objects"
    if isinstance(node, ast.DropStmt | ast.CommentStmt | ast.SecLabelStmt | ast.RenameStmt):
        objkind = _object_kind(node)
        if objkind in _DATABASE_OBJECTS:
            return f"{statement_name(node)}: not a tenant object"
    if isinstance(node, ast.GrantStmt):
        target = getattr(node.targtype, "name", "")
        if target != "ACL_TARGET_OBJECT":
            return "GRANT/REVOKE ON ALL ... IN SCHEMA acts on a whole schema"
        objkind = _object_kind(node)
        if objkind in _DATABASE_OBJECTS:
            return (
                f"GRANT/REVOKE on a {objkind.removeprefix('OBJECT_').lower()}: not a tenant object"
            )
    if isinstance(node, ast.CopyStmt):
        if node.is_program:
            return "COPY ... PROGRAM runs a program on the server"
        if node.filename is not None:
            return "COPY to or from a server file: use COPY ... FROM STDIN"
    if isinstance(node, ast.ReindexStmt) and getattr(node.kind, "name", "") in (
        "REINDEX_OBJECT_SCHEMA",
        "REINDEX_OBJECT_SYSTEM",
        "REINDEX_OBJECT_DATABASE",
    ):
        return "REINDEX SCHEMA/SYSTEM/DATABASE acts outside the tenant"
    return None


def _is_temporary(node: ast.Node) -> bool:
    """CREATE TEMP TABLE / SEQUENCE / VIEW / TABLE AS (the database refuses
    temporary objects in tenant migrations: they outlive the migration in the
    session, where the next tenant's migration would meet them)."""
    relation = None
    if isinstance(node, ast.CreateStmt | ast.CreateSeqStmt):
        relation = node.relation if isinstance(node, ast.CreateStmt) else node.sequence
    elif isinstance(node, ast.ViewStmt):
        relation = node.view
    elif isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        relation = node.into.rel
    return relation is not None and getattr(relation, "relpersistence", "p") == "t"


def _public_grant_refusal(node: ast.Node) -> str | None:
    """GRANT to PUBLIC of the tenant's own objects (the database refuses it)."""
    if (
        isinstance(node, ast.GrantStmt)
        and node.is_grant
        and any(
            getattr(getattr(g, "roletype", None), "name", "") == "ROLESPEC_PUBLIC"
            for g in node.grantees or ()
        )
    ):
        return (
            "GRANT to PUBLIC: the tenant's objects are the kit's to grant"
            " (the application roles get theirs from grant_app_role)"
        )
    return None


def _target_refusal(node: ast.Node, nodes: list[Any] | None = None) -> str | None:
    if _is_temporary(node):
        return (
            "temporary objects outlive the migration in the session (the next tenant's"
            " migration would see them): use a table of the tenant schema and drop it"
        )
    for target in statement_targets(node, nodes):
        if target.schema is not None:
            what = {"data": "writes", "attached": "changes"}.get(target.role, "acts on")
            return (
                f"{statement_name(node)} {what} {target.schema}.{target.name}: a migration"
                " names its tenant's objects without a schema and changes nothing else"
            )
    return None


def _references(
    node: ast.Node, allowed: set[str], nodes: Sequence[Any] | None = None
) -> str | None:
    for schema in _schemas(node, nodes):
        if schema not in allowed:
            return f"references schema {schema!r}: allowed shared schemas: {sorted(allowed)}"
    return None


def _is_no_transaction(node: ast.Node) -> bool:
    return bool(
        (isinstance(node, ast.IndexStmt) and node.concurrent)
        or (isinstance(node, ast.VacuumStmt) and node.is_vacuumcmd)
        or (isinstance(node, ast.DropStmt) and node.concurrent)
        or (
            isinstance(node, ast.ReindexStmt)
            and any(getattr(p, "defname", "") == "concurrently" for p in node.params or ())
        )
    )


def _no_transaction_label(node: ast.Node) -> str:
    """The statement as a user wrote it (``CREATE INDEX CONCURRENTLY``), not its node name."""
    if isinstance(node, ast.IndexStmt):
        return "CREATE INDEX CONCURRENTLY"
    if isinstance(node, ast.DropStmt):
        return "DROP INDEX CONCURRENTLY"
    if isinstance(node, ast.ReindexStmt):
        return "REINDEX CONCURRENTLY"
    if isinstance(node, ast.VacuumStmt):
        return "VACUUM"
    return statement_name(node)


def _outside_transaction_ok(node: ast.Node) -> bool:
    """One of the statements a no-transaction file may hold."""
    return bool(
        _is_no_transaction(node)
        or isinstance(node, ast.VacuumStmt)
        or (isinstance(node, ast.AlterEnumStmt) and node.newVal and not node.oldVal)
    )


def _plpgsql_statements(body: str) -> tuple[list[tuple[int, str]], bool]:
    """SQL run directly by a PL/pgSQL body (line in body, text), and whether it runs dynamic SQL."""
    try:
        tree = pglast.parse_plpgsql(
            "CREATE FUNCTION pg_temp.pgtenancy_do() RETURNS void LANGUAGE plpgsql AS "
            + _dollar(body)
        )
    except Exception:
        return [], False
    found: list[tuple[int, str]] = []
    dynamic = False
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        item, lineno = stack.pop()
        if isinstance(item, list):
            stack.extend((value, lineno) for value in item)
        elif isinstance(item, dict):
            lineno = int(item.get("lineno", lineno))
            for key, value in item.items():
                if key in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"):
                    dynamic = True
                if key == "PLpgSQL_stmt_open" and isinstance(value, dict) and "dynquery" in value:
                    dynamic = True
                if key == "PLpgSQL_expr" and isinstance(value, dict):
                    query = value.get("query")
                    if isinstance(query, str) and value.get("parseMode", 0) == 0:
                        found.append((lineno, query))
                stack.append((value, lineno))
    return sorted(found), dynamic


def _dollar(body: str) -> str:
    tag = "$pgtenancy$"
    while tag in body:
        tag = tag[:-1] + "_$"
    return f"{tag}{body}{tag}"


def _body_of(options: Any) -> tuple[str | None, str]:
    body, language = None, ""
    for option in options or ():
        if not isinstance(option, ast.DefElem):
            continue
        if option.defname == "language":
            language = (getattr(option.arg, "sval", "") or "").lower()
        elif option.defname == "as":
            arg = option.arg
            parts = arg if isinstance(arg, tuple) else (arg,)
            if len(parts) == 1 and isinstance(parts[0], ast.String):
                body = parts[0].sval
    return body, language


def _mentions_format_or_execute(body: str) -> bool:
    return bool(re.search(r"(?i)\b(execute|format)\b", body))


def _uses_set_config(node: ast.Node, nodes: Sequence[Any] | None = None) -> bool:
    """A ``set_config`` call whose setting is not a constant naming a harmless one."""
    for n in _walk(node) if nodes is None else nodes:
        if isinstance(n, ast.FuncCall) and _names(n.funcname)[-1:] == ["set_config"]:
            first = (n.args or (None,))[0]
            value = getattr(getattr(first, "val", None), "sval", None)
            if not isinstance(value, str) or value.lower() in _FORBIDDEN_SETTINGS:
                return True
    return False


def check_migration(
    migration: MigrationFile, shared_schemas: Sequence[str] = ("public",)
) -> list[str]:
    """Refuse a migration that cannot run safely inside every tenant schema.

    The rules are those the database enforces at execution (SQLSTATE PT017,
    see the module's docstring and README "Migrating the fleet").

    Args:
        migration: the file.
        shared_schemas: schemas a migration may reference (foreign keys,
            types, functions, tables read); ``pg_catalog``,
            ``information_schema`` and ``tenancy`` always may be. No schema
            may be the object of a statement.

    Returns:
        Warnings, ``"FILE:LINE: text"``: DO blocks, dynamic SQL in DO blocks
        and functions, ``set_config`` calls.

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
    warnings: list[str] = []
    for stmt in script.statements:
        node = stmt.tree if stmt.tree is not None else pglast.parse_sql(stmt.sql)[0].stmt
        assert node is not None
        nodes = walk(node)  # one walk of the tree for every check below
        reason = (
            _kind_refusal(node)
            or _target_refusal(node, nodes)
            or _references(node, allowed, nodes)
            or _public_grant_refusal(node)
        )
        if reason is not None:
            raise MigrationCheckError(name, stmt.line, reason)
        if migration.outside_transaction:
            # The same rule the fleet runner applies before running it.
            from pgtenancy.confinement import (
                OUTSIDE_TRANSACTION_KINDS,
                check_outside_transaction_node,
                check_outside_transaction_statement,
            )

            if not _outside_transaction_ok(node):
                raise MigrationCheckError(
                    name,
                    stmt.line,
                    f"{statement_name(node)} in a '{NO_TRANSACTION}' file: such a file holds only "
                    f"{', '.join(OUTSIDE_TRANSACTION_KINDS)}",
                )
            try:
                if stmt.tree is not None:
                    check_outside_transaction_node(node, stmt.sql)
                else:
                    check_outside_transaction_statement(stmt.sql)
            except TenancyError as exc:
                raise MigrationCheckError(name, stmt.line, exc.message) from exc
        elif _is_no_transaction(node):
            raise MigrationCheckError(
                name,
                stmt.line,
                f"{_no_transaction_label(node)} cannot run inside a transaction; mark the"
                f" file with '{NO_TRANSACTION}' (one of its leading comment lines)",
            )
        if isinstance(node, ast.DoStmt):
            body, language = _body_of(node.args)
            warnings.append(
                f"{name}:{stmt.line}: DO block: its code runs at migration time and is"
                " confined by the database at execution"
            )
            if body is not None and language in ("", "plpgsql"):
                inner, dynamic = _plpgsql_statements(body)
                for offset, query in inner:
                    try:
                        inner_nodes = [r.stmt for r in pglast.parse_sql(query) if r.stmt]
                    except Exception:
                        continue
                    for inner_node in inner_nodes:
                        why = _kind_refusal(inner_node) or _target_refusal(inner_node)
                        if why is not None:
                            raise MigrationCheckError(
                                name, stmt.line + offset - 1, f"in a DO block: {why}"
                            )
                if dynamic:
                    warnings.append(f"{name}:{stmt.line}: DO block runs dynamic SQL (EXECUTE)")
        elif isinstance(node, ast.CreateFunctionStmt):
            body, language = _body_of(node.options)
            if body is not None and language == "plpgsql" and _plpgsql_statements(body)[1]:
                fname = ".".join(_names(node.funcname))
                warnings.append(f"{name}:{stmt.line}: function {fname} runs dynamic SQL (EXECUTE)")
            elif body is not None and language == "plpgsql" and _mentions_format_or_execute(body):
                fname = ".".join(_names(node.funcname))
                warnings.append(f"{name}:{stmt.line}: function {fname} builds SQL with format()")
        if isinstance(node, ast.CreateFunctionStmt) and any(
            getattr(o, "defname", "") == "security" and getattr(o.arg, "boolval", False)
            for o in node.options or ()
        ):
            fname = ".".join(_names(node.funcname))
            raise MigrationCheckError(
                name,
                stmt.line,
                f"function {fname} is SECURITY DEFINER: in a tenant schema it would run with the"
                " kit owner's rights (make it SECURITY INVOKER, or use a shared migration)",
            )
        if isinstance(node, ast.RuleStmt):
            raise MigrationCheckError(
                name,
                stmt.line,
                "a rule runs with its table owner's rights: use a trigger"
                " (on a view, an INSTEAD OF trigger)",
            )
        if _uses_set_config(node, nodes):
            warnings.append(
                f"{name}:{stmt.line}: set_config() call: the database refuses changes to"
                " search_path, role and session authorization at execution"
            )
    return warnings
