"""The SDK's retry loop and cleanup rules, on httpx's MockTransport (the broker's real answers
are in tests/clients/): Retry-After is honoured, an expired CI token is fetched again once, a
cleanup that fails after the body raised becomes a note on the body's exception."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from broker.client import BrokerUnavailable, Client, RetryPolicy, StaticToken

URL = "http://127.0.0.1:8200"
CRED = {
    "lease_id": "l1", "task_id": "t1", "issuer": "jwt", "resource": "r", "actions": ["read"],
    "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T00:10:00Z", "ttl": 600,
    "grant": "g", "policy_version": "v",
    "credential": {"token_type": "Bearer", "secret": "s3cr3t-token-value", "metadata": {}},
}  # fmt: skip
UNAVAILABLE = {
    "type": "https://jit-broker.dev/problems/store-unavailable", "title": "Service Unavailable",
    "status": 503, "detail": "the state store is unavailable",
}  # fmt: skip


class Script:
    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Counting:
    """An identity source that counts how often it was asked, and with refresh."""

    name = "github"

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def token(self, http: Any, *, refresh: bool = False) -> str:
        self.calls.append(refresh)
        return f"id-token-{len(self.calls)}"


def client(script: Script, identity: Any = None, budget: float = 10.0) -> Client:
    return Client(
        URL,
        identity or StaticToken("id-token"),
        transport=httpx.MockTransport(script),
        retry=RetryPolicy(budget=budget, base=0.01, cap=0.02),
    )


async def test_a_503_is_retried_under_the_same_idempotency_key(monkeypatch: Any) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr("broker.client.transport.asyncio.sleep", no_sleep)
    script = Script(
        httpx.Response(503, json=UNAVAILABLE, headers={"Retry-After": "2"}),
        httpx.Response(201, json=CRED),
    )
    async with client(script) as c:
        cred = await c.credential(resource="r", actions="read")
    assert cred.lease_id == "l1"
    assert waits == [2.0]  # the broker's Retry-After
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 2
    assert len(keys) == 1


async def test_a_503_past_the_budget_is_broker_unavailable() -> None:
    script = Script(httpx.Response(503, json=UNAVAILABLE, headers={"Retry-After": "30"}))
    async with client(script, budget=1.0) as c:
        with pytest.raises(BrokerUnavailable):
            await c.leases()
    assert len(script.requests) == 1


async def test_a_refused_ci_token_is_fetched_again_once() -> None:
    refused = {
        "type": "https://jit-broker.dev/problems/unauthenticated", "title": "Unauthorized",
        "status": 401, "detail": "token expired",
    }  # fmt: skip
    script = Script(httpx.Response(401, json=refused), httpx.Response(200, json=[]))
    source = Counting()
    async with client(script, source) as c:
        assert await c.leases() == []
    assert source.calls == [False, True]
    assert [r.headers["Authorization"] for r in script.requests] == [
        "Bearer id-token-1",
        "Bearer id-token-2",
    ]


class Boom(Exception):
    pass


async def test_a_failed_cleanup_is_a_note_on_the_bodys_exception() -> None:
    script = Script(httpx.Response(201, json=CRED), httpx.Response(503, json=UNAVAILABLE))

    async def work(c: Client) -> None:
        async with c.task("t1") as task:
            await task.credential(resource="r", actions="read")
            raise Boom

    async with client(script, budget=0.05) as c:
        with pytest.raises(Boom) as raised:
            await work(c)
    assert any("completing task t1 failed" in note for note in raised.value.__notes__)


async def test_a_failed_cleanup_after_a_clean_body_raises() -> None:
    script = Script(httpx.Response(201, json=CRED), httpx.Response(503, json=UNAVAILABLE))

    async def work(c: Client) -> None:
        async with c.task("t1") as task:
            await task.credential(resource="r", actions="read")

    async with client(script, budget=0.05) as c:
        with pytest.raises(BrokerUnavailable):
            await work(c)
