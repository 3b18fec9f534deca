"""The inbox: effectively-once effects for receivers that write to this database.

Delivery is at least once. A receiver whose effect is a write in the same
database claims the event in the transaction of that write::

    from pgtenancy.inbox import claim

    @receiver(tenant_created, dispatch_uid="billing.open_account")
    def open_account(sender, tenant, event, **kwargs):
        with psycopg.connect(DSN) as conn:                 # one transaction
            if not claim(conn, "billing.open_account", event):
                return                                     # applied before: skip
            conn.execute("INSERT INTO accounts ...")       # commits with the claim

A redelivered event finds the claim and is skipped; if the transaction rolls
back, the claim goes with it and the next delivery applies the effect.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from pgtenancy.events import Event
from pgtenancy.queries import QUERIES


def claim(
    conn: psycopg.Connection[Any] | Connection | Session, receiver: str, event: Event | int
) -> bool:
    """Claim ``event`` for ``receiver`` in the transaction open on ``conn``.

    Args:
        conn: a psycopg connection, SQLAlchemy connection or session, inside
            the transaction that makes the receiver's effect (psycopg and
            SQLAlchemy open one implicitly).
        receiver: the receiver's stable name, normally its ``dispatch_uid``.
        event: the event, or its id.

    Returns:
        True the first time (apply the effect now), False when this receiver
        already applied the event (skip it).

    Raises:
        psycopg.Error / sqlalchemy.exc.DBAPIError: the role lacks EXECUTE on
            ``tenancy.inbox_claim`` (granted by grant_app_role and
            grant_listener_role) or the database is unreachable.
    """
    params = {"receiver": receiver, "event_id": event.id if isinstance(event, Event) else event}
    if isinstance(conn, psycopg.Connection):
        row = conn.execute(QUERIES["inbox_claim"], params).fetchone()
        return bool(row and row[0])
    bind = conn.connection() if isinstance(conn, Session) else conn
    return bool(bind.exec_driver_sql(QUERIES["inbox_claim"], params).scalar())
