"""A token's expiry is checked against the clock, not the statement's start
(issue 13, found by an attack run): statement_timestamp() does not advance
inside one top-level statement, so a DO block that slept past its token's
expiry, or a procedure that commits and enters again in a loop, kept reading
the tenant's rows with an expired token. Real server, the application
connecting as a NOSUPERUSER NOBYPASSRLS role granted with grant_app_role,
strict entry on (strict_support)."""

from __future__ import annotations

import psycopg
import pytest
from strict_support import StrictWorld, build, marker

from helpers import as_role
from pgtenancy import sign_tenant_token


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role))


@pytest.mark.parametrize("slug, table", [("acme", "invoice"), ("sa", "public.orders")])
def test_a_statement_that_outlives_its_token_reads_nothing_more(
    world: StrictWorld, slug: str, table: str
) -> None:
    token = sign_tenant_token(world.key, slug, 1.0, key_name="k1")
    column = "body" if table == "invoice" else "item"
    with psycopg.connect(world.app_dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        # The token is valid: the tenant's rows are there.
        seen = conn.execute(f"SELECT string_agg({column}, ',') FROM {table}").fetchone()
        assert seen is not None and marker(slug) in seen[0]
        with pytest.raises(psycopg.Error) as info:
            conn.execute(
                f"DO $$ BEGIN PERFORM pg_sleep(1.5); PERFORM count(*) FROM {table}; END $$"
            )
    assert info.value.sqlstate == "PT028"


def test_a_procedure_cannot_enter_again_with_an_expired_token(world: StrictWorld) -> None:
    token = sign_tenant_token(world.key, "acme", 1.0, key_name="k1")
    before = world.data()
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE PROCEDURE pg_temp.keep(token text, n int) LANGUAGE plpgsql AS $$\n"
            "DECLARE seen text;\n"
            "BEGIN\n"
            "  FOR i IN 1 .. n LOOP\n"
            "    PERFORM tenancy.enter_tenant_token(token);\n"
            "    SELECT string_agg(body, ',') INTO seen FROM invoice;\n"
            "    INSERT INTO invoice (body) VALUES ('KEPT-' || i);\n"
            "    COMMIT;\n"
            "    PERFORM pg_sleep(0.6);\n"
            "  END LOOP;\n"
            "END $$"
        )
        with pytest.raises(psycopg.Error) as info:
            conn.execute("CALL pg_temp.keep(%s, 4)", (token,))
    assert info.value.sqlstate == "PT026"
    # At most the rows of the iterations that ran while the token was valid.
    schema_rows, _, shared = world.data()
    kept = [body for _, body in schema_rows["acme"] if body.startswith("KEPT-")]
    assert 1 <= len(kept) <= 2
    assert schema_rows["globex"] == before[0]["globex"] and shared == before[2]
