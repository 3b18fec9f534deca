"""pgtenancy.fastapi: resolvers, eager entry, error mapping, session
dependencies, lifespan (issue 12, item 2). Through FastAPI's TestClient and a
real uvicorn on a free local port, concurrently across tenants."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from fastapi_support import HERE, SLUGS, make_tenants, uvicorn_server

from conftest import as_role, subprocess_env
from pgtenancy import Tenancy, current_tenant, translate
from pgtenancy.fastapi import TenantInfo, Tenants, header, http_status


@pytest.fixture
def app_dsn(tenancy: Tenancy, dsn: str, app_role: str, monkeypatch: pytest.MonkeyPatch) -> str:
    make_tenants(tenancy, dsn, (*SLUGS, "acme_corp", "hooli", "pied_piper"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenancy.tenants SET metadata = "
            """'{"public": {"plan": "pro"}, "api_key": "secret"}' WHERE slug = 'acme'"""
        )
    tenancy.add_tenant_domain("acme_corp", "acme-corp.example.com")
    tenancy.add_tenant_domain("globex", "shop.globex.test")
    tenancy.suspend_tenant("hooli")
    tenancy.drop_tenant("pied_piper")
    url = as_role(dsn, app_role)
    monkeypatch.setenv("PGTENANCY_TEST_DSN", url)
    return url


def load_app() -> ModuleType:
    sys.path.insert(0, str(HERE))
    try:
        module = importlib.import_module("tenants_fastapi_app")
        return importlib.reload(module)
    finally:
        sys.path.remove(str(HERE))


@pytest.fixture
def client(app_dsn: str) -> Iterator[TestClient]:
    module = load_app()
    with TestClient(module.app) as c:
        yield c
    # The lifespan closed what it opened.
    assert module.tenants._pool is None
    assert module.tenants._engine is None and module.tenants._async_engine is None


def get(client: TestClient, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    response = client.get(path, **kwargs)
    return response.status_code, response.json()


def test_every_resolver_and_both_sessions(client: TestClient) -> None:
    from tenants_fastapi_app import sign

    for slug in SLUGS:
        for path in ("/sync", "/async"):
            status, body = get(client, path, headers={"X-Tenant": slug})
            assert status == 200, body
            assert body == {"db": slug, "owner": slug, "context": slug}
    assert current_tenant() is None
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/t/globex/sync", {}, "globex"),
        ("/t/initech/async", {}, "initech"),
        ("/sync", {"headers": {"Host": "umbrella.example.com"}}, "umbrella"),
        # Hyphens in the label read as underscores ...
        ("/sync", {"headers": {"Host": "acme-corp.example.com:8000"}}, "acme_corp"),
        # ... and the registry knows host names no label rule gives.
        ("/async", {"headers": {"Host": "Shop.Globex.Test"}}, "globex"),
        ("/sync", {"headers": {"Authorization": "Bearer " + sign({"org": "initech"})}}, "initech"),
        ("/sync?tenant=umbrella", {}, "umbrella"),
        ("/async", {"cookies": {"tenant": "globex"}}, "globex"),
        # In order: the token comes before the header.
        (
            "/sync",
            {"headers": {"Authorization": "Bearer " + sign({"org": "acme"}), "X-Tenant": "globex"}},
            "acme",
        ),
    ]
    for path, kwargs, slug in cases:
        client.cookies.clear()
        kwargs = dict(kwargs)
        client.cookies.update(kwargs.pop("cookies", {}))
        status, body = get(client, path, **kwargs)
        assert status == 200, (path, kwargs, body)
        assert (body["db"], body["owner"], body["context"]) == (slug, slug, slug), (path, kwargs)
    client.cookies.clear()

    status, body = get(client, "/whoami", headers={"X-Tenant": "acme"})
    assert status == 200
    assert body["slug"] == "acme" and body["context"] == "acme"
    assert body["public"] == {"plan": "pro"}  # not the api_key
    status, body = get(client, "/items", headers={"Host": "acme.example.com"})
    assert (status, body) == (200, {"slug": "acme", "owner": "acme"})


def test_excluded_paths_and_missing_tenant(client: TestClient) -> None:
    assert get(client, "/health") == (200, {"ok": True, "context": None})
    assert get(client, "/public/about", headers={"X-Tenant": "acme"}) == (200, {"tenant": None})
    assert client.get("/openapi.json").status_code == 200
    # An excluded path that asks for a session resolves in the dependency.
    assert get(client, "/public/dep", headers={"X-Tenant": "globex"}) == (
        200,
        {"db": "globex", "owner": "globex"},
    )
    status, body = get(client, "/sync")
    assert (status, body["detail"]) == (400, "no tenant in the request")
    status, body = get(client, "/public/dep")
    assert status == 400


def test_refusals_happen_before_the_endpoint(client: TestClient) -> None:

    expected = {
        "nobody": (404, "PT003"),
        "Not-A-Slug": (404, "PT001"),
        "hooli": (423, "PT004"),
        "pied_piper": (410, "PT005"),
    }
    for slug, (status_code, code) in expected.items():
        # /whoami never queries: the refusal comes from the middleware's entry.
        for path in ("/whoami", "/sync", "/async"):
            status, body = get(client, path, headers={"X-Tenant": slug})
            assert (status, body["code"], body["tenant"]) == (status_code, code, slug), path
        # The dependency path (excluded from the middleware) maps the same way.
        status, body = get(client, "/public/dep", headers={"X-Tenant": slug})
        assert (status, body["code"]) == (status_code, code)
    status, body = get(client, "/sync", headers={"Authorization": "Bearer forged.token"})
    assert status == 401 and "invalid token" in body["detail"]
    # A host under no base domain and not registered: no tenant.
    assert get(client, "/sync", headers={"Host": "a.b.example.org"})[0] == 400


def test_suspended_as_403_and_provisioning_as_503(app_dsn: str, dsn: str) -> None:
    tenants = Tenants(app_dsn, resolvers=[header()], suspended_status=403)
    app = FastAPI(lifespan=tenants.lifespan)
    tenants.install(app)

    @app.get("/me")
    def me(tenant: TenantInfo = Depends(tenants.tenant)) -> str:
        return tenant.slug

    with TestClient(app) as client:
        assert get(client, "/me", headers={"X-Tenant": "acme"}) == (200, "acme")  # type: ignore[comparison-overlap]
        status, body = get(client, "/me", headers={"X-Tenant": "hooli"})
        assert (status, body["code"]) == (403, "PT004")

    # PT019 (a tenant being provisioned, issue 10) maps by its code: a real
    # server error with that SQLSTATE.
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'tenant ''x'' is being provisioned' "
            "USING ERRCODE = 'PT019'; END $$"
        )
    err = translate(info.value)
    assert http_status(err) == 503
    refused = tenants.refusal(err, "x")
    assert refused is not None and refused.headers == {"Retry-After": "5"}
    with pytest.raises(ValueError):
        Tenants(app_dsn, resolvers=[header()], suspended_status=401)
    with pytest.raises(ValueError):
        Tenants(app_dsn, resolvers=[])


def test_under_uvicorn_concurrently(app_dsn: str) -> None:
    sys.path.insert(0, str(HERE))
    try:
        from tenants_fastapi_app import sign
    finally:
        sys.path.remove(str(HERE))
    env = subprocess_env()
    env["PGTENANCY_TEST_DSN"] = app_dsn

    def request_for(i: int) -> tuple[str, str, dict[str, str]]:
        slug = SLUGS[i % len(SLUGS)]
        path = ("/sync", "/async", "/whoami")[(i // 4) % 3]
        way = (i // 12) % 4
        if way == 0:
            return slug, path, {"X-Tenant": slug}
        if way == 1:
            return slug, f"/t/{slug}{path}", {}
        if way == 2:
            return slug, path, {"Host": f"{slug}.example.com"}
        return slug, path, {"Authorization": "Bearer " + sign({"org": slug})}

    with (
        uvicorn_server("tenants_fastapi_app:app", env) as (url, log),
        httpx.Client(base_url=url, timeout=30) as http,
    ):

        def one(i: int) -> tuple[str, int, dict[str, Any]]:
            slug, path, headers = request_for(i)
            response = http.get(path, headers=headers)
            return slug, response.status_code, response.json()

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(480)))
        suspended = http.get("/whoami", headers={"X-Tenant": "hooli"})
    for slug, status, body in results:
        assert status == 200, body
        assert body.get("db", slug) == slug and body.get("slug", slug) == slug
        assert body["context"] == slug
    assert suspended.status_code == 423
    text = "\n".join(log)
    assert "Traceback" not in text and "ERROR" not in text, text


def test_a_tenant_left_provisioning_is_503_before_the_endpoint(
    app_dsn: str, tenancy: Tenancy, dsn: str
) -> None:
    """A real tenant left in status provisioning (a migration after a commit
    boundary failed, issue 10): the middleware's entry refuses it with 503 and
    Retry-After, sync and async, and the endpoint never runs."""
    from pgtenancy.errors import MigrationFailed

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.block (reason text)")
        conn.execute("GRANT SELECT ON public.block TO PUBLIC")
    tenancy.add_migration("0002", "CREATE TYPE state AS ENUM ('new')")
    tenancy.add_migration("0003", "ALTER TYPE state ADD VALUE 'paid'")  # a commit boundary
    tenancy.add_migration(
        "0004",
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM public.block) THEN "
        "RAISE EXCEPTION 'blocked'; END IF; END $$",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.block VALUES ('maintenance')")
    with pytest.raises(MigrationFailed, match="blocked"):
        tenancy.create_tenant("stuck")
    assert tenancy.get_tenant("stuck").status == "provisioning"

    tenants = Tenants(app_dsn, resolvers=[header()])
    app = FastAPI(lifespan=tenants.lifespan)
    tenants.install(app)
    ran: list[str] = []

    @app.get("/sync")
    def sync_endpoint(tenant: TenantInfo = Depends(tenants.tenant)) -> str:
        ran.append(tenant.slug)
        return tenant.slug

    @app.get("/async")
    async def async_endpoint(tenant: TenantInfo = Depends(tenants.tenant)) -> str:
        ran.append(tenant.slug)
        return tenant.slug

    with TestClient(app) as client:
        for path in ("/sync", "/async"):
            response = client.get(path, headers={"X-Tenant": "stuck"})
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "PT019"
            assert response.headers["Retry-After"] == "5"
            assert client.get(path, headers={"X-Tenant": "acme"}).status_code == 200
    assert ran == ["acme", "acme"]
