"""Build hook: ship only the SQL files the package reads at run time.

The wheel gets, under ``pgtenancy/sql/``: the install scripts
(``sql/[0-9]*.sql``), the upgrade deltas (``sql/upgrades/*.sql``),
``queries.sql`` and ``uninstall.sql``. Not shipped: the extension's Makefile
and control file, generated ``sql/pgtenancy--*.sql`` build outputs, and
anything else under ``sql/``. Globs rather than a list, so a new install file
or upgrade ships without touching this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

RUNTIME_SQL = ("[0-9]*.sql", "upgrades/*.sql", "queries.sql", "uninstall.sql")


def runtime_sql_files(root: Path) -> list[Path]:
    """The SQL files under ``root/sql`` that the package reads at run time."""
    sql = root / "sql"
    found = {p for pattern in RUNTIME_SQL for p in sql.glob(pattern) if p.is_file()}
    return sorted(found)


class RuntimeSqlHook(BuildHookInterface):  # type: ignore[type-arg]
    """Add the run-time SQL files to the wheel as package data."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return  # an editable install reads the repository's sql/ directly
        root = Path(self.root)
        for path in runtime_sql_files(root):
            build_data["force_include"][str(path)] = (
                f"pgtenancy/sql/{path.relative_to(root / 'sql').as_posix()}"
            )
