"""Tenant slug rules, mirrored from ``tenancy.validate_slug()`` for early errors.

The database stays the authority: every path that creates a tenant goes
through the SQL check. This copy only lets Python refuse a bad slug before a
round trip.
"""

from __future__ import annotations

import re
from typing import Final

#: Prefix of every tenant schema name (``tenancy.schema_prefix()``).
SCHEMA_PREFIX: Final = "tenant_"
#: Longest slug whose schema name fits Postgres' 63-byte identifier limit.
MAX_SLUG_LENGTH: Final = 63 - len(SCHEMA_PREFIX)
_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED: Final = frozenset({"public", "tenancy", "information_schema"})
#: Slugs already found valid (the rules never change at run time), so the
#: check on every tenant transaction is one dict lookup; bounded, emptied
#: when full.
_VALID: dict[str, None] = {}
_VALID_MAX: Final = 4096


def validate_slug(slug: object) -> str:
    """Return ``slug`` when it is a valid tenant slug.

    A slug is a lowercase letter followed by lowercase letters, digits or
    ``_``, at most :data:`MAX_SLUG_LENGTH` characters, and not ``public``,
    ``tenancy``, ``information_schema`` or ``pg_*``.

    Args:
        slug: the candidate slug.

    Raises:
        pgtenancy.errors.InvalidTenantSlug: with the reason, as SQLSTATE PT001 would.
    """
    if type(slug) is str and slug in _VALID:
        return slug
    from pgtenancy.errors import InvalidTenantSlug

    if not isinstance(slug, str):
        raise InvalidTenantSlug(f"invalid tenant slug: {slug!r} is not a string")
    if not _PATTERN.fullmatch(slug):
        raise InvalidTenantSlug(
            f"invalid tenant slug {slug!r}: use a lowercase letter, then lowercase letters, "
            'digits or "_"'
        )
    if len(slug) > MAX_SLUG_LENGTH:
        raise InvalidTenantSlug(
            f"invalid tenant slug {slug!r}: longer than {MAX_SLUG_LENGTH} characters"
        )
    if slug in _RESERVED or slug.startswith("pg_"):
        raise InvalidTenantSlug(f"invalid tenant slug {slug!r}: the name is reserved")
    if type(slug) is str:
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID[slug] = None
    return slug


def schema_name(slug: str) -> str:
    """Schema name of the tenant ``slug`` (``tenant_<slug>``), after validation.

    Raises:
        pgtenancy.errors.InvalidTenantSlug: when ``slug`` is invalid.
    """
    return SCHEMA_PREFIX + validate_slug(slug)
