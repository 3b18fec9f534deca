"""Read SQL scripts written for psql, with pglast, statement by statement.

Dumps and sample databases (Chinook, for one) are psql scripts: they carry
meta-commands such as ``\\c chinook`` and database-level statements such as
``CREATE DATABASE`` that cannot run inside a tenant. :func:`read_script`
skips the meta-commands, parses the rest with pglast and classifies every
statement, so callers take the DDL as a tenant migration and the data as a
load, without editing the file.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Final

import pglast
import pglast.ast
import pglast.enums
from pglast.parser import ParseError

from pgtenancy.errors import TenancyError

#: Statement kinds that cannot run inside a tenant schema's transaction.
DATABASE_NODES: Final = frozenset(
    {
        "CreatedbStmt",
        "DropdbStmt",
        "AlterDatabaseStmt",
        "AlterDatabaseSetStmt",
        "AlterDatabaseRefreshCollStmt",
        "AlterSystemStmt",
        "CreateTableSpaceStmt",
        "DropTableSpaceStmt",
        "CreateRoleStmt",
        "AlterRoleStmt",
        "DropRoleStmt",
    }
)
#: Statement kinds that change data rather than the schema.
DATA_NODES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "CopyStmt", "MergeStmt"})
TRANSACTION_NODES: Final = frozenset({"TransactionStmt"})
#: Every pglast statement node by the SQL words users write (what messages
#: name: ``CREATE DATABASE``, never ``CreatedbStmt``). Some nodes stand for
#: several statements; :func:`statement_name` tells them apart from the tree.
STATEMENT_WORDS: Final[dict[str, str]] = {
    "AlterCollationStmt": "ALTER COLLATION",
    "AlterDatabaseRefreshCollStmt": "ALTER DATABASE ... REFRESH COLLATION VERSION",
    "AlterDatabaseSetStmt": "ALTER DATABASE ... SET",
    "AlterDatabaseStmt": "ALTER DATABASE",
    "AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
    "AlterDomainStmt": "ALTER DOMAIN",
    "AlterEnumStmt": "ALTER TYPE ... ADD VALUE",
    "AlterEventTrigStmt": "ALTER EVENT TRIGGER",
    "AlterExtensionContentsStmt": "ALTER EXTENSION ... ADD/DROP",
    "AlterExtensionStmt": "ALTER EXTENSION",
    "AlterFdwStmt": "ALTER FOREIGN DATA WRAPPER",
    "AlterForeignServerStmt": "ALTER SERVER",
    "AlterFunctionStmt": "ALTER FUNCTION",
    "AlterObjectDependsStmt": "ALTER ... DEPENDS ON EXTENSION",
    "AlterObjectSchemaStmt": "ALTER ... SET SCHEMA",
    "AlterOpFamilyStmt": "ALTER OPERATOR FAMILY",
    "AlterOperatorStmt": "ALTER OPERATOR",
    "AlterOwnerStmt": "ALTER ... OWNER TO",
    "AlterPolicyStmt": "ALTER POLICY",
    "AlterPublicationStmt": "ALTER PUBLICATION",
    "AlterRoleSetStmt": "ALTER ROLE ... SET",
    "AlterRoleStmt": "ALTER ROLE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "AlterStatsStmt": "ALTER STATISTICS",
    "AlterSubscriptionStmt": "ALTER SUBSCRIPTION",
    "AlterSystemStmt": "ALTER SYSTEM",
    "AlterTSConfigurationStmt": "ALTER TEXT SEARCH CONFIGURATION",
    "AlterTSDictionaryStmt": "ALTER TEXT SEARCH DICTIONARY",
    "AlterTableMoveAllStmt": "ALTER ... ALL IN TABLESPACE ... SET TABLESPACE",
    "AlterTableSpaceOptionsStmt": "ALTER TABLESPACE",
    "AlterTableStmt": "ALTER TABLE",
    "AlterTypeStmt": "ALTER TYPE",
    "AlterUserMappingStmt": "ALTER USER MAPPING",
    "CallStmt": "CALL",
    "CheckPointStmt": "CHECKPOINT",
    "ClosePortalStmt": "CLOSE",
    "ClusterStmt": "CLUSTER",
    "CommentStmt": "COMMENT ON",
    "CompositeTypeStmt": "CREATE TYPE ... AS (composite)",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "CopyStmt": "COPY",
    "CreateAmStmt": "CREATE ACCESS METHOD",
    "CreateCastStmt": "CREATE CAST",
    "CreateConversionStmt": "CREATE CONVERSION",
    "CreateDomainStmt": "CREATE DOMAIN",
    "CreateEnumStmt": "CREATE TYPE ... AS ENUM",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
    "CreateForeignServerStmt": "CREATE SERVER",
    "CreateForeignTableStmt": "CREATE FOREIGN TABLE",
    "CreateFunctionStmt": "CREATE FUNCTION",
    "CreateOpClassStmt": "CREATE OPERATOR CLASS",
    "CreateOpFamilyStmt": "CREATE OPERATOR FAMILY",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreatePolicyStmt": "CREATE POLICY",
    "CreatePublicationStmt": "CREATE PUBLICATION",
    "CreateRangeStmt": "CREATE TYPE ... AS RANGE",
    "CreateRoleStmt": "CREATE ROLE",
    "CreateSchemaStmt": "CREATE SCHEMA",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "CreateStatsStmt": "CREATE STATISTICS",
    "CreateStmt": "CREATE TABLE",
    "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
    "CreateTableAsStmt": "CREATE TABLE ... AS",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "CreateTransformStmt": "CREATE TRANSFORM",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateUserMappingStmt": "CREATE USER MAPPING",
    "CreatedbStmt": "CREATE DATABASE",
    "DeallocateStmt": "DEALLOCATE",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "DefineStmt": "CREATE AGGREGATE/OPERATOR/TYPE/COLLATION/TEXT SEARCH ...",
    "DeleteStmt": "DELETE",
    "DiscardStmt": "DISCARD",
    "DoStmt": "DO",
    "DropOwnedStmt": "DROP OWNED",
    "DropRoleStmt": "DROP ROLE",
    "DropStmt": "DROP",
    "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "DropUserMappingStmt": "DROP USER MAPPING",
    "DropdbStmt": "DROP DATABASE",
    "ExecuteStmt": "EXECUTE",
    "ExplainStmt": "EXPLAIN",
    "FetchStmt": "FETCH",
    "GrantRoleStmt": "GRANT/REVOKE (role membership)",
    "GrantStmt": "GRANT/REVOKE",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "IndexStmt": "CREATE INDEX",
    "InsertStmt": "INSERT",
    "ListenStmt": "LISTEN",
    "LoadStmt": "LOAD",
    "LockStmt": "LOCK",
    "MergeStmt": "MERGE",
    "NotifyStmt": "NOTIFY",
    "PLAssignStmt": "PL/pgSQL assignment",
    "PrepareStmt": "PREPARE",
    "RawStmt": "statement",
    "ReassignOwnedStmt": "REASSIGN OWNED",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "ReindexStmt": "REINDEX",
    "RenameStmt": "ALTER ... RENAME",
    "ReplicaIdentityStmt": "ALTER TABLE ... REPLICA IDENTITY",
    "ReturnStmt": "RETURN",
    "RuleStmt": "CREATE RULE",
    "SecLabelStmt": "SECURITY LABEL",
    "SelectStmt": "SELECT",
    "SetOperationStmt": "UNION/INTERSECT/EXCEPT",
    "TransactionStmt": "BEGIN/COMMIT/ROLLBACK/SAVEPOINT",
    "TruncateStmt": "TRUNCATE",
    "UnlistenStmt": "UNLISTEN",
    "UpdateStmt": "UPDATE",
    "VacuumStmt": "VACUUM/ANALYZE",
    "VariableSetStmt": "SET/RESET",
    "VariableShowStmt": "SHOW",
    "ViewStmt": "CREATE VIEW",
}

_DEFINE_KINDS: Final = {
    "OBJECT_AGGREGATE": "CREATE AGGREGATE",
    "OBJECT_OPERATOR": "CREATE OPERATOR",
    "OBJECT_TYPE": "CREATE TYPE",
    "OBJECT_COLLATION": "CREATE COLLATION",
    "OBJECT_TSPARSER": "CREATE TEXT SEARCH PARSER",
    "OBJECT_TSDICTIONARY": "CREATE TEXT SEARCH DICTIONARY",
    "OBJECT_TSTEMPLATE": "CREATE TEXT SEARCH TEMPLATE",
    "OBJECT_TSCONFIGURATION": "CREATE TEXT SEARCH CONFIGURATION",
}
_TRANSACTION_KINDS: Final = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE SAVEPOINT",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}


def _object_words(objtype: object) -> str:
    """``OBJECT_MATVIEW`` -> ``MATERIALIZED VIEW`` (a pglast ObjectType)."""
    name = str(getattr(objtype, "name", "") or "").removeprefix("OBJECT_")
    special = {
        "MATVIEW": "MATERIALIZED VIEW",
        "FOREIGN_TABLE": "FOREIGN TABLE",
        "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
        "TSDICTIONARY": "TEXT SEARCH DICTIONARY",
        "TSPARSER": "TEXT SEARCH PARSER",
        "TSTEMPLATE": "TEXT SEARCH TEMPLATE",
        "OPCLASS": "OPERATOR CLASS",
        "OPFAMILY": "OPERATOR FAMILY",
        "FDW": "FOREIGN DATA WRAPPER",
        "FOREIGN_SERVER": "SERVER",
        "EVENT_TRIGGER": "EVENT TRIGGER",
        "ACCESS_METHOD": "ACCESS METHOD",
        "LARGEOBJECT": "LARGE OBJECT",
        "TABCONSTRAINT": "CONSTRAINT",
        "DOMCONSTRAINT": "CONSTRAINT",
        "USER_MAPPING": "USER MAPPING",
        "STATISTIC_EXT": "STATISTICS",
        "PUBLICATION_NAMESPACE": "PUBLICATION",
        "PUBLICATION_REL": "PUBLICATION",
    }
    return special.get(name, name.replace("_", " "))


def statement_name(node: object) -> str:
    """The SQL words of a statement, for messages (``CREATE DATABASE``, ``DROP
    SCHEMA``, ``ALTER MATERIALIZED VIEW``), never pglast's node name.

    Args:
        node: a pglast statement node, or a node name such as ``CreatedbStmt``.

    Returns:
        Upper-case SQL words from :data:`STATEMENT_WORDS`, refined from the
        tree where one node stands for several statements (``DROP`` plus the
        object kind, ``GRANT`` or ``REVOKE``, ``BEGIN`` or ``COMMIT``, the
        ``CREATE`` of a ``DefineStmt``, ``VACUUM`` or ``ANALYZE``); for a name
        pglast may add later, ``a <name> statement`` without ``Stmt``.
    """
    kind = node if isinstance(node, str) else type(node).__name__
    words = STATEMENT_WORDS.get(kind)
    if words is None:
        return f"a {kind.removesuffix('Stmt')} statement"
    if isinstance(node, str):
        return words
    if isinstance(node, pglast.ast.DropStmt):
        return f"DROP {_object_words(node.removeType)}".rstrip()
    if isinstance(node, pglast.ast.DefineStmt):
        return _DEFINE_KINDS.get(getattr(node.kind, "name", ""), words)
    if isinstance(node, pglast.ast.GrantStmt | pglast.ast.GrantRoleStmt):
        return ("GRANT" if node.is_grant else "REVOKE") + words.removeprefix("GRANT/REVOKE")
    if isinstance(node, pglast.ast.TransactionStmt):
        return _TRANSACTION_KINDS.get(getattr(node.kind, "name", ""), words)
    if isinstance(node, pglast.ast.VacuumStmt):
        return "VACUUM" if node.is_vacuumcmd else "ANALYZE"
    if isinstance(node, pglast.ast.VariableSetStmt):
        return "RESET" if getattr(node.kind, "name", "").startswith("VAR_RESET") else "SET"
    if isinstance(node, pglast.ast.AlterTableStmt):
        owner = any(
            getattr(getattr(c, "subtype", None), "name", "") == "AT_ChangeOwner"
            for c in node.cmds or ()
        )
        return f"ALTER {_object_words(node.objtype)}" + (" ... OWNER TO" if owner else "")
    if isinstance(node, pglast.ast.CreateTableAsStmt):
        return f"CREATE {_object_words(node.objtype)} ... AS".replace("VIEW ... AS", "VIEW")
    if isinstance(node, pglast.ast.RenameStmt | pglast.ast.AlterObjectSchemaStmt):
        tail = " RENAME" if isinstance(node, pglast.ast.RenameStmt) else " SET SCHEMA"
        objtype = node.renameType if isinstance(node, pglast.ast.RenameStmt) else node.objectType
        return f"ALTER {_object_words(objtype)} ...{tail}"
    if isinstance(node, pglast.ast.AlterOwnerStmt):
        return f"ALTER {_object_words(node.objectType)} ... OWNER TO"
    if isinstance(node, pglast.ast.CommentStmt | pglast.ast.SecLabelStmt):
        return f"{words} {'ON ' if words == 'SECURITY LABEL' else ''}{_object_words(node.objtype)}"
    if isinstance(node, pglast.ast.IndexStmt) and node.concurrent:
        return "CREATE INDEX CONCURRENTLY"
    return words


# Whitespace and comments before a statement's first token.
_LEADING: Final = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)


class ScriptError(TenancyError, ValueError):
    """The script does not parse (Python only: found before any SQL runs).

    Attributes:
        line: 1-based line of the error.
    """

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Statement:
    """One statement of a script.

    Attributes:
        sql: the statement's text, without the trailing semicolon.
        line: 1-based line where it starts.
        node: pglast node name, e.g. ``CreateStmt``.
        kind: ``ddl``, ``data``, ``database`` or ``transaction``.
        tree: its pglast parse tree (a ``pglast.ast.Node``), as parsed with
            the whole script, so a checker need not parse it again; None when
            the statement was made by hand.
    """

    sql: str
    line: int
    node: str
    kind: str
    tree: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Script:
    """A parsed script: its statements and the psql meta-command lines skipped."""

    statements: list[Statement]
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Statement]:
        """Statements of one kind, in script order."""
        return [s for s in self.statements if s.kind == kind]

    def sql_of(self, kind: str) -> str:
        """The statements of one kind joined as one SQL text, ``;``-terminated."""
        return "".join(f"{s.sql};\n" for s in self.of_kind(kind))


def _kind(node: str) -> str:
    if node in DATABASE_NODES:
        return "database"
    if node in DATA_NODES:
        return "data"
    if node in TRANSACTION_NODES:
        return "transaction"
    return "ddl"


_DOLLAR: Final = re.compile(r"\$(?:[^\W\d]\w*)?\$")


def _lex_line(line: str, state: str | None) -> str | None:
    """The lexical state at the end of ``line``, given the state at its start.

    States: None (SQL), ``'`` or ``E'`` (string), ``"`` (identifier),
    ``/*N`` (block comment, nesting N), or a dollar-quote tag such as ``$$``.
    """
    i, n = 0, len(line)
    while i < n:
        if state is None:
            char = line[i]
            if line.startswith("--", i):
                return None
            if line.startswith("/*", i):
                state, i = "/*1", i + 2
            elif char == "'":
                escapes = i > 0 and line[i - 1] in "eE" and not (i > 1 and line[i - 2].isalnum())
                state, i = ("E'" if escapes else "'"), i + 1
            elif char == '"':
                state, i = '"', i + 1
            elif (
                char == "$"
                and (tag := _DOLLAR.match(line, i))
                and not (i > 0 and (line[i - 1].isalnum() or line[i - 1] == "_"))
            ):
                state, i = tag.group(0), tag.end()
            else:
                i += 1
        elif state.startswith("/*"):
            depth = int(state[2:])
            if line.startswith("*/", i):
                depth, i = depth - 1, i + 2
            elif line.startswith("/*", i):
                depth, i = depth + 1, i + 2
            else:
                i += 1
            state = f"/*{depth}" if depth else None
        elif state in ("'", "E'"):
            if (state == "E'" and line[i] == "\\") or line.startswith("''", i):
                i += 2
            elif line[i] == "'":
                state, i = None, i + 1
            else:
                i += 1
        elif state == '"':
            if line.startswith('""', i):
                i += 2
            elif line[i] == '"':
                state, i = None, i + 1
            else:
                i += 1
        else:
            end = line.find(state, i)
            if end < 0:
                return state
            i = end + len(state)
            state = None
    return state


