"""The revoked-serial set of one ``ssh`` issuer instance, shared by every broker replica.

Owns where revocations live: a Redis sorted set ``<state_prefix>:{krl}:revoked`` with
member = the certificate serial (decimal) and score = the certificate's ``valid_before`` (unix
seconds). An entry is pruned once its certificate has been expired for :data:`RETENTION_GRACE`
(hosts whose clocks run behind still see it revoked). Without Redis (unit tests) the set lives in
memory and is not shared.

A Redis error or timeout raises ``IssuerUnavailable`` naming the operation, never a value: a
revocation that was not recorded must not look recorded, and a KRL that could not be read must not
be served empty.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Final, Protocol

from redis.exceptions import RedisError

from broker.errors import IssuerUnavailable

__all__ = ["RETENTION_GRACE", "MemoryRevocations", "RedisRevocations", "Revocations"]

#: How long a revoked serial stays in the KRL after its certificate's ``valid_before``.
RETENTION_GRACE: Final = timedelta(minutes=10)
_GRACE_S: Final = int(RETENTION_GRACE.total_seconds())
#: Seconds one Redis operation may take before the issuer reports itself unavailable.
REDIS_TIMEOUT: Final = 5.0


class Revocations(Protocol):
    async def add(self, serial: int, valid_before: int, now: int) -> None:
        """Record ``serial`` as revoked until ``valid_before`` (and prune expired entries)."""
        ...

    async def live(self, now: int) -> list[int]:
        """The serials that must be in the KRL at ``now``, sorted."""
        ...

    async def prune(self, now: int) -> None:
        """Forget serials whose certificates expired long enough ago; proves the store works."""
        ...

    async def ping(self) -> None: ...


class MemoryRevocations:
    """One process only: for unit tests and single-replica development."""

    def __init__(self) -> None:
        self._serials: dict[int, int] = {}

    async def add(self, serial: int, valid_before: int, now: int) -> None:
        self._serials[serial] = max(valid_before, self._serials.get(serial, valid_before))
        await self.prune(now)

    async def live(self, now: int) -> list[int]:
        return sorted(s for s, vb in self._serials.items() if vb > now - _GRACE_S)

    async def prune(self, now: int) -> None:
        for serial in [s for s, vb in self._serials.items() if vb <= now - _GRACE_S]:
            del self._serials[serial]

    async def ping(self) -> None:
        return None


class RedisRevocations:
    """The shared set in Redis (works on a single node, Sentinel or Cluster: one key)."""

    def __init__(self, redis: Any, key: str, *, issuer: str) -> None:
        self._redis = redis
        self.key = key
        self._issuer = issuer

    def __repr__(self) -> str:
        return f"RedisRevocations(key={self.key!r})"

    async def add(self, serial: int, valid_before: int, now: int) -> None:
        async def op() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zadd(self.key, {str(serial): valid_before}, gt=True)
                pipe.zremrangebyscore(self.key, "-inf", now - _GRACE_S)
                await pipe.execute()

        await self._call("record a revocation", op())

    async def live(self, now: int) -> list[int]:
        async def op() -> list[int]:
            members = await self._redis.zrangebyscore(self.key, f"({now - _GRACE_S}", "+inf")
            return sorted(int(m) for m in members)

        result: list[int] = await self._call("read the revoked serials", op())
        return result

    async def prune(self, now: int) -> None:
        await self._call(
            "prune the revoked serials",
            self._redis.zremrangebyscore(self.key, "-inf", now - _GRACE_S),
        )

    async def ping(self) -> None:
        await self._call("reach Redis", self._redis.ping())

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            raise IssuerUnavailable(
                f"ssh issuer {self._issuer!r}: could not {what} ({exc.__class__.__name__})"
            ) from None
        except ValueError:  # a member that is not a serial: someone else wrote to our key
            raise IssuerUnavailable(
                f"ssh issuer {self._issuer!r}: could not {what} (corrupt revoked-serial set)"
            ) from None
