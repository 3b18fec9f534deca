"""Turn a single-tenant ``pg_dump --schema-only`` into a tenant migration.

A team that ran its application in ``public`` has a dump in which pg_dump
qualified every name with ``public.``. :func:`import_template` rewrites it
into SQL that, run with ``search_path`` set to a tenant schema (as
:meth:`pgtenancy.Tenancy.add_migration` migrations are), creates the objects
inside that schema, and nothing outside it:

* dropped (listed in ``dropped``): pg_dump's session settings (``SET ...``,
  ``SELECT pg_catalog.set_config(...)``); the whole ``--clean`` section
  (every ``DROP ...`` and ``ALTER TABLE ... DROP CONSTRAINT / DROP DEFAULT /
  DROP IDENTITY``, with or without ``IF EXISTS``); ``CREATE/ALTER/DROP
  EXTENSION`` and comments on extensions (install extensions once per
  database); ``CREATE/DROP SCHEMA`` and comments on schemas; database-wide
  statements; owners (``ALTER ... OWNER TO``: the kit owns tenant objects)
  and, unless ``keep_acl``, privileges (``GRANT``, ``REVOKE``); psql
  meta-commands (``\\restrict``...)
  are skipped by :func:`pgtenancy.sqlscript.read_script`;
* ``public.`` is removed from the names of the objects the dump creates in
  ``public`` — relations, types, functions, operators, sequences of identity
  columns and ``OWNED BY``, string literals cast to ``regclass`` and friends
  (``nextval('public.x'::regclass)``), bodies of ``LANGUAGE sql`` functions
  (parsed) and of PL/pgSQL functions and DO blocks (outside literals and
  comments). Names of objects the dump does not create there (extension
  members such as ``public.gin_trgm_ops``, ``public.similarity``) keep their
  qualification: they are shared objects the tenant's objects reference;
* objects of another schema (``CREATE TABLE partman.x``) go, unchanged, to
  ``shared_sql`` when ``split_shared`` (with a ``CREATE SCHEMA IF NOT
  EXISTS``), for a shared migration applied once; otherwise they are refused;
* refused (:class:`TemplateError`, every problem with its line): a statement
  whose object would still be in ``public`` or in a system schema, a shared
  object that depends on a tenant object, a PL/pgSQL body naming one of the
  dump's objects as ``public.x`` inside a string (dynamic SQL), data
  statements (but for ``data=True``: the rows of ``pg_dump --inserts``, the
  ``setval`` calls and ``REFRESH MATERIALIZED VIEW`` a baseline carries),
  statement kinds a tenant schema cannot hold (casts, access
  methods...), and any statement pglast cannot print back to exactly the
  rewritten tree. A statement is written as the dump had it with only the
  qualifications cut out (pglast's scanner) when that parses to the
  rewritten tree, else as pglast prints it, checked the same way.
* warned: DO blocks and PL/pgSQL bodies with dynamic SQL (``EXECUTE``), which
  the database confines at execution time, and functions that pin
  ``search_path`` to ``public``.

Example::

    result = import_template(Path("app.sql").read_text(), split_shared=True)
    for warning in result.warnings:
        print("warning:", warning)
    Tenancy(dsn).add_migration("0001", result.sql)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ObjectType
from pglast.parser import ParseError, scan
from pglast.stream import IndentedStream, RawStream

from pgtenancy.errors import TenancyError
from pgtenancy.sqlscript import (
    DATABASE_NODES,
    TRANSACTION_NODES,
    ScriptError,
    read_script,
    statement_name,
    statement_targets,
)

__all__ = ["TemplateError", "TemplateResult", "import_template"]

SOURCE_SCHEMA: Final = "public"
# Schemas no template object may land in.
_FORBIDDEN_SCHEMAS: Final = frozenset({"pg_catalog", "information_schema", "pg_toast", "tenancy"})
# Schemas of the kit's tenants (tenancy.schema_prefix()).
_TENANT_PREFIX: Final = "tenant_"
# Node attributes holding a possibly schema-qualified name as a list of String.
_NAME_LISTS: Final[dict[str, tuple[str, ...]]] = {
    "TypeName": ("names",),
    "FuncCall": ("funcname",),
    "ObjectWithArgs": ("objname",),
    "CreateFunctionStmt": ("funcname",),
    "CreateTrigStmt": ("funcname",),
    "CreateEnumStmt": ("typeName",),
    "AlterEnumStmt": ("typeName",),
    "CreateRangeStmt": ("typeName",),
    "AlterTypeStmt": ("typeName",),
    "CreateDomainStmt": ("domainname",),
    "AlterDomainStmt": ("typeName",),
    "DefineStmt": ("defnames",),
    "CreateOpClassStmt": ("opclassname", "opfamilyname"),
    "CreateOpFamilyStmt": ("opfamilyname",),
    "AlterOpFamilyStmt": ("opfamilyname",),
    "CreateConversionStmt": ("conversion_name", "func_name"),
    "CreateStatsStmt": ("defnames",),
    "AlterTSConfigurationStmt": ("cfgname",),
    "AlterTSDictionaryStmt": ("dictname",),
    "IndexElem": ("opclass", "collation"),
    "CollateClause": ("collname",),
    "A_Expr": ("name",),
    "CommentStmt": ("object",),
    "SecLabelStmt": ("object",),
    "AlterOwnerStmt": ("object",),
    "AlterObjectSchemaStmt": ("object",),
    "AlterObjectDependsStmt": ("object",),
    "RenameStmt": ("object",),
}
# Node attributes holding a list of such names (DROP TYPE a, b; GRANT ON TYPE ...).
_NAME_LIST_LISTS: Final[dict[str, tuple[str, ...]]] = {
    "DropStmt": ("objects",),
    "GrantStmt": ("objects",),
    "AlterTSConfigurationStmt": ("dicts",),
}
# DefElem options whose argument is a qualified name (identity and OWNED BY).
_NAME_OPTIONS: Final = frozenset({"sequence_name", "owned_by"})
# Object-identifier types whose string literals name schema objects.
_REG_TYPES: Final = frozenset(
    {
        "regclass",
        "regtype",
        "regproc",
        "regprocedure",
        "regoper",
        "regoperator",
        "regconfig",
        "regdictionary",
        "regcollation",
    }
)
# Functions pg_dump calls for large objects.
_LARGE_OBJECT_FUNCS: Final = frozenset({"lo_create", "lo_unlink", "lo_open", "lowrite", "lo_close"})
# Functions whose first argument, a string, names a sequence.
_SEQUENCE_FUNCS: Final = frozenset({"nextval", "currval", "setval"})
# The schema the dump's objects are in (``public``, or the scratch schema a
# squash dumps: see :func:`import_template`'s ``source_schema``).
_SOURCE: ContextVar[str] = ContextVar("pgtenancy_template_source", default=SOURCE_SCHEMA)


def _source() -> str:
    return _SOURCE.get()


@lru_cache(maxsize=8)
def _ref_pattern(schema: str) -> re.Pattern[str]:
    """``schema.name`` (or ``"schema"."name"``) inside a string; group 1 quoted, 2 plain."""
    plain = re.escape(schema)
    quoted = re.escape('"' + schema.replace('"', '""') + '"')
    return re.compile(
        rf'(?i)(?<![\w$."])(?:{plain}|{quoted})\s*\.\s*(?:"((?:[^"]|"")+)"|([^\W\d][\w$]*))'
    )


@lru_cache(maxsize=8)
def _word_pattern(schema: str) -> re.Pattern[str]:
    """Any word ``schema``, to spot a search_path naming it."""
    return re.compile(rf'(?i)(?<![\w$])"?{re.escape(schema)}"?(?![\w$])')


_WORD: Final = re.compile(r"[^\W\d]\w*(?:\$\w*)*")
_DOLLAR_TAG: Final = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_DOT_AFTER: Final = re.compile(r"\s*\.\s*")
_QUOTED_NAME: Final = re.compile(r'"((?:[^"]|"")+)"')
_ACL_NODES: Final = frozenset({"GrantStmt", "GrantRoleStmt", "AlterOwnerStmt"})
# Statements that act on the whole database: they cannot be repeated per tenant.
_DATABASE_WIDE: Final = DATABASE_NODES | {
    "CreateEventTrigStmt",
    "AlterEventTrigStmt",
    "CreatePublicationStmt",
    "AlterPublicationStmt",
    "CreateSubscriptionStmt",
    "AlterSubscriptionStmt",
    "AlterDefaultPrivilegesStmt",
    "CreatePLangStmt",
    "AlterRoleSetStmt",
    "CreateFdwStmt",
    "AlterFdwStmt",
    "CreateForeignServerStmt",
    "AlterForeignServerStmt",
    "CreateUserMappingStmt",
    "AlterUserMappingStmt",
}
# Statements of pg_dump's --clean section besides DROP: ALTER TABLE subcommands.
_CLEAN_SUBCOMMANDS: Final = frozenset(
    {AlterTableType.AT_DropConstraint, AlterTableType.AT_DropIdentity}
)
_SCHEMA_LEVEL_COMMENTS: Final = (ObjectType.OBJECT_EXTENSION, ObjectType.OBJECT_SCHEMA)
_EXTENSION_NODES: Final = frozenset(
    {"CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt"}
)
# Statement kinds a tenant template may hold (after the drops above).
_TEMPLATE_NODES: Final = frozenset(
    {
        "CreateStmt",
        "AlterTableStmt",
        "IndexStmt",
        "CreateSeqStmt",
        "AlterSeqStmt",
        "ViewStmt",
        "CreateTableAsStmt",
        "CreateFunctionStmt",
        "AlterFunctionStmt",
        "CreateTrigStmt",
        "CreatePolicyStmt",
        "AlterPolicyStmt",
        "RuleStmt",
        "CommentStmt",
        "SecLabelStmt",
        "CreateEnumStmt",
        "AlterEnumStmt",
        "CreateDomainStmt",
        "AlterDomainStmt",
        "CompositeTypeStmt",
        "CreateRangeStmt",
        "AlterTypeStmt",
        "DefineStmt",
        "CreateStatsStmt",
        "AlterStatsStmt",
        "CreateOpClassStmt",
        "CreateOpFamilyStmt",
        "AlterOpFamilyStmt",
        "CreateConversionStmt",
        "AlterTSConfigurationStmt",
        "AlterTSDictionaryStmt",
        "CreateForeignTableStmt",
        "AlterObjectDependsStmt",
        "DoStmt",
        "SelectStmt",
        "GrantStmt",
        "AlterOwnerStmt",
    }
)
# Opening and closing of the migration when it creates LANGUAGE sql functions:
# pg_dump creates functions before the tables their bodies read, as it runs
# with check_function_bodies off; the migration does the same, for its own
# statements only, and puts the caller's setting back.
_BODIES_OFF: Final = (
    "SELECT pg_catalog.set_config('pgtenancy.template_check_function_bodies',"
    " pg_catalog.current_setting('check_function_bodies'), true),"
    " pg_catalog.set_config('check_function_bodies', 'off', true);\n\n"
)
_BODIES_BACK: Final = (
    "SELECT pg_catalog.set_config('check_function_bodies',"
    " pg_catalog.current_setting('pgtenancy.template_check_function_bodies'), true);\n"
)


class TemplateError(TenancyError, ValueError):
    """The dump holds statements :func:`import_template` cannot make safe
    (Python only: found before any SQL runs).

    Attributes:
        problems: ``(line, reason)`` for every refused statement, in dump
            order; ``line`` is 1-based.
    """

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"line {first[0]}: {first[1]}{more}")
        self.problems = problems


@dataclass
class TemplateResult:
    """What :func:`import_template` made of a dump.

    Attributes:
        sql: the tenant migration: ``;``-terminated statements that name none
            of the dump's own objects with ``public.``, for
            :meth:`pgtenancy.Tenancy.add_migration`.
        shared_sql: the statements creating objects of other schemas, as the
            dump had them, preceded by ``CREATE SCHEMA IF NOT EXISTS``: a
            shared migration, applied once ('' when there are none).
        dropped: one line per statement or psql meta-command removed,
            ``line N: <text>``.
        warnings: one line per thing kept that needs a look (``line N: ...``):
            DO blocks, dynamic SQL, dropped extensions to install once.
        shared: one line per statement written to ``shared_sql``.
    """

    sql: str
    shared_sql: str = ""
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)


def import_template(
    dump_sql: str,
    *,
    keep_acl: bool = False,
    split_shared: bool = False,
    source_schema: str = SOURCE_SCHEMA,
    data: bool = False,
) -> TemplateResult:
    """Turn a ``pg_dump --schema-only`` of schema ``public`` into a tenant migration.

    Args:
        dump_sql: the dump, as pg_dump wrote it (plain format, with or
            without ``--clean --if-exists``).
        keep_acl: keep ``GRANT`` and ``REVOKE`` on the application's objects
            (rewritten like the rest) instead of dropping them; those on
            schemas, and ``ALTER ... OWNER TO``, are dropped either way (a
            tenant migration may not change owners).
        split_shared: write objects of schemas other than ``public`` to
            ``TemplateResult.shared_sql`` instead of refusing them.
        source_schema: the schema the dump's objects are in, whose name is
            cut out (``public`` above stands for it); ``pgtenancy migrate
            squash`` dumps the scratch schema of its replay.
        data: keep the dump's rows too (``pgtenancy migrate squash``): the
            ``INSERT`` statements of ``pg_dump --inserts`` / ``--column-inserts``
            into the dump's own tables (only the table name is rewritten, the
            values stay as they are; string constants holding a backslash are
            written as ``E'...'``, so they mean the same whatever
            ``standard_conforming_strings`` is), ``SELECT setval(...)`` and
            ``REFRESH MATERIALIZED VIEW``. pg_dump places them after the tables
            and before the constraints, indexes and triggers, so foreign keys
            hold whatever the order of the rows and no trigger fires. Other
            data statements are refused.

    Returns:
        The migration SQL, the shared SQL, what was dropped and the warnings.

    Raises:
        ScriptError: the dump does not parse; ``line`` is the 1-based line.
        TemplateError: statements that cannot be made tenant-local safely,
            each with its line (nothing is returned then).
    """
    token = _SOURCE.set(source_schema)
    try:
        return _import_template(dump_sql, keep_acl, split_shared, data)
    finally:
        _SOURCE.reset(token)


def _import_template(
    dump_sql: str, keep_acl: bool, split_shared: bool, data: bool = False
) -> TemplateResult:
    script = read_script(dump_sql)
    parsed: list[tuple[int, str, ast.Node]] = []
    for statement in script.statements:
        try:
            node = pglast.parse_sql(statement.sql)[0].stmt
        except ParseError as exc:  # pragma: no cover - read_script parsed it already
            raise ScriptError(str(exc.args[0]), statement.line) from exc
        if node is not None:
            parsed.append((statement.line, statement.sql, node))
    own = _dump_objects(node for _, _, node in parsed)
    shared_schemas = _shared_schemas(node for _, _, node in parsed)
    result = TemplateResult(sql="")
    dropped: list[tuple[int, str]] = list(script.skipped)
    problems: list[tuple[int, str]] = []
    parts: list[str] = []
    shared_parts: list[str] = []
    sql_functions = False
    for line, text, node in parsed:
        kind = type(node).__name__
        if isinstance(node, ast.CreateSchemaStmt) and split_shared:
            name = node.schemaname or ""
            if name in shared_schemas:
                shared_parts.append(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(name)};\n\n")
                result.shared.append(f"line {line}: CREATE SCHEMA IF NOT EXISTS {name}")
                continue
        reason = _drop_reason(node, keep_acl)
        if reason is not None:
            dropped.append((line, _summary(text)))
            if reason:
                result.warnings.append(f"line {line}: {reason}")
            continue
        if data and isinstance(node, ast.InsertStmt):
            data_sql, why = _data_rows(text, node, own)
            if data_sql is None:
                problems.append((line, f"{_summary(text)}: {why}"))
            else:
                parts.append(f"{data_sql};\n\n")
            continue
        if kind == "RuleStmt":
            # The database refuses rules in a tenant migration (PT017).
            problems.append(
                (
                    line,
                    f"{_summary(text)}: a rule runs with its table owner's rights; use a trigger",
                )
            )
            continue
        if (kind not in _TEMPLATE_NODES and not (data and kind == "RefreshMatViewStmt")) or (
            kind == "SelectStmt" and not _is_setval(node)
        ):
            problems.append((line, f"{_summary(text)}: {_not_template_reason(node, data)}"))
            continue
        targets = statement_targets(node)
        schema = targets[0].schema if targets else None
        if schema is not None and (schema in _FORBIDDEN_SCHEMAS or schema.startswith("pg_")):
            problems.append((line, f"creates or changes an object in schema {schema}"))
            continue
        if schema is not None and schema.startswith(_TENANT_PREFIX):
            problems.append(
                (line, f"creates or changes an object in {schema}, a tenant's schema of the kit")
            )
            continue
        if schema not in (None, _source()):
            problem = _shared_problem(node, schema, own, split_shared)
            if problem:
                problems.append((line, problem))
                continue
            shared_parts.append(f"{text};\n\n")
            result.shared.append(f"line {line}: {_summary(text)}")
            continue
        rewriter = _Rewriter(line, result.warnings, own)
        rewriter.visit(node)
        sql_functions = sql_functions or rewriter.sql_functions
        problems.extend((line, p) for p in rewriter.problems)
        if rewriter.problems:
            continue
        problem = _tenant_problem(node, own)
        if problem:
            problems.append((line, problem))
            continue
        if rewriter.changed:
            rendered = _render(text, node, own, rewriter.literals)
            if rendered is None:
                problems.append(
                    (
                        line,
                        f"{_summary(text)}: pglast cannot print the rewritten statement back"
                        " (unsupported syntax); rewrite it by hand",
                    )
                )
                continue
            text = rendered
        residue = _token_residue(text, own)
        if residue is not None:
            problems.append(
                (line, f"{_summary(text)}: still names {_source()}.{residue} after the rewrite")
            )
            continue
        if isinstance(node, ast.DoStmt):
            result.warnings.append(
                f"line {line}: DO block kept; it runs in every tenant's migration"
                " (confined by the database at execution)"
            )
        parts.append(f"{text};\n\n")
    if problems:
        raise TemplateError(problems)
    body = "".join(parts)
    if sql_functions and body:
        body = _BODIES_OFF + body + _BODIES_BACK
    result.sql = body
    result.shared_sql = "".join(shared_parts)
    result.dropped = [f"line {line}: {text}" for line, text in sorted(dropped)]
    return result


def _data_rows(text: str, node: ast.InsertStmt, own: frozenset[str]) -> tuple[str | None, str]:
    """The rows of ``pg_dump --inserts``, with the table's qualification cut.

    Accepted: ``INSERT INTO source.table [(columns)] [OVERRIDING SYSTEM
    VALUE] VALUES (...), ...`` into a table the dump creates, with constant
    values only (what pg_dump writes). The text is kept token for token but
    for the ``source.`` before the table's name (the tokens of pglast's
    scanner, so a value is never touched) and string constants holding a
    backslash, written ``E'...'``. Returns ``(sql, '')``, or ``(None,
    reason)`` for anything else.
    """
    relation = node.relation
    select = node.selectStmt
    refused = "not a row of pg_dump --inserts into one of the dump's tables (constant values only)"
    if (
        relation is None
        or relation.schemaname != _source()
        or relation.relname not in own
        or node.onConflictClause is not None
        or getattr(node, "returningClause", None) is not None
        or getattr(node, "returningList", None)
        or node.withClause is not None
        or not isinstance(select, ast.SelectStmt)
        or not select.valuesLists
        or select.fromClause
        or select.withClause is not None
        or not all(
            isinstance(value, ast.A_Const | ast.SetToDefault)
            for row in select.valuesLists
            for value in row
        )
    ):
        return None, refused
    tokens = scan(text)
    if (
        len(tokens) < 5
        or [t.name for t in tokens[:2]] != ["INSERT", "INTO"]
        or tokens[3].name != "ASCII_46"
        or _ident_value(text[tokens[2].start : tokens[2].end + 1]) != _source()
        or _ident_value(text[tokens[4].start : tokens[4].end + 1]) != relation.relname
    ):
        return None, refused
    out = [text[: tokens[2].start]]
    pos = tokens[4].start
    for tok in tokens[5:]:
        raw = text[tok.start : tok.end + 1]
        if tok.name == "SCONST" and raw.startswith("'") and "\\" in raw:
            # The same value whatever standard_conforming_strings is (pg_dump
            # writes plain constants for a server where it is on).
            out.append(text[pos : tok.start])
            out.append("E" + raw.replace("\\", "\\\\"))
            pos = tok.end + 1
    out.append(text[pos:])
    return "".join(out), ""


def _not_template_reason(node: ast.Node, data: bool = False) -> str:
    kind = type(node).__name__
    if kind in ("InsertStmt", "CopyStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "SelectStmt"):
        if data:
            return (
                f"{statement_name(node)}: a baseline's rows come as pg_dump --inserts writes"
                " them (INSERT ... VALUES, SELECT setval)"
            )
        return (
            f"{statement_name(node)}: data or queries are not part of a template;"
            " dump with --schema-only"
        )
    return (
        f"{statement_name(node)} cannot be part of a tenant schema"
        " (database-wide or not a schema object)"
    )


def _dump_objects(nodes: object) -> frozenset[str]:
    """Names of the objects the dump creates in ``public`` (unqualified).

    Relations, indexes, constraints (their indexes), sequences of identity
    columns, types, functions, operators and the other schema objects whose
    statement's object is qualified with ``public``.
    """
    names: set[str] = set()
    for node in nodes:  # type: ignore[attr-defined]
        kind = type(node).__name__
        if not kind.startswith(("Create", "Define", "Composite", "View", "Index", "Alter")):
            continue
        targets = statement_targets(node)
        if not targets or targets[0].schema not in (_source(), None):
            continue
        if not kind.startswith("Alter"):
            names.add(targets[0].name)
        if isinstance(node, ast.IndexStmt) and node.idxname:
            names.add(node.idxname)
        for inner in _tree(node):
            if isinstance(inner, ast.Constraint) and inner.conname:
                names.add(inner.conname)
            elif isinstance(inner, ast.DefElem) and inner.defname in (
                "sequence_name",
                "multirange_type_name",
            ):
                arg = inner.arg.names if isinstance(inner.arg, ast.TypeName) else inner.arg
                seq = _names(arg)
                if seq:
                    names.add(seq[-1])
    return frozenset(names)


def _shared_schemas(nodes: object) -> frozenset[str]:
    """Schemas other than public that the dump creates objects in."""
    found: set[str] = set()
    for node in nodes:  # type: ignore[attr-defined]
        if type(node).__name__ not in _TEMPLATE_NODES:
            continue
        targets = statement_targets(node)
        schema = targets[0].schema if targets else None
        if schema is None or schema == _source() or schema in _FORBIDDEN_SCHEMAS:
            continue
        if not schema.startswith(("pg_", _TENANT_PREFIX)):
            found.add(schema)
    return frozenset(found)


def _shared_problem(node: ast.Node, schema: str, own: frozenset[str], split: bool) -> str | None:
    """Why a statement about an object of another schema cannot go to the shared file."""
    for ref in _public_refs(node, own):
        return (
            f"object in schema {schema} depends on {_source()}.{ref}, which becomes a"
            " tenant object: a shared object cannot depend on one tenant's object"
        )
    if not split:
        name = statement_targets(node)[0].name
        return (
            f"creates or changes {schema}.{name} in schema {schema}, shared by every tenant:"
            " write such objects to a shared migration with --shared-out FILE"
        )
    return None


def _tenant_problem(node: ast.Node, own: frozenset[str]) -> str | None:
    """Why a rewritten tenant statement is still unsafe: it acts outside the tenant."""
    for target in statement_targets(node):
        if target.schema is None:
            continue
        if target.schema == _source():
            return (
                f"acts on {_source()}.{target.name}, which the dump does not create:"
                " it would change the shared schema"
            )
        return f"changes {target.schema}.{target.name} in another schema from a tenant statement"
    residues = _public_refs(node, own)
    if residues:  # pragma: no cover - the rewriter removes them all
        return f"still names {_source()}.{residues[0]}"
    return None


def _summary(sql: str) -> str:
    """First line of a statement, shortened to fit one report line."""
    first = " ".join(sql.split("\n", 1)[0].split())
    if "\n" in sql:
        first += " ..."
    return first if len(first) <= 120 else first[:117] + "..."


def _names(value: object) -> list[str] | None:
    """The strings of a tuple of String nodes, or None when it is not one."""
    if not isinstance(value, tuple) or not value:
        return None
    if not all(isinstance(item, ast.String) for item in value):
        return None
    return [item.sval for item in value]


def _drop_reason(node: ast.Node, keep_acl: bool) -> str | None:
    """None to keep ``node``; else a warning to give when it is dropped ('' for none)."""
    kind = type(node).__name__
    if kind in ("VariableSetStmt", "VariableShowStmt", "DiscardStmt"):
        return ""
    if kind in TRANSACTION_NODES:
        return ""
    if kind == "DropStmt" or kind.startswith("Drop"):
        return ""  # pg_dump --clean: a template creates, it never drops
    if isinstance(node, ast.AlterTableStmt) and _is_clean_alter(node):
        return ""
    if kind == "CreateSchemaStmt":
        if getattr(node, "schemaname", None) == _source():
            return ""
        name = getattr(node, "schemaname", None)
        return f"CREATE SCHEMA {name} dropped: a tenant migration creates objects in its schema"
    if kind in _DATABASE_WIDE:
        return f"{statement_name(node)} dropped: it acts on the whole database, not on one tenant"
    if kind == "CreateExtensionStmt":
        name = getattr(node, "extname", "?")
        return f"extension {name} dropped: install it in the database once, not per tenant"
    if kind in _EXTENSION_NODES:
        return ""
    if isinstance(node, ast.CommentStmt | ast.SecLabelStmt) and node.objtype in (
        _SCHEMA_LEVEL_COMMENTS
    ):
        return ""
    if kind == "SelectStmt" and _is_set_config(node):
        return ""
    if kind == "SelectStmt" and _is_large_object_call(node):
        return "large object dropped: large objects belong to the database, not to a schema"
    if kind == "AlterOwnerStmt" or (kind == "AlterTableStmt" and _is_owner_change(node)):
        return ""
    if kind in _ACL_NODES:
        if _on_schema(node) or kind == "GrantRoleStmt":
            return ""
        return None if keep_acl else ""
    return None


def _is_clean_alter(node: ast.AlterTableStmt) -> bool:
    """``ALTER TABLE ... DROP CONSTRAINT / DROP IDENTITY / ALTER COLUMN DROP DEFAULT``."""
    cmds = node.cmds or ()
    return bool(cmds) and all(
        getattr(cmd, "subtype", None) in _CLEAN_SUBCOMMANDS
        or (
            getattr(cmd, "subtype", None) == AlterTableType.AT_ColumnDefault
            and getattr(cmd, "def_", None) is None
        )
        for cmd in cmds
    )


def _is_set_config(node: ast.Node) -> bool:
    """``SELECT pg_catalog.set_config(...)`` and nothing else."""
    return _only_calls(node, "set_config")


def _is_large_object_call(node: ast.Node) -> bool:
    """``SELECT pg_catalog.lo_create(...)`` / ``lo_unlink(...) FROM ...`` of a dump."""
    if not isinstance(node, ast.SelectStmt) or not node.targetList:
        return False
    calls = [getattr(t, "val", None) for t in node.targetList]
    return all(
        isinstance(c, ast.FuncCall)
        and (_names(c.funcname) or [""])[-1] in _LARGE_OBJECT_FUNCS
        and (_names(c.funcname) or [])[:-1] in ([], ["pg_catalog"])
        for c in calls
    )


def _is_setval(node: ast.Node) -> bool:
    """``SELECT pg_catalog.setval(...)`` and nothing else."""
    return _only_calls(node, "setval")


def _only_calls(node: ast.Node, function: str) -> bool:
    if not isinstance(node, ast.SelectStmt) or node.fromClause or not node.targetList:
        return False
    for target in node.targetList:
        value = getattr(target, "val", None)
        if not isinstance(value, ast.FuncCall):
            return False
        names = _names(value.funcname) or []
        if names[-1:] != [function] or names[:-1] not in ([], ["pg_catalog"]):
            return False
    return True


def _is_owner_change(node: ast.Node) -> bool:
    """``ALTER TABLE|SEQUENCE|VIEW ... OWNER TO`` (an AlterTableStmt in the tree)."""
    cmds = getattr(node, "cmds", None) or ()
    return bool(cmds) and all(
        getattr(cmd, "subtype", None) == AlterTableType.AT_ChangeOwner for cmd in cmds
    )


def _on_schema(node: ast.Node) -> bool:
    """An ACL or owner statement about a schema (``public`` itself, for a dump)."""
    if isinstance(node, ast.GrantStmt):
        return node.objtype in (ObjectType.OBJECT_SCHEMA, ObjectType.OBJECT_LARGEOBJECT) or getattr(
            node.targtype, "name", ""
        ) in (
            "ACL_TARGET_ALL_IN_SCHEMA",
            "ACL_TARGET_DEFAULTS",
        )
    if isinstance(node, ast.AlterOwnerStmt):
        return node.objectType in (ObjectType.OBJECT_SCHEMA, ObjectType.OBJECT_LARGEOBJECT)
    return False


def _ident_value(word: str) -> str:
    """The name an identifier spells: unquoted ones fold to lower case."""
    if word.startswith('"') and word.endswith('"') and len(word) >= 2:
        return word[1:-1].replace('""', '"')
    return word.lower()


def _quote_ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _ref_name(match: re.Match[str]) -> str:
    quoted, plain = match.group(1), match.group(2)
    return quoted.replace('""', '"') if quoted is not None else plain.lower()


def _strip_in_text(text: str, own: frozenset[str]) -> str:
    """Remove ``public.`` before the dump's own objects inside a string naming one."""

    def replace(match: re.Match[str]) -> str:
        full = match.group(0)
        return full if _ref_name(match) not in own else full[full.index(".") + 1 :].lstrip()

    return _ref_pattern(_source()).sub(replace, text)


