"""Alembic revisions as tenant migrations (issue 10, item 5), on a small
SQLAlchemy 2 ORM app in a real Alembic project made in tmp_path (alembic.ini,
an env.py that is ``run_env(context, metadata)``, revision files):

1. a table (``invoices``, an enum column, a foreign key to the shared
   ``public.plans``, made by a shared migration),
2. a column with an index,
3. an enum value added in ``autocommit_block()`` and used in the same revision.

``pgtenancy migrate --alembic`` (in-process CLI) registers them as tenant
migrations and migrates several tenants; a tenant created afterwards gets all
three; reruns are no-ops; a changed or schema-qualified revision is refused
and changes nothing; ``--check-models`` agrees and disagrees; autogenerate
writes the next revision from a scratch schema built from the registry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from helpers import run_cli, subprocess_env
from pgtenancy import Tenancy
from pgtenancy.alembic import (
    check_models,
    is_tenant_table,
    load_metadata,
    refuse_create_all,
    render_revisions,
    split_metadata,
)
from pgtenancy.errors import InvalidMigration

SQL = Callable[..., list[tuple[Any, ...]]]

MODELS = '''
from __future__ import annotations

import enum

from sqlalchemy import ForeignKey, Index, String, text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Plan(Base):
    """Shared by every tenant: it names its schema."""

    __tablename__ = "plans"
    __table_args__ = {{"schema": "public"}}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Status(enum.Enum):
    draft = "draft"
    sent = "sent"
    archived = "archived"


class Invoice(Base):
    """A tenant table: no schema."""

    __tablename__ = "invoices"
    __table_args__ = (
        Index("ix_invoices_archived", "id", postgresql_where=text("status = 'archived'")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("public.plans.id"))
    status: Mapped[Status] = mapped_column(SAEnum(Status, name="invoice_status"))
    customer: Mapped[str | None] = mapped_column(String(100), index=True)
{extra}
'''

ENV = """
from alembic import context

from pgtenancy.alembic import load_metadata, run_env

run_env(context, load_metadata(context.config.get_main_option("models")))
"""

INI = """
[alembic]
script_location = %(here)s/migrations
path_separator = os
models = {models}
"""

REVISIONS = {
    "0001_invoices.py": '''
"""invoices"""
from alembic import op
import sqlalchemy as sa

revision = "a1"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("plan_id", sa.Integer(), sa.ForeignKey("public.plans.id"), nullable=False),
        sa.Column("status", sa.Enum("draft", "sent", name="invoice_status"), nullable=False),
    )
''',
    "0002_customer.py": '''
"""customer, indexed"""
from alembic import op
import sqlalchemy as sa

revision = "b2"
down_revision = "a1"


def upgrade() -> None:
    op.add_column("invoices", sa.Column("customer", sa.String(100), nullable=True))
    op.create_index("ix_invoices_customer", "invoices", ["customer"])
''',
    "0003_archived.py": '''
"""archived: a new enum value, used at once"""
from alembic import op
import sqlalchemy as sa

revision = "c3"
down_revision = "b2"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("ALTER TYPE invoice_status ADD VALUE IF NOT EXISTS 'archived'")
    op.create_index(
        "ix_invoices_archived", "invoices", ["id"], postgresql_where=sa.text("status = 'archived'")
    )
''',
}

VERSIONS = ["alembic-0001-a1", "alembic-0002-b2", "alembic-0003-c3", "alembic-0003-c3.02"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An Alembic project with the three revisions, models importable as
    ``shop_v3`` (matching them) and ``shop_v4`` (one column more)."""
    root = tmp_path / "shop"
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(INI.format(models="shop_v3:Base"))
    (root / "migrations" / "env.py").write_text(ENV)
    template = Path(command.__file__).parent / "templates" / "generic" / "script.py.mako"
    (root / "migrations" / "script.py.mako").write_text(template.read_text())
    for name, text in REVISIONS.items():
        (root / "migrations" / "versions" / name).write_text(textwrap.dedent(text))
    (root / "shop_v3.py").write_text(MODELS.format(extra=""))
    (root / "shop_v4.py").write_text(
        MODELS.format(extra="    note: Mapped[str | None] = mapped_column(String(200))")
    )
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "0001_plans.sql").write_text(
        "CREATE TABLE IF NOT EXISTS public.plans (id integer PRIMARY KEY, name varchar(50) NOT NULL);\n"
        "INSERT INTO public.plans VALUES (1, 'basic') ON CONFLICT DO NOTHING;\n"
    )
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("shop_v3", "shop_v4"):
        sys.modules.pop(name, None)


def migrate(dsn: str, project: Path, *args: str) -> Any:
    return run_cli(
        "migrate",
        "--dsn",
        dsn,
        "--quiet",
        "--shared-dir",
        str(project.parent / "shared"),
        "--alembic",
        str(project / "alembic.ini"),
        *args,
    )


def registry(sql: SQL) -> list[tuple[Any, ...]]:
    return sql(
        "SELECT version, checksum, outside_transaction FROM tenancy.migrations ORDER BY version"
    )


