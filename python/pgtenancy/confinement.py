"""Confinement of the statements of no-transaction migrations.

Transactional tenant migrations are confined by the database itself (they run
as the migrator role, behind the event-trigger fence: see
``sql/003_confinement.sql``). A migration marked ``-- pgtenancy:
no-transaction`` cannot run inside a function, so the fleet runner applies it
statement by statement on its own connection; each statement must then be one
of the few kinds that need to run outside a transaction, and name its objects
unqualified, so that with ``search_path`` set to the tenant schema alone it can
only reach that schema. The event-trigger fence checks the objects as well.
"""

from __future__ import annotations

from pglast import ast, parse_sql
from pglast.enums import ObjectType

from pgtenancy.errors import UnsafeMigration
from pgtenancy.sqlscript import statement_name

#: What a no-transaction migration may contain (PostgreSQL docs: the commands
#: that "cannot be executed inside a transaction block" a tenant needs).
#: Such statements run as the kit's owner (no function can hold them), so none
#: may run code of the tenant's: indexes are of plain columns, without a
#: predicate; ANALYZE and REINDEX (which evaluate index expressions as the
#: table owner) belong in transactional migrations, where they run as the
#: migrator.
OUTSIDE_TRANSACTION_KINDS = (
    "CREATE INDEX CONCURRENTLY (plain columns, no WHERE)",
    "DROP INDEX CONCURRENTLY",
    "VACUUM (without ANALYZE)",
    "ALTER TYPE ... ADD VALUE",
)


def _qualified(names: object) -> bool:
    return isinstance(names, tuple | list) and len(names) > 1


def check_outside_transaction_statement(statement: str) -> None:
    """Refuse a statement a no-transaction tenant migration may not run.

    Args:
        statement: one SQL statement (as split by :mod:`pgtenancy.sqlscript`).

    Raises:
        UnsafeMigration: (PT017) the statement is not one of
            :data:`OUTSIDE_TRANSACTION_KINDS`, or it names a schema.
    """
    try:
        parsed = parse_sql(statement)
    except Exception as exc:  # pglast.parser.ParseError
        raise UnsafeMigration(f"unsafe migration: cannot parse {statement!r}: {exc}") from exc
    for raw in parsed:
        check_outside_transaction_node(raw.stmt, statement)


def check_outside_transaction_node(node: ast.Node | None, statement: str) -> None:
    """:func:`check_outside_transaction_statement` of a statement parsed already
    (its tree from :func:`pgtenancy.sqlscript.read_script`: no second parse).

    Args:
        node: the statement's pglast tree (None: an empty statement).
        statement: its text, quoted in the message.

    Raises:
        UnsafeMigration: (PT017) as :func:`check_outside_transaction_statement`.
    """
    reason = "an empty statement" if node is None else _outside_reason(node)
    if reason is not None:
        raise UnsafeMigration(
            f"unsafe migration: {reason}: {statement.strip()[:200]}",
            hint="A no-transaction migration may hold only "
            + ", ".join(OUTSIDE_TRANSACTION_KINDS)
            + ", on unqualified names of the tenant schema.",
        )


def _outside_reason(node: ast.Node) -> str | None:
    if isinstance(node, ast.IndexStmt):
        if not node.concurrent:
            return "CREATE INDEX without CONCURRENTLY belongs in a transactional migration"
        if node.relation is not None and node.relation.schemaname:
            return f"the index names schema {node.relation.schemaname}"
        params = [*(node.indexParams or ()), *(node.indexIncludingParams or ())]
        if node.whereClause is not None or any(getattr(p, "expr", None) for p in params):
            return (
                "an expression or partial index would run the tenant's code as the owner:"
                " create it in a transactional migration"
            )
        if any(getattr(p, "opclass", None) or getattr(p, "collation", None) for p in params):
            return "operator classes and collations: create the index in a transactional migration"
        return None
    if isinstance(node, ast.DropStmt):
        if node.removeType != ObjectType.OBJECT_INDEX or not node.concurrent:
            return "only DROP INDEX CONCURRENTLY may run outside a transaction"
        if any(_qualified(obj) for obj in node.objects or ()):
            return "the index is schema-qualified"
        return None
    if isinstance(node, ast.ReindexStmt):
        return (
            "REINDEX evaluates index expressions as the table owner: run it in a"
            " transactional migration (as the migrator)"
        )
    if isinstance(node, ast.VacuumStmt):
        analyze = not node.is_vacuumcmd or any(
            isinstance(o, ast.DefElem) and o.defname == "analyze" for o in node.options or ()
        )
        if analyze:
            return (
                "ANALYZE evaluates index expressions as the table owner: run it in a"
                " transactional migration (as the migrator)"
            )
        for rel in node.rels or ():
            relation = getattr(rel, "relation", None)
            if relation is None:
                continue
            if relation.schemaname:
                return f"VACUUM/ANALYZE names schema {relation.schemaname}"
        if not node.rels:
            return "VACUUM/ANALYZE of the whole database is not a tenant's: name its tables"
        return None
    if isinstance(node, ast.AlterEnumStmt):
        if _qualified(node.typeName):
            return "the type is schema-qualified"
        return None
    return f"{statement_name(node)} may not run outside a transaction in a tenant migration"
