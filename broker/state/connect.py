"""The broker's Redis client: one pool per process, bounded and blocking.

redis-py's default pool raises ``MaxConnectionsError`` as soon as more commands are in flight
than it has connections (100 by default) — under load (HTTP requests, the reaper's concurrent
revocations, audit delivery) that would turn a burst into errors. A blocking pool makes a
command wait (up to ``timeout``) for a free connection instead; ``max_connections`` bounds what
one replica asks of Redis.
"""

from __future__ import annotations

import redis.asyncio as aioredis

__all__ = ["redis_client"]


def redis_client(url: str, *, max_connections: int = 64, timeout: float = 5.0) -> aioredis.Redis:
    """A client for ``url`` over a blocking pool; closing the client closes the pool."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout
    )
    return aioredis.Redis.from_pool(pool)
