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

from typing import TYPE_CHECKING, Any

import psycopg

from pgtenancy.events import Event
from pgtenancy.queries import QUERIES

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session


def claim(
    conn: psycopg.Connection[Any] | Connection | Session, receiver: str, event: Event | int
) -> bool:
    """Claim ``event`` for ``receiver`` in the transaction open on ``conn``.

    Args:
        conn: a psycopg connection, SQLAlchemy connection or session, inside
            the transaction that makes the receiver's effect (psycopg and
            SQLAlchemy open one implicitly). The claim is sent through psycopg
            in every case (SQLAlchemy's own psycopg connection for the
            SQLAlchemy ones), so it joins that transaction.
        receiver: the receiver's stable name, normally its ``dispatch_uid``.
        event: the event, or its id.

    Returns:
        True the first time (apply the effect now), False when this receiver
        already applied the event (skip it).

    Raises:
        psycopg.Error: the role lacks EXECUTE on ``tenancy.inbox_claim``
            (granted by grant_listener_role; application roles never have
            it, so they cannot pre-claim events) or the
            database is unreachable.
        TypeError: ``conn`` is none of those, or SQLAlchemy's driver is not psycopg.
    """
    params = {"receiver": receiver, "event_id": event.id if isinstance(event, Event) else event}
    driver = conn if isinstance(conn, psycopg.Connection) else _driver_connection(conn)
    row = driver.execute(QUERIES["inbox_claim"], params).fetchone()
    return bool(row and row[0])


def _driver_connection(conn: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy ``Connection`` or ``Session``,
    with SQLAlchemy's transaction begun on it."""
    sa_conn = conn.connection() if callable(getattr(conn, "connection", None)) else conn
    if hasattr(sa_conn, "in_transaction") and not sa_conn.in_transaction():
        sa_conn.begin()  # as SQLAlchemy's autobegin would, so its commit() commits the claim
    driver = getattr(getattr(sa_conn, "connection", None), "driver_connection", None)
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(
            "claim() needs a psycopg connection, or a SQLAlchemy Connection or Session "
            f"on the psycopg driver; got {type(conn).__name__}"
        )
    return driver