def _names_own(text: str, own: frozenset[str]) -> bool:
    """``text`` (a string's content) names one of the dump's objects as ``public.x``."""
    return any(_ref_name(m) in own for m in _ref_pattern(_source()).finditer(text))


def _public_refs(node: object, own: frozenset[str]) -> list[str]:
    """The dump's own objects a tree still names with ``public.`` (identifiers only)."""
    found: list[str] = []
    for inner in _tree(node):
        if isinstance(inner, ast.A_Const):
            continue
        if isinstance(inner, ast.RangeVar):
            if inner.schemaname == _source() and inner.relname in own:
                found.append(inner.relname)
            continue
        attrs = list(_NAME_LISTS.get(type(inner).__name__, ()))
        if isinstance(inner, ast.ColumnRef):
            attrs.append("fields")
        elif isinstance(inner, ast.DefElem) and inner.defname in _NAME_OPTIONS:
            attrs.append("arg")
        for attr in attrs:
            names = _names(getattr(inner, attr, None))
            if names and len(names) >= 2 and names[0] == _source() and names[1] in own:
                found.append(names[1])
        if isinstance(inner, ast.TypeCast | ast.FuncCall):
            for const in _tree(inner.arg if isinstance(inner, ast.TypeCast) else inner.args):
                if (
                    isinstance(const, ast.A_Const)
                    and isinstance(const.val, ast.String)
                    and _is_name_literal(inner)
                    and _names_own(const.val.sval or "", own)
                ):
                    found.append(const.val.sval or "")
    return found


