"""pgtenancy.fastapi in strict entry (issue 13): the request's tenant comes
from a signed entry token (a header, or signed in the app after its own
authentication), is entered with it eagerly and in every session
transaction, and refused tokens answer 401/403 with nothing of any tenant.
Real server, the application connecting as a NOSUPERUSER NOBYPASSRLS role,
FastAPI's TestClient."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from strict_support import SCHEMA_TENANTS, SHARED_TENANTS, StrictWorld, build, marker

from helpers import as_role
from pgtenancy import Tenancy, sign_tenant_token
from pgtenancy.fastapi import (
    TenantInfo,
    Tenants,
    TokenSource,
    header,
    http_status,
    token_header,
    token_signer,
)

MARKERS = tuple(marker(s) for s in (*SCHEMA_TENANTS, *SHARED_TENANTS))


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role))


def rows_sql(slug: str) -> str:
    table = "invoice" if slug in SCHEMA_TENANTS else "orders"
    column = "body" if slug in SCHEMA_TENANTS else "item"
    return f"SELECT coalesce(string_agg({column}, ',' ORDER BY id), '') FROM {table}"


def make_app(tenants: Tenants) -> FastAPI:
    """Endpoints reading the tenant's rows (sync and async sessions), one
    trying another tenant's rows the way injected SQL would, and slow ones."""
    app = FastAPI(lifespan=tenants.lifespan)
    tenants.install(app)

    @app.get("/rows")
    def rows(
        info: TenantInfo = Depends(tenants.tenant), s: Session = Depends(tenants.session)
    ) -> Any:
        return {"slug": info.slug, "rows": s.execute(text(rows_sql(info.slug))).scalar_one()}

    @app.get("/arows")
    async def arows(
        info: TenantInfo = Depends(tenants.tenant),
        s: AsyncSession = Depends(tenants.async_session),
    ) -> Any:
        result = await s.execute(text(rows_sql(info.slug)))
        return {"slug": info.slug, "rows": result.scalar_one()}

    @app.get("/steal/qualified")
    def steal_qualified(s: Session = Depends(tenants.session)) -> Any:
        # What SQL injected into the request would try: qualified names ...
        return {
            "globex": s.execute(text("SELECT count(*) FROM tenant_globex.invoice")).scalar_one(),
            "own": s.execute(text("SELECT count(*) FROM invoice")).scalar_one(),
        }

    @app.get("/steal/setting")
    def steal_setting(s: Session = Depends(tenants.session)) -> Any:
        # ... and the kit's setting pointing at another tenant.
        sb = s.execute(
            text("SELECT id::text FROM tenancy.tenant_directory WHERE slug = 'sb'")
        ).scalar_one()
        s.execute(text("SELECT set_config('app.tenant_id', :g, true)"), {"g": sb})
        return {"sb": s.execute(text("SELECT string_agg(item, ',') FROM orders")).scalar_one()}

    @app.get("/slow")
    def slow(wait: float, commit: bool, s: Session = Depends(tenants.session)) -> Any:
        s.execute(text("SELECT 1")).scalar_one()  # entered while the token is valid
        time.sleep(wait)
        if commit:
            s.commit()  # the next transaction enters again, with the expired token
        return {"rows": s.execute(text("SELECT count(*) FROM invoice")).scalar_one()}

    return app


@pytest.fixture
def by_token(world: StrictWorld) -> Iterator[TestClient]:
    """The tenant is the token's (a gateway signed it; this app has no key)."""
    app = make_app(Tenants(world.app_dsn, token=token_header("X-Tenant-Token")))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def tok(world: StrictWorld, slug: str, ttl: float = 60.0, key_name: str = "k1") -> str:
    return sign_tenant_token(world.key, slug, ttl, key_name=key_name)


def call(client: TestClient, path: str, token: str | None = None, **headers: str) -> Any:
    if token is not None:
        headers["X-Tenant-Token"] = token
    response = client.get(path, headers=headers)
    return response.status_code, response.json(), response.headers


