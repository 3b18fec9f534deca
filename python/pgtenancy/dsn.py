"""Connection strings: accept SQLAlchemy-style URLs where libpq ones are expected."""

from __future__ import annotations

import re

_SQLALCHEMY_DRIVER = re.compile(r"^(postgres(?:ql)?)\+\w+://")


def libpq_dsn(dsn: str) -> str:
    """``dsn`` as libpq understands it.

    Args:
        dsn: a libpq ``key=value`` string, a ``postgresql://`` URL, or a
            SQLAlchemy URL such as ``postgresql+psycopg://user@host/db``.

    Returns:
        The same string with any SQLAlchemy ``+driver`` suffix removed.
    """
    return _SQLALCHEMY_DRIVER.sub(r"\1://", dsn)
