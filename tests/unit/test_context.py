"""TenantContext on contextvars: a stack, per thread and per asyncio task, with
tenant_activated / tenant_deactivated signals."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from pgtenancy import InvalidTenantSlug, NoTenantContext, TenantContext, current_tenant, use_tenant
from pgtenancy.context import resolve_tenant, tenant_stack
from pgtenancy.signals import tenant_activated, tenant_deactivated


def test_nesting_like_a_stack() -> None:
    assert current_tenant() is None
    with use_tenant("acme"):
        with use_tenant("globex") as slug:
            assert slug == "globex"
            assert tenant_stack() == ("acme", "globex")
            assert TenantContext.current() == "globex"
        assert current_tenant() == "acme"
    assert current_tenant() is None


def test_exceptions_pop_the_stack() -> None:
    with pytest.raises(RuntimeError), use_tenant("acme"):
        raise RuntimeError
    assert current_tenant() is None


def test_invalid_slug_and_missing_context() -> None:
    with pytest.raises(InvalidTenantSlug):
        use_tenant("Nope")
    with pytest.raises(NoTenantContext):
        resolve_tenant(None)
    assert current_tenant() is None


def test_activation_signals() -> None:
    seen: list[tuple[str, str, str | None]] = []

    def on_activated(sender: str, slug: str, **kw: Any) -> None:
        seen.append(("on", slug, current_tenant()))

    def on_deactivated(sender: str, slug: str, **kw: Any) -> None:
        seen.append(("off", slug, current_tenant()))

    tenant_activated.connect(on_activated)
    tenant_deactivated.connect(on_deactivated)
    try:
        with use_tenant("acme"), use_tenant("globex"):
            pass
    finally:
        tenant_activated.disconnect(on_activated)
        tenant_deactivated.disconnect(on_deactivated)
    assert seen == [
        ("on", "acme", "acme"),
        ("on", "globex", "globex"),
        ("off", "globex", "acme"),
        ("off", "acme", None),
    ]


def test_threads_do_not_share_context() -> None:
    barrier = threading.Barrier(4)
    results: dict[str, list[str | None]] = {}

    def worker(slug: str) -> None:
        seen = []
        with use_tenant(slug):
            barrier.wait()
            for _ in range(100):
                seen.append(current_tenant())
            barrier.wait()
        seen.append(current_tenant())
        results[slug] = seen

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for slug, seen in results.items():
        assert seen == [slug] * 100 + [None]


def test_asyncio_tasks_do_not_share_context() -> None:
    activated: list[str] = []

    async def on_activated(sender: str, slug: str, **kw: Any) -> None:
        await asyncio.sleep(0)
        activated.append(slug)

    async def task(slug: str) -> list[str | None]:
        seen = []
        async with use_tenant(slug):
            for _ in range(20):
                await asyncio.sleep(0)
                seen.append(current_tenant())
        seen.append(current_tenant())
        return seen

    async def main() -> list[list[str | None]]:
        return list(await asyncio.gather(task("acme"), task("globex")))

    tenant_activated.connect(on_activated)
    try:
        a, g = asyncio.run(main())
    finally:
        tenant_activated.disconnect(on_activated)
    assert a == ["acme"] * 20 + [None]
    assert g == ["globex"] * 20 + [None]
    assert sorted(activated) == ["acme", "globex"]


def test_slug_check_cache_is_bounded_and_refuses_what_it_always_refused() -> None:
    """Valid slugs are remembered (one dict lookup per transaction); the memory
    stays bounded and never lets an invalid slug through."""
    from pgtenancy import slugs

    for i in range(slugs._VALID_MAX + 10):
        assert resolve_tenant(f"t{i}") == f"t{i}"
    assert 0 < len(slugs._VALID) <= slugs._VALID_MAX
    for bad in ("Acme", "pg_x", "public", "x" * (slugs.MAX_SLUG_LENGTH + 1), "1a", ""):
        for _ in range(2):
            with pytest.raises(InvalidTenantSlug):
                resolve_tenant(bad)
        assert bad not in slugs._VALID
