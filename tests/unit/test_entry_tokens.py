"""Entry tokens on the Python side: signing, reading the slug, the entry message."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import pytest

from pgtenancy import EntryTokenForged, EntryTokenWrongTenant, sign_tenant_token
from pgtenancy._entry import TOKEN_ENTRY
from pgtenancy.entry_tokens import TokenFields, resolve_token_tenant, token_fields, token_slug


def test_token_fields_and_signature() -> None:
    key = secrets.token_bytes(32)
    before = time.time()
    token = sign_tenant_token(key, "acme", 2.5, key_name="k-1")
    after = time.time()
    version, name, slug, issued, expiry, nonce, mac = token.split(".")
    assert (version, name, slug) == ("pt2", "k-1", "acme")
    assert before <= int(issued) / 1000 + 0.001 <= after + 0.001
    assert int(expiry) - int(issued) in (2500, 2501)
    assert len(nonce) == 32 and len(mac) == 64
    body = token.rsplit(".", 1)[0]
    assert mac == hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    assert token_slug(token) == "acme"
    assert token_fields(token) == TokenFields("k-1", "acme", int(issued), int(expiry), nonce, mac)


def test_resolve_token_tenant() -> None:
    token = sign_tenant_token(secrets.token_bytes(32), "acme", 10)
    assert resolve_token_tenant(None, token) == "acme"
    assert resolve_token_tenant("acme", token) == "acme"
    with pytest.raises(EntryTokenWrongTenant):
        resolve_token_tenant("globex", token)
    for bad in (
        "",
        "acme",
        token + "x",
        token.replace("pt2", "pt3"),
        # the 0.3.0 development format, without an issue time
        "pt1.default.acme.1700000000000.0123456789abcdef." + "0" * 64,
        "pt2.a.b'c.1.2.0123456789abcdef." + "0" * 64,
        "pt2.a.acme.12345678901234567.2.0123456789abcdef." + "0" * 64,
    ):
        with pytest.raises(EntryTokenForged):
            token_slug(bad)


def test_the_token_entry_takes_the_token_as_a_bind_parameter() -> None:
    """The token never goes into statement text (pg_stat_activity, logs)."""
    assert b"$1" in TOKEN_ENTRY and b"pt2" not in TOKEN_ENTRY