def _is_name_literal(node: ast.TypeCast | ast.FuncCall) -> bool:
    if isinstance(node, ast.TypeCast):
        names = _names(node.typeName.names if node.typeName else None) or []
        return bool(names) and names[-1] in _REG_TYPES
    names = _names(node.funcname) or []
    return bool(names) and names[-1] in _SEQUENCE_FUNCS


def _tree(node: object) -> list[ast.Node]:
    """Every pglast node of a tree."""
    out: list[ast.Node] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(item)
        elif isinstance(item, ast.Node):
            out.append(item)
            stack.extend(getattr(item, slot, None) for slot in _slots(item))
    return out


class _Rewriter:
    """Remove ``public`` qualifications of the dump's objects from one statement's tree.

    Attributes:
        changed: something was rewritten (the statement must be rendered again).
        sql_functions: the statement creates a LANGUAGE sql function with a
            string body (its body is checked at creation time).
        literals: string constants rewritten, old value to new value.
        problems: why the statement cannot be made safe ('' none).
    """

    def __init__(self, line: int, warnings: list[str], own: frozenset[str]) -> None:
        self.line = line
        self.warnings = warnings
        self.own = own
        self.changed = False
        self.sql_functions = False
        self.literals: dict[str, str] = {}
        self.problems: list[str] = []

    def _warn(self, message: str) -> None:
        self.warnings.append(f"line {self.line}: {message}")

    def _unqualified(self, value: object, minimum: int = 2) -> object:
        """``value`` without a leading ``public`` when it names one of the dump's objects."""
        names = _names(value)
        if names is None or len(names) < minimum:
            return value
        if names[0] == _source() and names[1] in self.own:
            self.changed = True
            assert isinstance(value, tuple)
            return value[1:]
        return value

    def visit(self, node: object) -> None:
        """Rewrite ``node`` and everything below it."""
        if isinstance(node, tuple):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, ast.Node):
            return
        kind = type(node).__name__
        if (
            isinstance(node, ast.RangeVar)
            and node.schemaname == _source()
            and node.relname in self.own
        ):
            node.schemaname = None
            self.changed = True
        for attr in _NAME_LISTS.get(kind, ()):
            setattr(node, attr, self._unqualified(getattr(node, attr, None)))
        for attr in _NAME_LIST_LISTS.get(kind, ()):
            value = getattr(node, attr, None)
            if isinstance(value, tuple):
                setattr(node, attr, tuple(self._unqualified(item) for item in value))
        if isinstance(node, ast.ColumnRef):
            # schema.table.column: only with three parts or more.
            setattr(node, "fields", self._unqualified(node.fields, minimum=3))  # noqa: B010
        elif isinstance(node, ast.DefElem) and node.defname in _NAME_OPTIONS:
            setattr(node, "arg", self._unqualified(node.arg))  # noqa: B010
        elif isinstance(node, ast.TypeCast | ast.FuncCall) and _is_name_literal(node):
            arg = node.arg if isinstance(node, ast.TypeCast) else (node.args or (None,))[0]
            self._rewrite_const(arg)
        elif isinstance(node, ast.CreateFunctionStmt):
            self._function(node)
        elif isinstance(node, ast.DoStmt):
            self._do(node)
        for attr in _slots(node):
            self.visit(getattr(node, attr, None))

    def _rewrite_const(self, const: object) -> None:
        if isinstance(const, ast.A_Const) and isinstance(const.val, ast.String):
            old = const.val.sval or ""
            new = _strip_in_text(old, self.own)
            if new != old:
                const.val = ast.String(sval=new)
                self.literals[old] = new
                self.changed = True

    def _set_body(self, option: ast.DefElem, old: str, new: str) -> None:
        if new != old:
            option.arg = (
                ast.String(sval=new)
                if isinstance(option.arg, ast.String)
                else (ast.String(sval=new),)
            )
            self.literals[old] = new
            self.changed = True

    def _do(self, node: ast.DoStmt) -> None:
        language = "plpgsql"
        body_option: ast.DefElem | None = None
        for option in node.args or ():
            if isinstance(option, ast.DefElem) and option.defname == "language":
                language = (getattr(option.arg, "sval", "") or "").lower()
            elif isinstance(option, ast.DefElem) and option.defname == "as":
                body_option = option
        if body_option is None or not isinstance(body_option.arg, ast.String):
            return
        body = body_option.arg.sval or ""
        if language != "plpgsql":
            if _names_own(body, self.own):
                self.problems.append(
                    f"DO block in language {language} names the dump's objects with {_source()}."
                )
            return
        new, dynamic = _rewrite_body_text(body, self.own)
        if new is None:
            self.problems.append(
                f"DO block names the dump's objects as {_source()}.x inside a string (dynamic SQL)"
                " or has a literal or comment that does not end: rewrite it by hand"
            )
            return
        if dynamic:
            self._warn("DO block runs dynamic SQL (EXECUTE)")
        self._set_body(body_option, body, new)

    def _function(self, node: ast.CreateFunctionStmt) -> None:
        """Rewrite the body of a function or procedure according to its language."""
        name = ".".join(n for n in (_names(node.funcname) or ["?"]) if n != _source())
        language = "sql"
        body_option: ast.DefElem | None = None
        for option in node.options or ():
            if not isinstance(option, ast.DefElem):
                continue
            if option.defname == "language" and isinstance(option.arg, ast.String):
                language = (option.arg.sval or "").lower()
            elif option.defname == "as":
                body_option = option
            elif option.defname == "security" and getattr(option.arg, "boolval", False):
                # The database refuses it in a tenant migration (PT017).
                self.problems.append(
                    f"function {name} is SECURITY DEFINER: in a tenant schema it would run"
                    " with the kit owner's rights; make it SECURITY INVOKER, or create it"
                    " with a shared migration"
                )
            elif option.defname == "set" and isinstance(option.arg, ast.VariableSetStmt):
                setting = option.arg
                values = [
                    a.val.sval or ""
                    for a in setting.args or ()
                    if isinstance(a, ast.A_Const) and isinstance(a.val, ast.String)
                ]
                if setting.name == "search_path" and any(
                    _word_pattern(_source()).search(v) for v in values
                ):
                    self._warn(
                        f"function {name} sets search_path to include public; left as it is,"
                        " so it reads public rather than the tenant's schema"
                    )
        if body_option is None:
            return  # BEGIN ATOMIC / RETURN bodies are part of the tree.
        parts = _names(body_option.arg)
        if parts is None or len(parts) != 1:
            return  # C functions: object file and symbol.
        body = parts[0]
        new: str | None
        if language == "sql":
            self.sql_functions = True
            new = self._sql_body(body)
            if new is None:
                new, _ = _rewrite_body_text(body, self.own)
        elif language == "plpgsql":
            new, dynamic = _rewrite_body_text(body, self.own)
            if new is not None and new != body and not _plpgsql_parses(node, body_option, new):
                new = None
            if dynamic:
                self._warn(f"function {name} runs dynamic SQL (EXECUTE)")
        elif _names_own(body, self.own):
            new = None
        else:
            return
        if new is None:
            self.problems.append(
                f"function {name}: its {language} body names the dump's objects as {_source()}.x"
                " where that cannot be rewritten safely (inside a string: dynamic SQL)"
            )
            return
        self._set_body(body_option, body, new)

    def _sql_body(self, body: str) -> str | None:
        """A LANGUAGE sql body parsed and rewritten; None when pglast cannot parse it."""
        try:
            statements = pglast.parse_sql(body)
        except ParseError:
            return None
        inner = _Rewriter(self.line, self.warnings, self.own)
        for raw in statements:
            inner.visit(raw.stmt)
        if inner.problems:
            self.problems.extend(inner.problems)
            return body
        if not inner.changed:
            return body
        try:
            cut = _cut_qualifications(body, self.own, inner.literals)
            if [raw.stmt for raw in pglast.parse_sql(cut)] == [raw.stmt for raw in statements]:
                return cut  # the body as written, qualifications cut out
        except Exception:  # fall back to pglast's printers
            pass
        texts = [_render_body(raw.stmt) for raw in statements]
        if any(text is None for text in texts):
            return None
        return "\n" + ";\n".join(t for t in texts if t is not None) + "\n"


