"""Entry tokens on the Python side: signing, reading the slug, the entry message."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import pytest

from pgtenancy import EntryTokenForged, EntryTokenWrongTenant, sign_tenant_token
from pgtenancy._entry import TOKEN_ENTRY
from pgtenancy.entry_tokens import resolve_token_tenant, token_slug


def test_token_fields_and_signature() -> None:
    key = secrets.token_bytes(32)
    before = time.time()
    token = sign_tenant_token(key, "acme", 2.5, key_name="k-1")
    version, name, slug, expiry, nonce, mac = token.split(".")
    assert (version, name, slug) == ("pt1", "k-1", "acme")
    assert before + 2.5 <= int(expiry) / 1000 + 0.001 <= time.time() + 2.5 + 0.001
    assert len(nonce) == 32 and len(mac) == 64
    body = token.rsplit(".", 1)[0]
    assert mac == hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    assert token_slug(token) == "acme"


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
        token.replace("pt1", "pt2"),
        "pt1.a.b'c.1.0123456789abcdef." + "0" * 64,
    ):
        with pytest.raises(EntryTokenForged):
            token_slug(bad)


def test_the_token_entry_takes_the_token_as_a_bind_parameter() -> None:
    """The token never goes into statement text (pg_stat_activity, logs)."""
    assert b"$1" in TOKEN_ENTRY and b"pt1" not in TOKEN_ENTRY
