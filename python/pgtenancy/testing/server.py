"""Find or start a PostgreSQL server for the tests, the demo and the benchmarks.

:func:`find_server` tries, in order:

1. an explicit URL: ``TEST_DATABASE_URL``, then ``DATABASE_URL`` (the role
   must be allowed to create databases);
2. a Postgres container through testcontainers, when a Docker daemon answers;
3. a throwaway cluster made with the machine's ``initdb``/``pg_ctl`` in a
   temporary directory, run as a non-root OS user when invoked as root;

and otherwise raises :class:`NoServerError` saying how to provide one.
:func:`fresh_database` creates a uniquely named database on that server
and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgtenancy.errors import TenancyError
from pgtenancy.queries import QUERIES

logger = logging.getLogger("pgtenancy.testing")

#: Image used when a Docker daemon is available.
POSTGRES_IMAGE = os.environ.get("PGTENANCY_POSTGRES_IMAGE", "postgres:15")


class NoServerError(TenancyError, RuntimeError):
    """No PostgreSQL server could be found or started (Python only)."""


HOW_TO = (
    "no PostgreSQL server available. Provide one of: TEST_DATABASE_URL or DATABASE_URL "
    "(e.g. postgresql://postgres@127.0.0.1:5432/postgres, a role allowed to CREATE DATABASE); "
    "a running Docker daemon (testcontainers starts postgres:15); or the PostgreSQL server "
    "binaries (initdb, pg_ctl; Debian: apt-get install postgresql), found via PG_BINDIR, "
    "pg_config --bindir or /usr/lib/postgresql/*/bin."
)


def find_bindir() -> Path | None:
    """Directory with ``initdb`` and ``pg_ctl``: ``PG_BINDIR``, then
    ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


def docker_available() -> bool:
    """True when a Docker daemon answers a ping within a few seconds."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)  # type: ignore[attr-defined]
        client.ping()
        return True
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryCluster:
    """A throwaway PostgreSQL cluster in a temporary directory.

    Args:
        bindir: directory with ``initdb`` and ``pg_ctl``.
        os_user: OS user that owns and runs the cluster when the current user
            is root (initdb refuses root). Default: ``postgres`` if it exists,
            else ``nobody``. Only the temporary directory is given to it.
        settings: server settings given as ``-c name=value`` at every start,
            e.g. ``{"max_prepared_transactions": "10"}``; they win over the
            defaults here (fsync off, 200 connections, ...). Names must be
            PostgreSQL setting names (letters, digits, ``_`` and ``.``);
            values must not contain quotes.

    Raises:
        ValueError: a setting name or value that cannot be passed safely.

    Attributes:
        dsn: URL of the ``postgres`` database as superuser ``postgres``
            (trust authentication, 127.0.0.1 only), set by :meth:`start`.
    """

    def __init__(
        self,
        bindir: Path,
        os_user: str | None = None,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        self.bindir = bindir
        self.os_user = os_user
        self.settings = {str(k): str(v) for k, v in (settings or {}).items()}
        for name, value in self.settings.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name) or re.search(r"['\"\\\s]", value):
                raise ValueError(f"server setting {name!r} = {value!r} cannot be passed to pg_ctl")
        self.base: Path | None = None
        self.dsn = ""
        self._run_as: dict[str, Any] = {}
        self._options = ""

    def _run(self, *args: str) -> None:
        result = subprocess.run(args, capture_output=True, text=True, cwd=self.base, **self._run_as)
        if result.returncode != 0:
            log = ""
            if self.base and (self.base / "server.log").exists():
                log = (self.base / "server.log").read_text(errors="replace")[-2000:]
            raise NoServerError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log}"
            )

    def start(self) -> str:
        """Create and start the cluster; return its admin DSN."""
        self.base = Path(tempfile.mkdtemp(prefix="pgtenancy-pg-"))
        if os.geteuid() == 0:
            name = self.os_user or _default_os_user()
            pw = pwd.getpwnam(name)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._run_as = {
                "user": pw.pw_uid,
                "group": pw.pw_gid,
                "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.base), "USER": name},
            }
            if not str(self.bindir).startswith("/usr/"):
                # Binaries from a wheel or a build tree may sit where the OS
                # user cannot reach them (under /root, say): run a copy.
                # Keep the layout two levels up, where wheels put the shared
                # libraries their RPATH ($ORIGIN/../../../<pkg>.libs) points to.
                install = self.bindir.parent
                root = install.parent.parent
                dest = self.base / "pgroot"
                shutil.copytree(install, dest / install.relative_to(root), symlinks=True)
                for libs in root.glob(f"{install.parent.name}*.libs"):
                    shutil.copytree(libs, dest / libs.name, symlinks=True)
                self.bindir = dest / install.relative_to(root) / self.bindir.name
        data = self.base / "data"
        port = _free_port()
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )
        options = " ".join(
            [
                f"-p {port}",
                f"-k {self.base}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
        )
        self._options = options
        self.server_start()
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return self.dsn

    def server_start(self) -> None:
        """Start the server of a created cluster (after :meth:`server_stop`)."""
        assert self.base is not None, "start() the cluster first"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.base / "data"),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            self._options,
            "start",
        )

    def server_stop(self) -> None:
        """Stop the server (fast shutdown: sessions are disconnected), keeping its data."""
        assert self.base is not None, "start() the cluster first"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "fast", "-w", "stop"
        )

    def stop(self) -> None:
        """Stop the cluster and delete its directory."""
        if self.base is None:
            return
        with contextlib.suppress(NoServerError):
            self.server_stop()
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None


class TemporaryPgBouncer:
    """A throwaway PgBouncer in front of a server, for tests and benchmarks.

    Args:
        server_dsn: DSN of the PostgreSQL server behind it (host and port are used).
        users: role names clients may connect as (trust authentication).
        pool_mode: ``transaction`` (default), ``session`` or ``statement``.
        pool_size: server connections per database/user pair.
        os_user: OS user to run as when root (PgBouncer refuses root); default
            ``postgres`` if it exists, else ``nobody``.

    Attributes:
        port: the port it listens on (127.0.0.1), set by :meth:`start`.
    """

    def __init__(
        self,
        server_dsn: str,
        users: list[str],
        *,
        pool_mode: str = "transaction",
        pool_size: int = 2,
        os_user: str | None = None,
    ) -> None:
        self.server = conninfo_to_dict(server_dsn)
        self.users = users
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.os_user = os_user
        self.base: Path | None = None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        """Path of the ``pgbouncer`` executable, or None when not installed."""
        return shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
        )

    def dsn(self, dsn: str) -> str:
        """``dsn`` rewritten to go through this PgBouncer (same database and user)."""
        params = conninfo_to_dict(dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo("", **params)

    def start(self) -> None:
        """Write the configuration, start PgBouncer and wait until it accepts connections.

        Raises:
            NoServerError: PgBouncer is not installed or did not start.
        """
        exe = self.binary()
        if exe is None:
            raise NoServerError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.base = Path(tempfile.mkdtemp(prefix="pgtenancy-pgbouncer-"))
        self.port = _free_port()
        users = "\n".join(f'"{u}" ""' for u in self.users)
        (self.base / "users.txt").write_text(users + "\n")
        host, port = self.server.get("host", "127.0.0.1"), self.server.get("port", 5432)
        (self.base / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.base / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\ndefault_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\nreserve_pool_size = 0\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.base / 'pgbouncer.log'}\n"
        )
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.os_user or _default_os_user())
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            for f in self.base.iterdir():
                os.chown(f, pw.pw_uid, pw.pw_gid)
            run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self._proc = subprocess.Popen(
            [exe, str(self.base / "pgbouncer.ini")],
            cwd=self.base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **run_as,
        )
        for _ in range(100):
            if self._proc.poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        log = (self.base / "pgbouncer.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise NoServerError(f"pgbouncer did not start:\n{log}")

    def stop(self) -> None:
        """Stop PgBouncer and delete its directory."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