def _render_body(node: ast.Node | None) -> str | None:
    return "" if node is None else _deparse(node)


def _plpgsql_parses(node: ast.CreateFunctionStmt, option: ast.DefElem, new: str) -> bool:
    """The function still parses as PL/pgSQL with body ``new`` (or never did)."""
    original = option.arg
    try:
        before = RawStream()(node)
        option.arg = (ast.String(sval=new),)
        after = RawStream()(node)
    finally:
        option.arg = original
    try:
        pglast.parse_plpgsql(before)
    except Exception:
        return True  # nothing to compare with: trust the rewrite
    try:
        pglast.parse_plpgsql(after)
    except Exception:
        return False
    return True


def _render(text: str, node: ast.Node, own: frozenset[str], literals: dict[str, str]) -> str | None:
    """The rewritten statement as SQL that parses back to exactly ``node``.

    First the dump's own text with the qualifications cut out and rewritten
    literals replaced (pglast's scanner finds them), then pglast's printers;
    None when neither parses back to the rewritten tree.
    """
    candidates: list[Callable[[], str | None]] = [
        lambda: _cut_qualifications(text, own, literals),
        lambda: _printed(node, IndentedStream),
        lambda: _printed(node, RawStream),
    ]
    for make in candidates:
        try:
            candidate = make()
            if candidate is None:
                continue
            back = pglast.parse_sql(candidate)
        except Exception:
            continue
        if len(back) == 1 and back[0].stmt == node:
            return candidate
    return None


