"""The JWKS cache, watched through the HTTP requests a fake IdP receives: cached keys cost
nothing, an unknown kid refreshes once per interval, concurrent refreshes share one fetch,
discovery is used when no jwks_uri is configured, and an IdP outage is a 401 — never a crash,
never the loss of keys already cached."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc.errors import SecurityWarning
from joserfc.jwk import OctKey, RSAKey

from broker.config import IdentityIssuerSettings
from broker.errors import AuthenticationError
from broker.identity import TokenVerifier
from broker.identity.jwks import MAX_DOCUMENT_BYTES, parse_jwks
from broker.testing import FakeClock
from tests.unit.test_identity_support import (
    EC_K8S,
    ED_GENERIC,
    RSA_GH,
    RSA_GH_NEXT,
    FakeIdP,
    network,
    sign,
    times,
)

AUD = "jit-broker"
INTERVAL = 45  # jwks_min_refresh_interval (not the default, to show the setting is used)
TTL = 300  # jwks_cache_ttl (likewise)


@dataclass
class Setup:
    clock: FakeClock
    idp: FakeIdP
    verifier: TokenVerifier

    def token(self, key: RSAKey = RSA_GH, kid: str | None = "<key>", **over: Any) -> str:
        claims = {"iss": self.idp.issuer, "aud": AUD, "sub": "workload-1", **times(self.clock)}
        claims.update(over)
        return sign(claims, key, "RS256", kid=kid)

    async def ok(self, token: str) -> None:
        assert (await self.verifier.verify(token)).subject == "workload-1"

    async def fails(self, token: str, needle: str) -> AuthenticationError:
        with pytest.raises(AuthenticationError) as info:
            await self.verifier.verify(token)
        assert needle in info.value.message
        assert info.value.status == 401
        return info.value


def settings(idp: FakeIdP, *, discover: bool = False) -> IdentityIssuerSettings:
    return IdentityIssuerSettings(
        name="corp",
        issuer=idp.issuer,
        audiences=[AUD],
        jwks_uri=None if discover else idp.jwks_uri,
        algorithms=["RS256"],
        jwks_min_refresh_interval=timedelta(seconds=INTERVAL),
        jwks_cache_ttl=timedelta(seconds=TTL),
    )


@pytest.fixture
async def setup(clock: FakeClock) -> AsyncIterator[Setup]:
    idp = FakeIdP("idp.example.com", [RSA_GH])
    async with network(idp) as http:
        verifier = TokenVerifier([settings(idp)], clock, http=http)
        yield Setup(clock, idp, verifier)
        await verifier.aclose()


async def test_the_first_verification_fetches_the_keys_once(setup: Setup) -> None:
    await setup.ok(setup.token())
    assert setup.idp.requests == ["/jwks"]


async def test_a_cache_hit_makes_no_http_call(setup: Setup) -> None:
    await setup.ok(setup.token())
    for _ in range(5):
        await setup.ok(setup.token())
    setup.clock.advance(TTL - 1)
    await setup.ok(setup.token())
    assert setup.idp.jwks_requests == 1


async def test_keys_are_refetched_when_the_cache_ttl_runs_out(setup: Setup) -> None:
    await setup.ok(setup.token())
    setup.clock.advance(TTL)
    await setup.ok(setup.token())
    assert setup.idp.jwks_requests == 2


async def test_an_unknown_kid_triggers_exactly_one_refresh(setup: Setup) -> None:
    await setup.ok(setup.token())
    await setup.fails(setup.token(kid="random-1"), "unknown signing key kid=random-1")
    assert setup.idp.jwks_requests == 2


async def test_a_rotated_in_key_is_found_by_the_refresh(setup: Setup) -> None:
    await setup.ok(setup.token())
    setup.idp.published.append(RSA_GH_NEXT)  # the IdP rotates a new key in
    await setup.ok(setup.token(key=RSA_GH_NEXT))
    await setup.ok(setup.token(key=RSA_GH_NEXT))
    assert setup.idp.jwks_requests == 2


async def test_a_second_unknown_kid_within_the_interval_triggers_no_refresh(setup: Setup) -> None:
    await setup.ok(setup.token())
    await setup.fails(setup.token(kid="random-1"), "unknown signing key")
    for i in range(INTERVAL - 1):  # a flood of random kids, one a second
        setup.clock.advance(1)
        await setup.fails(setup.token(kid=f"random-{i + 2}"), "unknown signing key")
    assert setup.idp.jwks_requests == 2
    # Known keys keep working throughout.
    await setup.ok(setup.token())
    assert setup.idp.jwks_requests == 2


async def test_after_the_interval_an_unknown_kid_refreshes_again(setup: Setup) -> None:
    await setup.ok(setup.token())
    await setup.fails(setup.token(kid="random-1"), "unknown signing key")
    setup.clock.advance(INTERVAL - 1)
    await setup.fails(setup.token(kid="random-2"), "unknown signing key")
    assert setup.idp.jwks_requests == 2
    setup.clock.advance(1)
    await setup.fails(setup.token(kid="random-3"), "unknown signing key")
    assert setup.idp.jwks_requests == 3


async def test_concurrent_verifications_with_an_unknown_kid_share_one_fetch(setup: Setup) -> None:
    await setup.ok(setup.token())
    setup.idp.published.append(RSA_GH_NEXT)
    setup.idp.gate = asyncio.Event()
    tokens = [setup.token(key=RSA_GH_NEXT) for _ in range(10)]
    tasks = [asyncio.create_task(setup.verifier.verify(t)) for t in tokens]
    while setup.idp.waiting == 0:  # let every task reach the cache
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    setup.idp.gate.set()
    principals = await asyncio.gather(*tasks)
    assert {p.subject for p in principals} == {"workload-1"}
    assert setup.idp.jwks_requests == 2
    assert setup.idp.waiting == 1


async def test_concurrent_first_verifications_share_one_fetch(setup: Setup) -> None:
    setup.idp.gate = asyncio.Event()
    tasks = [asyncio.create_task(setup.verifier.verify(setup.token())) for _ in range(10)]
    while setup.idp.waiting == 0:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    setup.idp.gate.set()
    await asyncio.gather(*tasks)
    assert setup.idp.jwks_requests == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(setup: Setup) -> None:
    setup.idp.gate = asyncio.Event()
    first = asyncio.create_task(setup.verifier.verify(setup.token()))
    second = asyncio.create_task(setup.verifier.verify(setup.token()))
    while setup.idp.waiting == 0:
        await asyncio.sleep(0)
    first.cancel()
    setup.idp.gate.set()
    assert (await second).subject == "workload-1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert setup.idp.jwks_requests == 1


async def test_discovery_finds_the_jwks_uri_when_none_is_configured(clock: FakeClock) -> None:
    idp = FakeIdP("idp.example.com", [RSA_GH], jwks_path="/oauth/discovery/keys")
    async with network(idp) as http:
        verifier = TokenVerifier([settings(idp, discover=True)], clock, http=http)
        s = Setup(clock, idp, verifier)
        await s.ok(s.token())
        assert idp.requests == ["/.well-known/openid-configuration", "/oauth/discovery/keys"]
        clock.advance(TTL)
        await s.ok(s.token())  # the discovered uri is remembered
        assert idp.requests[2:] == ["/oauth/discovery/keys"]
        await verifier.aclose()


async def test_a_discovery_document_naming_another_issuer_is_refused(clock: FakeClock) -> None:
    idp = FakeIdP("idp.example.com", [RSA_GH])
    idp.discovery_issuer = "https://attacker.example"
    async with network(idp) as http:
        verifier = TokenVerifier([settings(idp, discover=True)], clock, http=http)
        s = Setup(clock, idp, verifier)
        await s.fails(s.token(), "cannot fetch signing keys for issuer corp")
        assert idp.jwks_requests == 0
        await verifier.aclose()


async def test_an_idp_that_is_down_gives_a_401_not_a_crash(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.idp.down = True
    with caplog.at_level(logging.ERROR, logger="broker.identity.jwks"):
        await setup.fails(setup.token(), "cannot fetch signing keys for issuer corp")
    assert "HTTP 503" in caplog.text


async def test_an_outage_does_not_hammer_the_idp_and_recovery_is_picked_up(setup: Setup) -> None:
    setup.idp.down = True
    await setup.fails(setup.token(), "cannot fetch signing keys")
    await setup.fails(setup.token(), "cannot fetch signing keys")
    assert setup.idp.jwks_requests == 1  # no retry within the interval
    setup.idp.down = False
    setup.clock.advance(INTERVAL)
    await setup.ok(setup.token())
    assert setup.idp.jwks_requests == 2


async def test_cached_keys_keep_working_while_the_idp_is_down(setup: Setup) -> None:
    await setup.ok(setup.token())
    setup.idp.down = True
    setup.clock.advance(TTL + 1)  # the cache is stale: a refresh is tried and fails
    await setup.ok(setup.token())
    assert setup.idp.jwks_requests == 2
    await setup.ok(setup.token())  # and is not retried on every request
    assert setup.idp.jwks_requests == 2
    await setup.fails(setup.token(kid="rotated"), "unknown signing key kid=rotated")
    assert setup.idp.jwks_requests == 2


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        pytest.param(httpx.Response(200, text="<html>"), "not JSON", id="an html page"),
        pytest.param(httpx.Response(200, json={"keys": []}), "no usable", id="an empty key set"),
        pytest.param(httpx.Response(200, json=[1, 2]), "not a JWKS", id="a JSON list"),
        pytest.param(
            httpx.Response(200, content=b" " * (MAX_DOCUMENT_BYTES + 1)),
            "larger than",
            id="an oversized response",
        ),
        pytest.param(
            httpx.Response(302, headers={"location": "http://x"}), "HTTP 302", id="a redirect"
        ),
    ],
)
async def test_a_bad_jwks_response_is_a_401_that_names_the_issuer(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, response: httpx.Response, reason: str
) -> None:
    idp = FakeIdP("idp.example.com", [RSA_GH])
    transport = httpx.MockTransport(lambda request: response)
    async with httpx.AsyncClient(transport=transport) as http:
        verifier = TokenVerifier([settings(idp)], clock, http=http)
        s = Setup(clock, idp, verifier)
        with caplog.at_level(logging.ERROR, logger="broker.identity.jwks"):
            err = await s.fails(s.token(), "cannot fetch signing keys for issuer corp")
        assert reason in caplog.text
        assert "idp.example.com" not in err.message  # the 401 does not reveal internal URLs
        await verifier.aclose()


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(httpx.ConnectTimeout("slow"), id="a connect timeout"),
        pytest.param(httpx.ReadTimeout("slow"), id="a read timeout"),
        pytest.param(httpx.ConnectError("refused"), id="a refused connection"),
        pytest.param(RuntimeError("library bug"), id="an unexpected error"),
    ],
)
async def test_transport_failures_are_a_401(clock: FakeClock, error: Exception) -> None:
    idp = FakeIdP("idp.example.com", [RSA_GH])

    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as http:
        verifier = TokenVerifier([settings(idp)], clock, http=http)
        s = Setup(clock, idp, verifier)
        await s.fails(s.token(), "cannot fetch signing keys for issuer corp")
        await verifier.aclose()
        assert not http.is_closed  # an injected client belongs to the caller


async def test_static_keys_are_never_fetched(clock: FakeClock) -> None:
    from joserfc.jwk import KeySet

    idp = FakeIdP("idp.example.com", [RSA_GH])
    async with network(idp) as http:
        verifier = TokenVerifier(
            [settings(idp)], clock, http=http, static_keys={"corp": KeySet([RSA_GH])}
        )
        s = Setup(clock, idp, verifier)
        await s.ok(s.token())
        await s.fails(s.token(kid="other"), "unknown signing key kid=other")
        clock.advance(TTL * 10)
        await s.ok(s.token())
        assert idp.requests == []
        await verifier.aclose()


async def test_a_token_without_kid_is_refused_when_the_issuer_has_several_keys(
    setup: Setup,
) -> None:
    setup.idp.published.append(RSA_GH_NEXT)
    await setup.fails(setup.token(kid=None), "no kid")
    assert setup.idp.jwks_requests == 1


# -- parse_jwks -----------------------------------------------------------------------------------


def test_parse_jwks_keeps_only_public_signature_keys_it_can_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # weak on purpose
        weak = RSAKey.generate_key(1024, parameters={"kid": "weak"})
    doc = {
        "keys": [
            RSA_GH.as_dict(private=False),
            EC_K8S.as_dict(private=False),
            ED_GENERIC.as_dict(private=False),
            {**RSA_GH_NEXT.as_dict(private=False), "use": "enc"},
            OctKey.generate_key(256, parameters={"kid": "hmac"}).as_dict(),
            weak.as_dict(private=False),
            RSA_GH_NEXT.as_dict(private=True) | {"kid": "leaked"},
            {"kty": "PQC", "kid": "future"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not-an-object",
        ]
    }
    keyset = parse_jwks(doc)
    assert sorted(k.kid or "" for k in keyset) == ["ed-1", "gh-1", "k8s-1"]
    assert not any(k.is_private for k in keyset)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({}, id="no keys member"),
        pytest.param({"keys": "x"}, id="keys is not a list"),
        pytest.param({"keys": [OctKey.generate_key(256).as_dict()]}, id="only symmetric keys"),
        pytest.param(None, id="null"),
    ],
)
def test_parse_jwks_refuses_documents_without_usable_keys(doc: Any) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        parse_jwks(doc)