def read_script(text: str) -> Script:
    """Parse a psql script into classified statements.

    Lines whose first non-blank character is a backslash, outside string
    literals, quoted identifiers, dollar-quoted bodies and comments, are psql
    meta-commands: they are blanked (keeping line numbers) and listed in
    ``Script.skipped``. A line of a function body that starts with a
    backslash stays part of the body.

    Args:
        text: the script.

    Raises:
        ScriptError: when pglast cannot parse it, with the line.
    """
    lines = text.splitlines(keepends=True)
    skipped: list[tuple[int, str]] = []
    if "\\" not in text or not any(line.lstrip().startswith("\\") for line in lines):
        # No line starts with a backslash: nothing to skip, whatever the lexer
        # state (the common case; lexing every line costs more than parsing).
        source = text
    else:
        kept = []
        state: str | None = None
        for number, raw_line in enumerate(lines, start=1):
            at_start = state
            state = _lex_line(raw_line, state)
            if at_start is None and raw_line.lstrip().startswith("\\"):
                state = None
                skipped.append((number, raw_line.strip()))
                kept.append("\n")
            else:
                kept.append(raw_line)
        source = "".join(kept)
    try:
        raw = pglast.parse_sql(source)
    except ParseError as exc:
        # ParseError args: (message, character offset of the error).
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        raise ScriptError(str(exc.args[0]), source.count("\n", 0, location) + 1) from exc
    # pglast reports locations in characters of the source string.
    statements = []
    counted_to, newlines = 0, 0  # newlines of source[:counted_to] (statements come in order)
    for item in raw:
        start = item.stmt_location or 0
        end = start + item.stmt_len if item.stmt_len else len(source)
        text_ = source[start:end]
        body = _LEADING.sub("", text_)
        if start < counted_to:
            counted_to, newlines = 0, 0
        newlines += source.count("\n", counted_to, start)
        counted_to = start
        line = newlines + text_[: len(text_) - len(body)].count("\n") + 1
        node = type(item.stmt).__name__
        statements.append(Statement(body.strip(), line, node, _kind(node), item.stmt))
    return Script(statements, skipped)


