"""Upgrades from every earlier release (sql/upgrades/RELEASES), rebuilt from git.

Each release is installed as it shipped (its sql/NNN_*.sql at its commit, or
its extension script), used through its own API (tenants, events, a consumer
part-way, application and listener roles), then upgraded: by `pgtenancy
install` (the deltas of sql/upgrades/) and by ALTER EXTENSION pgtenancy UPDATE
(the same deltas as pgtenancy--<from>--<to>.sql). The full catalog of schema
tenancy must then equal a fresh install's, with the same roles granted, and
the data must have survived. Skipped, with the reason, without git history.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql as pgsql

from catalog import catalog, differences
from pgtenancy import (
    SQL_VERSION,
    Listener,
    Tenancy,
    TenancyError,
    install,
    installed_version,
    uninstall,
)
from pgtenancy import installer as installer_module
from pgtenancy.signals import tenant_created, tenant_suspended
from pgtenancy.testing import fresh_database
from releases import NoHistory, Release, extension_script, plain_script, releases

# Waits for event delivery: a stranger's transaction must not hold it back.
pytestmark = pytest.mark.own_server

RELEASES = releases()


def release_or_skip(release: Release, extension: bool = False) -> str:
    try:
        return extension_script(release) if extension else plain_script(release)
    except NoHistory as exc:
        pytest.skip(f"pgtenancy {release.version} cannot be rebuilt from git: {exc}")


@pytest.fixture
def roles(admin_dsn: str) -> Iterator[tuple[str, str]]:
    """An application role and a listener role (cluster-wide), dropped afterwards."""
    names = (f"pgt_up_app_{uuid.uuid4().hex[:8]}", f"pgt_up_lis_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(
                pgsql.SQL("CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS").format(
                    pgsql.Identifier(name)
                )
            )
    yield names
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def grant_roles(dsn: str, roles: tuple[str, str]) -> bool:
    """Grant the roles with the functions of the installed version, if it has
    them (0.1.0 has not); True when both were granted."""
    granted = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for function, role in zip(("grant_app_role", "grant_listener_role"), roles, strict=True):
            present = conn.execute(
                "SELECT to_regprocedure(%s) IS NOT NULL", (f"tenancy.{function}(name)",)
            ).fetchone()
            if present is not None and present[0]:
                conn.execute(
                    pgsql.SQL("SELECT tenancy.{}(%s)").format(pgsql.Identifier(function)),
                    (role,),
                )
                granted += 1
    return granted == 2


def revoke_roles(dsn: str, roles: tuple[str, str]) -> None:
    """Take every privilege of the roles in this database away (so they can be dropped)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in roles:
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(role)))


