"""Shared fixtures: clocks, an isolated key prefix on the real Redis, and fakeredis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from broker.testing import FakeClock

REDIS_URL = os.environ.get("JIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix unique to one test, so runs never see each other's keys."""
    return f"jittest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def real_redis(key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """The real Redis on 127.0.0.1:6379; every key under ``key_prefix`` is deleted after."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=False)
    try:
        await client.ping()
    except Exception as exc:  # the README's test command starts Redis; this should not happen
        pytest.fail(f"Redis at {REDIS_URL} is not answering: {exc}")
    yield client
    async for batch in _scan(client, f"{key_prefix}:*"):
        await client.unlink(*batch)
    await client.aclose()


async def _scan(client: aioredis.Redis, pattern: str) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture
async def fake_redis() -> AsyncIterator[aioredis.Redis]:
    import fakeredis

    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()
