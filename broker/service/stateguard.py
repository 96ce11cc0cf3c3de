"""Detecting that Redis lost the broker's state, and refusing to serve until an operator acts.

At start a replica reads the *epoch* (``{prefix}:{epoch}``, a random id written once by the
first replica ever, with ``SET NX``) and keeps it. Every ``interval`` it reads it again: if it
is gone or different, Redis lost its data (a restart without persistence, a failover to an
empty replica, a FLUSHALL) — every lease, task and due entry it knew may be gone, and with
them the revocations they promised. The replica then:

- logs it as critical and records ``state.lost`` (in the new, empty chain),
- answers 503 (``state-lost``) to every request but the health and metrics routes, and
  reports not-ready,
- keeps reconciling (broker.service.reconcile) so what the backends still hold is revoked,

until an operator has looked and runs ``jit state accept`` (which writes a new epoch marked
accepted), after which every replica adopts the new epoch and serves again.

A replica that *starts* against an empty Redis cannot tell a first start from a loss; it
writes a new epoch, and the reconciliation at start revokes what no lease owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from datetime import timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from broker.audit import AuditLog
from broker.clock import Clock, to_ms
from broker.errors import BrokerError
from broker.state import opt_text

__all__ = ["StateGuard", "StateLost", "accept_epoch"]

log = logging.getLogger("jit.state")


class StateLost(BrokerError):
    status = 503
    code = "state-lost"
    oauth_error = "temporarily_unavailable"


def epoch_key(prefix: str) -> str:
    return f"{prefix}:{{epoch}}"


async def accept_epoch(redis: aioredis.Redis, prefix: str, clock: Clock) -> str:
    """``jit state accept``: write a new epoch, marked as accepted by an operator."""
    new = secrets.token_hex(16)
    await redis.hset(
        epoch_key(prefix),
        mapping={"id": new, "created_ms": to_ms(clock.now()), "accepted": "1"},
    )
    return new


class StateGuard:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        audit: AuditLog,
        clock: Clock,
        *,
        interval: timedelta = timedelta(seconds=5),
    ) -> None:
        self.redis = redis
        self.key = epoch_key(prefix)
        self.audit = audit
        self.clock = clock
        self.interval = interval
        self.epoch: str | None = None
        self.lost = False

    async def start(self) -> str:
        """Read the epoch, writing the first one if there is none. Returns it."""
        fresh = secrets.token_hex(16)
        await self.redis.hsetnx(self.key, "id", fresh)
        await self.redis.hsetnx(self.key, "created_ms", str(to_ms(self.clock.now())))
        self.epoch = opt_text(await self.redis.hget(self.key, "id"))
        return self.epoch or fresh

    def check_serving(self) -> None:
        """Raise StateLost (503) while the loss is not accepted."""
        if self.lost:
            raise StateLost(
                "the state store lost its data (the broker's epoch changed); an operator must "
                "check the backends (`jit reconcile`) and then run `jit state accept`"
            )

    async def check(self) -> bool:
        """Compare the epoch with the one this replica knows. Returns True while serving."""
        found = await self.redis.hmget(self.key, ["id", "accepted"])
        current, accepted = opt_text(found[0]), opt_text(found[1])
        if current is not None and current == self.epoch:
            return True
        if self.lost:
            if current is not None and accepted == "1":
                log.warning("state loss accepted by an operator; serving again (epoch %s)", current)
                self.epoch, self.lost = current, False
                await self.audit.emit("state.accepted", detail={"epoch": current})
                return True
            return False
        self.lost = True
        log.critical(
            "Redis lost the broker's state (epoch %s is %s): refusing to serve until "
            "`jit state accept`",
            self.epoch,
            "gone" if current is None else f"now {current}",
        )
        with contextlib.suppress(BrokerError, RedisError, RedisClusterException, OSError):
            await self.audit.emit(
                "state.lost",
                outcome="error",
                reasons=["the epoch key is gone or changed: Redis lost its data"],
                detail={"known_epoch": self.epoch, "found_epoch": current},
            )
        return False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval.total_seconds())
            if stop.is_set():
                return
            try:
                await self.check()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("state guard: Redis unavailable (%s)", type(exc).__name__)
