"""Turn a single-tenant ``pg_dump --schema-only`` into a tenant migration.

A team that ran its application in ``public`` has a dump in which pg_dump
qualified every name with ``public.``. :func:`import_template` rewrites it
into SQL that, run with ``search_path`` set to a tenant schema (as
:meth:`pgtenancy.Tenancy.add_migration` migrations are), creates the objects
inside that schema:

* statements that do not belong in a tenant schema are dropped: session
  settings of pg_dump's header (``SET ...``, ``SELECT
  pg_catalog.set_config(...)``), extensions, ``CREATE SCHEMA`` and comments
  on schemas, database-level statements and, unless ``keep_acl``, owners and
  privileges (``ALTER ... OWNER TO``, ``GRANT``, ``REVOKE``); psql
  meta-commands (``\\restrict``...) are skipped by
  :func:`pgtenancy.sqlscript.read_script`;
* ``public.`` qualifications are removed from the parse tree (pglast) of
  every other statement, which is then deparsed: relations, types, functions,
  operators, sequence names of identity columns and ``OWNED BY``, and string
  literals cast to ``regclass`` and friends (``nextval('public.x'::regclass)``);
* bodies of ``LANGUAGE sql`` functions are parsed and rewritten the same way;
  PL/pgSQL bodies get a textual rewrite outside string literals and comments,
  and are left alone, with a warning, when ``public`` shows up where that is
  not safe (dynamic SQL in a string, a variable or label called ``public``).

Example::

    result = import_template(Path("app.sql").read_text())
    for warning in result.warnings:
        print("warning:", warning)
    Tenancy(dsn).add_migration("0001", result.sql)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import pglast
from pglast import ast
from pglast.enums import AlterTableType, ObjectType
from pglast.parser import ParseError
from pglast.stream import IndentedStream, RawStream

from pgtenancy.sqlscript import DATABASE_NODES, TRANSACTION_NODES, ScriptError, read_script

__all__ = ["TemplateResult", "import_template"]

SOURCE_SCHEMA: Final = "public"
# Schemas whose qualification is kept without comment.
_SYSTEM_SCHEMAS: Final = frozenset({"pg_catalog", "information_schema", SOURCE_SCHEMA})
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
# Functions whose first argument, a string, names a sequence.
_SEQUENCE_FUNCS: Final = frozenset({"nextval", "currval", "setval"})
# ``public.`` (or ``"public".``) at the start of a name inside a string.
_PUBLIC_PREFIX: Final = re.compile(r'(?i)(?<![\w$."])(?:public|"public")\s*\.\s*')
# Any word ``public``, to spot what the rewrite leaves behind.
_PUBLIC_WORD: Final = re.compile(r'(?i)(?<![\w$])"?public"?(?![\w$])')
_WORD: Final = re.compile(r"[^\W\d]\w*(?:\$\w*)*")
_DOLLAR_TAG: Final = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_DOT_AFTER: Final = re.compile(r"\s*\.\s*")
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
}
_SCHEMA_LEVEL_COMMENTS: Final = (ObjectType.OBJECT_EXTENSION, ObjectType.OBJECT_SCHEMA)
_EXTENSION_NODES: Final = frozenset(
    {"CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt"}
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


@dataclass
class TemplateResult:
    """What :func:`import_template` made of a dump.

    Attributes:
        sql: the tenant migration: ``;``-terminated statements with no
            ``public.`` qualification left, for
            :meth:`pgtenancy.Tenancy.add_migration`.
        dropped: one line per statement or psql meta-command removed,
            ``line N: <text>``.
        warnings: one line per thing left as it was that may not work in a
            tenant schema (a PL/pgSQL body it could not rewrite, a dropped
            extension, a reference to another schema...).
    """

    sql: str
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def import_template(dump_sql: str, *, keep_acl: bool = False) -> TemplateResult:
    """Turn a ``pg_dump --schema-only`` of schema ``public`` into a tenant migration.

    Args:
        dump_sql: the dump, as pg_dump wrote it (plain format).
        keep_acl: keep ``ALTER ... OWNER TO``, ``GRANT`` and ``REVOKE`` on
            the application's objects (rewritten like the rest) instead of
            dropping them; those on schema ``public`` itself are dropped
            either way.

    Returns:
        The migration SQL with what was dropped and what could not be handled.

    Raises:
        ScriptError: the dump does not parse; ``line`` is the 1-based line.
    """
    script = read_script(dump_sql)
    result = TemplateResult(sql="")
    dropped: list[tuple[int, str]] = list(script.skipped)
    parts: list[str] = []
    sql_functions = False
    for statement in script.statements:
        try:
            node = pglast.parse_sql(statement.sql)[0].stmt
        except ParseError as exc:  # pragma: no cover - read_script parsed it already
            raise ScriptError(str(exc.args[0]), statement.line) from exc
        if node is None:  # pragma: no cover - an empty statement
            continue
        reason = _drop_reason(node, keep_acl)
        if reason is not None:
            dropped.append((statement.line, _summary(statement.sql)))
            if reason:
                result.warnings.append(f"line {statement.line}: {reason}")
            continue
        rewriter = _Rewriter(statement.line, result.warnings)
        rewriter.visit(node)
        sql_functions = sql_functions or rewriter.sql_functions
        text = statement.sql
        if rewriter.changed:
            deparsed = _deparse(node)
            if deparsed is None:
                result.warnings.append(
                    f"line {statement.line}: could not deparse the rewritten statement;"
                    " it is kept as it was and still names schema public"
                )
            else:
                text = deparsed
        for residue in _residues(node):
            result.warnings.append(
                f"line {statement.line}: {type(node).__name__} still references schema"
                f" public ({residue})"
            )
        parts.append(f"{text};\n\n")
    body = "".join(parts)
    if sql_functions and body:
        body = _BODIES_OFF + body + _BODIES_BACK
    result.sql = body
    result.dropped = [f"line {line}: {text}" for line, text in sorted(dropped)]
    return result


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
    if kind == "CreateSchemaStmt":
        if _is_public_schema(node):
            return ""
        name = getattr(node, "schemaname", None)
        return f"CREATE SCHEMA {name} dropped: a tenant migration creates objects in its schema"
    if kind in _DATABASE_WIDE:
        return f"{kind} dropped: it acts on the whole database, not on one tenant"
    if kind == "CreateExtensionStmt":
        name = getattr(node, "extname", "?")
        return f"extension {name} dropped: install it in the database once, not per tenant"
    if kind in _EXTENSION_NODES:
        return ""
    if isinstance(node, ast.CommentStmt) and node.objtype in _SCHEMA_LEVEL_COMMENTS:
        return ""
    if kind == "SelectStmt" and _is_set_config(node):
        return ""
    if kind in _ACL_NODES or (kind == "AlterTableStmt" and _is_owner_change(node)):
        if _on_schema(node):
            return ""
        return None if keep_acl else ""
    return None


def _is_public_schema(node: ast.Node) -> bool:
    return getattr(node, "schemaname", None) == SOURCE_SCHEMA


def _is_set_config(node: ast.Node) -> bool:
    """``SELECT pg_catalog.set_config(...)`` and nothing else."""
    if not isinstance(node, ast.SelectStmt) or node.fromClause or not node.targetList:
        return False
    for target in node.targetList:
        value = getattr(target, "val", None)
        if not isinstance(value, ast.FuncCall):
            return False
        names = _names(value.funcname) or []
        if names[-1:] != ["set_config"]:
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
        return node.objtype == ObjectType.OBJECT_SCHEMA
    if isinstance(node, ast.AlterOwnerStmt):
        return node.objectType == ObjectType.OBJECT_SCHEMA
    return False


def _strip_in_text(text: str) -> str:
    """Remove ``public.`` qualifications inside a string naming an object."""
    return _PUBLIC_PREFIX.sub("", text)


class _Rewriter:
    """Remove ``public`` qualifications from one statement's tree, in place.

    Attributes:
        changed: something was rewritten (the statement must be deparsed).
        sql_functions: the statement creates a LANGUAGE sql function with a
            string body (its body is checked at creation time).
    """

    def __init__(self, line: int, warnings: list[str]) -> None:
        self.line = line
        self.warnings = warnings
        self.changed = False
        self.sql_functions = False
        self._foreign: set[str] = set()

    def _warn(self, message: str) -> None:
        self.warnings.append(f"line {self.line}: {message}")

    def _unqualified(self, value: object, minimum: int = 2) -> object:
        """``value`` without a leading ``public`` when it is a qualified name."""
        names = _names(value)
        if names is None or len(names) < minimum:
            return value
        if names[0] == SOURCE_SCHEMA:
            self.changed = True
            assert isinstance(value, tuple)
            return value[1:]
        return value

    def _note_schema(self, schema: str | None) -> None:
        if schema is not None and schema not in _SYSTEM_SCHEMAS and schema not in self._foreign:
            self._foreign.add(schema)
            self._warn(f"references schema {schema}, left as it is (shared by every tenant)")

    def visit(self, node: object) -> None:
        """Rewrite ``node`` and everything below it."""
        if isinstance(node, tuple):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, ast.Node):
            return
        kind = type(node).__name__
        if isinstance(node, ast.RangeVar):
            if node.schemaname == SOURCE_SCHEMA:
                node.schemaname = None
                self.changed = True
            self._note_schema(node.schemaname)
        for attr in _NAME_LISTS.get(kind, ()):
            value = getattr(node, attr, None)
            if kind in ("TypeName", "FuncCall", "ObjectWithArgs", "CreateFunctionStmt"):
                names = _names(value)
                # table.column%TYPE is not schema-qualified.
                if names is not None and len(names) >= 2 and not getattr(node, "pct_type", False):
                    self._note_schema(names[0])
            setattr(node, attr, self._unqualified(value))
        for attr in _NAME_LIST_LISTS.get(kind, ()):
            value = getattr(node, attr, None)
            if isinstance(value, tuple):
                setattr(node, attr, tuple(self._unqualified(item) for item in value))
        if isinstance(node, ast.ColumnRef):
            # schema.table.column: only with three parts or more.
            setattr(node, "fields", self._unqualified(node.fields, minimum=3))  # noqa: B010
        elif isinstance(node, ast.DefElem) and node.defname in _NAME_OPTIONS:
            setattr(node, "arg", self._unqualified(node.arg))  # noqa: B010
        elif isinstance(node, ast.TypeCast):
            self._reg_literal(node)
        elif isinstance(node, ast.FuncCall):
            self._sequence_literal(node)
        elif isinstance(node, ast.CreateFunctionStmt):
            self._function(node)
        for attr in _slots(node):
            self.visit(getattr(node, attr, None))

    def _rewrite_const(self, const: object) -> None:
        if isinstance(const, ast.A_Const) and isinstance(const.val, ast.String):
            new = _strip_in_text(const.val.sval or "")
            if new != const.val.sval:
                const.val = ast.String(sval=new)
                self.changed = True

    def _reg_literal(self, node: ast.TypeCast) -> None:
        """``'public.x'::regclass`` (and regtype, regproc...) to ``'x'::regclass``."""
        names = _names(node.typeName.names if node.typeName else None) or []
        if names and names[-1] in _REG_TYPES:
            self._rewrite_const(node.arg)

    def _sequence_literal(self, node: ast.FuncCall) -> None:
        """``nextval('public.x')`` without a cast, as hand-written SQL has it."""
        names = _names(node.funcname) or []
        if names and names[-1] in _SEQUENCE_FUNCS and node.args:
            self._rewrite_const(node.args[0])

    def _function(self, node: ast.CreateFunctionStmt) -> None:
        """Rewrite the body of a function or procedure according to its language."""
        name = ".".join(n for n in (_names(node.funcname) or ["?"]) if n != SOURCE_SCHEMA)
        language = "sql"
        body_option: ast.DefElem | None = None
        for option in node.options or ():
            if not isinstance(option, ast.DefElem):
                continue
            if option.defname == "language" and isinstance(option.arg, ast.String):
                language = (option.arg.sval or "").lower()
            elif option.defname == "as":
                body_option = option
            elif option.defname == "set" and isinstance(option.arg, ast.VariableSetStmt):
                setting = option.arg
                values = [
                    a.val.sval or ""
                    for a in setting.args or ()
                    if isinstance(a, ast.A_Const) and isinstance(a.val, ast.String)
                ]
                if setting.name == "search_path" and any(_PUBLIC_WORD.search(v) for v in values):
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
        if language == "sql":
            self.sql_functions = True
            new = self._sql_body(body)
            if new is None:
                new = _rewrite_body_text(body)
        elif language == "plpgsql":
            new = _rewrite_body_text(body)
            if new is not None and new != body and not _plpgsql_parses(node, body_option, new):
                new = None
        elif _PUBLIC_WORD.search(body):
            self._warn(
                f"function {name}: body in language {language} mentions public and is left as it is"
            )
            return
        else:
            return
        if new is None:
            self._warn(
                f"function {name}: {language} body mentions public where it cannot be rewritten"
                " safely (dynamic SQL in a string, or public used as a name); left as it is"
            )
        elif new != body:
            body_option.arg = (ast.String(sval=new),)
            self.changed = True

    def _sql_body(self, body: str) -> str | None:
        """A LANGUAGE sql body parsed and rewritten; None when pglast cannot parse it."""
        try:
            statements = pglast.parse_sql(body)
        except ParseError:
            return None
        inner = _Rewriter(self.line, self.warnings)
        inner._foreign = self._foreign
        for raw in statements:
            inner.visit(raw.stmt)
        if not inner.changed:
            return body
        texts = [_deparse(raw.stmt) if raw.stmt else "" for raw in statements]
        if any(text is None for text in texts):
            return None
        return "\n" + ";\n".join(t for t in texts if t is not None) + "\n"


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


def _deparse(node: ast.Node) -> str | None:
    """SQL of a statement tree, None when pglast cannot print it back."""
    for stream in (IndentedStream(), RawStream()):
        try:
            text = str(stream(node)).strip()
            pglast.parse_sql(text)
        except Exception:
            continue
        return text
    return None


def _residues(node: object) -> list[str]:
    """Places where ``public`` still qualifies a name in a rewritten tree."""
    found: list[str] = []
    if isinstance(node, tuple):
        for item in node:
            found.extend(_residues(item))
        return found
    if not isinstance(node, ast.Node) or isinstance(node, ast.A_Const):
        return found
    if isinstance(node, ast.RangeVar) and node.schemaname == SOURCE_SCHEMA:
        found.append(f"{node.schemaname}.{node.relname}")
    for attr in _NAME_LISTS.get(type(node).__name__, ()):
        names = _names(getattr(node, attr, None))
        if names and len(names) >= 2 and names[0] == SOURCE_SCHEMA:
            found.append(".".join(names))
    for slot in _slots(node):
        found.extend(_residues(getattr(node, slot, None)))
    return found


def _rewrite_body_text(body: str) -> str | None:
    """Remove ``public.`` qualifications from procedural code, outside literals.

    Skips comments, string literals (``'...'``, ``E'...'``, dollar-quoted)
    and quoted identifiers other than ``"public"``. Returns None when that is
    not safe: ``public.`` inside a string literal (dynamic SQL), the word
    ``public`` used other than as a qualification, or a literal or comment
    that does not end.
    """
    out: list[str] = []
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
                return None
            out.append(body[i:j])
            i = j
        elif char == "'":
            escapes = i > 0 and body[i - 1] in "eE" and (i < 2 or not _is_word_char(body[i - 2]))
            j = i + 1
            while True:
                if j >= n:
                    return None
                if (escapes and body[j] == "\\") or body.startswith("''", j):
                    j += 2
                elif body[j] == "'":
                    break
                else:
                    j += 1
            literal = body[i : j + 1]
            if _PUBLIC_PREFIX.search(literal[1:-1]):
                return None
            out.append(literal)
            i = j + 1
        elif (
            char == "$"
            and (tag := _DOLLAR_TAG.match(body, i))
            and not (i > 0 and _is_word_char(body[i - 1]))
        ):
            end = body.find(tag.group(0), tag.end())
            if end < 0:
                return None
            literal = body[i : end + len(tag.group(0))]
            if _PUBLIC_PREFIX.search(literal[len(tag.group(0)) : -len(tag.group(0))]):
                return None
            out.append(literal)
            i = end + len(tag.group(0))
        elif char == '"':
            j = i + 1
            while True:
                j = body.find('"', j)
                if j < 0:
                    return None
                if body.startswith('""', j):
                    j += 2
                    continue
                break
            word = body[i : j + 1]
            i = j + 1
            if word == '"public"':
                dot = _DOT_AFTER.match(body, i)
                if dot is None or _after_dot(out):
                    return None
                i = dot.end()
            else:
                out.append(word)
        elif (match := _WORD.match(body, i)) and not (i > 0 and _is_word_char(body[i - 1])):
            word = match.group(0)
            i = match.end()
            if word.lower() == SOURCE_SCHEMA:
                dot = _DOT_AFTER.match(body, i)
                if dot is None or _after_dot(out):
                    return None
                i = dot.end()
            else:
                out.append(word)
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _slots(node: ast.Node) -> tuple[str, ...]:
    """Attribute names of a pglast node."""
    return tuple(getattr(type(node), "__slots__", ()))


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _after_dot(out: list[str]) -> bool:
    """The text written so far ends with ``.`` (then ``public`` is a field, not a schema)."""
    return "".join(out[-3:]).rstrip().endswith(".")
