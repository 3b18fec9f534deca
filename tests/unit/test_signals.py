"""The Django-style dispatcher: order, senders, dispatch_uid, weak references,
robust sends, async receivers and per-context muting."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

from pgtenancy.signals import Signal, muted, receiver


def test_registration_order_and_answers() -> None:
    sig = Signal("s")
    calls: list[str] = []

    def a(**kw: Any) -> str:
        calls.append("a")
        return "A"

    def b(sender: object, value: int, **kw: Any) -> int:
        calls.append("b")
        return value * 2

    sig.connect(b)
    sig.connect(a)
    assert sig.send(sender="x", value=21) == [(b, 42), (a, "A")]
    assert calls == ["b", "a"]


def test_receivers_get_signal_and_sender() -> None:
    sig = Signal("s")
    seen: list[tuple[Any, Any]] = []

    def r(signal: Signal, sender: object, **kw: Any) -> None:
        seen.append((signal, sender))

    sig.connect(r)
    sig.send(sender="acme")
    assert seen == [(sig, "acme")]


def test_sender_filtering_by_value_and_identity() -> None:
    sig = Signal("s")
    got: list[str] = []

    class Model:
        pass

    m1, m2 = Model(), Model()
    sig.connect(lambda **kw: got.append("acme"), sender="acme", weak=False)
    sig.connect(lambda **kw: got.append("m1"), sender=m1, weak=False)
    sig.connect(lambda **kw: got.append("any"), weak=False)
    sig.send(sender="".join(["ac", "me"]))  # equal, not identical
    sig.send(sender="globex")
    sig.send(sender=m1)
    sig.send(sender=m2)
    assert got == ["acme", "any", "any", "m1", "any", "any"]
    assert sig.has_listeners("globex")


def test_dispatch_uid_prevents_duplicates_and_disconnects() -> None:
    sig = Signal("s")
    got: list[int] = []

    def r(**kw: Any) -> None:
        got.append(1)

    sig.connect(r)
    sig.connect(r)  # same receiver: once
    sig.connect(lambda **kw: got.append(2), dispatch_uid="uid", weak=False)
    sig.connect(lambda **kw: got.append(3), dispatch_uid="uid", weak=False)  # ignored
    sig.send(sender=None)
    assert got == [1, 2]
    assert sig.disconnect(dispatch_uid="uid") is True
    assert sig.disconnect(r) is True
    assert sig.disconnect(r) is False
    assert sig.send(sender=None) == []


def test_weak_receivers_go_away_and_strong_ones_stay() -> None:
    sig = Signal("s")

    class Handler:
        def __init__(self) -> None:
            self.calls = 0

        def on(self, **kw: Any) -> None:
            self.calls += 1

    h = Handler()
    sig.connect(h.on)
    sig.send(sender=None)
    assert h.calls == 1
    del h
    gc.collect()
    assert not sig.has_listeners()
    kept = Handler()
    sig.connect(kept.on, weak=False)
    sig.connect(print)  # builtins cannot be weakly referenced: held strongly
    assert len(sig._live(None)) == 2


def test_send_raises_and_send_robust_goes_on() -> None:
    sig = Signal("s")
    after: list[int] = []

    def bad(**kw: Any) -> None:
        raise ValueError("boom")

    def good(**kw: Any) -> int:
        after.append(1)
        return 1

    sig.connect(bad)
    sig.connect(good)
    with pytest.raises(ValueError, match="boom"):
        sig.send(sender=None)
    assert after == []
    results = sig.send_robust(sender=None)
    assert isinstance(results[0][1], ValueError)
    assert results[1] == (good, 1)
    assert after == [1]


def test_async_receivers_in_registration_order() -> None:
    sig = Signal("s")
    order: list[str] = []

    async def first(**kw: Any) -> str:
        await asyncio.sleep(0.01)
        order.append("first")
        return "f"

    def second(**kw: Any) -> str:
        order.append("second")
        return "s"

    async def third(**kw: Any) -> str:
        order.append("third")
        return "t"

    for r in (first, second, third):
        sig.connect(r)
    assert [v for _, v in asyncio.run(sig.asend(sender=None))] == ["f", "s", "t"]
    assert order == ["first", "second", "third"]
    # Sync send runs async receivers to completion when no loop is running.
    assert [v for _, v in sig.send(sender=None)] == ["f", "s", "t"]

    async def inside_loop() -> None:
        with pytest.raises(RuntimeError, match="use asend"):
            sig.send(sender=None)

    asyncio.run(inside_loop())


def test_asend_robust_collects_errors() -> None:
    sig = Signal("s")

    async def bad(**kw: Any) -> None:
        raise KeyError("k")

    async def good(**kw: Any) -> int:
        return 7

    sig.connect(bad)
    sig.connect(good)
    results = asyncio.run(sig.asend_robust(sender=None))
    assert isinstance(results[0][1], KeyError)
    assert results[1] == (good, 7)


def test_receiver_decorator_on_several_signals() -> None:
    s1, s2 = Signal("s1"), Signal("s2")
    got: list[str] = []

    @receiver([s1, s2], sender="acme", dispatch_uid="dec")
    def r(signal: Signal, **kw: Any) -> None:
        got.append(signal.name)

    s1.send(sender="acme")
    s2.send(sender="acme")
    s2.send(sender="globex")
    assert got == ["s1", "s2"]


def test_muting_is_per_context_nestable_and_loses_no_receiver() -> None:
    s1, s2 = Signal("s1"), Signal("s2")
    got: list[str] = []
    s1.connect(lambda **kw: got.append("s1"), weak=False)
    s2.connect(lambda **kw: got.append("s2"), weak=False)
    other_thread: list[str] = []

    def in_thread() -> None:
        s1.send(sender=None)
        other_thread.append("sent")

    with s1.muted():
        s1.send(sender=None)
        s2.send(sender=None)
        t = threading.Thread(target=in_thread)  # another context: not muted
        t.start()
        t.join()
        with muted():
            s2.send(sender=None)
        s2.send(sender=None)
    s1.send(sender=None)
    assert got == ["s2", "s1", "s2", "s1"]
    assert other_thread == ["sent"]

    async def task(name: str, mute: bool) -> None:
        if mute:
            with muted(s1):
                await asyncio.sleep(0.01)
                await s1.asend(sender=name)
        else:
            await asyncio.sleep(0.01)
            await s1.asend(sender=name)

    got.clear()

    async def both() -> None:
        await asyncio.gather(task("a", True), task("b", False))

    asyncio.run(both())
    assert got == ["s1"]
