"""The application role's view of its tenant (tenant_info), host names of
tenants (tenant_domains), and permission errors as kit exceptions (issue 12, items 2-3)."""

from __future__ import annotations

import psycopg
import pytest

from conftest import as_role
from pgtenancy import (
    DomainTaken,
    InvalidDomain,
    NoTenantInTransaction,
    PermissionDenied,
    Tenancy,
    TenantDeleted,
    TenantNotFound,
    tenant_connection,
)


@pytest.fixture
def acme(tenancy: Tenancy) -> str:
    tenancy.create_tenant(
        "acme", metadata={"public": {"plan": "pro", "seats": 5}, "stripe_key": "sk_secret"}
    )
    tenancy.create_tenant("globex")
    return "acme"


def test_app_role_reads_its_tenants_public_fields(
    tenancy: Tenancy, dsn: str, app_role: str, acme: str
) -> None:
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        with tenant_connection(conn, "acme") as c:
            row = c.execute("SELECT id, slug, status, public FROM tenancy.tenant_info()").fetchone()
        assert row is not None
        assert (str(row[0]), row[1], row[2], row[3]) == (
            str(tenancy.get_tenant("acme").id),
            "acme",
            "active",
            {"plan": "pro", "seats": 5},
        )
        with tenant_connection(conn, "globex") as c:
            assert c.execute("SELECT public FROM tenancy.tenant_info()").fetchone() == ({},)
        # The rest of the metadata stays with the owner.
        with pytest.raises(PermissionDenied) as info:
            tenant_info_as_app(conn)
        assert info.value.sqlstate == "42501"
        assert "grant_app_role" in (info.value.hint or "")


def tenant_info_as_app(conn: psycopg.Connection[object]) -> None:
    from pgtenancy.errors import raise_translated

    try:
        with conn.transaction():
            conn.execute("SELECT metadata FROM tenancy.tenants")
    except psycopg.Error as exc:
        raise_translated(exc)


def test_tenant_info_outside_a_tenant(dsn: str, app_role: str, acme: str) -> None:
    from pgtenancy.errors import raise_translated

    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        with pytest.raises(NoTenantInTransaction) as info:
            try:
                conn.execute("SELECT * FROM tenancy.tenant_info()")
            except psycopg.Error as exc:
                raise_translated(exc)
        assert "enter_tenant" in (info.value.hint or "")


def test_admin_calls_as_the_app_role_raise_permission_denied(
    tenancy: Tenancy, dsn: str, app_role: str, acme: str
) -> None:
    app = Tenancy(as_role(dsn, app_role))
    with pytest.raises(PermissionDenied) as info:
        app.list_tenants()
    assert "owner" in (info.value.hint or "")
    assert isinstance(info.value, PermissionError)
    with pytest.raises(PermissionDenied):
        app.create_tenant("initech")
    with pytest.raises(PermissionDenied):
        app.suspend_tenant("acme")
    with pytest.raises(PermissionDenied):
        app.add_tenant_domain("acme", "acme.example.com")
    assert [t.slug for t in tenancy.list_tenants()] == ["acme", "globex"]
    assert tenancy.get_tenant("acme").status == "active"
    assert tenancy.tenant_domains() == []


def test_user_permission_errors_stay_untouched(dsn: str, app_role: str, sql: object) -> None:
    from pgtenancy import translate

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.private_stuff (id int)")
    with (
        psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as info,
    ):
        conn.execute("SELECT * FROM public.private_stuff")
    assert translate(info.value) is info.value


def test_domains(tenancy: Tenancy, dsn: str, app_role: str, acme: str) -> None:
    tenancy.create_tenant("acme_corp")
    row = tenancy.add_tenant_domain("acme_corp", " Acme-Corp.Example.com. ")
    assert (row["domain"], row["slug"]) == ("acme-corp.example.com", "acme_corp")
    assert tenancy.add_tenant_domain("acme_corp", "acme-corp.example.com")["slug"] == "acme_corp"
    tenancy.add_tenant_domain("acme", "shop.acme.test")
    assert tenancy.resolve_domain("ACME-CORP.example.com") == "acme_corp"
    assert tenancy.resolve_domain("nowhere.example.com") is None
    before = tenancy.tenant_domains()
    assert [(d["domain"], d["slug"]) for d in before] == [
        ("shop.acme.test", "acme"),
        ("acme-corp.example.com", "acme_corp"),
    ]
    for bad in (
        "",
        "-acme.example.com",
        "acme_corp.example.com",
        "a..b",
        "acme.com:8000",
        "https://acme.com",
        "x" * 64 + ".com",
    ):
        with pytest.raises(InvalidDomain):
            tenancy.add_tenant_domain("acme", bad)
    with pytest.raises(DomainTaken) as taken:
        tenancy.add_tenant_domain("acme", "acme-corp.example.com")
    assert "remove_tenant_domain" in (taken.value.hint or "")
    with pytest.raises(TenantNotFound):
        tenancy.add_tenant_domain("nobody", "nobody.example.com")
    assert tenancy.tenant_domains() == before

    # The application role may resolve, not change.
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        assert conn.execute(
            "SELECT tenancy.resolve_domain('acme-corp.example.com')"
        ).fetchone() == ("acme_corp",)

    assert tenancy.remove_tenant_domain("Shop.Acme.Test") is True
    assert tenancy.remove_tenant_domain("shop.acme.test") is False
    tenancy.drop_tenant("acme")
    with pytest.raises(TenantDeleted):
        tenancy.add_tenant_domain("acme", "acme.example.com")
    tenancy.drop_tenant("acme_corp", destroy_data=True)
    assert tenancy.tenant_domains() == []
    assert tenancy.resolve_domain("acme-corp.example.com") is None
    # The name of a removed tenant can be given to another.
    tenancy.create_tenant("acme_corp")
    assert tenancy.add_tenant_domain("acme_corp", "acme-corp.example.com")["slug"] == "acme_corp"
    assert tenancy.resolve_domain("acme-corp.example.com") == "acme_corp"
