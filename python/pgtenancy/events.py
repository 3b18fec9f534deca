"""Lifecycle events as Python values, read from the ``tenancy.events`` outbox."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TenantRef:
    """The tenant an event is about, as it was when the event was written.

    Attributes:
        slug: tenant slug.
        id: tenant id.
        schema: tenant schema name.
        status: ``active``, ``suspended`` or ``deleted``.
    """

    slug: str
    id: uuid.UUID | None
    schema: str | None
    status: str | None


@dataclass(frozen=True)
class Event:
    """One outbox event.

    Attributes:
        id: unique, increasing event id; use it as the idempotency key.
        name: event name, such as ``tenant_created``.
        time: when the event was written (server clock, UTC-aware).
        xid: id of the transaction that wrote it.
        tenant: the tenant it is about.
        payload: event-specific data (JSON object), e.g. ``versions`` for
            ``tenant_migrated``, ``destroyed`` for ``tenant_deleted``.
    """

    id: int
    name: str
    time: datetime
    xid: int
    tenant: TenantRef
    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        """Build an event from a row of the ``next_events`` query (a mapping)."""
        return cls(
            id=int(row["id"]),
            name=str(row["name"]),
            time=row["created_at"],
            xid=int(row["xid"]),
            tenant=TenantRef(
                slug=row["tenant_slug"],
                id=row["tenant_id"],
                schema=row["tenant_schema"],
                status=row["tenant_status"],
            ),
            payload=dict(row["payload"] or {}),
        )
