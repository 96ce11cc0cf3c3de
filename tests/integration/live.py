"""A broker served over real HTTP on a loopback port, in process (uvicorn on the test's event
loop), over the real Redis and the system clock — for tests whose other parts (an MCP server,
`jit mcp`) talk to the broker over the network the way they would in production."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvicorn

from broker.api import create_app
from broker.clock import SystemClock
from broker.config import ClientSettings, IssuerInstanceSettings, Settings
from broker.identity import DevIdentityIssuer
from broker.service import Broker, build_broker
from broker.types import Secret
from issuers.jwt.keys import generate_key
from tests.conftest import REDIS_URL
from tests.e2e.conftest import free_port


@dataclass
class LiveBroker:
    url: str
    broker: Broker
    dev: DevIdentityIssuer
    approver_key: str  # the development approver's key (approves `approval: required`)

    def token(self, sub: str, **claims: Any) -> str:
        return self.dev.issue(sub, claims)


@contextlib.asynccontextmanager
async def serve(app: Any, port: int) -> AsyncIterator[None]:
    """Serve an ASGI app on 127.0.0.1:``port`` until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            access_log=False,
            log_config=None,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError(f"could not serve on port {port}")
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def live_broker(
    tmp_path: Path,
    key_prefix: str,
    policy: str,
    clients: Mapping[str, str] | None = None,
) -> AsyncIterator[LiveBroker]:
    """A broker on a free loopback port with ``policy`` (one document), a jwt issuer, the dev
    identity issuer, and ``clients`` (client id → secret; permission introspect)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    clock = SystemClock()
    keys = tmp_path / f"keys-{port}"
    keys.mkdir()
    generate_key(keys, "EdDSA", clock.now())
    policies = tmp_path / f"policies-{port}"
    policies.mkdir()
    (policies / "policy.yaml").write_text(policy)
    client_settings = []
    for client_id, secret in (clients or {}).items():
        secret_file = tmp_path / f"{client_id}.secret"
        secret_file.write_text(secret)
        client_settings.append(ClientSettings(client_id=client_id, secret_file=str(secret_file)))
    settings = Settings(
        public_url=url,
        host="127.0.0.1",
        port=port,
        key_prefix=key_prefix,
        policy_dir=str(policies),
        issuers={
            "jwt": IssuerInstanceSettings(
                type="jwt", config={"keys_dir": str(keys), "max_ttl": "1h", "default_ttl": "15m"}
            )
        },
        clients=client_settings,
    )
    dev = DevIdentityIssuer(f"{url}/dev/oidc", clock, audience=settings.broker_audience)
    approver_key = "jitdev-approver-" + secrets.token_urlsafe(32)
    broker = await build_broker(
        settings,
        clock=clock,
        redis=aioredis.Redis.from_url(REDIS_URL),
        dev=True,
        dev_identity=dev,
        dev_approver_key=Secret(approver_key),
    )
    async with serve(create_app(broker), port):
        yield LiveBroker(url=url, broker=broker, dev=dev, approver_key=approver_key)
