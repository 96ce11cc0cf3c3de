"""Helpers shared by the lease tests: a manager wired to a FakeIssuer, a FakeClock and a store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis

from broker.audit import AuditLog, MemorySink
from broker.config import ReaperSettings
from broker.leases import LeaseManager, LeaseStore, Reaper
from broker.testing import FakeClock, FakeIssuer
from broker.types import Principal, Scope, Task

ALICE = Principal(id="dev:alice", issuer="dev", subject="alice", claims={"sub": "alice"})
BOB = Principal(id="dev:bob", issuer="dev", subject="bob", claims={"sub": "bob"})
SCOPE = Scope.of("fake", "https://demo.local", ["read"])

SETTINGS = ReaperSettings(
    visibility_timeout=timedelta(seconds=30),
    mint_grace=timedelta(seconds=60),
    backoff_base=timedelta(seconds=1),
    backoff_cap=timedelta(seconds=60),
    overdue_after_attempts=3,
    issuer_timeout=timedelta(seconds=5),
)


@dataclass
class Kit:
    redis: aioredis.Redis
    prefix: str
    clock: FakeClock
    issuer: FakeIssuer
    sink: MemorySink
    store: LeaseStore
    manager: LeaseManager
    reaper: Reaper
    extra: dict[str, Any] = field(default_factory=dict)

    async def issue(self, task: str = "t1", who: Principal = ALICE, ttl: float = 600) -> Any:
        return await self.manager.issue(who, Task(task), SCOPE, timedelta(seconds=ttl))

    def replica(self, name: str) -> Reaper:
        """Another replica on the same store and issuer."""
        m = LeaseManager(
            self.store,
            {"fake": self.issuer},
            AuditLog(self.clock, [self.sink]),
            self.clock,
            SETTINGS,
            replica_id=name,
        )
        return Reaper(m, SETTINGS, self.clock)

    def events(self, type_: str) -> list[Any]:
        return [e for e in self.sink.events if e.type == type_]

    async def due(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in range(self.store.keys.due_shards):
            rows = await self.redis.zrange(self.store.keys.due_shard(n), 0, -1, withscores=True)
            out.update((k.decode(), s) for k, s in rows)
        return out


def make_kit(redis: aioredis.Redis, prefix: str, clock: FakeClock) -> Kit:
    issuer = FakeIssuer("fake", clock=clock)
    sink = MemorySink()
    store = LeaseStore(redis, prefix)
    manager = LeaseManager(
        store, {"fake": issuer}, AuditLog(clock, [sink]), clock, SETTINGS, replica_id="r1"
    )
    return Kit(redis, prefix, clock, issuer, sink, store, manager, Reaper(manager, SETTINGS, clock))
