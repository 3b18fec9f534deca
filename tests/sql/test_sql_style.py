"""Contracts of the installed SQL: every function documented, every SECURITY
DEFINER function pinned to a safe search_path and not executable by PUBLIC
unless meant to be."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SQL = Callable[..., list[tuple[Any, ...]]]


def test_every_function_has_a_comment(sql: SQL) -> None:
    missing = sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'tenancy' AND obj_description(p.oid, 'pg_proc') IS NULL"
    )
    assert missing == []


def test_security_definer_functions_pin_search_path(sql: SQL) -> None:
    rows = sql(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'tenancy' AND p.prosecdef"
    )
    assert len(rows) >= 10
    for name, config in rows:
        assert config == ["search_path=pg_catalog, pg_temp"], name


def test_functions_that_change_tenants_are_not_granted_to_public(sql: SQL) -> None:
    rows = sql(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'tenancy' AND has_function_privilege('public', p.oid, 'EXECUTE') "
        "  AND (p.prosecdef OR p.prorettype = 'trigger'::regtype) "
        "  AND p.proname NOT IN ('latest_migration')"
    )
    assert rows == []
