"""IssuerSlots (broker/leases/manager.py): a healthy issuer's revocations queue for its slots, a
degraded issuer's do not, and a queue that waits on an issuer that falls ill is sent back."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from broker.leases.manager import IssuerSlots


async def _hold(slots: IssuerSlots, issuer: str, release: asyncio.Event, sick: list[bool]) -> bool:
    async with slots.enter(issuer, degraded=lambda: sick[0]) as entered:
        if entered:
            await release.wait()
        return entered


async def test_a_healthy_issuer_queues_past_the_degraded_backlog_up_to_the_window() -> None:
    slots = IssuerSlots(2, backlog=4, defer=timedelta(seconds=1), window=10)
    release, sick = asyncio.Event(), [False]
    tasks = [asyncio.create_task(_hold(slots, "pg", release, sick)) for _ in range(12)]
    await asyncio.sleep(0.01)
    # 10 hold or wait for a slot (2 calls in flight); the 11th and 12th are over the window.
    done = [t for t in tasks if t.done()]
    assert len(done) == 2
    assert [t.result() for t in done] == [False, False]
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count(True) == 10


async def test_a_degraded_issuer_with_busy_slots_defers_instead_of_queueing() -> None:
    slots = IssuerSlots(2, backlog=4, defer=timedelta(seconds=1), window=10)
    release, sick = asyncio.Event(), [True]
    first = [asyncio.create_task(_hold(slots, "pg", release, sick)) for _ in range(2)]
    await asyncio.sleep(0.01)
    # Both slots are taken (the probes a degraded issuer still gets); the next is deferred.
    assert await _hold(slots, "pg", release, sick) is False
    # Another issuer is not affected.
    other = asyncio.create_task(_hold(slots, "jwt", release, [False]))
    await asyncio.sleep(0.01)
    assert not other.done()
    release.set()
    assert await asyncio.gather(*first, other) == [True, True, True]


async def test_a_queue_waiting_on_an_issuer_that_falls_ill_is_sent_back() -> None:
    slots = IssuerSlots(1, backlog=4, defer=timedelta(seconds=1), window=10)
    release, sick = asyncio.Event(), [False]
    holder = asyncio.create_task(_hold(slots, "pg", release, sick))
    await asyncio.sleep(0.01)
    queued = [asyncio.create_task(_hold(slots, "pg", release, sick)) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in queued)
    sick[0] = True  # the held call timed out: the issuer is degraded now
    release.set()
    assert await holder is True
    assert await asyncio.gather(*queued) == [False] * 5
