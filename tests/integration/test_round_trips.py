"""The mint's critical path costs two Redis round trips (issue 14): the write-ahead lease, then
its activation together with the audit records (one group commit). No SCRIPT EXISTS, ever."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from tests.integration.conftest import Api, request_body

pytestmark = pytest.mark.integration


class Sent:
    def __init__(self) -> None:
        self.writes = 0
        self.commands: list[bytes] = []


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    record = Sent()
    original = Connection.send_packed_command

    async def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        record.writes += 1  # one write = one round trip (a pipeline is one write)
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        for chunk in chunks:
            raw = chunk if isinstance(chunk, bytes) else str(chunk).encode()
            record.commands.append(raw)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    return record


async def test_a_mint_costs_two_round_trips_and_no_script_exists(api: Api, sent: Sent) -> None:
    headers = api.auth("alice")
    warm = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert warm.status_code == 201  # the first one also learns the chain's head
    sent.writes = 0
    sent.commands.clear()
    body = request_body(task={"id": "build-2", "purpose": "deploy"})
    r = await api.client.post("/v1/credentials", json=body, headers=headers)
    assert r.status_code == 201, r.text
    assert sent.writes == 2, [c[:120] for c in sent.commands]
    joined = b"".join(sent.commands).upper()
    assert b"SCRIPT" not in joined
    assert b"EVALSHA" in joined
    # The record is in the chain when the answer comes.
    minted = [e for e in api.audit.events if e.type == "lease.minted"]
    assert minted[-1].lease_id == r.json()["lease_id"]
    assert minted[-1].seq is not None


async def test_an_introspection_costs_two_round_trips(api: Api, sent: Sent) -> None:
    """The lease's task hash read together with the use count, then one commit with the
    ``lease.used`` and ``lease.introspected`` records (issue 14 goal 6)."""
    minted = await api.client.post("/v1/credentials", json=request_body(), headers=api.auth())
    assert minted.status_code == 201, minted.text
    token = minted.json()["credential"]["secret"]
    headers = api.auth("other")  # a workload whose policy grants introspect
    warm = await api.client.post("/oauth/introspect", data={"token": token}, headers=headers)
    assert warm.json()["active"] is True
    sent.writes = 0
    sent.commands.clear()
    r = await api.client.post("/oauth/introspect", data={"token": token}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["active"] is True
    assert sent.writes == 2, [c[:120] for c in sent.commands]
    used = [e for e in api.audit.events if e.type == "lease.used"]
    introspected = [e for e in api.audit.events if e.type == "lease.introspected"]
    assert len(used) == len(introspected) == 2
    assert used[-1].seq is not None
    assert introspected[-1].seq == used[-1].seq + 1  # one commit, in this order
