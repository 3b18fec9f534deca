"""The quiet entry (issue 16): a connection learns each tenant's search_path
from its first ``CALL tenancy.enter`` and then enters with ``CALL
tenancy.enter_known(slug, search_path)``, which sends no row back; the server
refuses a search_path that is no longer the tenant's (PT023), and the
connection learns it again without the caller seeing anything.

The messages are read from libpq's protocol trace of the connection, so
these tests see what went over the wire."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq
from psycopg import sql as pgsql

from helpers import Trace, as_role
from pgtenancy import SearchPathChanged, Tenancy, sign_tenant_token, tenant_connection
from pgtenancy._entry import statement_tag
from pgtenancy.errors import raise_translated

ACME_PATH = "tenant_acme, public, pg_temp"
SHARED_PATH = "public, pg_temp"


class Queries(Trace):
    """The connection's trace, read as its entry messages."""

    def entries(self) -> list[str]:
        """The entry messages and rollbacks sent, in order."""
        return [q for q in self.queries() if "tenancy.enter" in q or q == "ROLLBACK"]


@pytest.fixture
def queries() -> Iterator[Queries]:
    q = Queries()
    yield q
    q.close()


@pytest.fixture
def acme(tenancy: Tenancy) -> Tenancy:
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text)")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex", isolation="shared")
    return tenancy


def _in_tenant(conn: psycopg.Connection[Any], slug: str) -> tuple[Any, ...] | None:
    with tenant_connection(conn, slug) as c:
        row = c.execute(
            "SELECT tenancy.current_tenant(), current_setting('search_path')"
        ).fetchone()
        assert statement_tag(c) == (row[1].encode() if row else None)
        return row


def test_the_connection_learns_the_search_path_once_then_enters_quietly(
    dsn: str, acme: Tenancy, app_role: str, queries: Queries
) -> None:
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        queries.attach(conn.pgconn)
        for _ in range(3):
            assert _in_tenant(conn, "acme") == ("acme", ACME_PATH)
            assert _in_tenant(conn, "globex") == ("globex", SHARED_PATH)
    assert queries.entries() == [
        "BEGIN; CALL tenancy.enter('acme')",
        "BEGIN; CALL tenancy.enter('globex')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{ACME_PATH}')",
        f"BEGIN; CALL tenancy.enter_known('globex', '{SHARED_PATH}')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{ACME_PATH}')",
        f"BEGIN; CALL tenancy.enter_known('globex', '{SHARED_PATH}')",
    ]


def test_a_connection_without_keyed_statements_enters_quietly_from_the_start(
    dsn: str, acme: Tenancy, app_role: str, queries: Queries
) -> None:
    with psycopg.connect(as_role(dsn, app_role), prepare_threshold=None) as conn:
        queries.attach(conn.pgconn)
        for _ in range(2):
            with tenant_connection(conn, "acme") as c:
                assert c.execute("SELECT current_setting('search_path')").fetchone() == (ACME_PATH,)
                assert statement_tag(c) is None
    assert queries.entries() == ["BEGIN; CALL tenancy.enter_known('acme', NULL)"] * 2


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
def test_a_tenant_whose_search_path_changed_is_learnt_again(
    dsn: str, acme: Tenancy, app_role: str, queries: Queries, accelerated: bool
) -> None:
    """acme is destroyed and made again as a shared tenant: the connection's
    remembered path is refused (PT023), rolled back, and the tenant entered and
    learnt anew, in the same tenant_connection call, without an error."""
    with psycopg.connect(dsn, autocommit=True) as owner:
        in_use = owner.execute("SELECT tenancy.set_accelerator(%s)", (accelerated,)).fetchone()
    if accelerated and in_use != (True,):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        queries.attach(conn.pgconn)
        assert _in_tenant(conn, "acme") == ("acme", ACME_PATH)
        assert _in_tenant(conn, "acme") == ("acme", ACME_PATH)
        acme.drop_tenant("acme", destroy_data=True)
        acme.create_tenant("acme", isolation="shared")
        assert _in_tenant(conn, "acme") == ("acme", SHARED_PATH)
        assert _in_tenant(conn, "acme") == ("acme", SHARED_PATH)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert queries.entries() == [
        "BEGIN; CALL tenancy.enter('acme')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{ACME_PATH}')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{ACME_PATH}')",
        "ROLLBACK",
        "BEGIN; CALL tenancy.enter('acme')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{SHARED_PATH}')",
    ]


