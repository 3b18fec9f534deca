"""Background jobs over all tenants: ``pgtenancy each --call shop.jobs:close_month``,
or :func:`close_month_everywhere` from a scheduler."""

from __future__ import annotations

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from pgtenancy.each import EachReport, for_each_tenant
from shop.models import Invoice


def close_month(session: Session) -> int:
    """Close the open invoices of the current tenant; how many were closed."""
    result = session.execute(update(Invoice).where(Invoice.closed.is_(False)).values(closed=True))
    return int(result.rowcount)  # type: ignore[attr-defined]


def close_month_everywhere(engine: Engine, jobs: int = 4) -> EachReport:
    """:func:`close_month` in every active tenant, ``jobs`` at a time."""
    return for_each_tenant(engine, close_month, jobs=jobs)