def leaks(body: Any) -> list[str]:
    return [m for m in MARKERS if m in str(body)]


def test_a_valid_token_enters_its_tenant_in_both_sessions(
    world: StrictWorld, by_token: TestClient
) -> None:
    for slug in (*SCHEMA_TENANTS, *SHARED_TENANTS):
        for path in ("/rows", "/arows"):
            status, body, _ = call(by_token, path, tok(world, slug))
            assert status == 200, body
            assert body["slug"] == slug
            assert marker(slug) in body["rows"]
            assert leaks(body) == [m for m in MARKERS if m in body["rows"]] == [marker(slug)]


def test_injected_sql_in_a_token_request_sees_nothing_of_other_tenants(
    world: StrictWorld, by_token: TestClient
) -> None:
    status, body, _ = call(by_token, "/steal/qualified", tok(world, "acme"))
    assert (status, body) == (200, {"globex": 0, "own": 2})
    # Moving app.tenant_id to another tenant is refused at the next statement.
    status, body, _ = call(by_token, "/steal/setting", tok(world, "sa"))
    assert (status, body["code"]) == (403, "PT027"), body
    assert not leaks(body)


def refused_tokens(world: StrictWorld) -> dict[str, tuple[str, int, str]]:
    good = tok(world, "globex")
    parts = good.split(".")
    expired = tok(world, "globex", ttl=0.001)
    time.sleep(0.01)
    return {
        "other key": (sign_tenant_token(secrets.token_bytes(32), "globex", 60, "k1"), 401, "PT025"),
        "unknown key name": (tok(world, "globex", key_name="k9"), 401, "PT025"),
        "slug changed": (".".join([*parts[:2], "acme", *parts[3:]]), 401, "PT025"),
        "issued changed": (
            ".".join([*parts[:3], str(int(parts[3]) - 3_600_000), *parts[4:]]),
            401,
            "PT025",
        ),
        "expiry changed": (
            ".".join([*parts[:4], str(int(parts[4]) + 3_600_000), *parts[5:]]),
            401,
            "PT025",
        ),
        "mac changed": (good[:-1] + ("0" if good[-1] != "0" else "1"), 401, "PT025"),
        "not a token": ("globex", 401, "PT025"),
        "quotes": ("pt2.k1.globex.1.2'; SELECT 1; --", 401, "PT025"),
        "forged, no such tenant": (
            sign_tenant_token(secrets.token_bytes(32), "nosuch", 60, "k1"),
            401,
            "PT025",
        ),
        "expired": (expired, 401, "PT026"),
    }


def test_refused_tokens_get_401_and_nothing_of_any_tenant(
    world: StrictWorld, by_token: TestClient
) -> None:
    before = world.data()
    bodies = {}
    for case, (bad, status, code) in refused_tokens(world).items():
        for path in ("/rows", "/arows"):
            got, body, headers = call(by_token, path, bad)
            assert (got, body["code"]) == (status, code), (case, body)
            assert body["tenant"] is None, case
            assert "WWW-Authenticate" in headers
            assert not leaks(body)
            assert "globex" not in str(body) and "k9" not in str(body), (case, body)
        bodies[case] = body
    # A forged token for a tenant that exists and for one that does not: one answer.
    assert bodies["other key"] == bodies["forged, no such tenant"] == bodies["slug changed"]
    # No token at all in strict mode.
    status, body, headers = call(by_token, "/rows")
    assert (status, body["code"], body["detail"]) == (401, "PT025", "an entry token is required")
    assert world.data() == before