@dataclass(frozen=True)
class Target:
    """An object a statement creates, changes or writes (not one it only reads).

    Attributes:
        schema: the schema it is qualified with, None when unqualified.
        name: the object's name (for columns, triggers, policies, rules and
            table constraints: the table's name).
        role: ``primary`` for the statement's own object; ``attached`` for a
            relation it changes on the side (the parent of ``PARTITION OF``,
            the partition of ``ATTACH PARTITION``, an ``OWNED BY`` table);
            ``data`` for the relation DML writes (also inside CTEs and rules).
    """

    schema: str | None
    name: str
    role: str = "primary"


# Statement kinds whose object is a RangeVar attribute (or a list of them).
_RANGEVAR_TARGETS: Final[dict[str, str]] = {
    "CreateStmt": "relation",
    "AlterTableStmt": "relation",
    "IndexStmt": "relation",
    "CreateSeqStmt": "sequence",
    "AlterSeqStmt": "sequence",
    "ViewStmt": "view",
    "CreateTrigStmt": "relation",
    "CreatePolicyStmt": "table",
    "AlterPolicyStmt": "table",
    "RuleStmt": "relation",
    "CompositeTypeStmt": "typevar",
    "CopyStmt": "relation",
    "TruncateStmt": "relations",
    "ClusterStmt": "relation",
    "RefreshMatViewStmt": "relation",
    "ReindexStmt": "relation",
}
# Statement kinds whose object is a list of String names (a TypeName for some).
_NAME_TARGETS: Final[dict[str, str]] = {
    "CreateFunctionStmt": "funcname",
    "CreateEnumStmt": "typeName",
    "AlterEnumStmt": "typeName",
    "CreateRangeStmt": "typeName",
    "AlterTypeStmt": "typeName",
    "CreateDomainStmt": "domainname",
    "AlterDomainStmt": "typeName",
    "DefineStmt": "defnames",
    "CreateStatsStmt": "defnames",
    "CreateOpClassStmt": "opclassname",
    "CreateOpFamilyStmt": "opfamilyname",
    "AlterOpFamilyStmt": "opfamilyname",
    "CreateConversionStmt": "conversion_name",
    "AlterTSConfigurationStmt": "cfgname",
    "AlterTSDictionaryStmt": "dictname",
    "AlterStatsStmt": "defnames",
    "AlterCollationStmt": "collname",
}
# Object kinds named ``[schema.]table.object`` (the table is what matters).
_ON_TABLE: Final = frozenset(
    {"OBJECT_COLUMN", "OBJECT_TRIGGER", "OBJECT_POLICY", "OBJECT_RULE", "OBJECT_TABCONSTRAINT"}
)
_DML_NODES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})


