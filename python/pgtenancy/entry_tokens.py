"""Entry tokens of strict mode: a signed statement "this request is tenant X until T".

The service that authenticates a request signs a short-lived token for the
request's tenant with :func:`sign_tenant_token`; the application enters the
tenant with it (``tenant_session(engine, token=token)``,
``tenant_connection(pool, token=token)``, or ``SELECT
tenancy.enter_tenant_token(token)``). With strict entry on
(``SELECT tenancy.set_strict_entry(true)``), the database verifies the
token at entry and again at every statement, with a key the application's
database role cannot read, so SQL injected into the request cannot move it
into another tenant.

Token format (ASCII, no padding)::

    pt2.<key name>.<slug>.<issued: Unix ms>.<expiry: Unix ms>.<nonce: 32 hex>.<mac: 64 hex>

``mac`` is HMAC-SHA256 (RFC 2104) under the named key over everything
before the last dot. The same computation runs in SQL
(``tenancy.verify_entry_token``, sql/012_strict.sql) with the core
``sha256()`` function.

The token names the tenant by slug (what the signing service knows), and is
bound to the tenant holding that slug when it was issued: the database
refuses it (PT034, :class:`~pgtenancy.errors.EntryTokenStale`) when the
tenant got its slug later (``tenancy.tenants.slug_assigned_at``: created,
or renamed to it, after ``issued``), so a token signed for ``acme`` before
``acme`` was renamed or destroyed does not enter the next tenant called
``acme``. It also refuses a token issued after its expiry, or more than
:data:`MAX_CLOCK_SKEW_SECONDS` ahead of the database's clock (PT025).
Tokens of the earlier ``pt1`` format (pgtenancy 0.3.0 development, no
issue time) are refused as malformed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass

from pgtenancy.errors import EntryTokenForged, EntryTokenWrongTenant
from pgtenancy.slugs import validate_slug

#: Key name used when none is given (``tenancy.add_entry_key('default', key)``).
DEFAULT_KEY_NAME = "default"

#: Shortest key accepted, in bytes (the SQL side refuses shorter ones too).
MIN_KEY_BYTES = 32

#: How far ahead of the database's clock a token's issue time may be, in
#: seconds (the SQL side, ``tenancy.verify_entry_token``, allows 60 000 ms).
MAX_CLOCK_SKEW_SECONDS = 60

#: The version prefix of the token format.
TOKEN_VERSION = "pt2"

_KEY_NAME = re.compile(r"[a-z0-9_-]{1,63}")
_TOKEN = re.compile(
    r"pt2\.([a-z0-9_-]{1,63})\.([a-z0-9_]+)\.([0-9]{1,16})\.([0-9]{1,16})"
    r"\.([0-9a-f]{16,64})\.([0-9a-f]{64})"
)


@dataclass(frozen=True)
class TokenFields:
    """The fields of an entry token, read without verifying its signature.

    Attributes:
        key_name: the entry key it names.
        slug: the tenant slug it names.
        issued_ms: when it was signed, Unix time in milliseconds (the
            signer's clock).
        expiry_ms: when it expires, Unix time in milliseconds.
        nonce: its random nonce, lowercase hex.
        mac: its HMAC-SHA256, lowercase hex (64 characters).
    """

    key_name: str
    slug: str
    issued_ms: int
    expiry_ms: int
    nonce: str
    mac: str


def sign_tenant_token(
    key: bytes, slug: str, ttl_seconds: float, key_name: str = DEFAULT_KEY_NAME
) -> str:
    """Sign an entry token for tenant ``slug``, valid for ``ttl_seconds``.

    Args:
        key: the secret entry key (32 bytes or more), the same bytes given to
            ``tenancy.add_entry_key(key_name, key)``. Keep it out of the
            application's database role and, ideally, out of the process that
            runs the application's SQL.
        slug: the tenant's slug (validated as :func:`pgtenancy.slugs.validate_slug`).
        ttl_seconds: lifetime in seconds (> 0, finite), counted from now;
            issue time and expiry are kept to the millisecond (this host's
            clock). Keep it short (the length of a request, plus clock skew
            between this host and the database).
        key_name: the name the key was added under.

    Returns:
        The token (ASCII text, about 175 characters), issued now. A fresh
        128-bit random nonce makes every token distinct. The database takes
        it for the tenant holding ``slug`` since before now: a tenant created
        or renamed to ``slug`` later refuses it (PT034).

    Raises:
        ValueError: key shorter than 32 bytes, bad key name, ttl not a
            positive finite number.
        pgtenancy.errors.InvalidTenantSlug: invalid slug.
    """
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"entry keys are {MIN_KEY_BYTES} bytes or more")
    if not _KEY_NAME.fullmatch(key_name):
        raise ValueError(f"invalid entry key name {key_name!r}: 1 to 63 of a-z, 0-9, _ and -")
    valid_ttl = isinstance(ttl_seconds, int | float) and math.isfinite(ttl_seconds)
    if not valid_ttl or ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be a positive number of seconds, not {ttl_seconds!r}")
    validate_slug(slug)
    now = time.time()
    issued_ms = int(now * 1000)
    expiry_ms = int((now + ttl_seconds) * 1000)
    body = f"{TOKEN_VERSION}.{key_name}.{slug}.{issued_ms}.{expiry_ms}.{secrets.token_hex(16)}"
    mac = hmac.new(bytes(key), body.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def token_fields(token: str) -> TokenFields:
    """The fields of an entry token, read without verifying it (the database does).

    Args:
        token: an entry token (:func:`sign_tenant_token`).

    Returns:
        Its fields.

    Raises:
        pgtenancy.errors.EntryTokenForged: not an entry token of format
            ``pt2`` (SQLSTATE PT025 would be the database's answer).
    """
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise EntryTokenForged("entry token refused: not a pgtenancy token")
    name, slug, issued, expiry, nonce, mac = match.groups()
    return TokenFields(name, slug, int(issued), int(expiry), nonce, mac)


def token_slug(token: str) -> str:
    """The tenant slug an entry token names, read without verifying it.

    The database verifies the token; this only tells the Python layer which
    tenant context to open.

    Args:
        token: an entry token (:func:`sign_tenant_token`).

    Returns:
        The slug in the token.

    Raises:
        pgtenancy.errors.EntryTokenForged: not an entry token (SQLSTATE PT025
            would be the database's answer).
    """
    return token_fields(token).slug


def resolve_token_tenant(slug: str | None, token: str) -> str:
    """The slug a token entry runs in: the token's, which ``slug`` (if given) must match.

    Args:
        slug: the slug the caller named, or None.
        token: an entry token.

    Returns:
        The token's slug.

    Raises:
        pgtenancy.errors.EntryTokenForged: not an entry token (PT025).
        pgtenancy.errors.EntryTokenWrongTenant: ``slug`` names another tenant
            (PT027); the database refuses the same pair too.
        pgtenancy.errors.InvalidTenantSlug: ``slug`` is invalid.
    """
    named = token_slug(token)
    if slug is not None and validate_slug(slug) != named:
        raise EntryTokenWrongTenant(f"entry token is for tenant {named!r}, not {slug!r}")
    return named
