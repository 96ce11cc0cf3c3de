"""`jit mcp` (issue 12 part 1) against a real broker on loopback: the mcp SDK's in-process
client session drives the server as an agent runtime would — list the tools, request a
credential (delivered to a 0600 file), use it on an MCP server protected by the broker, end
the session, and the broker says the credential is inactive. Approvals, reveal-to-model
delivery, explain, revoke and complete; and the real `jit mcp` process over stdio."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import msgspec
import pytest
import redis.asyncio as aioredis
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from broker.audit import read_chain
from broker.client import Client as BrokerClient
from broker.client import StaticToken
from broker.mcp.server import build_server
from tests.e2e.conftest import free_port
from tests.integration.live import LiveBroker, live_broker, serve
from tests.integration.test_mcp_protected_server import CLIENT_ID, CLIENT_SECRET, example

pytestmark = pytest.mark.integration

TOOLS = {
    "request_credential",
    "wait_for_approval",
    "list_credentials",
    "revoke_credential",
    "explain_access",
    "complete_task",
}


def policy(orders: str) -> str:
    return f"""
owner: agents
workloads:
  - issuer: dev
    claims: {{team: agents}}
permissions: [introspect]
grants:
  - name: orders-read
    issuer: jwt
    resource: {orders}
    actions: [read]
    max_ttl: 30m
    default_ttl: 10m
    approval: none
  - name: orders-write
    issuer: jwt
    resource: {orders}
    actions: [write]
    max_ttl: 30m
    approval: required
  - name: notes
    issuer: jwt
    resource: https://notes.example
    actions: [read]
    max_ttl: 5m
    approval: none
    delivery: {{reveal_to_model: true}}
"""


class Env:
    def __init__(self, live: LiveBroker, orders: str, files: Path) -> None:
        self.live = live
        self.orders = orders
        self.files = files
        self.agent = live.token("agent-1", team="agents")

    def server(self, **kwargs: Any) -> Any:
        return build_server(
            BrokerClient(self.live.url, StaticToken(self.agent)), files_dir=self.files, **kwargs
        )

    async def introspect(self, token: str) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{self.live.url}/oauth/introspect",
                data={"token": token},
                headers={"Authorization": f"Bearer {self.agent}"},
            )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture
async def env(tmp_path: Path, key_prefix: str, real_redis: aioredis.Redis) -> AsyncIterator[Env]:
    port = free_port()
    orders = f"http://127.0.0.1:{port}/mcp"
    files = tmp_path / "files"
    files.mkdir()
    async with live_broker(
        tmp_path, key_prefix, policy(orders), {CLIENT_ID: CLIENT_SECRET}
    ) as live:
        protected = example().build_server(
            live.url, orders, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
        async with serve(protected.streamable_http_app(), port):
            yield Env(live, orders, files)


async def audit_detail(live: LiveBroker, type_: str, lease_id: str) -> dict[str, Any]:
    """The detail of the broker's audit record of ``type_`` for ``lease_id`` (its stream)."""
    async for record in read_chain(live.broker.redis, live.broker.settings.key_prefix):
        data = msgspec.json.decode(record.data)
        if data.get("type") == type_ and data.get("lease_id") == lease_id:
            detail: dict[str, Any] = data.get("detail") or {}
            return detail
    raise AssertionError(f"no {type_} record for {lease_id}")


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    out: dict[str, Any] = result.structured_content or {}
    return out


