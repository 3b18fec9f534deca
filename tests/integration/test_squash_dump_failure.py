"""``pgtenancy migrate squash`` when pg_dump of the replay fails: the squash
is refused with ``BaselineRefused`` (PT032) naming the version and carrying
pg_dump's own error, through the Python API and the CLI, and nothing changes
(no baseline, the migrations and tenants as they were, no scratch schema
``tenancy_check_baseline`` or scratch state left, no new role).

pg_dump really fails here, on a real server, with no stand-in binary: the
kit is installed by an owner that is neither a superuser nor BYPASSRLS, and
the history forces row-level security on a table that holds a row. pg_dump
reads rows with ``row_security`` off, so a query of that table that a policy
would filter is an error (the owner role may see the table's rows as a
member of its owner, but FORCE applies the policy to owners too). The
history up to the migration before the policy squashes afterwards: the
refusal left nothing in the way.

The owner roles of the scratch schemas (``tenancy.tenant_role`` of
``tenancy_check_baseline`` and of a baseline's try schema), which the replay
and the baseline's check make, go with their schemas: a squash, refused or
registered, leaves no role (every squash left them once)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from helpers import as_role, run_cli
from pgtenancy import Tenancy, install
from pgtenancy.errors import BaselineRefused
from pgtenancy.fleet import BASELINE_REFERENCE_SCHEMA, squash_migrations
from pgtenancy.queries import QUERIES
from pgtenancy.testing import fresh_database

MIGRATIONS = [
    ("0001", "CREATE TABLE note (id integer PRIMARY KEY, body text NOT NULL);"),
    # A seeded row: baselines carry rows, so pg_dump reads this table.
    ("0002", "INSERT INTO note VALUES (1, 'seed');"),
    (
        "0003",
        "ALTER TABLE note ENABLE ROW LEVEL SECURITY;\n"
        "ALTER TABLE note FORCE ROW LEVEL SECURITY;\n"
        "CREATE POLICY note_visible ON note USING (body <> 'hidden');",
    ),
]
THROUGH = "0003"
#: pg_dump's own words (PostgreSQL's error for a query under row_security off).
PG_DUMP_ERROR = 'query would be affected by row-level security policy for table "note"'


@pytest.fixture
def owner_dsn(admin_dsn: str) -> Iterator[tuple[str, str]]:
    """A fresh database with the kit installed by a login role that is not a
    superuser and has no BYPASSRLS (CREATEROLE and CREATE on the database,
    what the install needs); yields (superuser DSN, owner DSN). The database,
    the kit's roles and the owner role are dropped afterwards."""
    owner = f"pgtenancy_own_{uuid.uuid4().hex[:10]}"
    ident = pgsql.Identifier(owner)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS CREATEROLE").format(ident)
        )
    try:
        # Dropped (with the migrator, tenant group and tenant owner roles the
        # install made) before the owner role, which owns the kit's schema.
        with fresh_database(admin_dsn, "pgtenancy_squashdump") as dsn:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    pgsql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                        pgsql.Identifier(conn.info.dbname), ident
                    )
                )
            install(as_role(dsn, owner))
            yield dsn, as_role(dsn, owner)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP ROLE IF EXISTS {}").format(ident))


def state(dsn: str) -> dict[str, Any]:
    """What a refused squash must leave as it was, read as the superuser."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def rows(query: str, params: Any = None) -> list[tuple[Any, ...]]:
            return conn.execute(query, params).fetchall()

        migrator = rows("SELECT migrator_role FROM tenancy.confinement")[0][0]
        return {
            "baselines": rows("SELECT through_version, checksum FROM tenancy.baselines"),
            "scratch state": rows("SELECT * FROM tenancy.baseline_scratch"),
            "scratch schemas": rows(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenancy\\_check\\_baseline%%'"
            ),
            "migrations": rows(
                "SELECT version, checksum, sql, outside_transaction, created_at"
                " FROM tenancy.migrations ORDER BY version"
            ),
            "tenants": rows(
                "SELECT id, slug, schema_name, status, migration_version, updated_at"
                " FROM tenancy.tenants ORDER BY slug"
            ),
            "schemas": rows(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%'"
                " AND nspname <> 'information_schema' ORDER BY nspname"
            ),
            "kit roles": sorted(
                [r[0] for r in rows(QUERIES["testing_kit_roles"], {"migrator": migrator})]
                + [migrator]
            ),
        }


def scratch_owner_role(dsn: str) -> str:
    """Name of the owner role of the squash's scratch schema."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT tenancy.tenant_role(%s)", (BASELINE_REFERENCE_SCHEMA,))
        found = row.fetchone()
    assert found is not None
    return str(found[0])


