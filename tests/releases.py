"""Earlier releases of pgtenancy, rebuilt from git history (sql/upgrades/RELEASES).

No release is kept as a frozen copy in the tree: each is the state of sql/ at
the commit it was cut from. A release's plain install script is its
``sql/NNN_*.sql`` files concatenated in name order (what its installer ran);
its extension script is the RELEASES entry (a ``commit:path``), or "-" for its
plain script plus its own ``sql/extension/config.sql``.

Run as a script, it writes ``pgtenancy--<release>.sql`` of every earlier
release into an extension directory, so that ``CREATE EXTENSION pgtenancy
VERSION '<release>'`` works for the upgrade tests::

    python tests/releases.py "$(pg_config --sharedir)/extension"
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASES = ROOT / "sql" / "upgrades" / "RELEASES"
GUARD = '\\echo Use "CREATE EXTENSION pgtenancy" to load this file. \\quit\n'


class NoHistory(Exception):
    """Git or the release's commit is not available in this checkout."""


@dataclass(frozen=True)
class Release:
    """One earlier release: its version, commit and extension script source."""

    version: str
    commit: str
    extension: str  # "commit:path", or "-"


def releases() -> list[Release]:
    """The releases listed in sql/upgrades/RELEASES, oldest first."""
    found = []
    for line in RELEASES.read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            version, commit, extension = line.split()
            found.append(Release(version, commit, extension))
    return found


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
        )
    except OSError as exc:
        raise NoHistory(f"git is not available: {exc}") from exc
    if result.returncode != 0:
        raise NoHistory(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def require_history(release: Release) -> None:
    """Raise NoHistory (with the reason) unless the release's commit is in git."""
    _git("cat-file", "-e", f"{release.commit}^{{commit}}")


def schema_files(release: Release) -> list[str]:
    """The texts of the release's sql/NNN_*.sql, in name order."""
    require_history(release)
    names = sorted(
        name
        for name in _git("ls-tree", "--name-only", release.commit, "sql/").split()
        if Path(name).name[:3].isdigit() and name.endswith(".sql")
    )
    return [_git("show", f"{release.commit}:{name}") for name in names]


def plain_script(release: Release) -> str:
    """The release's install script, as its installer joined the files."""
    return "\n".join(schema_files(release))


def extension_script(release: Release) -> str:
    """The script CREATE EXTENSION pgtenancy VERSION '<release>' ran."""
    require_history(release)
    if release.extension != "-":
        return _git("show", release.extension)
    # As that release's sql/Makefile built it: the guard, then cat of the files.
    config = _git("show", f"{release.commit}:sql/extension/config.sql")
    return GUARD + "".join(schema_files(release)) + config


def main(argv: list[str]) -> int:
    """Write every earlier release's extension script into argv[0]."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[0])
    for release in releases():
        try:
            text = extension_script(release)
        except NoHistory as exc:
            print(f"note: pgtenancy {release.version} not built: {exc}", file=sys.stderr)
            continue
        (target / f"pgtenancy--{release.version}.sql").write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
