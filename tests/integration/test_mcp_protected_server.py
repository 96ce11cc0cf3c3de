"""The broker as the authorization server of an MCP server someone else writes
(examples/mcp-protected-server): the real mcp SDK on both sides over streamable HTTP on
loopback. The agent's token is for exactly that server (RFC 8707 ``resource``), obtained through
the same policy and task binding as any credential; a token for another server is refused there;
after the task completes the server refuses the call at once (introspection)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest
import redis.asyncio as aioredis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import free_port
from tests.integration.live import LiveBroker, live_broker, serve

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
CLIENT_ID = "orders-mcp"
CLIENT_SECRET = "orders-mcp-secret-0123456789abcdef"


def example() -> ModuleType:
    path = ROOT / "examples" / "mcp-protected-server" / "server.py"
    spec = importlib.util.spec_from_file_location("mcp_protected_server_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def policy(orders: str, other: str) -> str:
    return f"""
owner: tools
workloads:
  - issuer: dev
    claims: {{team: agents}}
grants:
  - name: orders-mcp
    issuer: jwt
    resource: {orders}
    actions: [read]
    max_ttl: 30m
    approval: none
  - name: other-mcp
    issuer: jwt
    resource: {other}
    actions: [read]
    max_ttl: 30m
    approval: none
"""


class Setup:
    def __init__(self, broker: LiveBroker, orders: str, other: str) -> None:
        self.broker = broker
        self.orders = orders
        self.other = other
        self.agent = broker.token("agent-7", team="agents")

    async def token_for(self, resource: str, task: str) -> str:
        async with httpx.AsyncClient() as http:
            resp = await http.post(
                f"{self.broker.url}/oauth/token",
                data={
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": self.agent,
                    "subject_token_type": JWT_TYPE,
                    "resource": resource,
                    "scope": "read",
                    "task_id": task,
                },
            )
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token


@pytest.fixture
async def setup(
    tmp_path: Path, key_prefix: str, real_redis: aioredis.Redis
) -> AsyncIterator[Setup]:
    port = free_port()
    orders = f"http://127.0.0.1:{port}/mcp"
    other = f"http://127.0.0.1:{free_port()}/mcp"
    async with live_broker(
        tmp_path, key_prefix, policy(orders, other), {CLIENT_ID: CLIENT_SECRET}
    ) as broker:
        server = example().build_server(
            broker.url, orders, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
        async with serve(server.streamable_http_app(), port):
            yield Setup(broker, orders, other)


async def call_list_orders(url: str, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=10) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        tools = await client.list_tools()
        assert [t.name for t in tools.tools] == ["list_orders"]
        result = await client.call_tool("list_orders", {})
        assert not result.is_error, result
        structured: dict[str, Any] = result.structured_content or {}
        return structured


async def test_an_audience_bound_token_calls_the_tool_until_its_task_completes(
    setup: Setup,
) -> None:
    token = await setup.token_for(setup.orders, "agent-session-1")
    answer = await call_list_orders(setup.orders, token)
    assert answer["read_for"] == "dev:agent-7"
    assert answer["task_id"] == "agent-session-1"
    assert answer["orders"][0]["id"] == "o-1001"

    async with httpx.AsyncClient() as http:
        done = await http.post(
            f"{setup.broker.url}/v1/tasks/agent-session-1/complete",
            headers={"Authorization": f"Bearer {setup.agent}"},
        )
    assert done.status_code == 200, done.text
    # The JWT is still unexpired and correctly signed: only introspection can refuse it.
    assert await raw_status(setup.orders, token) == (401, "invalid_token")
    with pytest.raises(Exception):  # noqa: B017,PT011 (the SDK's transport error)
        await call_list_orders(setup.orders, token)


async def raw_status(url: str, token: str) -> tuple[int, str | None]:
    """What the MCP endpoint answers a tools/list with this bearer token, without the SDK."""
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
            },
        )
    error = resp.json().get("error") if resp.status_code == 401 else None
    return resp.status_code, error if isinstance(error, str) else None


async def test_a_token_for_another_server_is_refused(setup: Setup) -> None:
    token = await setup.token_for(setup.other, "agent-session-2")
    assert await raw_status(setup.orders, token) == (401, "invalid_token")
    with pytest.raises(Exception):  # noqa: B017,PT011 (the SDK's transport error)
        await call_list_orders(setup.orders, token)


async def test_without_a_token_the_server_points_at_its_metadata_and_that_at_the_broker(
    setup: Setup,
) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            setup.orders,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert resp.status_code == 401
        challenge = resp.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
        prm = (await http.get(metadata_url)).json()  # RFC 9728
        assert prm["resource"] == setup.orders
        assert prm["authorization_servers"] == [setup.broker.url]
        as_url = prm["authorization_servers"][0]
        meta = (await http.get(f"{as_url}/.well-known/oauth-authorization-server")).json()
    # RFC 8414 §3.3: the issuer is exactly the URL the metadata was found under.
    assert meta["issuer"] == as_url
    assert meta["token_endpoint"] == f"{as_url}/oauth/token"
    assert meta["introspection_endpoint"] == f"{as_url}/oauth/introspect"
    assert meta["revocation_endpoint"] == f"{as_url}/oauth/revoke"
    assert meta["jwks_uri"] == f"{as_url}/.well-known/jwks.json"
    assert TOKEN_EXCHANGE in meta["grant_types_supported"]
    assert "authorization_endpoint" not in meta  # no browser flow: token exchange only
    assert "urn:ietf:params:oauth:token-type:access_token" in meta["subject_token_types_supported"]
    assert meta["actor_token_types_supported"] == [
        JWT_TYPE,
        "urn:ietf:params:oauth:token-type:id_token",
    ]