def _default_os_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise NoServerError("running as root and no 'postgres' or 'nobody' OS user to run initdb")


@contextlib.contextmanager
def find_server(*, env: tuple[str, ...] = ("TEST_DATABASE_URL", "DATABASE_URL")) -> Iterator[str]:
    """Yield the admin DSN of a PostgreSQL server, starting one if needed.

    Args:
        env: environment variables that may hold an explicit URL, in order.

    Yields:
        A DSN whose role may create databases.

    Raises:
        NoServerError: nothing found; the message says how to provide a server.
    """
    for var in env:
        if os.environ.get(var):
            logger.info("using the server of $%s", var)
            yield os.environ[var]
            return
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        logger.info("starting %s with testcontainers", POSTGRES_IMAGE)
        with PostgresContainer(POSTGRES_IMAGE, driver=None) as pg:
            yield str(pg.get_connection_url())
        return
    bindir = find_bindir()
    if bindir is None:
        raise NoServerError(HOW_TO)
    logger.info("starting a throwaway cluster with %s", bindir)
    cluster = TemporaryCluster(bindir)
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.stop()


def with_dbname(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at database ``dbname`` instead."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def create_database(admin_dsn: str, prefix: str = "pgtenancy", template: str | None = None) -> str:
    """Create a uniquely named database; return its DSN.

    Args:
        admin_dsn: DSN of a role allowed to create databases.
        prefix: start of the database name (a random suffix follows).
        template: database to copy, or None for the server default.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        else:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    return with_dbname(admin_dsn, name)


def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database of ``dsn``, disconnecting its sessions first, and the
    roles pgtenancy made for it (the migrator, the tenants' group and the
    tenants' owner roles) that no other database still uses."""
    name = str(conninfo_to_dict(dsn)["dbname"])
    migrator = None
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT migrator_role FROM tenancy.confinement"
            " WHERE pg_catalog.to_regclass('tenancy.confinement') IS NOT NULL"
        ).fetchone()
        migrator = None if row is None else str(row[0])
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if migrator is not None:
            # A database copied from this one may still use a role: keep it then.
            roles = [
                str(r[0])
                for r in conn.execute(QUERIES["testing_kit_roles"], {"migrator": migrator})
            ]
            for role in [*roles, migrator]:
                with contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@contextlib.contextmanager
def fresh_database(
    admin_dsn: str, prefix: str = "pgtenancy", template: str | None = None
) -> Iterator[str]:
    """Create a uniquely named database, yield its DSN, drop it afterwards."""
    dsn = create_database(admin_dsn, prefix, template)
    try:
        yield dsn
    finally:
        drop_database(admin_dsn, dsn)
