"""The issuers' shared state (ssh revoked serials, x509 serial state, GitHub token copies),
the lease store's scripts after a script-cache flush, and the client's limits, on each
topology. A Lua script keeps its keys in one slot; ``scripts.run`` sends a batch as one
pipeline per node and loads a script Redis does not know on every primary."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from broker.leases.keys import new_lease_id, task_key
from broker.state.scripts import Op, Script, run
from broker.testing import FakeClock
from broker.types import Secret
from issuers.github.tokenstore import TokenStore
from issuers.ssh.state import RedisRevocations
from issuers.x509.state import RedisSerialState

pytestmark = pytest.mark.integration

_SWAP = Script(
    "local old = redis.call('GET', KEYS[1]); redis.call('SET', KEYS[1], ARGV[1]); return old"
)


async def flush_scripts(client: Any) -> None:
    """Empty the script cache everywhere (what a restart or a failover does)."""
    if isinstance(client, RedisCluster):
        await client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.script_flush()


async def test_a_batch_of_scripts_over_many_slots_survives_an_empty_script_cache(
    real_redis: Any, key_prefix: str
) -> None:
    keys = [f"{key_prefix}:{{s{i}}}:v" for i in range(40)]  # spread over the cluster's nodes
    await flush_scripts(real_redis)
    ops = [_SWAP.op([k], [f"a{i}"]) for i, k in enumerate(keys)]
    ops.append(Op(command=("SET", f"{key_prefix}:{{plain}}", "x")))
    assert await run(real_redis, ops) == [None] * 40 + [True]
    await flush_scripts(real_redis)
    again = await run(real_redis, [_SWAP.op([k], [f"b{i}"]) for i, k in enumerate(keys)])
    assert again == [f"a{i}".encode() for i in range(40)]
    await flush_scripts(real_redis)
    assert await _SWAP(real_redis, [keys[0]], ["c"]) == b"b0"


async def test_ssh_revoked_serials_are_shared(real_redis: Any, key_prefix: str) -> None:
    a = RedisRevocations(real_redis, f"{key_prefix}:{{ssh:ca}}:revoked", issuer="ssh")
    b = RedisRevocations(real_redis, f"{key_prefix}:{{ssh:ca}}:revoked", issuer="ssh")
    await a.add(7, valid_before=2_000_000_000, now=1_900_000_000)
    await a.add(9, valid_before=1_000, now=1_900_000_000)  # long expired: pruned
    assert await b.live(1_900_000_000) == [7]


async def test_x509_serial_state_is_shared(real_redis: Any, key_prefix: str) -> None:
    def state() -> RedisSerialState:
        return RedisSerialState(
            real_redis, prefix=key_prefix, tag="x509:ca", grace_ms=60_000, label="x509 test"
        )

    a, b = state(), state()
    assert await a.claim("01", 2_000_000, 1_000_000) == "ok"
    assert await b.claim("01", 2_000_000, 1_000_000) == "duplicate"
    await b.revoke("01", 2_000_000, 1_000_001)
    assert await a.claim("01", 2_000_000, 1_000_002) == "revoked"
    assert await a.revoked(1_000_003) == [("01", 1_000_001)]


async def test_github_token_copies_are_shared(real_redis: Any, key_prefix: str) -> None:
    key = os.urandom(32)
    clock = FakeClock()

    def store() -> TokenStore:
        return TokenStore(
            instance="gh", keys=(key,), clock=clock, redis=real_redis, prefix=f"{key_prefix}:gh"
        )

    lease = new_lease_id(task_key("dev:alice", "t1"))
    await store().put(lease, Secret("ghs_" + "x" * 36), timedelta(minutes=5))
    got = await store().get(lease)
    assert got is not None
    assert got.reveal() == "ghs_" + "x" * 36
    await store().delete(lease)
    assert await store().get(lease) is None
