"""The isolation doctor: what could let one tenant see another's data.

:func:`check_isolation` runs ``tenancy.check_isolation()`` as the connecting
role (connect as the application's role: most faults are properties of the
role that queries) and returns its findings. ``pgtenancy doctor`` prints them
and exits with status 1 when any is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from pgtenancy.admin import engine_from_dsn
from pgtenancy.errors import raise_translated
from pgtenancy.queries import QUERIES

#: Severity of a finding that breaks isolation; ``warning`` findings degrade it.
ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One finding of the doctor.

    Attributes:
        severity: ``error`` (isolation is broken) or ``warning``.
        check: the check's name, e.g. ``rls_not_forced``.
        object: what it is about (role, table, tenant slug, schema, channel).
        message: what is wrong.
        fix: how to fix it (often a SQL statement).
    """

    severity: str
    check: str
    object: str
    message: str
    fix: str


def check_isolation(engine_or_dsn: Engine | str) -> list[Finding]:
    """Run every isolation check as the connecting role.

    Args:
        engine_or_dsn: SQLAlchemy engine (psycopg driver) or DSN string.

    Returns:
        The findings, errors first.

    Raises:
        pgtenancy.errors.NotInstalled: the SQL core is missing.
    """
    from sqlalchemy.exc import DBAPIError

    engine = engine_from_dsn(engine_or_dsn) if isinstance(engine_or_dsn, str) else engine_or_dsn
    try:
        with engine.begin() as conn:
            rows = conn.exec_driver_sql(QUERIES["check_isolation"]).all()
    except DBAPIError as exc:
        raise_translated(exc)
    findings = [Finding(*(str(v) for v in row)) for row in rows]
    return sorted(findings, key=lambda f: (f.severity != ERROR, f.check, f.object))