def test_slug_named_by_a_resolver_must_be_the_token_s(world: StrictWorld) -> None:
    tenants = Tenants(world.app_dsn, resolvers=[header("X-Tenant")], token=token_header())
    with TestClient(make_app(tenants), raise_server_exceptions=False) as client:
        status, body, _ = call(client, "/rows", tok(world, "acme"), **{"X-Tenant": "acme"})
        assert status == 200 and body["rows"].startswith(marker("acme")), body
        answers = []
        for slug in ("globex", "sa", "nosuch"):
            status, body, _ = call(client, "/rows", tok(world, "acme"), **{"X-Tenant": slug})
            assert (status, body["code"]) == (403, "PT027"), body
            assert not leaks(body)
            answers.append({k: v for k, v in body.items() if k != "tenant"})
        # Known or unknown tenant named: the same answer.
        assert answers[0] == answers[1] == answers[2]
        # A slug and no token, strict mode: 401 whether the tenant exists, is
        # suspended or not.
        Tenancy(world.dsn).suspend_tenant("sb")
        names = ("acme", "nosuch", "sb")
        plain = [call(client, "/rows", None, **{"X-Tenant": s}) for s in names]
        for status, body, _ in plain:
            assert (status, body["code"], body["detail"]) == (
                401,
                "PT025",
                "an entry token is required",
            )
        assert [body["tenant"] for _, body, _ in plain] == list(names)
        status, body, _ = call(client, "/rows", None, **{"X-Tenant": "Not A Slug"})
        assert status == 404


def test_token_signer_signs_what_the_app_s_authentication_chose(
    world: StrictWorld, caplog: pytest.LogCaptureFixture
) -> None:
    signer = token_signer(world.key, key_name="k1", ttl_seconds=30)
    assert world.key.hex() not in repr(signer) and repr(world.key) not in repr(signer)
    tenants = Tenants(world.app_dsn, resolvers=[header("X-Tenant")], token=signer)
    caplog.set_level(logging.DEBUG)
    with TestClient(make_app(tenants), raise_server_exceptions=False) as client:
        for slug in ("acme", "sb"):
            status, body, _ = call(client, "/arows", None, **{"X-Tenant": slug})
            assert status == 200 and body["rows"].startswith(marker(slug)), body
        status, body, _ = call(client, "/rows", None, **{"X-Tenant": "nosuch"})
        assert status == 404  # signed for a tenant that does not exist: verified, then unknown
        status, body, _ = call(client, "/rows")
        assert status == 401
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert world.key.hex() not in logged and repr(world.key) not in logged
    with pytest.raises(ValueError):
        token_signer(b"short", key_name="k1")


def test_a_token_that_expires_during_the_request_gives_401_not_500(world: StrictWorld) -> None:
    ttl = 1.0

    def short(_request: Any, slug: str | None) -> str | None:
        return None if slug is None else sign_tenant_token(world.key, slug, ttl, "k1")

    source: TokenSource = short
    tenants = Tenants(world.app_dsn, resolvers=[header("X-Tenant")], token=source)
    with TestClient(make_app(tenants), raise_server_exceptions=False) as client:
        status, body, _ = call(client, "/slow?wait=0&commit=true", None, **{"X-Tenant": "acme"})
        assert status == 200 and body == {"rows": 2}
        # The same transaction, a statement after the expiry: PT028.
        status, body, headers = call(
            client, f"/slow?wait={ttl + 0.2}&commit=false", None, **{"X-Tenant": "acme"}
        )
        assert (status, body["code"]) == (401, "PT028"), body
        assert "WWW-Authenticate" in headers and not leaks(body)
        # A new transaction after the expiry: entry refused, PT026.
        status, body, _ = call(
            client, f"/slow?wait={ttl + 0.2}&commit=true", None, **{"X-Tenant": "acme"}
        )
        assert (status, body["code"]) == (401, "PT026"), body
        assert not leaks(body)


