"""Every SQLSTATE is declared once: the SQL's ERRCODEs, the exception classes
and the README's error table agree; every exception of the kit is a
TenancyError and survives pickling. No database needed."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import re
from datetime import UTC, datetime
from typing import Any

import pytest

import pgtenancy
from helpers import ROOT
from pgtenancy import errors
from pgtenancy.errors import BY_SQLSTATE, TenancyError, UninstallIncomplete, VersionMismatch
from pgtenancy.events import Event, TenantRef
from pgtenancy.fastapi import TenantRefused
from pgtenancy.listener import ReceiverFailed
from pgtenancy.migration_files import MigrationCheckError
from pgtenancy.sqlscript import ScriptError
from pgtenancy.templates import TemplateError
from pgtenancy.testing import NoServerError

#: Exceptions defined outside pgtenancy.errors, by name.

ELSEWHERE: dict[str, type[TenancyError]] = {
    c.__name__: c
    for c in (
        MigrationCheckError,
        ScriptError,
        ReceiverFailed,
        NoServerError,
        TemplateError,
        TenantRefused,
    )
}

SQL_FILES = sorted([*ROOT.glob("sql/*.sql"), *ROOT.glob("sql/upgrades/*.sql")])
ERRCODE = re.compile(r"ERRCODE\s*=\s*'(PT[0-9A-Z]{3})'")

#: Codes raised and caught inside one SQL function, never seen by callers.
INTERNAL = {"PTZ00"}
#: Codes whose class exists before the SQL that raises them has landed
#: (issue 14: PT017 from the lead's migration guard, PT018 from the install
#: scripts). The test fails once such a code appears in sql/, so this set
#: cannot go stale: drop the code from it then.
AWAITING_SQL: set[str] = set()


def sql_codes() -> dict[str, list[str]]:
    """ERRCODE 'PT...' -> files raising it, over sql/*.sql and sql/upgrades/*.sql."""
    found: dict[str, list[str]] = {}
    for path in SQL_FILES:
        for code in ERRCODE.findall(path.read_text("utf-8")):
            found.setdefault(code, []).append(str(path.relative_to(ROOT / "sql")))
    return found


def readme_rows() -> list[tuple[str, str]]:
    """(SQLSTATE cell, exception name) of every row of README's error table."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("### Errors", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`"):
            continue
        rows.append((cells[0].strip("`"), cells[1].strip("`")))
    return rows


def kit_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in a pgtenancy module."""
    for info in pkgutil.walk_packages(pgtenancy.__path__, "pgtenancy."):
        importlib.import_module(info.name)
    found: dict[str, type[BaseException]] = {}
    for name, module in list(importlib.sys.modules.items()):  # type: ignore[attr-defined]
        if not (name == "pgtenancy" or name.startswith("pgtenancy.")) or module is None:
            continue
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("pgtenancy")
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_sql_code_has_one_class_and_one_readme_row() -> None:
    rows = readme_rows()
    errors_source = inspect.getsource(errors)
    for code in sorted(set(sql_codes()) - INTERNAL):
        assert code in BY_SQLSTATE, f"{code} is raised in sql/ but has no exception class"
        assert errors_source.count(f'sqlstate = "{code}"') == 1, code
        named = [name for cell, name in rows if cell == code]
        assert named == [BY_SQLSTATE[code].__name__], f"README rows for {code}: {named}"


def test_every_class_and_row_has_a_code_used_in_sql_or_is_python_only() -> None:
    used = set(sql_codes())
    assert not (AWAITING_SQL & used), "the SQL has landed: remove these from AWAITING_SQL"
    for code, cls in BY_SQLSTATE.items():
        assert code in used | AWAITING_SQL, f"{cls.__name__} declares {code}, raised nowhere"
    rows = readme_rows()
    names = [name for _, name in rows]
    assert len(names) == len(set(names)), "an exception has two README rows"
    for cell, name in rows:
        cls = getattr(errors, name, None) or ELSEWHERE[name]
        assert issubclass(cls, TenancyError), name
        if re.fullmatch(r"PT[0-9A-Z]{3}", cell):
            assert BY_SQLSTATE.get(cell) is cls, (cell, name)
        else:
            # Python only ("—"), or detected from PostgreSQL's own codes.
            assert cls.sqlstate is None, name
    for code in INTERNAL:
        raising = sql_codes()[code]
        assert all(f"WHEN SQLSTATE '{code}'" in (ROOT / "sql" / f).read_text() for f in raising)


def test_every_kit_exception_is_a_tenancy_error_with_a_readme_row() -> None:
    documented = {name for _, name in readme_rows()}
    classes = kit_exceptions()
    assert {MigrationCheckError, ScriptError, VersionMismatch} <= set(classes)
    for cls in classes:
        assert issubclass(cls, TenancyError), f"{cls.__module__}.{cls.__name__}"
        if cls is not TenancyError:
            assert cls.__name__ in documented, f"{cls.__name__} is not in README's error table"


def a_receiver(sender: str, **kwargs: Any) -> None:
    """A receiver to name in ReceiverFailed (pickled by reference)."""


def _instance(cls: type[TenancyError]) -> TenancyError:
    event = Event(7, "tenant_created", datetime.now(UTC), 42, TenantRef("acme", None, None, None))
    special: dict[type[Any], Any] = {
        ReceiverFailed: lambda: ReceiverFailed(event, [(a_receiver, ValueError("boom"))]),
        NoServerError: lambda: NoServerError("no PostgreSQL server available"),
        MigrationCheckError: lambda: MigrationCheckError("0002_x.sql", 3, "drops a shared table"),
        ScriptError: lambda: ScriptError("syntax error at or near ')'", 7),
        VersionMismatch: lambda: VersionMismatch("0.1.0", "0.3.0"),
        TemplateError: lambda: TemplateError([(3, "names public.x"), (9, "a rule")]),
        UninstallIncomplete: lambda: UninstallIncomplete(3, TenancyError("view mine uses it")),
    }
    if cls in special:
        return special[cls]()  # type: ignore[no-any-return]
    return cls("something failed", sqlstate=cls.sqlstate or "42883", detail="d", hint="h")


@pytest.mark.parametrize("cls", kit_exceptions(), ids=lambda c: c.__name__)
def test_every_kit_exception_survives_pickling(cls: type[TenancyError]) -> None:
    exc = _instance(cls)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is cls
    assert str(again) == str(exc)
    assert again.args == exc.args
    if isinstance(again, ReceiverFailed) and isinstance(exc, ReceiverFailed):
        # Exceptions compare by identity: compare what they say.
        assert [(r, repr(e)) for r, e in again.errors] == [(r, repr(e)) for r, e in exc.errors]
        assert again.event == exc.event
    else:
        assert vars(again) == vars(exc)
    assert again.sqlstate == exc.sqlstate


def test_codes_register_once_and_lookup_finds_them() -> None:
    assert errors.lookup("PT004") is errors.TenantSuspended
    assert errors.lookup("PT999") is None
    with pytest.raises(TypeError, match="PT004 is declared by TenantSuspended already"):
        type("Again", (TenancyError,), {"sqlstate": "PT004"})
    assert errors.lookup("PT004") is errors.TenantSuspended
    assert errors.TenantSuspended("x").sqlstate == "PT004"


def test_version_mismatch_says_which_side_to_upgrade() -> None:
    older_sql = VersionMismatch("0.2.0", "0.3.0")
    assert older_sql.installed == "0.2.0" and older_sql.expected == "0.3.0"
    assert "pgtenancy SQL 0.2.0 is installed, but this Python package is 0.3.0" in str(older_sql)
    assert "pgtenancy install" in str(older_sql)
    newer_sql = VersionMismatch("0.10.0", "0.3.0")
    assert "install pgtenancy 0.10.0 or later in Python" in str(newer_sql)
    assert VersionMismatch("0.1.0").expected == pgtenancy.__version__
