"""The isolation doctor: what could let one tenant see another's data.

:func:`check_isolation` runs ``tenancy.check_isolation()`` as the connecting
role (connect as the application's role: most faults are properties of the
role that queries) and returns its findings. ``pgtenancy doctor`` prints them
and exits with status 1 when any is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pgtenancy.database import Connectable, Database

#: How bad a finding is: ``error`` breaks isolation, ``warning`` degrades it,
#: ``info`` says what a stronger setting would close (strict entry off).
Severity = Literal["error", "warning", "info"]

#: Severity of a finding that breaks isolation; ``warning`` findings degrade it.
ERROR: Severity = "error"


@dataclass(frozen=True)
class Finding:
    """One finding of the doctor.

    Attributes:
        severity: ``error`` (isolation is broken), ``warning`` or ``info``.
        check: the check's name, e.g. ``rls_not_forced``.
        object: what it is about (role, table, tenant slug, schema, channel).
        message: what is wrong.
        fix: how to fix it (often a SQL statement).
    """

    severity: Severity
    check: str
    object: str
    message: str
    fix: str


def check_isolation(database: Connectable) -> list[Finding]:
    """Run every isolation check as the connecting role.

    Args:
        database: DSN string, psycopg connection or pool, connection factory,
            or SQLAlchemy engine (see :class:`pgtenancy.database.Database`).

    Returns:
        The findings: errors, then warnings, then info.

    Raises:
        pgtenancy.errors.NotInstalled: the SQL core is missing.
    """
    rows = Database(database).rows("check_isolation")
    findings = [
        Finding(
            str(r["severity"]),  # type: ignore[arg-type]  # the SQL returns the three values
            str(r["check_name"]),
            str(r["object"]),
            str(r["message"]),
            str(r["fix"]),
        )
        for r in rows
    ]
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: (order.get(f.severity, 1), f.check, f.object))
