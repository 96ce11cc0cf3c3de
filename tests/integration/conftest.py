"""Shared by the API integration tests: the broker's app in process (httpx's ASGI transport)
over the real Redis, with the dev sample policy, a jwt issuer, a dev identity issuer and one
configured resource-server client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from broker.api import create_app
from broker.audit import MemorySink
from broker.cli.server import dev_policy_dir
from broker.config import ClientSettings, IssuerInstanceSettings, RedisSettings, Settings
from broker.identity import DevIdentityIssuer
from broker.service import Broker, build_broker
from broker.state.connect import redis_client
from broker.testing import FakeClock
from broker.types import Secret
from issuers.jwt.keys import generate_key

BASE = "http://testserver.local"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
CLIENT_SECRET = "resource-server-secret-0123456789"


@dataclass
class Api:
    client: httpx.AsyncClient
    broker: Broker
    dev: DevIdentityIssuer
    audit: MemorySink
    clock: FakeClock
    redis: aioredis.Redis

    def auth(self, sub: str = "ci-1", **claims: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dev.issue(sub, claims)}"}

    async def lease_keys(self) -> list[bytes]:
        prefix = self.broker.settings.key_prefix
        return [k async for k in self.redis.scan_iter(match=f"{prefix}:{{t:*")]


@pytest.fixture
def policy_dir() -> Path:
    """The policy directory the ``api`` broker loads (a test module may override it)."""
    return dev_policy_dir()


@pytest.fixture
def settings_over() -> dict[str, Any]:
    """Settings fields the ``api`` broker is built with besides the defaults (a test module
    may override it, e.g. with ``quotas``)."""
    return {}


@pytest.fixture
async def api(
    real_redis: aioredis.Redis,
    test_redis: RedisSettings,
    key_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
    policy_dir: Path,
    settings_over: dict[str, Any],
) -> AsyncIterator[Api]:
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(keys, "EdDSA", clock.now())
    secret_file = tmp_path / "rs.secret"
    secret_file.write_text(CLIENT_SECRET)
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        policy_dir=str(policy_dir),
        issuers={
            "jwt": IssuerInstanceSettings(
                type="jwt", config={"keys_dir": str(keys), "max_ttl": "1h", "default_ttl": "15m"}
            )
        },
        clients=[ClientSettings(client_id="orders-api", secret_file=str(secret_file))],
    )
    settings = msgspec.structs.replace(settings, **settings_over)
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    sink = MemorySink()
    broker = await build_broker(
        settings,
        clock=clock,
        redis=redis_client(test_redis),
        dev=True,
        dev_identity=dev,
        dev_admin_key=Secret("a" * 43),
        audit_sinks=[sink],
    )
    app = create_app(broker, manage_lifecycle=False)
    # httpx's ASGI transport runs the app on this test's event loop (litestar's AsyncTestClient
    # runs it on a portal loop, where the Redis connections made here cannot be used).
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Api(client, broker, dev, sink, clock, real_redis)
    await broker.aclose()


def request_body(**over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "task": {"id": "build-1", "purpose": "deploy"},
        "issuer": "jwt",
        "resource": "https://demo.local",
        "actions": ["read"],
        "ttl": 300,
    }
    body.update(over)
    return body