def history_and_tenant(dsn: str, as_owner: str) -> Tenancy:
    """Register MIGRATIONS as the owner and create tenant acme at THROUGH."""
    with psycopg.connect(as_owner) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert role == (False, False)
    tenancy = Tenancy(as_owner)
    for version, sql in MIGRATIONS:
        tenancy.add_migration(version, sql)
    # An existing tenant, at the version squashed through; it stays there.
    acme = tenancy.create_tenant("acme")
    assert acme.migration_version == THROUGH
    # Nor does the scratch schema's role exist yet.
    assert scratch_owner_role(dsn) not in state(dsn)["kit roles"]
    return tenancy


def test_a_failing_pg_dump_refuses_the_squash_and_changes_nothing(
    owner_dsn: tuple[str, str],
) -> None:
    dsn, as_owner = owner_dsn
    tenancy = history_and_tenant(dsn, as_owner)
    before = state(dsn)
    assert before["baselines"] == []
    assert before["scratch state"] == before["scratch schemas"] == []
    assert [m[0] for m in before["migrations"]] == [v for v, _ in MIGRATIONS]
    assert [t[1] for t in before["tenants"]] == ["acme"]

    # The Python API.
    with pytest.raises(BaselineRefused) as refused:
        squash_migrations(as_owner, THROUGH)
    message = str(refused.value)
    assert refused.value.sqlstate == "PT032"
    assert message.startswith(f"cannot squash through {THROUGH}: pg_dump of the replay failed: ")
    assert "pg_dump: error: query failed: ERROR:  " + PG_DUMP_ERROR in message
    # The rest of pg_dump's report: the server's hint and the query it ran.
    assert "ALTER TABLE NO FORCE ROW LEVEL SECURITY" in message
    assert f"FROM ONLY {BASELINE_REFERENCE_SCHEMA}.note" in message
    unchanged = before
    assert state(dsn) == unchanged
    assert scratch_owner_role(dsn) not in state(dsn)["kit roles"]

    # The dry run dumps as well: refused the same way.
    with pytest.raises(BaselineRefused, match=PG_DUMP_ERROR):
        tenancy.squash_migrations(THROUGH, dry_run=True)
    assert state(dsn) == unchanged

    # The CLI: one line on stderr, exit status 1, nothing on stdout.
    out = run_cli("migrate", "squash", "--dsn", as_owner, "--through", THROUGH)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert out.stderr == (
        f"error: cannot squash through {THROUGH}: pg_dump of the replay failed: "
        f"pg_dump: error: query failed: ERROR:  {PG_DUMP_ERROR}\n"
    )
    assert state(dsn) == unchanged
    out = run_cli("migrate", "squash", "--dsn", as_owner, "--through", THROUGH, "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert PG_DUMP_ERROR in out.stderr
    assert state(dsn) == unchanged

    # Nothing was left in the way, and it was the forced policy: the same
    # owner squashes the history up to the migration before it, its row
    # included.
    result = squash_migrations(as_owner, "0002")
    assert result.baseline is not None and result.squashed == 2
    assert "'seed'" in result.sql
    after = state(dsn)
    assert after["baselines"] == [("0002", result.baseline.checksum)]
    # A registered squash leaves no role of its scratch schemas either.
    same = ("scratch state", "scratch schemas", "migrations", "tenants", "schemas", "kit roles")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}


def test_a_refused_squash_leaves_no_role(owner_dsn: tuple[str, str]) -> None:
    dsn, as_owner = owner_dsn
    history_and_tenant(dsn, as_owner)
    before = state(dsn)["kit roles"]
    with pytest.raises(BaselineRefused, match=PG_DUMP_ERROR):
        squash_migrations(as_owner, THROUGH)
    assert state(dsn)["kit roles"] == before


def test_a_superuser_squash_past_a_forced_policy_is_refused_and_changes_nothing(
    owner_dsn: tuple[str, str],
) -> None:
    """The same history squashed by a superuser: pg_dump reads past the policy
    (a superuser bypasses row-level security), and then the kit's own check of
    the baseline's rows, which runs as the kit's owner, cannot: refused with
    BaselineRefused (PT032) naming the table, PostgreSQL's error as detail
    (it was a raw InsufficientPrivilege), and nothing changed."""
    dsn, as_owner = owner_dsn
    history_and_tenant(dsn, as_owner)
    before = state(dsn)
    with pytest.raises(BaselineRefused) as refused:
        squash_migrations(dsn, THROUGH)
    assert refused.value.sqlstate == "PT032"
    assert str(refused.value).startswith(
        f"cannot squash through '{THROUGH}': the kit's owner cannot read past the row-level"
        " security of table note to check its rows"
    )
    assert refused.value.detail == PG_DUMP_ERROR
    assert "FORCE ROW LEVEL SECURITY" in (refused.value.hint or "")
    assert state(dsn) == before
    out = run_cli("migrate", "squash", "--dsn", dsn, "--through", THROUGH)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"error: cannot squash through '{THROUGH}': the kit's owner")
    assert state(dsn) == before
    # Up to the migration before the policy, the superuser squashes.
    result = squash_migrations(dsn, "0002")
    assert result.baseline is not None and result.squashed == 2
    assert state(dsn)["kit roles"] == before["kit roles"]
