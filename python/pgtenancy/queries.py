"""The SQL the Python layer sends, loaded by name from ``sql/queries.sql``.

Each query sits in that file under a ``-- name: <name>`` header; Python code
refers to queries only through :data:`QUERIES`, so no module builds SQL text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """Directory holding the kit's SQL files.

    Returns:
        ``pgtenancy/sql`` inside an installed wheel, or the repository's ``sql/``
        for a source checkout or editable install.

    Raises:
        FileNotFoundError: when neither exists.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError(f"pgtenancy SQL files not found next to {here}")


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


QUERIES: Final[dict[str, str]] = load_queries((sql_dir() / "queries.sql").read_text("utf-8"))
