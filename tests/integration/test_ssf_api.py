"""Shared Signals through the broker: revoking a credential through the API pushes a signed
Security Event Token to the registered receiver; the transmitter metadata and keys are served."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import redis.asyncio as aioredis

from broker.api import create_app
from broker.cli.server import dev_policy_dir
from broker.config import IssuerInstanceSettings, Settings, SsfReceiverSettings, SsfSettings
from broker.identity import DevIdentityIssuer
from broker.service import build_broker
from broker.testing import FakeClock
from broker.types import Secret
from issuers.jwt.keys import generate_key
from tests.conftest import REDIS_URL
from tests.integration.test_ssf_redis import LocalReceiver

pytestmark = pytest.mark.integration

BASE = "http://broker.test"


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    r = LocalReceiver()
    yield r
    r.stop()


@pytest.fixture
async def env(
    real_redis: aioredis.Redis,
    key_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
    receiver: LocalReceiver,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any, DevIdentityIssuer]]:
    generate_key(tmp_path, "EdDSA", clock.now())
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        policy_dir=str(dev_policy_dir()),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(tmp_path)})},
        ssf=SsfSettings(
            receivers=[
                SsfReceiverSettings(
                    name="orders-api", endpoint=receiver.url, audience="https://orders.internal"
                )
            ]
        ),
    )
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    broker = await build_broker(
        settings,
        clock=clock,
        redis=aioredis.Redis.from_url(REDIS_URL),
        dev=True,
        dev_identity=dev,
        dev_admin_key=Secret("e" * 43),
    )
    assert broker.ssf is not None
    await broker.ssf.register()
    transport = httpx.ASGITransport(app=create_app(broker, manage_lifecycle=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client, broker, dev
    await broker.aclose()


async def test_a_revocation_is_pushed_as_a_signed_set(env: Any, receiver: LocalReceiver) -> None:
    client, broker, dev = env
    headers = {"Authorization": f"Bearer {dev.issue('ci-1', {})}"}
    body = {
        "task": {"id": "t1"},
        "issuer": "jwt",
        "resource": "https://demo.local",
        "actions": ["read"],
    }
    lease_id = (await client.post("/v1/credentials", json=body, headers=headers)).json()["lease_id"]
    assert (await client.delete(f"/v1/leases/{lease_id}", headers=headers)).status_code == 200
    await broker.ssf.run_once()
    [set_token] = receiver.received
    keys = (await client.get("/ssf/jwks.json")).json()
    header = pyjwt.get_unverified_header(set_token)
    assert header["typ"] == "secevent+jwt"
    [jwk] = [k for k in keys["keys"] if k["kid"] == header["kid"]]
    claims = pyjwt.decode(
        set_token,
        pyjwt.PyJWK(jwk).key,
        algorithms=[header["alg"]],
        audience="https://orders.internal",
        issuer=BASE,
        options={"verify_iat": False},  # the broker runs on a FakeClock in 2030
    )
    assert claims["sub_id"] == {"format": "opaque", "id": lease_id}
    assert "https://schemas.openid.net/secevent/caep/event-type/session-revoked" in claims["events"]
    config = (await client.get("/.well-known/ssf-configuration")).json()
    assert config["issuer"] == BASE
    assert config["jwks_uri"] == f"{BASE}/ssf/jwks.json"
