"""Helpers for testing code that uses pgtenancy: a real PostgreSQL server.

:func:`find_server` finds or starts one (an explicit URL, a testcontainers
Postgres, or a throwaway cluster from the machine's binaries);
:func:`fresh_database` makes a database on it and drops it afterwards;
:class:`TemporaryCluster` and :class:`TemporaryPgBouncer` run throwaway
servers. Nothing here is imported by ``import pgtenancy``.
"""

from __future__ import annotations

from pgtenancy.testing.server import (
    HOW_TO,
    POSTGRES_IMAGE,
    NoServerError,
    TemporaryCluster,
    TemporaryPgBouncer,
    create_database,
    docker_available,
    drop_database,
    find_bindir,
    find_server,
    fresh_database,
    with_dbname,
)

__all__ = [
    "HOW_TO",
    "POSTGRES_IMAGE",
    "NoServerError",
    "TemporaryCluster",
    "TemporaryPgBouncer",
    "create_database",
    "docker_available",
    "drop_database",
    "find_bindir",
    "find_server",
    "fresh_database",
    "with_dbname",
]
