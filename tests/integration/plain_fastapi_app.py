"""A FastAPI app that uses tenant_session/tenant_connection the obvious way,
without pgtenancy.fastapi: sync and async generator dependencies.

Run by tests/integration/test_fastapi_context.py through TestClient and under
a real uvicorn (``PGTENANCY_TEST_DSN`` names the database).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from fastapi import Depends, FastAPI, Header
from psycopg_pool import ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from pgtenancy import current_tenant, tenant_connection, tenant_session

DSN = os.environ["PGTENANCY_TEST_DSN"]
engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(DSN))
async_engine = create_async_engine(
    "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(DSN)
)
pool: ConnectionPool[Any] = ConnectionPool(DSN, min_size=1, max_size=4, open=True)
app = FastAPI()
QUERY = "SELECT tenancy.current_tenant(), (SELECT owner FROM item)"


def get_db(x_tenant: str = Header()) -> Iterator[Session]:
    with tenant_session(engine, x_tenant) as session:
        assert current_tenant() == x_tenant
        yield session
        assert session.execute(text("SELECT 1")).scalar() == 1


def get_conn(x_tenant: str = Header()) -> Iterator[psycopg.Connection[Any]]:
    with tenant_connection(pool, x_tenant) as conn:
        yield conn


async def get_async_db(x_tenant: str = Header()) -> AsyncIterator[AsyncSession]:
    async with tenant_session(async_engine, x_tenant) as session:
        yield session


@app.get("/sync")
def sync_endpoint(session: Session = Depends(get_db)) -> dict[str, Any]:
    db_tenant, owner = session.execute(text(QUERY)).one()
    return {"db": db_tenant, "owner": owner}


@app.get("/conn")
def conn_endpoint(conn: psycopg.Connection[Any] = Depends(get_conn)) -> dict[str, Any]:
    row = conn.execute(QUERY).fetchone()
    assert row is not None
    return {"db": row[0], "owner": row[1]}


@app.get("/async")
async def async_endpoint(session: AsyncSession = Depends(get_async_db)) -> dict[str, Any]:
    db_tenant, owner = (await session.execute(text(QUERY))).one()
    return {"db": db_tenant, "owner": owner, "context": current_tenant()}


@app.get("/sync-in-async")
async def sync_dep_async_endpoint(session: Session = Depends(get_db)) -> dict[str, Any]:
    db_tenant, owner = session.execute(text(QUERY)).one()
    return {"db": db_tenant, "owner": owner}
