"""The shop example, end to end on a real PostgreSQL: the app through
TestClient, the listener's handler, the month-end job over all tenants."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import create_engine

from pgtenancy import Listener, Tenancy, install
from pgtenancy.testing import find_server, fresh_database

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from shop.app import create_app  # noqa: E402
from shop.jobs import close_month_everywhere  # noqa: E402


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[str, str]]:
    """(owner DSN, application role DSN) of a fresh shop database."""
    with find_server() as admin, fresh_database(admin, "pgtenancy_shop") as dsn:
        install(dsn)
        role = f"shop_app_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT tenancy.apply_shared_migration('0001', %s)",
                ((HERE / "shared.sql").read_text(),),
            )
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT SELECT ON public.plan TO {}").format(sql.Identifier(role)))
            conn.execute("SELECT tenancy.grant_app_role(%s)", (role,))
        tenancy = Tenancy(dsn)
        tenancy.add_migration("0001", (HERE / "migrations" / "0001_invoice.sql").read_text())
        tenancy.create_tenant("acme", metadata={"public": {"plan": "pro"}})
        tenancy.create_tenant("acme_corp")
        tenancy.add_tenant_domain("acme_corp", "acme-corp.shop.test")
        tenancy.create_tenant("globex")
        try:
            yield dsn, make_conninfo(dsn, user=role)
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                        sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]))
                    )
                )
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def client(database: tuple[str, str]) -> Iterator[TestClient]:
    app, _ = create_app(database[1])
    with TestClient(app) as c:
        yield c


def test_invoices_stay_in_their_tenant(client: TestClient) -> None:
    assert (
        client.post(
            "/invoices",
            json={"customer": "Ann", "total": "12.50"},
            headers={"Host": "acme.shop.test"},
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/invoices", json={"customer": "Bob", "total": "3"}, headers={"X-Tenant": "globex"}
        ).status_code
        == 201
    )
    acme = client.get("/invoices", headers={"Host": "acme.shop.test"}).json()
    globex = client.get("/invoices", headers={"X-Tenant": "globex"}).json()
    assert [i["customer"] for i in acme] == ["Ann"]
    assert [i["customer"] for i in globex] == ["Bob"]
    # A registered host name with a hyphen.
    assert client.get("/invoices", headers={"Host": "acme-corp.shop.test"}).json() == []
    assert client.get("/invoices", headers={"Host": "nobody.shop.test"}).status_code == 404
    assert client.get("/health").json() == {"status": "ok"}


def test_plan_from_public_metadata_and_the_shared_table(client: TestClient) -> None:
    assert client.get("/me", headers={"X-Tenant": "acme"}).json() == {
        "tenant": "acme",
        "plan": "pro",
        "max_invoices": 1000,
    }
    assert client.get("/me", headers={"X-Tenant": "acme_corp"}).json()["plan"] == "free"
    for n in range(3):
        r = client.post(
            "/invoices", json={"customer": f"c{n}", "total": "1"}, headers={"X-Tenant": "acme_corp"}
        )
        assert r.status_code == 201, r.text
    r = client.post(
        "/invoices",
        json={"customer": "one too many", "total": "1"},
        headers={"X-Tenant": "acme_corp"},
    )
    assert r.status_code == 402


def test_suspended_tenant_is_refused(client: TestClient, database: tuple[str, str]) -> None:
    tenancy = Tenancy(database[0])
    tenancy.suspend_tenant("globex")
    try:
        r = client.get("/invoices", headers={"X-Tenant": "globex"})
        assert r.status_code == 423 and r.json()["code"] == "PT004"
    finally:
        tenancy.resume_tenant("globex")


def test_listener_gives_new_tenants_a_welcome_invoice(
    client: TestClient, database: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, app_dsn = database
    monkeypatch.setenv("SHOP_APP_DATABASE_URL", app_dsn)
    import shop.handlers  # noqa: F401  (connects the receiver)

    tenancy = Tenancy(owner)
    tenancy.start_consumer("shop", "now")  # the existing tenants got none
    listener = Listener(owner, "shop", poll_interval=0.1)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        tenancy.create_tenant("initech")
        deadline = time.monotonic() + 30
        body: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            body = client.get("/invoices", headers={"X-Tenant": "initech"}).json()
            if body:
                break
            time.sleep(0.1)
        assert [i["customer"] for i in body] == ["welcome"]
    finally:
        listener.stop()
        thread.join(30)
    assert (
        client.get("/invoices", headers={"X-Tenant": "acme_corp"}).json()[0]["customer"]
        != "welcome"
    )


def test_month_end_job_over_all_tenants(client: TestClient, database: tuple[str, str]) -> None:
    owner, app_dsn = database
    client.post("/invoices", json={"customer": "Cy", "total": "5"}, headers={"X-Tenant": "globex"})
    Tenancy(owner).suspend_tenant("acme_corp")
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(app_dsn))
    try:
        report = close_month_everywhere(engine, jobs=2)
    finally:
        engine.dispose()
        Tenancy(owner).resume_tenant("acme_corp")
    assert report.ok
    assert "acme_corp" not in report.done  # suspended: not listed
    assert report.done["globex"] >= 1
    assert all(i["closed"] for i in client.get("/invoices", headers={"X-Tenant": "globex"}).json())
