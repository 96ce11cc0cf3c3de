"""Shared kit for the identity tests: signing keys, a fake OIDC provider on httpx.MockTransport,
and token builders. The fake's own behaviour is checked at the bottom, so a broken fake cannot
make the other identity tests pass for the wrong reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Mapping
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from broker.testing import FakeClock

# Generated once per test session: RSA generation is the slow part of these tests.
RSA_GH = RSAKey.generate_key(2048, parameters={"kid": "gh-1", "use": "sig", "alg": "RS256"})
RSA_GH_NEXT = RSAKey.generate_key(2048, parameters={"kid": "gh-2", "use": "sig", "alg": "RS256"})
RSA_GL = RSAKey.generate_key(2048, parameters={"kid": "gl-1", "use": "sig"})
RSA_STRAY = RSAKey.generate_key(2048, parameters={"kid": "k8s-rsa"})
EC_K8S = ECKey.generate_key("P-256", parameters={"kid": "k8s-1", "use": "sig", "alg": "ES256"})
ED_GENERIC = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1", "use": "sig"})


def b64url(data: bytes | str | Mapping[str, Any]) -> str:
    if isinstance(data, Mapping):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(
    claims: Mapping[str, Any],
    key: Key,
    alg: str,
    *,
    kid: str | None = "<key>",
    header: Mapping[str, Any] | None = None,
) -> str:
    """A real JWS made by joserfc. ``kid`` defaults to the key's own kid; None leaves it out."""
    hdr: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid == "<key>":
        kid = key.kid
    if kid is not None:
        hdr["kid"] = kid
    hdr.update(header or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # EdDSA's RFC 9864 notice
        # Lenient header check so tests can add non-registered header parameters.
        registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
        return jwt.encode(hdr, dict(claims), key, registry=registry)


def unsigned(claims: Mapping[str, Any], kid: str = "gh-1") -> str:
    """A hand-made ``alg: none`` token (joserfc refuses to make one)."""
    return f"{b64url({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64url(claims)}."


def hs256_with_public_pem(claims: Mapping[str, Any], key: RSAKey, kid: str) -> str:
    """The HS/RS confusion attack: HMAC-SHA256 keyed with the issuer's RSA *public* key PEM."""
    secret = key.as_pem(private=False)
    signing_input = f"{b64url({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64url(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


class FakeIdP:
    """An OIDC provider: discovery at ``/.well-known/openid-configuration``, JWKS at
    ``jwks_path``. Records every request path; ``down`` makes it answer 503; ``gate`` (when set)
    holds JWKS responses until the event is set."""

    def __init__(self, host: str, keys: list[Key], *, jwks_path: str = "/jwks") -> None:
        self.host = host
        self.issuer = f"https://{host}"
        self.jwks_path = jwks_path
        self.published: list[Key] = list(keys)
        self.requests: list[str] = []
        self.down = False
        self.discovery_issuer: str | None = None  # override the discovery document's issuer
        self.gate: asyncio.Event | None = None
        self.waiting = 0

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}{self.jwks_path}"

    @property
    def jwks_requests(self) -> int:
        return self.requests.count(self.jwks_path)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.published]}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(path)
        if self.down:
            return httpx.Response(503, text="maintenance")
        if path == "/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": self.discovery_issuer or self.issuer,
                    "jwks_uri": self.jwks_uri,
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
        if path == self.jwks_path:
            if self.gate is not None:
                self.waiting += 1
                await self.gate.wait()
            return httpx.Response(200, json=self.jwks())
        return httpx.Response(404)


def network(*idps: FakeIdP) -> httpx.AsyncClient:
    """An httpx client whose transport routes each request to the fake IdP of its host."""
    by_host = {idp.host: idp for idp in idps}

    async def route(request: httpx.Request) -> httpx.Response:
        idp = by_host.get(request.url.host)
        if idp is None:
            raise httpx.ConnectError("no route to host", request=request)
        return await idp.handle(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(route))


def times(clock: FakeClock, *, lifetime: int = 300, **shift: int) -> dict[str, int]:
    """iat/nbf/exp around the clock's now; ``shift`` moves any of them (seconds)."""
    now = int(clock.now().timestamp())
    out = {"iat": now, "nbf": now, "exp": now + lifetime}
    for name, delta in shift.items():
        out[name] = out[name] + delta
    return out


# -- the fake itself ------------------------------------------------------------------------------


async def test_the_fake_idp_serves_discovery_and_public_keys_and_counts_requests() -> None:
    idp = FakeIdP("idp.test", [RSA_GH])
    async with network(idp) as http:
        disc = (await http.get(f"{idp.issuer}/.well-known/openid-configuration")).json()
        jwks = (await http.get(disc["jwks_uri"])).json()
    assert disc["issuer"] == idp.issuer
    assert [k["kid"] for k in jwks["keys"]] == ["gh-1"]
    assert all("d" not in k for k in jwks["keys"])
    assert idp.requests == ["/.well-known/openid-configuration", "/jwks"]


async def test_the_fake_idp_answers_503_when_down() -> None:
    idp = FakeIdP("idp.test", [RSA_GH])
    idp.down = True
    async with network(idp) as http:
        assert (await http.get(idp.jwks_uri)).status_code == 503


def test_the_hs256_confusion_token_really_is_an_hmac_over_the_public_pem() -> None:
    token = hs256_with_public_pem({"a": 1}, RSA_GH, "gh-1")
    head, body, sig = token.split(".")
    expected = hmac.new(
        RSA_GH.as_pem(private=False), f"{head}.{body}".encode(), hashlib.sha256
    ).digest()
    assert sig == b64url(expected)