def _strings(value: object) -> list[str] | None:
    if not isinstance(value, tuple | list) or not value:
        return None
    if not all(isinstance(v, pglast.ast.String) for v in value):
        return None
    return [v.sval or "" for v in value]


def _qualified(names: list[str]) -> tuple[str | None, str]:
    """(schema, name) of a possibly qualified name (``db.schema.name`` too)."""
    if len(names) >= 2:
        return names[-2], names[-1]
    return None, names[-1]


def object_name(objtype: object, obj: object) -> tuple[str | None, str] | None:
    """(schema, name) of the object of COMMENT, DROP, ALTER ... OWNER and the like.

    Args:
        objtype: the statement's ``pglast.enums.ObjectType``.
        obj: the object node: a RangeVar, ObjectWithArgs, TypeName, String,
            or a tuple of String names.

    Returns:
        None for objects outside any schema (schemas, roles, extensions,
        languages, casts...); for columns, triggers, policies, rules and table
        constraints, the table.
    """
    kind = getattr(objtype, "name", str(objtype))
    if isinstance(obj, pglast.ast.RangeVar):
        return obj.schemaname, obj.relname or ""
    if isinstance(obj, pglast.ast.ObjectWithArgs):
        names = _strings(obj.objname)
        return _qualified(names) if names else None
    if isinstance(obj, pglast.ast.TypeName):
        names = _strings(obj.names)
        return _qualified(names) if names else None
    if isinstance(obj, tuple) and obj and isinstance(obj[0], pglast.ast.TypeName):
        return object_name(objtype, obj[0]) if kind == "OBJECT_DOMCONSTRAINT" else None
    names = _strings(obj)
    if names is None:
        return None
    if kind in _ON_TABLE:
        return _qualified(names[:-1]) if len(names) >= 2 else None
    if kind in ("OBJECT_OPCLASS", "OBJECT_OPFAMILY"):
        return _qualified(names[1:]) if len(names) >= 2 else None
    if kind == "OBJECT_LARGEOBJECT":
        return None
    return _qualified(names)


