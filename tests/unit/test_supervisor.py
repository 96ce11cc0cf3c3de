"""The supervisor runs every background component and keeps it running: a crash is logged
and the component started again; stopping waits for each to return, and cancels a stuck one."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from broker.service.supervisor import Supervisor


class Flaky:
    """Crashes on its first ``crashes`` runs, then works until stopped."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0
        self.working = asyncio.Event()
        self.stopped = False

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError("boom")
        self.working.set()
        await stop.wait()
        self.stopped = True


class Stuck:
    def __init__(self) -> None:
        self.cancelled = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.Event().wait()  # ignores stop
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_a_crashed_component_is_restarted_and_the_others_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky, steady = Flaky(crashes=2), Flaky(crashes=0)
    sup = Supervisor(
        {"flaky": flaky, "steady": steady},
        restart_base=timedelta(milliseconds=1),
        restart_cap=timedelta(milliseconds=2),
    )
    with caplog.at_level(logging.ERROR):
        sup.start()
        await asyncio.wait_for(flaky.working.wait(), timeout=5)
        await asyncio.wait_for(steady.working.wait(), timeout=5)
        await sup.stop()
    assert (flaky.runs, steady.runs) == (3, 1)
    assert sup.crashes == {"flaky": 2, "steady": 0}
    assert flaky.stopped
    assert steady.stopped
    assert sum("flaky crashed" in r.getMessage() for r in caplog.records) == 2
    assert not sup.running


async def test_stopping_cancels_a_component_that_does_not_return() -> None:
    stuck, ok = Stuck(), Flaky(crashes=0)
    sup = Supervisor({"stuck": stuck, "ok": ok}, stop_timeout=timedelta(milliseconds=50))
    sup.start()
    await asyncio.wait_for(ok.working.wait(), timeout=5)
    await sup.stop()
    assert stuck.cancelled
    assert not sup.running
