"""The web app: tenants from the subdomain (``acme.shop.test``, or a host
name registered with ``add_tenant_domain``) or an ``X-Tenant`` header.

Run it: ``DATABASE_URL=postgresql://app@db/shop uvicorn shop.app:app``.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from pgtenancy.fastapi import TenantInfo, Tenants, header, subdomain
from shop.models import Invoice, Plan


class NewInvoice(BaseModel):
    customer: str
    total: Decimal


def create_app(database: str) -> tuple[FastAPI, Tenants]:
    """The app and its :class:`~pgtenancy.fastapi.Tenants` for ``database``
    (the application role's DSN)."""
    tenants = Tenants(
        database,
        resolvers=[subdomain("shop.test"), header("X-Tenant")],
        exclude=("/health", "/docs", "/openapi.json"),
    )
    app = FastAPI(title="shop", lifespan=tenants.lifespan)
    tenants.install(app)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me")
    def me(
        tenant: TenantInfo = Depends(tenants.tenant),
        session: Session = Depends(tenants.session),
    ) -> dict[str, Any]:
        plan = session.get(Plan, tenant.public.get("plan", "free"))
        return {
            "tenant": tenant.slug,
            "plan": plan.name if plan else None,
            "max_invoices": plan.max_invoices if plan else 0,
        }

    @app.get("/invoices")
    def list_invoices(session: Session = Depends(tenants.session)) -> list[dict[str, Any]]:
        rows = session.scalars(select(Invoice).order_by(Invoice.id))
        return [
            {"id": i.id, "customer": i.customer, "total": str(i.total), "closed": i.closed}
            for i in rows
        ]

    @app.post("/invoices", status_code=201)
    async def add_invoice(
        body: NewInvoice,
        tenant: TenantInfo = Depends(tenants.tenant),
        session: AsyncSession = Depends(tenants.async_session),
    ) -> dict[str, Any]:
        plan = await session.get(Plan, tenant.public.get("plan", "free"))
        count = (await session.execute(select(func.count()).select_from(Invoice))).scalar_one()
        if plan is not None and count >= plan.max_invoices:
            raise HTTPException(402, f"plan {plan.name} allows {plan.max_invoices} invoices")
        invoice = Invoice(customer=body.customer, total=body.total)
        session.add(invoice)
        await session.flush()  # the id, before commit expires the object
        new_id = invoice.id
        await session.commit()
        return {"id": new_id}

    return app, tenants


if os.environ.get("DATABASE_URL"):
    app, tenants = create_app(os.environ["DATABASE_URL"])