def statement_targets(node: object, nodes: list[object] | None = None) -> list[Target]:
    """What a statement (a pglast node) creates, changes or writes, in order.

    The statement's own object comes first. References — foreign keys, types,
    functions and operators used, tables read — are not targets. DML found
    anywhere in the tree (CTEs, rule actions) adds ``data`` targets.

    Args:
        node: the statement's tree.
        nodes: ``walk(node)`` when the caller has it already (one walk of the
            tree serves every check of a statement); computed when None.
    """
    found: list[Target] = []
    kind = type(node).__name__
    attr = _RANGEVAR_TARGETS.get(kind)
    if attr is not None:
        value = getattr(node, attr, None)
        for rv in value if isinstance(value, tuple) else (value,):
            if isinstance(rv, pglast.ast.RangeVar):
                found.append(Target(rv.schemaname, rv.relname or ""))
    if isinstance(node, pglast.ast.VacuumStmt):
        for rel in node.rels or ():
            rv = getattr(rel, "relation", None)
            if isinstance(rv, pglast.ast.RangeVar):
                found.append(Target(rv.schemaname, rv.relname or ""))
    if kind == "ReindexStmt" and getattr(node, "name", None):
        found.append(Target(None, node.name))  # type: ignore[attr-defined]
    attr = _NAME_TARGETS.get(kind)
    if attr is not None:
        value = getattr(node, attr, None)
        if isinstance(value, pglast.ast.TypeName):
            value = value.names
        names = _strings(value)
        if names:
            schema, name = _qualified(names)
            found.append(Target(schema, name))
    if isinstance(node, pglast.ast.CreateTableAsStmt | pglast.ast.SelectStmt):
        into = node.into if isinstance(node, pglast.ast.CreateTableAsStmt) else node.intoClause
        if into is not None and into.rel is not None:
            found.append(Target(into.rel.schemaname, into.rel.relname or ""))
    if isinstance(node, pglast.ast.CreateForeignTableStmt) and node.base:
        base = node.base.relation
        if base is not None:
            found.append(Target(base.schemaname, base.relname or ""))
    func = getattr(node, "func", None) or getattr(node, "opername", None)
    if isinstance(node, pglast.ast.AlterFunctionStmt | pglast.ast.AlterOperatorStmt) and func:
        names = _strings(func.objname)
        if names:
            found.append(Target(*_qualified(names)))
    if isinstance(node, pglast.ast.CreateStmt):
        for rv in node.inhRelations or ():
            if isinstance(rv, pglast.ast.RangeVar):
                found.append(Target(rv.schemaname, rv.relname or "", "attached"))
    if isinstance(node, pglast.ast.AlterTableStmt):
        for cmd in node.cmds or ():
            sub = getattr(cmd, "def_", None)
            rv = getattr(sub, "name", None) if isinstance(sub, pglast.ast.PartitionCmd) else sub
            if isinstance(rv, pglast.ast.RangeVar):
                found.append(Target(rv.schemaname, rv.relname or "", "attached"))
    if isinstance(node, pglast.ast.AlterSeqStmt | pglast.ast.CreateSeqStmt):
        for option in node.options or ():
            names = _strings(getattr(option, "arg", None))
            if getattr(option, "defname", "") == "owned_by" and names and len(names) >= 2:
                found.append(Target(*_qualified(names[:-1]), "attached"))
    if isinstance(
        node,
        pglast.ast.CommentStmt
        | pglast.ast.SecLabelStmt
        | pglast.ast.AlterOwnerStmt
        | pglast.ast.AlterObjectDependsStmt
        | pglast.ast.AlterObjectSchemaStmt
        | pglast.ast.RenameStmt,
    ):
        objtype = getattr(node, "objtype", None) or getattr(node, "objectType", None)
        if isinstance(node, pglast.ast.RenameStmt):
            objtype = node.renameType
        rel = getattr(node, "relation", None)
        if isinstance(rel, pglast.ast.RangeVar):
            found.append(Target(rel.schemaname, rel.relname or ""))
        elif getattr(node, "object", None) is not None:
            named = object_name(objtype, node.object)
            if named is not None:
                found.append(Target(*named))
    if isinstance(node, pglast.ast.DropStmt):
        for obj in node.objects or ():
            named = object_name(node.removeType, obj)
            if named is not None:
                found.append(Target(*named))
    if isinstance(node, pglast.ast.GrantStmt) and getattr(node.targtype, "name", "") == (
        "ACL_TARGET_OBJECT"
    ):
        for obj in node.objects or ():
            named = object_name(node.objtype, obj)
            if named is not None:
                found.append(Target(*named))
    for inner in walk(node) if nodes is None else nodes:
        if type(inner).__name__ in _DML_NODES:
            rv = getattr(inner, "relation", None)
            if isinstance(rv, pglast.ast.RangeVar):
                found.append(Target(rv.schemaname, rv.relname or "", "data"))
    return found


