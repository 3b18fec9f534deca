"""Functions that run with the caller's search_path name nothing through it.

A kit function without a pinned ``search_path`` (``enter_tenant`` must set the
caller's, the strict guards run inside RLS policies) resolves every
unqualified type and relation name of its body through the caller's
``search_path`` when the body is parsed, and types and relations are looked up
in ``pg_temp`` too (first, unless the path names it elsewhere). An attack run
(issue 13) created a temporary domain named ``text`` whose CHECK copied every
value into a session setting: the next request on the pooled connection
compiled ``active_tenant_id()`` with it, and handed its entry token to the
attacker. Operators and functions are not looked up in ``pg_temp``, but in
any schema on the path the caller can create in (``public`` before
PostgreSQL 15). So in these bodies every relation, type, function and
operator must be schema-qualified; SQL-standard type keywords (``boolean``,
``integer``...) qualify themselves (the grammar turns them into
``pg_catalog`` names). Source: PostgreSQL docs, "Writing SECURITY DEFINER
Functions Safely" and the search_path section of "Schemas" (5.9.3).

The check is static (pglast parses the SQL and PL/pgSQL bodies as the server
does) and covers every function of schema tenancy whose ``proconfig`` does
not set ``search_path``, read from a real install; the attack itself is
replayed in tests/integration/test_strict_attacks.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pglast
import pytest
from pglast import ast
from pglast.visitors import Visitor

SQL = Callable[..., list[tuple[Any, ...]]]

#: PL/pgSQL DECLARE types the SQL grammar qualifies itself (pg_catalog).
KEYWORD_TYPES = re.compile(
    r"(boolean|bool|integer|int|bigint|smallint|real|double precision|numeric|"
    r"timestamptz|timestamp( with time zone)?|interval|varchar|character varying)\b",
    re.I,
)


class CteNames(Visitor):
    """Collects the names of a statement's common table expressions."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def visit_CommonTableExpr(self, ancestors: Any, node: ast.CommonTableExpr) -> None:
        if node.ctename is not None:
            self.names.add(node.ctename)


class Unqualified(Visitor):
    """Collects the unqualified names of one statement."""

    def __init__(self, ctes: set[str]) -> None:
        super().__init__()
        self.found: list[str] = []
        self.ctes = ctes

    def visit_RangeVar(self, ancestors: Any, node: ast.RangeVar) -> None:
        if node.schemaname is None and node.relname not in self.ctes:
            self.found.append(f"relation {node.relname}")

    def visit_TypeName(self, ancestors: Any, node: ast.TypeName) -> None:
        names = [n.sval for n in node.names or ()]
        if len(names) < 2:
            self.found.append(f"type {'.'.join(names)}")

    def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> None:
        names = [n.sval for n in node.funcname or ()]
        if len(names) < 2:
            self.found.append(f"function {names[0]}")

    def visit_A_Expr(self, ancestors: Any, node: ast.A_Expr) -> None:
        names = [n.sval for n in node.name or ()]
        if len(names) < 2:
            self.found.append(f"operator {''.join(names)}")


def unqualified(statement: str) -> list[str]:
    """Unqualified names in one SQL statement (CTE names excepted)."""
    found: list[str] = []
    for raw in pglast.parse_sql(statement):
        ctes = CteNames()
        ctes(raw)
        visitor = Unqualified(ctes.names)
        visitor(raw)
        found.extend(visitor.found)
    return found


def plpgsql_statements(node: Any) -> Iterator[str]:
    """Every SQL text of a parsed PL/pgSQL body, as a statement pglast can parse."""
    if isinstance(node, dict):
        expr = node.get("PLpgSQL_expr")
        if expr is not None:
            query = expr["query"]
            mode = expr.get("parseMode", 0)
            if mode == 0:
                yield query
            elif ":=" in query and mode >= 3:
                yield "SELECT " + query.split(":=", 1)[1]
            else:
                yield "SELECT " + query
        for value in node.values():
            yield from plpgsql_statements(value)
    elif isinstance(node, list):
        for value in node:
            yield from plpgsql_statements(value)