def _printed(node: ast.Node, stream: type[RawStream]) -> str:
    return str(stream()(node)).strip()


def _deparse(node: ast.Node) -> str | None:
    """SQL of a statement tree that parses back to it, None when pglast cannot print it."""
    for stream in (IndentedStream, RawStream):
        try:
            text = _printed(node, stream)
            back = pglast.parse_sql(text)
        except Exception:
            continue
        if len(back) == 1 and back[0].stmt == node:
            return text
    return None


def _cut_qualifications(text: str, own: frozenset[str], literals: dict[str, str]) -> str:
    """``text`` without ``public.`` before the dump's objects, with ``literals`` replaced."""
    tokens = scan(text)
    out: list[str] = []
    pos = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        raw = text[tok.start : tok.end + 1]
        if (
            tok.name == "IDENT"
            and _ident_value(raw) == _source()
            and i + 2 < len(tokens)
            and tokens[i + 1].name == "ASCII_46"
            and not (i > 0 and tokens[i - 1].name == "ASCII_46")
        ):
            after = tokens[i + 2]
            word = text[after.start : after.end + 1]
            named = word if after.name == "Op" else _ident_value(word)
            if (after.name in ("IDENT", "Op") or after.kind != "NO_KEYWORD") and named in own:
                out.append(text[pos : tok.start])
                pos = after.start
                i += 2
                continue
        elif tok.name == "SCONST" and literals:
            value = _literal_value(raw)
            if value is not None and value in literals:
                out.append(text[pos : tok.start])
                out.append(_quote_literal(literals[value], raw))
                pos = tok.end + 1
        i += 1
    out.append(text[pos:])
    return "".join(out)


