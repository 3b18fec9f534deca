"""ORM models: ``Invoice`` lives in every tenant schema (no schema named, so
the tenant's search_path finds it); ``Plan`` is one shared table in public."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Boolean, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    """An invoice of the current tenant (table ``<tenant schema>.invoice``)."""

    __tablename__ = "invoice"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(200))
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    closed: Mapped[bool] = mapped_column(Boolean, default=False)


class Plan(Base):
    """Shared reference data (``public.plan``): the same rows for every tenant."""

    __tablename__ = "plan"
    __table_args__ = {"schema": "public"}  # noqa: RUF012

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    max_invoices: Mapped[int]
