"""Running grant_app_role again in strict mode (issue 13, attack run 4):
strict mode takes back from application roles what row-level security cannot
guard (SELECT on materialized views, foreign tables, sequence values), but a
second grant_app_role for a role already recorded granted every tenant
schema's tables and sequences again and skipped the strict re-guard (its
trigger fired on INSERT only, and the role's row was there): a transaction
entered with acme's token read globex's materialized view. Real server, the
application role as the attacker."""

from __future__ import annotations

import secrets

import psycopg

from helpers import as_role
from pgtenancy import Tenancy, sign_tenant_token

MIGRATION = (
    "CREATE TABLE invoice (id int PRIMARY KEY, note text);"
    " CREATE SEQUENCE counter;"
    " CREATE MATERIALIZED VIEW invoice_notes AS SELECT id, note FROM invoice;"
)


def attempts(dsn: str, role: str, key: bytes) -> dict[str, str]:
    """As ``role`` in a transaction entered with acme's token: what each read
    of globex's objects gives (its rows, or the SQLSTATE refusing it)."""
    seen: dict[str, str] = {}
    with psycopg.connect(as_role(dsn, role), autocommit=True) as conn:
        for name, query in (
            ("materialized view", "SELECT note FROM tenant_globex.invoice_notes"),
            ("sequence value", "SELECT last_value FROM tenant_globex.counter"),
            ("setval", "SELECT setval('tenant_globex.counter', 42)"),
            ("table", "SELECT note FROM tenant_globex.invoice"),
        ):
            conn.execute("BEGIN")
            conn.execute(
                "SELECT tenancy.enter_tenant_token(%s)",
                (sign_tenant_token(key, "acme", 60, key_name="k1"),),
            )
            try:
                seen[name] = repr(conn.execute(query).fetchall())
            except psycopg.Error as exc:
                seen[name] = str(exc.sqlstate)
            conn.execute("ROLLBACK")
    return seen


def test_grant_app_role_again_keeps_strict_mode_s_revocations(
    tenancy: Tenancy, dsn: str, app_role: str
) -> None:
    role = app_role  # granted by the fixture; granted again below
    tenancy.add_migration("0001", MIGRATION)
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    key = secrets.token_bytes(32)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant_globex.invoice VALUES (1, 'SECRET-GLOBEX')")
        conn.execute("REFRESH MATERIALIZED VIEW tenant_globex.invoice_notes")
        conn.execute("SELECT nextval('tenant_globex.counter')")
        conn.execute("SELECT tenancy.grant_app_role(role => %s)", (role,))
        conn.execute("SELECT tenancy.add_entry_key(name => 'k1', key => %s)", (key,))
        conn.execute("SELECT tenancy.set_strict_entry(true)")
    refused = {
        "materialized view": "42501",
        "sequence value": "42501",
        "setval": "42501",
        "table": "[]",
    }
    assert attempts(dsn, role, key) == refused
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.grant_app_role(role => %s)", (role,))
    assert attempts(dsn, role, key) == refused
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Twice in one transaction, and the doctor finds nothing to report.
        with conn.transaction():
            conn.execute("SELECT tenancy.grant_app_role(role => %s)", (role,))
            conn.execute("SELECT tenancy.grant_app_role(role => %s)", (role,))
        assert conn.execute(
            "SELECT count(*) FROM tenancy.check_strict() WHERE check_name = 'strict_guard_missing'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT last_value FROM tenant_globex.counter").fetchone() == (1,)
    assert attempts(dsn, role, key) == refused


def test_grant_app_role_again_takes_no_lock_on_views_already_guarded(
    tenancy: Tenancy, dsn: str, app_role: str
) -> None:
    """Review: the strict re-guard that grant_app_role runs at commit set
    security_invoker on every view of every tenant again, an ACCESS EXCLUSIVE
    lock each (40 tenants with a view: 40 such locks per grant). Views
    already guarded are left alone."""
    tenancy.add_migration(
        "0001",
        "CREATE TABLE invoice (id int PRIMARY KEY, note text);"
        " CREATE VIEW invoice_notes AS SELECT id, note FROM invoice;",
    )
    for slug in ("acme", "globex", "initech"):
        tenancy.create_tenant(slug)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tenancy.add_entry_key(name => 'k1', key => %s)", (secrets.token_bytes(32),)
        )
        conn.execute("SELECT tenancy.set_strict_entry(true)")
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname = 'invoice_notes'"
            " AND 'security_invoker=true' = ANY (reloptions)"
        ).fetchone() == (3,)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.grant_app_role(role => %s)", (app_role,))
        # The deferred re-guard runs at commit: run it now, in this transaction.
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        locked = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE l.pid = pg_backend_pid() AND c.relname = 'invoice_notes'"
            " AND l.mode = 'AccessExclusiveLock'"
        ).fetchone()
        conn.rollback()
    assert locked == (0,)