def _token_residue(text: str, own: frozenset[str]) -> str | None:
    """The first of the dump's objects ``text`` still names as ``public.x`` (identifiers)."""
    tokens = scan(text)
    for i, tok in enumerate(tokens[:-2]):
        if tok.name not in ("IDENT", "UIDENT") or tokens[i + 1].name != "ASCII_46":
            continue
        if i > 0 and tokens[i - 1].name == "ASCII_46":
            continue
        raw = text[tok.start : tok.end + 1]
        value = _literal_ident(raw) if tok.name == "UIDENT" else _ident_value(raw)
        after = tokens[i + 2]
        word = text[after.start : after.end + 1]
        named = word if after.name == "Op" else _ident_value(word)
        if value == _source() and named in own:
            return named
    return None


def _literal_ident(raw: str) -> str:
    """The name a ``U&"..."`` identifier spells (pglast parses it)."""
    try:
        stmt = pglast.parse_sql(f"SELECT 1 AS {raw}")[0].stmt
        return str(stmt.targetList[0].name)  # type: ignore[union-attr]
    except Exception:
        return raw


def _literal_value(raw: str) -> str | None:
    """The value of a string constant token."""
    try:
        stmt = pglast.parse_sql(f"SELECT {raw}")[0].stmt
        value = stmt.targetList[0].val  # type: ignore[union-attr]
        return value.val.sval  # type: ignore[no-any-return]
    except Exception:
        return None