async def error_of(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


async def use_protected_tool(url: str, token: str) -> dict[str, Any]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        return await call(client, "list_orders")


async def test_a_session_requests_a_credential_into_a_file_uses_it_and_its_end_revokes_it(
    env: Env,
) -> None:
    async with Client(env.server()) as agent:
        tools = await agent.list_tools()
        assert {t.name for t in tools.tools} == TOOLS
        described = {t.name: t for t in tools.tools}
        assert "resource" in described["request_credential"].input_schema["properties"]
        assert described["request_credential"].description

        issued = await call(agent, "request_credential", resource=env.orders, actions=["read"])
        assert issued["status"] == "issued"
        assert issued["delivery"] == "file"
        assert "secret" not in issued
        path = Path(issued["file"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        token = path.read_text()
        assert token not in str(issued)

        answer = await use_protected_tool(env.orders, token)
        assert answer["read_for"] == "dev:agent-1"
        assert answer["task_id"] == issued["task_id"]
        assert (await env.introspect(token))["active"] is True

        listed = await call(agent, "list_credentials")
        assert [c["lease_id"] for c in listed["credentials"]] == [issued["lease_id"]]
        assert listed["credentials"][0]["file"] == str(path)

    # The session ended: its task is completed, the credential revoked, the file gone.
    assert (await env.introspect(token))["active"] is False
    assert not path.exists()
    assert not path.parent.exists()
    detail = await audit_detail(env.live, "lease.minted", issued["lease_id"])
    assert detail["delivery"] == "file"
    revoked = await audit_detail(env.live, "lease.revoked", issued["lease_id"])
    assert revoked["trigger"] == "task_completed"
    with pytest.raises(Exception):  # noqa: B017,PT011 (the SDK's transport error)
        await use_protected_tool(env.orders, token)


async def test_the_secret_reaches_the_model_only_when_the_grant_allows_it(env: Env) -> None:
    async with Client(env.server()) as agent:
        refused = await error_of(
            agent, "request_credential", resource=env.orders, actions=["read"], reveal=True
        )
        assert "reveal_to_model" in refused
        shown = await call(
            agent,
            "request_credential",
            resource="https://notes.example",
            actions=["read"],
            reveal=True,
        )
        assert shown["delivery"] == "model"
        assert "file" not in shown
        assert (await env.introspect(shown["secret"]))["active"] is True
        assert list(env.files.rglob("*.credential")) == []
    detail = await audit_detail(env.live, "lease.minted", shown["lease_id"])
    assert detail["delivery"] == "model"


async def test_a_request_that_needs_approval_returns_at_once_and_is_collected_after_it(
    env: Env,
) -> None:
    async with Client(env.server()) as agent:
        pending = await call(agent, "request_credential", resource=env.orders, actions=["write"])
        assert pending["status"] == "approval_pending"
        approval_id = pending["approval_id"]
        assert approval_id in pending["message"]
        still = await call(agent, "wait_for_approval", approval_id=approval_id, timeout_seconds=0)
        assert still["status"] == "approval_pending"
        again = await call(agent, "request_credential", resource=env.orders, actions=["write"])
        assert again["approval_id"] == approval_id  # the same request finds the same approval

        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{env.live.url}/v1/approvals/{approval_id}/approve",
                json={},
                headers={"Authorization": f"Bearer {env.live.approver_key}"},
            )
        assert r.status_code == 200, r.text

        issued = await call(agent, "wait_for_approval", approval_id=approval_id, timeout_seconds=5)
        assert issued["status"] == "issued"
        assert issued["actions"] == ["write"]
        token = Path(issued["file"]).read_text()
        assert (await env.introspect(token))["active"] is True
    assert (await env.introspect(token))["active"] is False


async def test_a_wait_the_agent_runtime_abandons_leaves_the_approval_pending(env: Env) -> None:
    """The runtime gives up on a wait_for_approval call (its read timeout sends
    notifications/cancelled, which interrupts the tool): the approval request stays pending,
    so the agent can wait again and collect the credential."""
    async with Client(env.server()) as agent:
        pending = await call(agent, "request_credential", resource=env.orders, actions=["write"])
        approval_id = pending["approval_id"]
        with pytest.raises(MCPError):
            await agent.call_tool(
                "wait_for_approval",
                {"approval_id": approval_id, "timeout_seconds": 3},
                read_timeout_seconds=0.5,
            )
        still = await call(agent, "wait_for_approval", approval_id=approval_id, timeout_seconds=0)
        assert still["status"] == "approval_pending"
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{env.live.url}/v1/approvals/{approval_id}/approve",
                json={},
                headers={"Authorization": f"Bearer {env.live.approver_key}"},
            )
        assert r.status_code == 200, r.text
        issued = await call(agent, "wait_for_approval", approval_id=approval_id, timeout_seconds=5)
        assert issued["status"] == "issued"


async def test_explain_access_answers_for_the_agent_itself_without_minting(env: Env) -> None:
    async with Client(env.server()) as agent:
        allow = await call(agent, "explain_access", resource=env.orders, actions=["read"])
        assert allow["decision"] == "allow"
        assert allow["grant"] == "agents/orders-read"
        assert allow["ttl_seconds"] == 600
        approval = await call(agent, "explain_access", resource=env.orders, actions=["write"])
        assert approval["decision"] == "approval_required"
        deny = await call(agent, "explain_access", resource=env.orders, actions=["admin"])
        assert deny["decision"] == "deny"
        assert any("admin" in r for r in deny["reasons"])
        notes = await call(
            agent, "explain_access", resource="https://notes.example", actions=["read"]
        )
        assert notes["may_reveal_to_model"] is True
        listed = await call(agent, "list_credentials")
        assert listed["credentials"] == []
        refused = await error_of(
            agent, "request_credential", resource=env.orders, actions=["admin"]
        )
        assert "no grant allows this request. Reasons: " in refused
        assert "actions not allowed: admin" in refused


async def test_the_explain_endpoint_explains_only_the_callers_own_access(env: Env) -> None:
    body = {"issuer": "jwt", "resource": env.orders, "actions": ["read"]}
    async with httpx.AsyncClient(base_url=env.live.url) as http:
        outsider = env.live.token("someone", team="other")
        r = await http.post(
            "/v1/explain", json=body, headers={"Authorization": f"Bearer {outsider}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == "deny"
        # There is no way to name another principal: unknown fields are refused.
        r = await http.post(
            "/v1/explain",
            json={**body, "principal": "dev:agent-1"},
            headers={"Authorization": f"Bearer {outsider}"},
        )
        assert r.status_code == 400
        r = await http.post("/v1/explain", json=body)
        assert r.status_code == 401


async def test_revoke_and_complete_task_end_credentials_before_the_session_does(env: Env) -> None:
    async with Client(env.server()) as agent:
        first = await call(agent, "request_credential", resource=env.orders, actions=["read"])
        second = await call(agent, "request_credential", resource=env.orders, actions=["read"])
        tokens = [Path(x["file"]).read_text() for x in (first, second)]
        revoked = await call(agent, "revoke_credential", lease_id=first["lease_id"])
        assert revoked["state"] == "revoked"
        assert not Path(first["file"]).exists()
        assert [(await env.introspect(t))["active"] for t in tokens] == [False, True]

        done = await call(agent, "complete_task")
        assert done["completed"] == first["task_id"]
        assert done["revoked"] == 2
        assert (await env.introspect(tokens[1]))["active"] is False
        third = await call(agent, "request_credential", resource=env.orders, actions=["read"])
        assert third["task_id"] == done["next_task_id"] != first["task_id"]
        token3 = Path(third["file"]).read_text()
    assert (await env.introspect(token3))["active"] is False


async def test_jit_mcp_over_stdio_revokes_when_the_client_goes_away(
    env: Env, tmp_path: Path
) -> None:
    token_file = tmp_path / "identity"
    token_file.write_text(env.agent)
    jit = str(Path(sys.executable).parent / "jit")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    environ.update({"JIT_URL": env.live.url, "JIT_TOKEN_FILE": str(token_file)})
    params = StdioServerParameters(
        command=jit, args=["mcp", "--files-dir", str(env.files)], env=environ
    )
    async with Client(params) as agent:
        issued = await call(agent, "request_credential", resource=env.orders, actions=["read"])
        token = Path(issued["file"]).read_text()
        assert (await env.introspect(token))["active"] is True
    assert (await env.introspect(token))["active"] is False
    assert list(env.files.iterdir()) == []


async def test_jit_mcp_over_http_revokes_when_it_is_stopped(env: Env, tmp_path: Path) -> None:
    token_file = tmp_path / "identity"
    token_file.write_text(env.agent)
    port = free_port()
    jit = str(Path(sys.executable).parent / "jit")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    environ.update({"JIT_URL": env.live.url, "JIT_TOKEN_FILE": str(token_file)})
    proc = await asyncio.create_subprocess_exec(
        jit,
        "mcp",
        "--http",
        str(port),
        "--files-dir",
        str(env.files),
        env=environ,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        for _ in range(300):
            try:
                async with httpx.AsyncClient() as http:
                    await http.get(url, timeout=1)
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
        async with (
            httpx2.AsyncClient(timeout=10) as http,
            Client(streamable_http_client(url, http_client=http)) as agent,
        ):
            issued = await call(agent, "request_credential", resource=env.orders, actions=["read"])
            token = Path(issued["file"]).read_text()
            assert (await env.introspect(token))["active"] is True
        assert (await env.introspect(token))["active"] is True  # the process is the session
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (the session ends), then re-raises the signal.
        assert await asyncio.wait_for(proc.wait(), 30) in (0, -signal.SIGTERM)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (await env.introspect(token))["active"] is False
    assert list(env.files.iterdir()) == []


async def test_jit_mcp_over_stdio_revokes_when_it_is_stopped_with_sigterm(
    env: Env, tmp_path: Path
) -> None:
    """The client is still connected (stdin open); SIGTERM ends the session all the same."""
    token_file = tmp_path / "identity"
    token_file.write_text(env.agent)
    jit = str(Path(sys.executable).parent / "jit")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    environ.update({"JIT_URL": env.live.url, "JIT_TOKEN_FILE": str(token_file)})
    proc = await asyncio.create_subprocess_exec(
        jit,
        "mcp",
        "--files-dir",
        str(env.files),
        env=environ,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "request_credential",
                "arguments": {"resource": env.orders, "actions": ["read"]},
            },
        },
    ]
    try:
        for message in messages:
            proc.stdin.write(msgspec.json.encode(message) + b"\n")
        await proc.stdin.drain()
        answer: dict[str, Any] = {}
        while answer.get("id") != 2:
            answer = msgspec.json.decode(await asyncio.wait_for(proc.stdout.readline(), 30))
        issued = answer["result"]["structuredContent"]
        token = Path(issued["file"]).read_text()
        assert (await env.introspect(token))["active"] is True
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (await env.introspect(token))["active"] is False
    assert list(env.files.iterdir()) == []