def tenant_versions(sql: SQL) -> list[tuple[Any, ...]]:
    return sql("SELECT slug, migration_version, status FROM tenancy.tenants ORDER BY slug")


def test_revisions_migrate_the_fleet_and_new_tenants(
    dsn: str, tenancy: Tenancy, sql: SQL, project: Path
) -> None:
    for slug in ("acme", "globex", "initech"):
        tenancy.create_tenant(slug)
    # A dry run renders and checks, and registers nothing.
    r = migrate(dsn, project, "--dry-run", "--tenants", "acme")
    assert r.returncode == 0, r.stderr
    assert f"acme: at -, would apply {', '.join(VERSIONS)}" in r.stdout
    assert registry(sql) == []
    r = migrate(dsn, project, "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert "3 migrated, 0 failed" in r.stdout
    # Registered in chain order; revision 3 split at its autocommit block.
    assert [(v, o) for v, _, o in registry(sql)] == [
        ("alembic-0001-a1", False),
        ("alembic-0002-b2", False),
        ("alembic-0003-c3", True),
        ("alembic-0003-c3.02", False),
    ]
    texts = [row[0] for row in sql("SELECT sql FROM tenancy.migrations ORDER BY version")]
    assert not any("alembic_version" in t for t in texts)
    assert not any("tenant_" in t or "BEGIN" in t or "COMMIT" in t for t in texts)
    assert "CREATE TYPE invoice_status AS ENUM ('draft', 'sent')" in texts[0]
    assert (
        texts[2]
        == "-- Running upgrade b2 -> c3\n\nALTER TYPE invoice_status ADD VALUE IF NOT EXISTS 'archived';\n"
    )
    assert "WHERE status = 'archived'" in texts[3]
    assert tenant_versions(sql) == [
        (s, "alembic-0003-c3.02", "active") for s in ("acme", "globex", "initech")
    ]
    # No version table anywhere but the registry.
    assert sql("SELECT count(*) FROM pg_class WHERE relname = 'alembic_version'") == [(0,)]
    # A tenant created after the whole chain gets it, commit boundaries included.
    late = tenancy.create_tenant("late")
    assert (late.status, late.migration_version) == ("active", "alembic-0003-c3.02")
    for slug in ("acme", "late"):
        sql(
            f"INSERT INTO tenant_{slug}.invoices (id, plan_id, status, customer) VALUES (1, 1, 'archived', 'x')"
        )
        assert sql(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s ORDER BY indexname",
            (f"tenant_{slug}",),
        ) == [("invoices_pkey",), ("ix_invoices_archived",), ("ix_invoices_customer",)]
    # Rerunning changes nothing.
    before = (registry(sql), tenant_versions(sql))
    r = migrate(dsn, project)
    assert r.returncode == 0, r.stderr
    assert "0 migrated, 0 failed, 4 already current" in r.stdout
    assert (registry(sql), tenant_versions(sql)) == before


def test_a_changed_or_shared_revision_is_refused_and_changes_nothing(
    dsn: str, tenancy: Tenancy, sql: SQL, project: Path
) -> None:
    tenancy.create_tenant("acme")
    assert migrate(dsn, project).returncode == 0
    before = (registry(sql), tenant_versions(sql))
    versions = project / "migrations" / "versions"
    # A registered revision edited afterwards: its checksum differs.
    second = versions / "0002_customer.py"
    original = second.read_text()
    second.write_text(original.replace("sa.String(100)", "sa.String(120)"))
    (versions / "0004_more.py").write_text(
        'revision = "d4"\ndown_revision = "c3"\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
        'def upgrade():\n    op.add_column("invoices", sa.Column("paid", sa.Boolean()))\n'
    )
    r = migrate(dsn, project)
    assert r.returncode == 1
    assert "error: 0002_customer.py (revision b2) changed after it was registered" in r.stderr
    assert (registry(sql), tenant_versions(sql)) == before
    # A revision that changes a shared table: refused before anything runs.
    second.write_text(original)
    (versions / "0004_more.py").write_text(
        'revision = "d4"\ndown_revision = "c3"\nfrom alembic import op\nimport sqlalchemy as sa\n\n'
        'def upgrade():\n    op.add_column("invoices", sa.Column("paid", sa.Boolean()))\n'
        '    op.add_column("plans", sa.Column("price", sa.Integer()), schema="public")\n'
    )
    r = migrate(dsn, project)
    assert r.returncode == 1
    assert "0004_more.py (revision d4) rendered SQL:" in r.stderr
    assert "--shared-dir" in r.stderr
    assert (registry(sql), tenant_versions(sql)) == before
    assert sql(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'plans' AND column_name = 'price'"
    ) == [(0,)]
    # An enum value added and used in one transaction: the database refuses it.
    (versions / "0004_more.py").write_text(
        'revision = "d4"\ndown_revision = "c3"\nfrom alembic import op\n\n'
        "def upgrade():\n"
        "    op.execute(\"ALTER TYPE invoice_status ADD VALUE 'void'\")\n"
        "    op.execute(\"UPDATE invoices SET status = 'void' WHERE false\")\n"
    )
    r = migrate(dsn, project)
    assert r.returncode == 1
    assert 'unsafe use of new value "void"' in r.stderr
    assert (registry(sql), tenant_versions(sql)) == before
    # An empty revision still registers (a tenant records reaching it).
    (versions / "0004_more.py").write_text(
        'revision = "d4"\ndown_revision = "c3"\n\ndef upgrade():\n    pass\n'
    )
    assert [p.migration.sql for p in render_revisions(project / "alembic.ini")][-1] == (
        "-- Running upgrade c3 -> d4\nSELECT NULL;  -- the revision has no operations\n"
    )
    # A revision dropped from the middle of the chain.
    (versions / "0004_more.py").unlink()
    (versions / "0003_archived.py").unlink()
    r = migrate(dsn, project)
    assert r.returncode == 1 and "alembic-0003-c3 is registered but the revision chain" in r.stderr
    assert (registry(sql), tenant_versions(sql)) == before


def test_alembic_online_is_refused_and_sql_mode_renders_what_registers(
    project: Path, dsn: str
) -> None:
    cfg = Config(str(project / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", dsn)
    with pytest.raises(CommandError, match="pgtenancy migrate --alembic"):
        command.upgrade(cfg, "head")
    parts = render_revisions(project / "alembic.ini")
    assert [p.migration.version for p in parts] == VERSIONS
    assert [(p.revision, p.position, p.part) for p in parts][2:] == [("c3", 3, 1), ("c3", 3, 2)]


def test_check_models_and_autogenerate_use_a_scratch_schema(
    dsn: str, tenancy: Tenancy, sql: SQL, project: Path
) -> None:
    tenancy.create_tenant("acme")
    assert migrate(dsn, project).returncode == 0
    # A live tenant with an extra table must not count: the check reads the registry.
    sql("CREATE TABLE tenant_acme.stray (id int)")
    r = run_cli("migrate", "--dsn", dsn, "--check-models", "shop_v3:Base")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "models agree with the registered schema (migration alembic-0003-c3.02)" in r.stdout
    # The console script finds the models in the current directory.
    console = Path(sys.executable).parent / "pgtenancy"
    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(console), "migrate", "--dsn", dsn, "--check-models", "shop_v3:Base"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    r = run_cli("migrate", "--dsn", dsn, "--check-models", "shop_v4:Base.metadata")
    assert r.returncode == 1
    assert "  add_column: invoices.note VARCHAR(200)" in r.stdout
    assert "error: 1 differences" in r.stderr
    r = run_cli("migrate", "--dsn", dsn, "--check-models", "shop_v4:nope")
    assert r.returncode == 2 and "shop_v4 has no nope" in r.stderr
    # No scratch schema is left behind; the tenants are untouched.
    assert sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenancy_scratch_%%'") == [
        (0,)
    ]
    # Autogenerate: the next revision, compared with the registered schema.
    cfg = Config(str(project / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", dsn)
    cfg.set_main_option("models", "shop_v4:Base")
    script = command.revision(cfg, message="note", autogenerate=True, rev_id="d4")
    assert script is not None and not isinstance(script, list)
    text = Path(script.path).read_text()
    assert (
        "op.add_column('invoices', sa.Column('note', sa.String(length=200), nullable=True))" in text
    )
    assert "stray" not in text and "plans" not in text and "schema=" not in text
    assert sql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenancy_scratch_%%'") == [
        (0,)
    ]
    r = migrate(dsn, project)
    assert r.returncode == 0, r.stderr
    assert tenant_versions(sql) == [("acme", "alembic-0004-d4", "active")]
    assert check_models(dsn, "shop_v4:Base").ok
    assert sql("SELECT count(*) FROM pg_class WHERE relname = 'alembic_version'") == [(0,)]


def test_split_metadata_and_create_all_refusal(
    dsn: str, tenancy: Tenancy, sql: SQL, project: Path
) -> None:
    metadata = load_metadata("shop_v3:Base")
    split = split_metadata(metadata)
    assert [t.fullname for t in split.tenant] == ["invoices"]
    assert [t.fullname for t in split.shared] == ["public.plans"]
    plans = metadata.tables["public.plans"]
    plans.info["pgtenancy"] = "tenant"
    with pytest.raises(ValueError, match="names schema 'public'"):
        split_metadata(metadata)
    plans.info["pgtenancy"] = "shared"
    assert not is_tenant_table(plans)
    refuse_create_all(metadata)
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=NullPool
    )
    try:
        with pytest.raises(InvalidMigration, match=r"create tenant tables \(invoices\)"):
            metadata.create_all(engine)
        assert sql("SELECT count(*) FROM pg_class WHERE relname IN ('invoices', 'plans')") == [(0,)]
        metadata.create_all(engine, tables=[plans])  # shared tables only: allowed
        assert sql("SELECT to_regclass('public.plans') IS NOT NULL") == [(True,)]
    finally:
        engine.dispose()
