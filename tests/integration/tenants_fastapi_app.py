"""A FastAPI app on pgtenancy.fastapi: every resolver, sync and async sessions.

Run by tests/integration/test_fastapi_integration.py through TestClient and
under a real uvicorn (``PGTENANCY_TEST_DSN`` names the database).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from fastapi import Depends, FastAPI, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from pgtenancy import current_tenant
from pgtenancy.fastapi import TenantInfo, Tenants, header, jwt_claim, path_prefix, subdomain

SECRET = b"test-secret"
QUERY = "SELECT tenancy.current_tenant(), (SELECT owner FROM item)"


def sign(claims: dict[str, Any]) -> str:
    """A toy signed token ``<json hex>.<hmac hex>`` standing in for a JWT."""
    body = json.dumps(claims).encode().hex()
    return body + "." + hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()


def verify(token: str) -> dict[str, Any]:
    body, _, mac = token.partition(".")
    want = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, want):
        raise ValueError("bad signature")
    claims: dict[str, Any] = json.loads(bytes.fromhex(body))
    return claims


def from_query(request: Request) -> str | None:
    """A custom resolver: ?tenant=slug."""
    return request.query_params.get("tenant")


async def from_cookie(request: Request) -> str | None:
    """A custom async resolver: cookie tenant=slug."""
    return request.cookies.get("tenant")


tenants = Tenants(
    os.environ["PGTENANCY_TEST_DSN"],
    resolvers=[
        jwt_claim(verify, claim="org"),
        path_prefix("/t"),
        subdomain("example.com"),
        header("X-Tenant"),
        from_query,
        from_cookie,
    ],
    exclude=("/health", "/docs", "/openapi.json", "/public/"),
    suspended_status=int(os.environ.get("SUSPENDED_STATUS", "423")),
    engine_options={"pool_size": 8, "max_overflow": 8},
)
app = FastAPI(lifespan=tenants.lifespan)
tenants.install(app)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"ok": True, "context": current_tenant()}


@app.get("/public/about")
async def about(request: Request) -> dict[str, Any]:
    return {"tenant": getattr(request.state, "tenant", None)}


@app.get("/whoami")
def whoami(request: Request) -> dict[str, Any]:
    """Never queries: the middleware has entered the tenant already."""
    info: TenantInfo = request.state.tenant
    return {
        "slug": info.slug,
        "id": str(info.id),
        "public": dict(info.public),
        "context": current_tenant(),
    }


@app.get("/sync")
def sync_endpoint(session: Session = Depends(tenants.session)) -> dict[str, Any]:
    db_tenant, owner = session.execute(text(QUERY)).one()
    return {"db": db_tenant, "owner": owner, "context": current_tenant()}


@app.get("/async")
async def async_endpoint(session: AsyncSession = Depends(tenants.async_session)) -> dict[str, Any]:
    db_tenant, owner = (await session.execute(text(QUERY))).one()
    return {"db": db_tenant, "owner": owner, "context": current_tenant()}


@app.get("/items")
async def items(
    tenant: TenantInfo = Depends(tenants.tenant),
    session: AsyncSession = Depends(tenants.async_session),
) -> dict[str, Any]:
    (owner,) = (await session.execute(text("SELECT owner FROM item"))).one()
    return {"slug": tenant.slug, "owner": owner}


@app.get("/public/dep")
def excluded_with_dependency(session: Session = Depends(tenants.session)) -> dict[str, Any]:
    """An excluded path that still asks for a session: the dependency resolves."""
    db_tenant, owner = session.execute(text(QUERY)).one()
    return {"db": db_tenant, "owner": owner}
