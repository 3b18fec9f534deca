"""Listener receivers: ``pgtenancy listen --consumer shop --handlers shop.handlers``.

A new tenant gets a welcome invoice, written in the tenant by the listener
process (``DATABASE_URL``: a role granted with ``grant_app_role``)."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, create_engine

from pgtenancy import tenant_session
from pgtenancy.signals import receiver, tenant_created
from shop.models import Invoice

_engine: Engine | None = None


def engine() -> Engine:
    """The handlers' engine on ``SHOP_APP_DATABASE_URL`` (else ``DATABASE_URL``)."""
    global _engine
    if _engine is None:
        import psycopg

        url = os.environ.get("SHOP_APP_DATABASE_URL") or os.environ["DATABASE_URL"]
        _engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    return _engine


@receiver(tenant_created, dispatch_uid="shop.welcome_invoice")
def welcome_invoice(sender: str, **kwargs: Any) -> None:
    """Give the new tenant ``sender`` a zero welcome invoice (idempotent)."""
    with tenant_session(engine(), sender) as session:
        if session.get(Invoice, 1) is None:
            session.add(Invoice(id=1, customer="welcome", total=Decimal("0.00")))
            session.commit()