def declared_types(body: str) -> Iterator[str]:
    """The type of each DECLARE line of a PL/pgSQL body (first block only)."""
    match = re.search(r"\bDECLARE\b(.*?)\bBEGIN\b", body, re.S | re.I)
    if match is None:
        return
    for line in match.group(1).split(";"):
        line = re.sub(r"--[^\n]*", "", line).strip()
        if line:
            parts = line.split(None, 1)
            if len(parts) == 2 and not re.match(r"ALIAS\s+FOR\b", parts[1], re.I):
                yield re.split(r"\s*(:=|DEFAULT\b|NOT NULL\b)", parts[1], flags=re.I)[0].strip()


def findings(
    name: str, language: str, source: str, returns: str | None = "void", arguments: str = ""
) -> list[str]:
    """What ``tenancy.name``'s body resolves through the caller's search_path.

    ``returns`` is the function's result type (``pg_get_function_result``;
    None for a procedure): the PL/pgSQL parser checks RETURN statements
    against it. ``arguments`` its argument list (``pg_get_function_arguments``):
    a body may name them by position (``ALIAS FOR $1``).
    """
    if language == "sql":
        return [f"{name}: {f}" for f in unqualified(source)]
    head = f"FUNCTION f({arguments}) RETURNS {returns}" if returns else f"PROCEDURE f({arguments})"
    create = f"CREATE {head} LANGUAGE plpgsql AS $pgt${source}$pgt$"
    tree = json.loads(pglast.parser.parse_plpgsql_json(create))
    found = [f"{name}: {f}" for s in plpgsql_statements(tree) for f in unqualified(s)]
    for typ in declared_types(source):
        if "." not in typ.split("[")[0] and not KEYWORD_TYPES.fullmatch(typ.split("[")[0]):
            found.append(f"{name}: declared type {typ}")
    return found


def test_the_check_finds_what_the_attack_used() -> None:
    """The checker itself: an unqualified DECLARE type, cast, table, function
    and operator are each found; their qualified forms are not."""
    body = """
DECLARE
    v_token text;
    v_ok    boolean;
BEGIN
    v_ok := v_token = 'x' AND length(v_token::uuid::text) > 0;
    PERFORM 1 FROM tenants;
    RETURN v_ok;
END
"""
    assert sorted(findings("f", "plpgsql", body, "boolean")) == sorted(
        [
            "f: declared type text",
            "f: operator =",
            "f: operator >",
            "f: function length",
            "f: type uuid",
            "f: type text",
            "f: relation tenants",
        ]
    )
    safe = """
DECLARE
    v_token pg_catalog.text;
    v_ok    boolean;
BEGIN
    v_ok := v_token OPERATOR(pg_catalog.=) 'x'
            AND pg_catalog.length(v_token::pg_catalog.uuid::pg_catalog.text) OPERATOR(pg_catalog.>) 0;
    WITH t AS (SELECT 1) SELECT 1 INTO v_ok FROM tenancy.tenants, t;
END
"""
    assert findings("f", "plpgsql", safe) == []


@pytest.mark.parametrize("accelerator", ["as installed", "off"])
def test_functions_without_a_pinned_search_path_qualify_every_name(
    sql: SQL, accelerator: str
) -> None:
    """Every unpinned function and procedure of the kit, with the accelerator as
    installed and off (then enter_tenant, active_tenant_id and the procedure
    tenancy.enter are their PL/pgSQL, as on a server without the library)."""
    if accelerator == "off":
        sql("SELECT tenancy.set_accelerator(false)")
    rows = sql(
        "SELECT p.proname, l.lanname, p.prosrc, pg_get_function_result(p.oid),"
        " pg_get_function_arguments(p.oid) FROM pg_proc AS p "
        "JOIN pg_language AS l ON l.oid = p.prolang "
        "WHERE p.pronamespace = 'tenancy'::regnamespace AND l.lanname IN ('sql', 'plpgsql') "
        "  AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c "
        "                  WHERE c LIKE 'search\\_path=%%') ORDER BY 1"
    )
    # The body active_tenant_id() gets while strict entry is on.
    rows.append(
        (
            "active_tenant_id (strict)",
            "plpgsql",
            sql("SELECT tenancy.strict_active_tenant_body()")[0][0],
            "uuid",
        )
    )
    names = {r[0] for r in rows}
    # The functions this is about must be among those checked.
    assert {"enter_tenant", "active_tenant_id", "enter_tenant_token"} <= names
    if accelerator == "off":
        assert "enter" in names
    found = [f for row in rows for f in findings(*row)]
    assert found == [], "\n".join(found)