#: Value types of a pglast slot that never hold a node or a list of nodes.
_SCALAR_TYPES: Final = (str, int, bool, float, set)
_NODE_SLOTS: dict[type, tuple[str, ...]] = {}


def _is_enum(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, enum.Enum)


def _node_slots(cls: type) -> tuple[str, ...]:
    """The slots of a pglast node class that may hold nodes, in attribute order,
    reversed (pglast validates every slot's value against its declared types:
    a slot declared as strings, numbers, booleans, enums or bitmap sets holds
    no node)."""
    names = _NODE_SLOTS.get(cls)
    if names is None:
        slots = getattr(cls, "__slots__", ())
        kept = []
        for name in slots:
            declared = slots[name] if isinstance(slots, dict) else None
            ctype = declared[0] if isinstance(declared, tuple) and declared else None
            ptype = declared[1] if isinstance(declared, tuple) and len(declared) > 1 else None
            types = ptype if isinstance(ptype, tuple) else (ptype,)
            if isinstance(ctype, str) and _is_enum(getattr(pglast.enums, ctype, None)):
                continue  # pglast turns any value of an enum slot into the enum
            if ptype is not None and all(
                isinstance(t, type)
                and (issubclass(t, _SCALAR_TYPES) or issubclass(t, enum.Enum))
                and not issubclass(t, pglast.ast.Node)
                for t in types
            ):
                continue
            kept.append(name)
        names = _NODE_SLOTS[cls] = tuple(reversed(kept))
    return names


def walk(node: object) -> list[object]:
    """Every pglast node of a tree (``node`` included), depth first, in
    attribute order: one walk serves every check of a statement."""
    out: list[object] = []
    stack = [node]
    push, pop = stack.append, stack.pop
    node_type, sequence = pglast.ast.Node, (tuple, list)
    while stack:
        item = pop()
        if isinstance(item, node_type):
            out.append(item)
            for name in _node_slots(type(item)):
                value = getattr(item, name, None)
                if value is not None:
                    push(value)
        elif isinstance(item, sequence):
            stack.extend(reversed(item))
    return out


_walk = walk