def test_the_async_connection_learns_and_relearns_too(
    dsn: str, acme: Tenancy, app_role: str, queries: Queries
) -> None:
    async def run() -> list[tuple[Any, ...] | None]:
        rows: list[tuple[Any, ...] | None] = []
        async with await psycopg.AsyncConnection.connect(as_role(dsn, app_role)) as conn:
            queries.attach(conn.pgconn)
            for step in range(4):
                if step == 2:
                    await asyncio.to_thread(acme.drop_tenant, "acme", True)
                    await asyncio.to_thread(acme.create_tenant, "acme", isolation="shared")
                async with tenant_connection(conn, "acme") as c:
                    cur = await c.execute("SELECT current_setting('search_path')")
                    rows.append(await cur.fetchone())
                    assert statement_tag(c) == rows[-1][0].encode()  # type: ignore[index]
        return rows

    assert asyncio.run(run()) == [(ACME_PATH,), (ACME_PATH,), (SHARED_PATH,), (SHARED_PATH,)]
    assert queries.entries() == [
        "BEGIN; CALL tenancy.enter('acme')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{ACME_PATH}')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{ACME_PATH}')",
        "ROLLBACK",
        "BEGIN; CALL tenancy.enter('acme')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{SHARED_PATH}')",
    ]


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
def test_enter_known_by_hand(dsn: str, acme: Tenancy, app_role: str, accelerated: bool) -> None:
    """As the application role: the right path enters and returns nothing; NULL
    enters unchecked; a wrong path is PT023 (SearchPathChanged), the
    transaction aborted with nothing set; an unknown tenant is enter_tenant's
    PT003."""
    with psycopg.connect(dsn, autocommit=True) as owner:
        in_use = owner.execute("SELECT tenancy.set_accelerator(%s)", (accelerated,)).fetchone()
        language = owner.execute(
            "SELECT l.lanname FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang "
            "WHERE p.oid = 'tenancy.enter_known(text, text)'::regprocedure"
        ).fetchone()
    if accelerated and in_use != (True,):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    assert language == (("c",) if accelerated else ("plpgsql",))
    check = "SELECT tenancy.current_tenant(), current_setting('search_path')"
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        default = conn.execute("SHOW search_path").fetchone()
        for path in (ACME_PATH, None):
            conn.execute("BEGIN")
            cur = conn.execute("CALL tenancy.enter_known(%s, %s)", ("acme", path))
            assert cur.description is None  # no row
            assert conn.execute(check).fetchone() == ("acme", ACME_PATH)
            conn.execute("COMMIT")
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("CALL tenancy.enter_known('acme', %s)", (SHARED_PATH,))
        assert refused.value.sqlstate == "PT023"
        assert refused.value.diag.message_primary == (
            f"tenant 'acme' has search_path '{ACME_PATH}', not '{SHARED_PATH}'"
        )
        with pytest.raises(SearchPathChanged):
            raise_translated(refused.value)
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT tenancy.current_tenant()").fetchone() == (None,)
        assert conn.execute("SHOW search_path").fetchone() == default
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as unknown:
            conn.execute("CALL tenancy.enter_known('nobody', %s)", (ACME_PATH,))
        assert unknown.value.sqlstate == "PT003"
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("how", ["missing", "not granted"])
def test_without_the_quiet_entry_the_connection_enters_with_tenancy_enter(
    dsn: str, acme: Tenancy, app_role: str, queries: Queries, how: str
) -> None:
    """SQL of an earlier build of this version (no enter_known), or a role that
    may not call it: the connection notices once, rolls back, and enters
    with tenancy.enter from then on; the caller sees nothing."""
    with psycopg.connect(dsn, autocommit=True) as owner:
        if how == "missing":
            owner.execute("DROP PROCEDURE tenancy.enter_known(text, text)")
        else:
            owner.execute("REVOKE EXECUTE ON PROCEDURE tenancy.enter_known(text, text) FROM PUBLIC")
            owner.execute(
                pgsql.SQL(
                    "REVOKE EXECUTE ON PROCEDURE tenancy.enter_known(text, text) FROM {}"
                ).format(pgsql.Identifier(app_role))
            )
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        queries.attach(conn.pgconn)
        for _ in range(3):
            assert _in_tenant(conn, "acme") == ("acme", ACME_PATH)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert queries.entries() == [
        "BEGIN; CALL tenancy.enter('acme')",
        f"BEGIN; CALL tenancy.enter_known('acme', '{ACME_PATH}')",
        "ROLLBACK",
        "BEGIN; CALL tenancy.enter('acme')",
        "BEGIN; CALL tenancy.enter('acme')",
    ]


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
def test_a_refused_search_path_is_quoted_at_most_200_characters(
    dsn: str, acme: Tenancy, accelerated: bool
) -> None:
    """An attack run's 600-million-character path made the message itself fail
    to allocate (XX000): it quotes the first 200 characters, C and PL/pgSQL
    alike."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        in_use = conn.execute("SELECT tenancy.set_accelerator(%s)", (accelerated,)).fetchone()
        if accelerated and in_use != (True,):
            pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
        for path, shown in (("é" * 10_000, "'" + "é" * 200 + "'..."), ("x", "'x'")):
            conn.execute("BEGIN")
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("CALL tenancy.enter_known('acme', %s)", (path,))
            conn.execute("ROLLBACK")
            assert refused.value.sqlstate == "PT023"
            assert refused.value.diag.message_primary == (
                f"tenant 'acme' has search_path '{ACME_PATH}', not {shown}"
            )


# -- the quiet token entry ------------------------------------------------------

TOKEN_ENTRY = "SELECT tenancy.enter_tenant_token($1, $2), pg_catalog.current_setting('search_path')"
QUIET_TOKEN = "CALL tenancy.enter_token($1, $2, $3)"


@pytest.fixture
def key(dsn: str, acme: Tenancy) -> bytes:
    """Entry key k1 (strict entry stays off: tokens are accepted either way)."""
    secret = secrets.token_bytes(32)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_entry_key('k1', %s)", (secret,))
    return secret


def _with_token(conn: psycopg.Connection[Any], token: str) -> tuple[Any, ...] | None:
    with tenant_connection(conn, token=token) as c:
        row = c.execute(
            "SELECT tenancy.current_tenant(), current_setting('search_path')"
        ).fetchone()
        assert statement_tag(c) == (row[1].encode() if row else None)
        return row


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
def test_token_entry_learns_the_search_path_then_enters_quietly(
    dsn: str, acme: Tenancy, key: bytes, app_role: str, queries: Queries, accelerated: bool
) -> None:
    with psycopg.connect(dsn, autocommit=True) as owner:
        in_use = owner.execute("SELECT tenancy.set_accelerator(%s)", (accelerated,)).fetchone()
        language = owner.execute(
            "SELECT l.lanname FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang"
            " WHERE p.oid = 'tenancy.enter_token(text, text, text)'::regprocedure"
        ).fetchone()
    if accelerated and in_use != (True,):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    assert language == (("c",) if accelerated else ("plpgsql",))
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        queries.attach(conn.pgconn)
        for _ in range(8):
            token = sign_tenant_token(key, "acme", 60, key_name="k1")
            assert _with_token(conn, token) == ("acme", ACME_PATH)
            token = sign_tenant_token(key, "globex", 60, key_name="k1")
            assert _with_token(conn, token) == ("globex", SHARED_PATH)
        prepared = conn.execute(
            "SELECT statement FROM pg_prepared_statements ORDER BY statement"
        ).fetchall()
    parses = [p for p in queries.parses() if "tenancy.enter" in p]
    # Learnt once per tenant, then the quiet form: unprepared until psycopg's
    # prepare_threshold, then one prepared statement (Bind only).
    assert parses[:2] == [TOKEN_ENTRY, TOKEN_ENTRY]
    assert set(parses[2:]) == {QUIET_TOKEN}
    assert len(parses) < 16
    assert (QUIET_TOKEN,) in prepared


def test_a_token_tenant_whose_search_path_changed_is_learnt_again(
    dsn: str, acme: Tenancy, key: bytes, app_role: str, queries: Queries
) -> None:
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        queries.attach(conn.pgconn)
        token = sign_tenant_token(key, "acme", 60, key_name="k1")
        assert _with_token(conn, token) == ("acme", ACME_PATH)
        assert _with_token(conn, token) == ("acme", ACME_PATH)
        acme.drop_tenant("acme", destroy_data=True)
        acme.create_tenant("acme", isolation="shared")
        token = sign_tenant_token(key, "acme", 60, key_name="k1")
        assert _with_token(conn, token) == ("acme", SHARED_PATH)
        assert _with_token(conn, token) == ("acme", SHARED_PATH)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert [p for p in queries.parses() if "tenancy.enter" in p] == [
        TOKEN_ENTRY,
        QUIET_TOKEN,
        QUIET_TOKEN,  # refused: PT023, rolled back
        TOKEN_ENTRY,
        QUIET_TOKEN,
    ]
    assert queries.queries().count("ROLLBACK") == 1


def test_a_refused_token_is_refused_in_the_quiet_form_too(
    dsn: str, acme: Tenancy, key: bytes, app_role: str
) -> None:
    from pgtenancy.errors import EntryTokenForged, EntryTokenWrongTenant

    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        token = sign_tenant_token(key, "acme", 60, key_name="k1")
        assert _with_token(conn, token) == ("acme", ACME_PATH)
        forged = sign_tenant_token(secrets.token_bytes(32), "acme", 60, key_name="k1")
        with pytest.raises(EntryTokenForged):
            _with_token(conn, forged)
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        with pytest.raises(EntryTokenWrongTenant), tenant_connection(conn, "globex", token=token):
            pass
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert _with_token(conn, token) == ("acme", ACME_PATH)


def test_without_the_quiet_token_entry_the_connection_uses_the_select(
    dsn: str, acme: Tenancy, key: bytes, app_role: str, queries: Queries
) -> None:
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute("DROP PROCEDURE tenancy.enter_token(text, text, text)")
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        queries.attach(conn.pgconn)
        token = sign_tenant_token(key, "acme", 60, key_name="k1")
        for _ in range(3):
            assert _with_token(conn, token) == ("acme", ACME_PATH)
    assert [p for p in queries.parses() if "tenancy.enter" in p] == [
        TOKEN_ENTRY,
        QUIET_TOKEN,
        TOKEN_ENTRY,
        TOKEN_ENTRY,
    ]


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
def test_a_refused_token_path_says_how_to_learn_it(
    dsn: str, acme: Tenancy, key: bytes, accelerated: bool
) -> None:
    """PT023 from the quiet token entry: the same message and hint from C and PL/pgSQL."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        in_use = conn.execute("SELECT tenancy.set_accelerator(%s)", (accelerated,)).fetchone()
        if accelerated and in_use != (True,):
            pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
        token = sign_tenant_token(key, "acme", 60, key_name="k1")
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("CALL tenancy.enter_token(%s, NULL, 'public')", (token,))
        conn.execute("ROLLBACK")
    assert refused.value.sqlstate == "PT023"
    assert refused.value.diag.message_primary == (
        f"tenant 'acme' has search_path '{ACME_PATH}', not 'public'"
    )
    assert refused.value.diag.message_hint == (
        "Its schema changed: enter with tenancy.enter_tenant_token(token) to learn its search_path."
    )


def test_a_missing_entry_procedure_does_not_stop_the_accelerator_or_a_reinstall(
    dsn: str, acme: Tenancy
) -> None:
    """tenancy.entry_procedures names a procedure that is gone: set_accelerator
    goes on (it was 42883), and install makes the procedure again."""
    from pgtenancy import install

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP PROCEDURE tenancy.enter_token(text, text, text)")
        conn.execute("SELECT tenancy.set_accelerator(true)")
    install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE oid = 'tenancy.enter_token(text, text, text)'"
            "::regprocedure"
        ).fetchone()
    assert row == (1,)