def _quote_literal(value: str, original: str) -> str:
    """``value`` as a string constant, dollar-quoted like ``original`` when it was."""
    tag = _DOLLAR_TAG.match(original)
    if tag is not None:
        candidate = tag.group(0)
        n = 0
        while candidate in value:
            n += 1
            candidate = "$" + "_" * n + "$"
        return f"{candidate}{value}{candidate}"
    return "'" + value.replace("'", "''") + "'"


def _rewrite_body_text(body: str, own: frozenset[str]) -> tuple[str | None, bool]:
    """Remove ``public.`` before the dump's objects from procedural code, outside literals.

    Skips comments and string literals (``'...'``, ``E'...'``,
    dollar-quoted); ``public.x`` of an object the dump does not create is
    kept. Returns the new body (None when that is not safe: a string literal
    naming one of the dump's objects as ``public.x`` — dynamic SQL — or a
    literal or comment that does not end) and whether the code runs dynamic
    SQL (the word ``EXECUTE`` outside literals).
    """
    out: list[str] = []
    dynamic = False
    i, n = 0, len(body)
    while i < n:
        char = body[i]
        if body.startswith("--", i):
            end = body.find("\n", i)
            end = n if end < 0 else end
            out.append(body[i:end])
            i = end
        elif body.startswith("/*", i):
            depth, j = 0, i
            while j < n:
                if body.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif body.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                    if depth == 0:
                        break
                else:
                    j += 1
            if depth:
                return None, dynamic
            out.append(body[i:j])
            i = j
        elif char == "'":
            escapes = i > 0 and body[i - 1] in "eE" and (i < 2 or not _is_word_char(body[i - 2]))
            j = i + 1
            while True:
                if j >= n:
                    return None, dynamic
                if (escapes and body[j] == "\\") or body.startswith("''", j):
                    j += 2
                elif body[j] == "'":
                    break
                else:
                    j += 1
            literal = body[i : j + 1]
            if _names_own(literal[1:-1], own):
                return None, dynamic
            out.append(literal)
            i = j + 1
        elif (
            char == "$"
            and (tag := _DOLLAR_TAG.match(body, i))
            and not (i > 0 and _is_word_char(body[i - 1]))
        ):
            end = body.find(tag.group(0), tag.end())
            if end < 0:
                return None, dynamic
            literal = body[i : end + len(tag.group(0))]
            if _names_own(literal[len(tag.group(0)) : -len(tag.group(0))], own):
                return None, dynamic
            out.append(literal)
            i = end + len(tag.group(0))
        elif char == '"':
            j = i + 1
            while True:
                j = body.find('"', j)
                if j < 0:
                    return None, dynamic
                if body.startswith('""', j):
                    j += 2
                    continue
                break
            word = body[i : j + 1]
            i = j + 1
            i = _after_schema(body, word, i, out, own)
        elif (match := _WORD.match(body, i)) and not (i > 0 and _is_word_char(body[i - 1])):
            word = match.group(0)
            dynamic = dynamic or word.lower() == "execute"
            i = _after_schema(body, word, match.end(), out, own)
        else:
            out.append(char)
            i += 1
    return "".join(out), dynamic


def _after_schema(body: str, word: str, i: int, out: list[str], own: frozenset[str]) -> int:
    """Append ``word`` unless it is ``public`` qualifying one of the dump's objects.

    Returns where to go on reading ``body``.
    """
    if _ident_value(word) == _source() and not _after_dot(out):
        dot = _DOT_AFTER.match(body, i)
        if dot is not None:
            name = _QUOTED_NAME.match(body, dot.end()) or _WORD.match(body, dot.end())
            if name is not None and _ident_value(name.group(0)) in own:
                return dot.end()
    out.append(word)
    return i


def _slots(node: ast.Node) -> tuple[str, ...]:
    """Attribute names of a pglast node."""
    return tuple(getattr(type(node), "__slots__", ()))


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _after_dot(out: list[str]) -> bool:
    """The text written so far ends with ``.`` (then ``public`` is a field, not a schema)."""
    return "".join(out[-3:]).rstrip().endswith(".")
