"""DPoP through the HTTP API: a proof binds the token to the client's key (cnf.jkt), the
binding is reported by introspection, a proof from another key does not match it, and bad or
replayed proofs are refused."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import ec

from broker.api import create_app
from broker.cli.server import dev_policy_dir
from broker.config import IssuerInstanceSettings, RedisSettings, Settings
from broker.identity import DevIdentityIssuer
from broker.identity.dpop import check_bound, thumbprint
from broker.service import Broker, build_broker
from broker.state.connect import redis_client
from broker.testing import FakeClock
from broker.types import Secret
from issuers.jwt.keys import generate_key

pytestmark = pytest.mark.integration

BASE = "http://broker.test"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return dict(json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key())))


def proof(key: ec.EllipticCurvePrivateKey, url: str, *, now: float, method: str = "POST") -> str:
    claims = {"htm": method, "htu": url, "iat": int(now), "jti": secrets.token_urlsafe(16)}
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(key)}
    return pyjwt.encode(claims, key, algorithm="ES256", headers=headers)


@pytest.fixture
async def env(
    test_redis: RedisSettings,
    real_redis: aioredis.Redis,
    key_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, Broker, DevIdentityIssuer, FakeClock]]:
    generate_key(tmp_path, "EdDSA", clock.now())
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        policy_dir=str(dev_policy_dir()),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(tmp_path)})},
    )
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    broker = await build_broker(
        settings,
        clock=clock,
        redis=redis_client(test_redis),
        dev=True,
        dev_identity=dev,
        dev_admin_key=Secret("d" * 43),
    )
    transport = httpx.ASGITransport(app=create_app(broker, manage_lifecycle=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client, broker, dev, clock
    await broker.aclose()


async def test_a_dpop_bound_token_is_reported_with_its_binding(env: Any) -> None:
    client, broker, dev, clock = env
    key, thief = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = clock.now().timestamp()
    identity = dev.issue("ci-1", {})
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": identity,
        "subject_token_type": JWT_TYPE,
        "resource": "https://demo.local",
        "scope": "read",
    }
    r = await client.post(
        "/oauth/token", data=form, headers={"DPoP": proof(key, f"{BASE}/oauth/token", now=now)}
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert r.json()["token_type"] == "DPoP"
    claims = pyjwt.decode(token, options={"verify_signature": False})
    jkt = thumbprint(public_jwk(key))
    assert claims["cnf"] == {"jkt": jkt}
    info = (
        await client.post(
            "/oauth/introspect",
            data={"token": token},
            headers={"Authorization": f"Bearer {identity}"},
        )
    ).json()
    assert info["token_type"] == "DPoP"
    assert info["cnf"] == {"jkt": jkt}
    # A resource server compares the key of the proof it received with the binding.
    api = "https://demo.local/orders"
    own = await broker.dpop.verify(proof(key, api, now=now, method="GET"), method="GET", url=api)
    stolen = await broker.dpop.verify(
        proof(thief, api, now=now, method="GET"), method="GET", url=api
    )
    assert check_bound(info, own)
    assert not check_bound(info, stolen)


async def test_v1_credentials_binds_too_and_bad_or_replayed_proofs_are_refused(env: Any) -> None:
    client, _, dev, clock = env
    key = ec.generate_private_key(ec.SECP256R1())
    now = clock.now().timestamp()
    headers = {"Authorization": f"Bearer {dev.issue('ci-2', {})}"}
    body = {"issuer": "jwt", "resource": "https://demo.local", "actions": ["read"]}
    good = proof(key, f"{BASE}/v1/credentials", now=now)
    r = await client.post("/v1/credentials", json=body, headers={**headers, "DPoP": good})
    assert r.status_code == 201, r.text
    assert r.json()["credential"]["token_type"] == "DPoP"
    replay = await client.post("/v1/credentials", json=body, headers={**headers, "DPoP": good})
    assert replay.status_code == 401
    wrong_url = proof(key, f"{BASE}/oauth/token", now=now)
    r = await client.post("/v1/credentials", json=body, headers={**headers, "DPoP": wrong_url})
    assert r.status_code == 401
    stale = proof(key, f"{BASE}/v1/credentials", now=now - 3600)
    r = await client.post("/v1/credentials", json=body, headers={**headers, "DPoP": stale})
    assert r.status_code == 401
    leases = (await client.get("/v1/leases", headers=headers)).json()
    assert len(leases) == 1  # only the good request minted


async def test_a_bad_proof_at_the_token_endpoint_is_invalid_dpop_proof(env: Any) -> None:
    client, _, dev, clock = env
    key = ec.generate_private_key(ec.SECP256R1())
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": dev.issue("ci-3", {}),
        "subject_token_type": JWT_TYPE,
        "resource": "https://demo.local",
        "scope": "read",
    }
    bad = proof(key, f"{BASE}/v1/credentials", now=clock.now().timestamp())
    r = await client.post("/oauth/token", data=form, headers={"DPoP": bad})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_dpop_proof"