def populate(dsn: str, version: str) -> tuple[int, int]:
    """Use the release's API (positional calls, as every release takes them): a
    migration, tenants, a suspension, tenant data, a consumer part-way."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT tenancy.version()").fetchone() == (version,)
        conn.execute(
            "SELECT tenancy.add_migration('0001', 'CREATE TABLE note (id int PRIMARY KEY)')"
        )
        conn.execute("SELECT tenancy.create_tenant('acme')")
        conn.execute("SELECT tenancy.create_tenant('globex')")
        conn.execute("SELECT tenancy.suspend_tenant('globex')")
        with conn.transaction():
            conn.execute("SELECT tenancy.enter_tenant('acme')")
            conn.execute("INSERT INTO note VALUES (1)")
        conn.execute("SELECT tenancy.register_consumer('billing')")
        # The first event, once readable (a transaction open elsewhere on the
        # server holds it back for a while).
        deadline = time.monotonic() + 60
        while True:
            first = conn.execute(
                "SELECT xid::text, id FROM tenancy.next_events('billing', 1)"
            ).fetchone()
            if first is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert first is not None
        conn.execute("SELECT tenancy.advance_consumer('billing', %s::xid8, %s)", first)
        count = conn.execute("SELECT count(*) FROM tenancy.events").fetchone()
        assert count is not None
    return int(first[1]), int(count[0])


def assert_same_catalog(upgraded: str, fresh: str) -> None:
    diff = differences(catalog(upgraded), catalog(fresh))
    assert diff == [], "the upgraded catalog differs from a fresh install:\n" + "\n".join(diff)


def check_data(dsn: str, cursor_id: int, events: int) -> None:
    """Tenants, events and the cursor survived; the current API works on them."""
    assert installed_version(dsn) == SQL_VERSION
    tenancy = Tenancy(dsn)
    assert [(t.slug, t.status, t.migration_version) for t in tenancy.list_tenants()] == [
        ("acme", "active", "0001"),
        ("globex", "suspended", "0001"),
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM tenancy.events").fetchone() == (events,)
        assert conn.execute(
            "SELECT last_id FROM tenancy.consumers WHERE name = 'billing'"
        ).fetchone() == (cursor_id,)
        with conn.transaction():
            conn.execute("SELECT tenancy.enter_tenant(slug => 'acme')")
            assert conn.execute("SELECT id FROM note").fetchall() == [(1,)]
        conn.execute("CREATE TABLE public.orders (id serial PRIMARY KEY, item text)")
        conn.execute("SELECT tenancy.enable_rls(table_name => 'public.orders')")
        conn.execute("SELECT tenancy.track_changes(table_name => 'tenant_acme.note')")
        conn.execute("SELECT tenancy.create_tenant('hooli', isolation => 'shared')")
    # The consumer resumes from its old cursor: everything after it arrives.
    got: list[str] = []

    def on_event(sender: str, event: object, **kwargs: object) -> None:
        got.append(f"{getattr(event, 'name', '?')}:{sender}")

    tenant_created.connect(on_event)
    tenant_suspended.connect(on_event)
    listener = Listener(dsn, "billing", poll_interval=0.1)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.stop()
        thread.join(10)
        tenant_created.disconnect(on_event)
        tenant_suspended.disconnect(on_event)
    assert got == ["tenant_created:globex", "tenant_suspended:globex", "tenant_created:hooli"]
    tenancy.engine.dispose()


def test_every_release_has_an_upgrade_path() -> None:
    assert [r.version for r in RELEASES] == sorted(
        (r.version for r in RELEASES), key=installer_module.version_key
    )
    assert RELEASES and installer_module.version_key(RELEASES[-1].version) < (
        installer_module.version_key(SQL_VERSION)
    )
    for release in RELEASES:
        chain = installer_module.upgrade_path(release.version)
        assert chain[0][0] == release.version and chain[-1][1] == SQL_VERSION
    assert installer_module.upgrade_path("0.1.0") == [("0.1.0", "0.2.0"), ("0.2.0", "0.3.0")]


@pytest.mark.parametrize("release", RELEASES, ids=[r.version for r in RELEASES])
def test_plain_install_upgrades_to_a_fresh_install(
    release: Release, empty_dsn: str, dsn: str, roles: tuple[str, str]
) -> None:
    script = release_or_skip(release)
    with psycopg.connect(empty_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(script.encode())
    cursor_id, events = populate(empty_dsn, release.version)
    # The delta keeps the grants made before; a release without the grant
    # functions gets them granted now.
    if not grant_roles(empty_dsn, roles):
        assert install(empty_dsn) == SQL_VERSION
        grant_roles(empty_dsn, roles)
    else:
        assert install(empty_dsn) == SQL_VERSION
    grant_roles(dsn, roles)
    try:
        assert_same_catalog(empty_dsn, dsn)
        # A second install of the same version changes nothing.
        assert install(empty_dsn) == SQL_VERSION
        assert_same_catalog(empty_dsn, dsn)
        check_data(empty_dsn, cursor_id, events)
    finally:
        revoke_roles(empty_dsn, roles)
        revoke_roles(dsn, roles)


def test_the_comparison_sees_a_line_missing_from_a_delta(
    empty_dsn: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade test can fail: a delta without one REVOKE gives a different catalog."""
    release = RELEASES[-1]
    script = release_or_skip(release)
    real = installer_module.upgrade_script(release.version)
    line = "REVOKE ALL ON FUNCTION tenancy.create_tenant(text, jsonb, text) FROM PUBLIC;"
    assert line in real
    monkeypatch.setattr(
        installer_module, "upgrade_script", lambda installed: real.replace(line, "")
    )
    with psycopg.connect(empty_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(script.encode())
    install(empty_dsn)
    diff = differences(catalog(empty_dsn), catalog(dsn))
    assert len(diff) == 1 and "tenancy.create_tenant(text,jsonb,text)" in diff[0], diff


def available_versions(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {
            str(r[0])
            for r in conn.execute(
                "SELECT version FROM pg_available_extension_versions WHERE name = 'pgtenancy'"
            )
        }


def extension_config(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c::regclass::text FROM pg_extension AS e, unnest(e.extconfig) AS c "
            "WHERE e.extname = 'pgtenancy' ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


@pytest.mark.parametrize("release", RELEASES, ids=[r.version for r in RELEASES])
def test_extension_upgrades_with_alter_extension(
    release: Release, empty_dsn: str, admin_dsn: str, roles: tuple[str, str]
) -> None:
    versions = available_versions(empty_dsn)
    if SQL_VERSION not in versions:
        pytest.skip(
            f"the pgtenancy {SQL_VERSION} extension is not installed (make install-extension)"
        )
    if release.version not in versions:
        pytest.skip(
            f"the pgtenancy {release.version} extension script is not installed "
            "(make install-extension-releases, as root, with git history)"
        )
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE EXTENSION pgtenancy VERSION {}").format(
                pgsql.Literal(release.version)
            )
        )
    cursor_id, events = populate(empty_dsn, release.version)
    granted_before = grant_roles(empty_dsn, roles)
    # The plain installer leaves an extension to ALTER EXTENSION, changing nothing.
    with pytest.raises(TenancyError, match="ALTER EXTENSION pgtenancy UPDATE"):
        install(empty_dsn)
    assert installed_version(empty_dsn) == release.version
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("ALTER EXTENSION pgtenancy UPDATE")
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pgtenancy'"
        ).fetchone() == (SQL_VERSION,)
    if not granted_before:
        grant_roles(empty_dsn, roles)
    with fresh_database(admin_dsn, "pgtenancy_extfresh") as fresh:
        with psycopg.connect(fresh, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgtenancy")
        grant_roles(fresh, roles)
        try:
            assert_same_catalog(empty_dsn, fresh)
            assert extension_config(empty_dsn) == extension_config(fresh)
        finally:
            revoke_roles(fresh, roles)
    try:
        check_data(empty_dsn, cursor_id, events)
    finally:
        revoke_roles(empty_dsn, roles)


def test_a_release_missing_from_git_is_reported_not_guessed() -> None:
    """Without the release's commit (a shallow clone, no .git) the tests skip with this reason."""
    gone = Release("0.0.1", "0" * 40, "-")
    with pytest.raises(NoHistory, match="0000000000"):
        plain_script(gone)
    with pytest.raises(NoHistory):
        extension_script(gone)


@pytest.mark.parametrize(
    "release", [r for r in RELEASES if r.version == "0.2.0"], ids=lambda r: r.version
)
def test_entry_before_the_upgrade_says_to_upgrade(release: Release, empty_dsn: str) -> None:
    """This package enters with CALL tenancy.enter, which 0.2.0's SQL lacks: the
    entry says which side to upgrade (VersionMismatch, not NotInstalled), and the
    connection is left idle and usable."""
    from pgtenancy import VersionMismatch, tenant_connection

    script = release_or_skip(release)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(script.encode())
        conn.execute("SELECT tenancy.create_tenant('acme')")
    with psycopg.connect(empty_dsn) as conn:
        with pytest.raises(VersionMismatch) as caught, tenant_connection(conn, "acme"):
            pass
        assert caught.value.installed == "0.2.0" and "pgtenancy install" in str(caught.value)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert install(empty_dsn) == SQL_VERSION
    with psycopg.connect(empty_dsn) as conn, tenant_connection(conn, "acme") as c:
        assert c.execute("SELECT tenancy.current_tenant()").fetchone() == ("acme",)


@pytest.mark.parametrize(
    "release", [r for r in RELEASES if r.version == "0.2.0"], ids=lambda r: r.version
)
def test_uninstall_drop_tenants_of_an_older_kit(release: Release, empty_dsn: str) -> None:
    """Review: uninstall --drop-tenants called tenancy.drop_tenant_role for each
    schema it dropped, which 0.2.0's SQL lacks (it made no owner roles): the
    uninstall of a 0.2.0 kit failed. It drops the schemas and the kit."""
    script = release_or_skip(release)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(script.encode())
        conn.execute("SELECT tenancy.create_tenant('acme')")
        conn.execute("SELECT tenancy.create_tenant('globex')")
    uninstall(empty_dsn, drop_tenants=True)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('tenancy', 'tenant_acme',"
            " 'tenant_globex')"
        ).fetchone() == (0,)