def test_plain_mode_still_enters_by_slug_and_verifies_tokens(dsn: str, app_role: str) -> None:
    world = build(dsn, app_role, as_role(dsn, app_role), strict=False)
    tenants = Tenants(world.app_dsn, resolvers=[header("X-Tenant")], token=token_header())
    with TestClient(make_app(tenants), raise_server_exceptions=False) as client:
        status, body, _ = call(client, "/rows", None, **{"X-Tenant": "globex"})
        assert status == 200 and body["rows"].startswith(marker("globex"))
        status, body, _ = call(client, "/rows", None, **{"X-Tenant": "nosuch"})
        assert status == 404
        Tenancy(world.dsn).suspend_tenant("sb")
        status, body, _ = call(client, "/rows", None, **{"X-Tenant": "sb"})
        assert (status, body["code"]) == (423, "PT004")
        status, body, _ = call(client, "/rows", tok(world, "acme"), **{"X-Tenant": "acme"})
        assert status == 200
        bad = sign_tenant_token(secrets.token_bytes(32), "acme", 60, "k1")
        status, body, _ = call(client, "/rows", bad, **{"X-Tenant": "acme"})
        assert (status, body["code"]) == (401, "PT025")


def test_http_status_of_token_refusals() -> None:
    from pgtenancy import (
        EntryTokenExpired,
        EntryTokenForged,
        EntryTokenReplayed,
        EntryTokenWrongTenant,
    )

    assert http_status(EntryTokenForged("x")) == 401
    assert http_status(EntryTokenExpired("x")) == 401
    assert http_status(EntryTokenReplayed("x")) == 401
    assert http_status(EntryTokenWrongTenant("x")) == 403
    with pytest.raises(ValueError):
        Tenants("postgresql://x", resolvers=[])


def test_the_engines_reset_a_connection_before_the_next_request(world: StrictWorld) -> None:
    """An attack run swapped a psycopg prepared statement on a pooled
    connection of Tenants' engine, and its SQL ran in the next tenant's
    request: the engines now reset each connection when it goes back (what
    a request left in the session is gone at the next checkout)."""
    import asyncio

    from sqlalchemy import text

    tenants = Tenants(world.app_dsn, token=token_header())
    try:
        engine = tenants.engine
        with engine.connect() as c:
            pid = c.execute(text("SELECT pg_backend_pid()")).scalar()
            c.execute(text("PREPARE planted AS SELECT 1"))
            c.execute(text("SELECT set_config('atk.tok', 'stolen', false)"))
            c.commit()
        with engine.connect() as c:
            assert c.execute(text("SELECT pg_backend_pid()")).scalar() == pid  # same connection
            left = c.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_prepared_statements),"
                    " coalesce(current_setting('atk.tok', true), '')"
                )
            ).one()
        assert tuple(left) == (0, "")

        async def run() -> tuple[Any, ...]:
            aengine = tenants.async_engine
            async with aengine.connect() as c:
                await c.execute(text("SELECT set_config('atk.tok', 'stolen', false)"))
                await c.commit()
            async with aengine.connect() as c:
                row = (
                    await c.execute(text("SELECT coalesce(current_setting('atk.tok', true), '')"))
                ).one()
            await aengine.dispose()
            return tuple(row)

        assert asyncio.run(run()) == ("",)
    finally:
        tenants.engine.dispose()


def test_a_token_of_the_slug_s_previous_holder_gets_403(
    world: StrictWorld, by_token: TestClient
) -> None:
    """acme renamed, a new acme created: the old acme's token is stale (PT034)."""
    old = tok(world, "sa", ttl=600)
    tenancy = Tenancy(world.dsn)
    tenancy.rename_tenant("sa", "sa2")
    tenancy.create_tenant("sa", isolation="shared")
    before = world.data()
    for path in ("/rows", "/arows"):
        status, body, _ = call(by_token, path, old)
        assert (status, body["code"], body["detail"]) == (
            403,
            "PT034",
            "entry token is not for this tenant",
        ), body
        assert not leaks(body) and body["tenant"] is None
    assert world.data() == before
    status, body, _ = call(by_token, "/rows", tok(world, "sa"))
    assert (status, body["rows"]) == (200, "")
