"""A lease's whole life through the HTTP API on each topology: mint, introspect, complete the
task, TTL reaping by the reaper, and the audit chain that verifies afterwards."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from broker.audit import read_chain
from broker.audit.verify import verify_lines
from tests.integration.conftest import CLIENT_SECRET, Api, request_body

pytestmark = pytest.mark.integration

BASIC = {
    "Authorization": "Basic " + base64.b64encode(f"orders-api:{CLIENT_SECRET}".encode()).decode()
}


async def introspect(api: Api, token: str) -> bool:
    r = await api.client.post("/oauth/introspect", data={"token": token}, headers=BASIC)
    assert r.status_code == 200, r.text
    return bool(r.json()["active"])


async def test_mint_introspect_complete_reap_and_verify_the_chain(api: Api) -> None:
    headers = api.auth("alice")
    first = await api.client.post("/v1/credentials", json=request_body(), headers=headers)
    assert first.status_code == 201, first.text
    token = first.json()["credential"]["secret"]
    assert await introspect(api, token)

    done = await api.client.post("/v1/tasks/build-1/complete", headers=headers)
    assert done.status_code == 200, done.text
    assert not await introspect(api, token)
    lease = await api.client.get(f"/v1/leases/{first.json()['lease_id']}", headers=headers)
    assert lease.json()["state"] == "revoked"

    body = request_body(task={"id": "build-2", "purpose": "deploy"}, ttl=60)
    second = await api.client.post("/v1/credentials", json=body, headers=headers)
    assert second.status_code == 201, second.text
    lease_id = second.json()["lease_id"]
    assert await api.broker.reaper.run_once() == 0  # nothing is due yet
    api.clock.advance(timedelta(seconds=61))
    assert await api.broker.reaper.run_once() == 1
    reaped = await api.client.get(f"/v1/leases/{lease_id}", headers=headers)
    assert reaped.json()["state"] == "revoked"
    assert reaped.json()["revoke_trigger"] == "ttl"

    chain = [r.data async for r in read_chain(api.redis, api.broker.settings.key_prefix)]
    assert verify_lines(chain).ok
    types = [e.type for e in api.audit.events]
    assert types.count("lease.minted") == 2
    assert types.count("lease.revoked") == 2
