"""The SQL the Python layer sends, loaded by name from ``sql/queries.sql``.

Each query sits in that file under a ``-- name: <name>`` header; Python code
refers to queries only through :data:`QUERIES`, so no module builds SQL text.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_resources() -> Traversable:
    """The kit's SQL files as an :mod:`importlib.resources` tree.

    Returns:
        ``pgtenancy/sql`` package data in an installed wheel (only the files
        read at run time ship there: install scripts, ``upgrades/``,
        ``queries.sql``, ``uninstall.sql``). In a source checkout or an
        editable install, which keep the SQL in the repository's top-level
        ``sql/``, that directory.

    Raises:
        FileNotFoundError: neither holds ``queries.sql``.
    """
    packaged = resources.files("pgtenancy").joinpath("sql")
    if packaged.joinpath("queries.sql").is_file():
        return packaged
    # A source tree: python/pgtenancy/ sits two levels below the repository.
    source = Path(__file__).resolve().parents[2] / "sql"
    if (source / "queries.sql").is_file():
        return source
    raise FileNotFoundError("pgtenancy SQL files not found: no pgtenancy/sql, no source sql/")


def read_sql(name: str) -> str:
    """The text of one SQL file of the kit.

    Args:
        name: path relative to the SQL directory, ``/``-separated, e.g.
            ``"queries.sql"`` or ``"upgrades/0.2.0--0.3.0.sql"``.

    Raises:
        FileNotFoundError: no such file.
    """
    node = sql_resources()
    for part in name.split("/"):
        node = node.joinpath(part)
    return node.read_text("utf-8")


def sql_dir() -> Path:
    """Directory holding the kit's SQL files, on the file system.

    Returns:
        The directory :func:`sql_resources` found (a wheel installed into a
        site-packages directory, or the source tree's ``sql/``).

    Raises:
        FileNotFoundError: the SQL is not on the file system (a zipped install:
            use :func:`read_sql`), or not found at all.
    """
    found = sql_resources()
    if not isinstance(found, Path):
        raise FileNotFoundError(f"pgtenancy SQL files are not on the file system ({found})")
    return found


def load_queries(text: str) -> dict[str, str]:
    """Split ``queries.sql``-style text into ``{name: sql}``.

    Args:
        text: SQL text in which every query follows a ``-- name: <name>`` line.

    Returns:
        A dict from query name to its SQL, stripped, comments before the first
        header dropped.

    Raises:
        ValueError: when a name occurs twice or a query is empty.
    """
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = body.strip()
        if not sql:
            raise ValueError(f"query {name!r} is empty")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = sql
    return queries


QUERIES: Final[dict[str, str]] = load_queries(read_sql("queries.sql"))
