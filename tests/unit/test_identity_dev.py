"""The development OIDC issuer: its tokens verify through the ordinary TokenVerifier path and,
independently, with PyJWT; it publishes only public keys; it lets nobody override the claims
that make a token what it is."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import jwt as pyjwt
import pytest

from broker.errors import AuthenticationError
from broker.identity import DevIdentityIssuer, TokenVerifier
from broker.testing import FakeClock

URL = "http://127.0.0.1:8200/dev/oidc"


@pytest.fixture
def dev(clock: FakeClock) -> DevIdentityIssuer:
    return DevIdentityIssuer(URL, clock)


def verifier_for(dev: DevIdentityIssuer, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier([dev.settings()], clock, static_keys={dev.name: dev.keyset()})


async def test_an_issued_token_verifies_through_the_token_verifier(
    dev: DevIdentityIssuer, clock: FakeClock
) -> None:
    verifier = verifier_for(dev, clock)
    token = dev.issue("ci-job-1", {"repo": "demo", "attempt": 2, "groups": ["a"]})
    p = await verifier.verify(token)
    assert p.id == "dev:ci-job-1"
    assert p.issuer == "dev"
    assert p.claims == {"sub": "ci-job-1", "repo": "demo", "attempt": 2, "groups": ["a"]}
    await verifier.aclose()


async def test_an_issued_token_verifies_with_pyjwt_using_the_published_jwks() -> None:
    real_now = FakeClock(datetime.now(UTC))  # PyJWT checks iat/nbf/exp against the real clock
    dev = DevIdentityIssuer(URL, real_now, audience="my-broker")
    token = dev.issue("ci-job-1", {"repo": "demo"})
    (jwk,) = dev.jwks()["keys"]
    key = pyjwt.PyJWK(jwk).key
    claims = pyjwt.decode(
        token,
        key=key,
        algorithms=["EdDSA"],
        audience="my-broker",
        issuer=URL,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    assert claims["sub"] == "ci-job-1"
    assert claims["repo"] == "demo"
    assert pyjwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": dev.kid, "typ": "JWT"}


async def test_a_token_from_another_dev_issuer_does_not_verify(
    dev: DevIdentityIssuer, clock: FakeClock
) -> None:
    other = DevIdentityIssuer(URL, clock)
    verifier = verifier_for(dev, clock)
    with pytest.raises(AuthenticationError, match="unknown signing key"):
        await verifier.verify(other.issue("intruder"))
    await verifier.aclose()


async def test_a_dev_token_expires_after_its_ttl(dev: DevIdentityIssuer, clock: FakeClock) -> None:
    verifier = verifier_for(dev, clock)
    token = dev.issue("ci", ttl=timedelta(minutes=5))
    await verifier.verify(token)
    clock.advance(timedelta(minutes=6))
    with pytest.raises(AuthenticationError, match="token expired"):
        await verifier.verify(token)
    await verifier.aclose()


def test_the_token_carries_the_standard_claims(dev: DevIdentityIssuer, clock: FakeClock) -> None:
    token = dev.issue("ci", ttl=timedelta(minutes=10))
    claims = pyjwt.decode(token, options={"verify_signature": False})
    now = int(clock.now().timestamp())
    assert claims["iss"] == URL
    assert claims["aud"] == "jit-broker"
    assert claims["iat"] == claims["nbf"] == now
    assert claims["exp"] == now + 600
    assert len(claims["jti"]) >= 16
    again = pyjwt.decode(dev.issue("ci"), options={"verify_signature": False})
    assert claims["jti"] != again["jti"]


@pytest.mark.parametrize("name", ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"])
def test_claims_cannot_override_what_the_issuer_sets(dev: DevIdentityIssuer, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        dev.issue("ci", {name: "forged"})


@pytest.mark.parametrize(
    ("sub", "ttl"),
    [
        pytest.param("", timedelta(hours=1), id="an empty subject"),
        pytest.param("ci", timedelta(0), id="a zero ttl"),
        pytest.param("ci", timedelta(seconds=-1), id="a negative ttl"),
    ],
)
def test_nonsense_requests_are_refused(dev: DevIdentityIssuer, sub: str, ttl: timedelta) -> None:
    with pytest.raises(ValueError, match=r"sub|ttl"):
        dev.issue(sub, ttl=ttl)


def test_the_jwks_holds_only_the_public_key(dev: DevIdentityIssuer) -> None:
    (jwk,) = dev.jwks()["keys"]
    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert jwk["alg"] == "EdDSA"
    assert jwk["use"] == "sig"
    assert jwk["kid"] == dev.kid
    assert "d" not in jwk
    assert not any(k.is_private for k in dev.keyset())


def test_the_discovery_document_points_at_the_jwks(dev: DevIdentityIssuer) -> None:
    doc = dev.discovery()
    assert doc["issuer"] == URL
    assert doc["jwks_uri"] == URL + "/jwks"
    assert doc["id_token_signing_alg_values_supported"] == ["EdDSA"]


def test_the_settings_trust_exactly_this_issuer(dev: DevIdentityIssuer) -> None:
    s = dev.settings()
    assert (s.name, s.issuer, s.preset) == ("dev", URL, "generic")
    assert s.audiences == ["jit-broker"]
    assert s.algorithms == ["EdDSA"]


def test_each_dev_issuer_has_a_fresh_key(clock: FakeClock) -> None:
    a, b = DevIdentityIssuer(URL, clock), DevIdentityIssuer(URL, clock)
    assert a.kid != b.kid


async def test_no_eddsa_deprecation_warning_escapes(clock: FakeClock) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dev = DevIdentityIssuer(URL, clock)
        verifier = verifier_for(dev, clock)
        await verifier.verify(dev.issue("ci"))
        await verifier.aclose()
