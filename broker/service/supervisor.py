"""Runs the broker's background components, one asyncio task each, in one TaskGroup.

A component is anything with ``async def run(stop: asyncio.Event) -> None`` that works until
``stop`` is set: the reaper, the approval sweep, the audit delivery, the Shared Signals
transmitter, the key-rotation watcher. A component that crashes is logged and started again
after a capped backoff — a reaper that died on an unexpected error must not leave revocations
undone until the next deploy. Stopping sets ``stop`` and waits (bounded) for every component to
return; what does not return in time is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Protocol

from broker.retry import backoff

__all__ = ["Component", "Supervisor"]

log = logging.getLogger("jit.supervisor")


class Component(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


class Supervisor:
    def __init__(
        self,
        components: Mapping[str, Component],
        *,
        restart_base: timedelta = timedelta(seconds=1),
        restart_cap: timedelta = timedelta(seconds=30),
        stop_timeout: timedelta = timedelta(seconds=5),
    ) -> None:
        self.components = dict(components)
        self.restart_base = restart_base
        self.restart_cap = restart_cap
        self.stop_timeout = stop_timeout
        self.crashes: dict[str, int] = dict.fromkeys(self.components, 0)
        self._stop = asyncio.Event()
        self._main: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._main is not None and not self._main.done()

    def start(self) -> None:
        if self.running:
            return
        self._stop = asyncio.Event()
        self._main = asyncio.create_task(self._run_all(), name="jit-supervisor")

    async def stop(self) -> None:
        self._stop.set()
        main = self._main
        if main is None:
            return
        timeout = self.stop_timeout.total_seconds()
        done, _ = await asyncio.wait({main}, timeout=timeout)
        if not done:
            log.warning("background components did not stop within %.0fs; cancelling", timeout)
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        elif not main.cancelled() and main.exception() is not None:
            log.error("supervisor ended with %s", type(main.exception()).__name__)

    async def _run_all(self) -> None:
        async with asyncio.TaskGroup() as group:
            for name, component in self.components.items():
                group.create_task(self._keep(name, component), name=f"jit-{name}")

    async def _keep(self, name: str, component: Component) -> None:
        while not self._stop.is_set():
            try:
                await component.run(self._stop)
                return
            except Exception:
                self.crashes[name] += 1
                delay = backoff(self.crashes[name], base=self.restart_base, cap=self.restart_cap)
                log.exception(
                    "%s crashed (%d so far); restarting in %.1fs",
                    name,
                    self.crashes[name],
                    delay.total_seconds(),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay.total_seconds())
