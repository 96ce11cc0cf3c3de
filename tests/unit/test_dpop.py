"""DPoP proofs (RFC 9449): every check of §4.3, the RFC's own example proof, thumbprints against
an independent computation, both replay caches (the Redis one on the real Redis), check_bound,
and the resource-server example in docs/dpop.md, run as written.

Proofs are signed with PyJWT and ``cryptography`` (not joserfc, which the verifier uses), so a
bug shared by signer and verifier cannot hide."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import jwt as pyjwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import JWKRegistry
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from broker.errors import AuthenticationError, ConfigError, StoreUnavailable
from broker.identity.dpop import (
    DPoPVerifier,
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    access_token_hash,
    check_bound,
    normalize_htu,
    thumbprint,
)
from broker.testing import FakeClock

URL = "https://jit.example.com/oauth/token"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "dpop.md"

# Keys are made once: RSA generation is the only slow part of this file.
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_OTHER = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_SMALL = rsa.generate_private_key(public_exponent=65537, key_size=1024)


def public_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return dict(OKPAlgorithm.to_jwk(key.public_key(), as_dict=True))
    return dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))


def private_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    return dict(RSAAlgorithm.to_jwk(key, as_dict=True))


def independent_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3 written out by hand: required members, lexicographic order, no spaces."""
    if jwk["kty"] == "EC":
        text = f'{{"crv":"{jwk["crv"]}","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    elif jwk["kty"] == "OKP":
        text = f'{{"crv":"{jwk["crv"]}","kty":"OKP","x":"{jwk["x"]}"}}'
    else:
        text = f'{{"e":"{jwk["e"]}","kty":"RSA","n":"{jwk["n"]}"}}'
    digest = hashlib.sha256(text.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def b64json(obj: object) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_proof(
    key: Any,
    alg: str,
    now: datetime,
    *,
    htm: str = "POST",
    htu: str = URL,
    iat: float | None = None,
    jti: str | None = None,
    jwk: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A proof as a client makes it (PyJWT), with any part overridden or dropped."""
    payload: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": htm,
        "htu": htu,
        "iat": int(now.timestamp()) if iat is None else iat,
        **claims,
    }
    headers: dict[str, Any] = {"typ": "dpop+jwt", "jwk": jwk or public_jwk(key), **(header or {})}
    for name in drop:
        payload.pop(name, None)
        headers.pop(name, None)
    return pyjwt.encode(payload, key, algorithm=alg, headers=headers)


@pytest.fixture
def replay(clock: FakeClock) -> MemoryReplayCache:
    return MemoryReplayCache(clock)


@pytest.fixture
def verifier(clock: FakeClock, replay: MemoryReplayCache) -> DPoPVerifier:
    return DPoPVerifier(clock, replay, max_age=timedelta(seconds=300), leeway=timedelta(seconds=5))


def refused(match: str) -> Any:
    return pytest.raises(AuthenticationError, match=match)


# -- valid proofs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        pytest.param(EC_KEY, "ES256", id="EC P-256"),
        pytest.param(ED_KEY, "EdDSA", id="Ed25519"),
        pytest.param(RSA_KEY, "RS256", id="RSA PKCS1"),
        pytest.param(RSA_KEY, "PS256", id="RSA PSS"),
    ],
)
async def test_a_valid_proof_returns_the_rfc7638_thumbprint_of_its_key(
    verifier: DPoPVerifier, clock: FakeClock, key: Any, alg: str
) -> None:
    jkt = await verifier.verify(make_proof(key, alg, clock.now()), method="POST", url=URL)
    expected = independent_thumbprint(public_jwk(key))
    assert jkt == expected
    assert jkt == JWKRegistry.import_key(public_jwk(key)).thumbprint()  # a third opinion
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", jkt)


async def test_the_example_proof_of_rfc_9449_verifies_to_its_published_jkt(
    clock: FakeClock,
) -> None:
    # RFC 9449 Figure 2 (the proof) and Figure 9 (the jkt of its key).
    proof = (
        "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgt"
        "MzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VO"
        "SmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRj"
        "IiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0Ijox"
        "NTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJ"
        "K70nfbV37xRZT3Lg"
    )
    at_issue = FakeClock(datetime.fromtimestamp(1562262616, UTC))
    verifier = DPoPVerifier(at_issue, MemoryReplayCache(at_issue))
    jkt = await verifier.verify(proof, method="POST", url="https://server.example.com/token")
    assert jkt == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


async def test_a_list_with_one_header_value_is_accepted(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    proof = make_proof(EC_KEY, "ES256", clock.now())
    assert await verifier.verify([proof], method="POST", url=URL) == independent_thumbprint(
        public_jwk(EC_KEY)
    )


# -- the request: htm and htu -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("htm", "method"),
    [
        pytest.param("GET", "POST", id="another method"),
        pytest.param("post", "POST", id="a lower-case method (methods are case-sensitive)"),
    ],
)
async def test_a_proof_for_another_method_is_refused(
    verifier: DPoPVerifier, clock: FakeClock, htm: str, method: str
) -> None:
    with refused("htm .* does not match the request method"):
        await verifier.verify(
            make_proof(EC_KEY, "ES256", clock.now(), htm=htm), method=method, url=URL
        )


@pytest.mark.parametrize(
    "htu",
    [
        pytest.param("https://jit.example.com/v1/credentials", id="another path"),
        pytest.param("https://evil.example.com/oauth/token", id="another host"),
        pytest.param("http://jit.example.com/oauth/token", id="another scheme"),
        pytest.param("https://jit.example.com:8443/oauth/token", id="another port"),
        pytest.param("https://jit.example.com/oauth/token/", id="a trailing slash"),
        pytest.param("https://jit.example.com/OAUTH/token", id="path case matters"),
    ],
)
async def test_a_proof_for_another_url_is_refused(
    verifier: DPoPVerifier, clock: FakeClock, htu: str
) -> None:
    with refused("htu does not match the request URL"):
        await verifier.verify(
            make_proof(EC_KEY, "ES256", clock.now(), htu=htu), method="POST", url=URL
        )


@pytest.mark.parametrize(
    "htu",
    [
        pytest.param("https://jit.example.com/oauth/token?x=1", id="a query is ignored"),
        pytest.param("https://jit.example.com/oauth/token#frag", id="a fragment is ignored"),
        pytest.param("HTTPS://JIT.Example.COM/oauth/token", id="scheme and host case"),
        pytest.param("https://jit.example.com:443/oauth/token", id="the default port"),
        pytest.param("https://jit.example.com/oauth/%74oken", id="an escaped unreserved char"),
        pytest.param("https://jit.example.com/oauth/./x/../token", id="dot segments"),
    ],
)
async def test_htu_is_compared_after_normalisation(
    verifier: DPoPVerifier, clock: FakeClock, htu: str
) -> None:
    proof = make_proof(EC_KEY, "ES256", clock.now(), htu=htu)
    assert await verifier.verify(proof, method="POST", url=URL + "?grant=1")


@pytest.mark.parametrize(
    "htu",
    [
        pytest.param("ftp://jit.example.com/oauth/token", id="not http"),
        pytest.param("/oauth/token", id="a relative URL"),
        pytest.param("https://user@jit.example.com/oauth/token", id="user information"),
        pytest.param("https://jit.example.com:99999/oauth/token", id="a bad port"),
    ],
)
async def test_an_htu_that_is_no_http_url_is_refused(
    verifier: DPoPVerifier, clock: FakeClock, htu: str
) -> None:
    with refused("htu is not an http"):
        await verifier.verify(
            make_proof(EC_KEY, "ES256", clock.now(), htu=htu), method="POST", url=URL
        )


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("https://A.example/x?y#z", "https://a.example/x"),
        ("http://a.example:80", "http://a.example/"),
        ("http://a.example:8080/", "http://a.example:8080/"),
        ("https://a.example/%7e%2f%41", "https://a.example/~%2FA"),
        ("https://a.example/a/b/../../c/./d", "https://a.example/c/d"),
        ("https://[::1]:443/p", "https://[::1]/p"),
    ],
)
def test_normalize_htu(given: str, normal: str) -> None:
    assert normalize_htu(given) == normal


_segment = st.text(alphabet="abcXYZ019-._~%/", max_size=12)


@given(
    host=st.from_regex(r"[a-zA-Z][a-zA-Z0-9-]{0,10}\.(com|example)", fullmatch=True),
    port=st.sampled_from(["", ":443", ":8443"]),
    path=_segment,
    query=st.text(alphabet="a=&?#/", max_size=8),
)
def test_normalize_htu_is_idempotent_and_ignores_the_query(
    host: str, port: str, path: str, query: str
) -> None:
    url = f"https://{host}{port}/{path}"
    once = normalize_htu(url)
    assert normalize_htu(once) == once
    assert normalize_htu(f"{url}?{query}") == once


# -- iat ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        pytest.param(-305, True, id="exactly max_age + leeway old"),
        pytest.param(-306, False, id="a second older: stale"),
        pytest.param(5, True, id="exactly leeway in the future"),
        pytest.param(6, False, id="a second further: from the future"),
    ],
)
async def test_iat_must_be_within_the_window(
    verifier: DPoPVerifier, clock: FakeClock, offset: int, ok: bool
) -> None:
    iat = int(clock.now().timestamp()) + offset
    proof = make_proof(EC_KEY, "ES256", clock.now(), iat=iat)
    if ok:
        assert await verifier.verify(proof, method="POST", url=URL)
    else:
        with refused("too old" if offset < 0 else "in the future"):
            await verifier.verify(proof, method="POST", url=URL)


async def test_a_proof_goes_stale_as_the_clock_moves(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    proof = make_proof(EC_KEY, "ES256", clock.now())
    clock.advance(timedelta(seconds=306))
    with refused("too old"):
        await verifier.verify(proof, method="POST", url=URL)


@pytest.mark.parametrize("iat", ["1700000000", True, None, 1e308, float("nan")])
async def test_an_iat_that_is_no_time_is_refused(
    verifier: DPoPVerifier, clock: FakeClock, iat: Any
) -> None:
    if iat is None:
        proof = make_proof(EC_KEY, "ES256", clock.now(), drop=("iat",))
    else:
        proof = make_proof(EC_KEY, "ES256", clock.now(), iat=iat)
    with refused("iat"):
        await verifier.verify(proof, method="POST", url=URL)


# -- replay ---------------------------------------------------------------------------------


async def test_a_replayed_proof_is_refused_by_the_memory_cache(
    verifier: DPoPVerifier, clock: FakeClock, replay: MemoryReplayCache
) -> None:
    proof = make_proof(EC_KEY, "ES256", clock.now())
    await verifier.verify(proof, method="POST", url=URL)
    clock.advance(timedelta(seconds=300))  # still inside the window
    with refused("already been used"):
        await verifier.verify(proof, method="POST", url=URL)
    assert len(replay) == 1


async def test_a_replayed_proof_is_refused_by_redis(
    clock: FakeClock, real_redis: aioredis.Redis, key_prefix: str
) -> None:
    verifier = DPoPVerifier(clock, RedisReplayCache(real_redis, f"{key_prefix}:dpop"))
    proof = make_proof(EC_KEY, "ES256", clock.now(), jti="the-jti-value-123456")
    await verifier.verify(proof, method="POST", url=URL)
    with refused("already been used"):
        await verifier.verify(proof, method="POST", url=URL)
    # One hash-tagged key, expiring when the proof could no longer be accepted anyway, holding
    # neither the jti nor the proof.
    keys = [k async for k in real_redis.scan_iter(match=f"{key_prefix}:*")]
    assert len(keys) == 1
    assert re.fullmatch(rf"{key_prefix}:dpop:\{{dpop:[0-9a-f]{{64}}\}}", keys[0].decode())
    assert b"the-jti-value" not in keys[0]
    assert await real_redis.get(keys[0]) == b"1"
    ttl_ms = await real_redis.pttl(keys[0])
    assert 0 < ttl_ms <= (300 + 30) * 1000


async def test_two_replicas_racing_with_one_proof_accept_it_once(
    clock: FakeClock, real_redis: aioredis.Redis, key_prefix: str
) -> None:
    replicas = [
        DPoPVerifier(clock, RedisReplayCache(real_redis, f"{key_prefix}:dpop")) for _ in range(8)
    ]
    proof = make_proof(ED_KEY, "EdDSA", clock.now())
    results = await asyncio.gather(
        *(v.verify(proof, method="POST", url=URL) for v in replicas), return_exceptions=True
    )
    assert sum(isinstance(r, str) for r in results) == 1
    assert all(isinstance(r, AuthenticationError) for r in results if not isinstance(r, str))


async def test_the_memory_cache_forgets_a_jti_after_its_window(clock: FakeClock) -> None:
    cache = MemoryReplayCache(clock, max_entries=2)
    assert isinstance(cache, ReplayCache)
    assert await cache.first_use("a", timedelta(seconds=10))
    assert not await cache.first_use("a", timedelta(seconds=10))
    assert await cache.first_use("b", timedelta(seconds=20))
    with pytest.raises(StoreUnavailable, match="full"):
        await cache.first_use("c", timedelta(seconds=10))  # full of live entries: fail closed
    clock.advance(timedelta(seconds=10))
    assert await cache.first_use("c", timedelta(seconds=10))  # "a" expired and was swept
    assert not await cache.first_use("b", timedelta(seconds=10))  # "b" is still live
    assert len(cache) == 2


async def test_a_jti_is_scoped_to_the_key_and_the_url(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    now = clock.now()
    await verifier.verify(make_proof(EC_KEY, "ES256", now, jti="same"), method="POST", url=URL)
    other_url = "https://jit.example.com/v1/credentials"
    proof = make_proof(EC_KEY, "ES256", now, jti="same", htu=other_url)
    assert await verifier.verify(proof, method="POST", url=other_url)
    assert await verifier.verify(
        make_proof(EC_OTHER, "ES256", now, jti="same"), method="POST", url=URL
    )


async def test_a_proof_that_fails_a_check_takes_no_replay_slot(
    verifier: DPoPVerifier, clock: FakeClock, replay: MemoryReplayCache
) -> None:
    proof = make_proof(EC_KEY, "ES256", clock.now())
    with refused("htm"):
        await verifier.verify(proof, method="GET", url=URL)
    assert len(replay) == 0
    assert await verifier.verify(proof, method="POST", url=URL)


async def test_a_redis_outage_fails_closed(clock: FakeClock) -> None:
    server = fakeredis.FakeServer()
    server.connected = False  # the transport refuses, as a down Redis does
    client = fakeredis.FakeAsyncRedis(server=server)
    verifier = DPoPVerifier(clock, RedisReplayCache(client, "jit:dpop"))
    with pytest.raises(StoreUnavailable, match="replay cache unavailable"):
        await verifier.verify(make_proof(EC_KEY, "ES256", clock.now()), method="POST", url=URL)
    await client.aclose()


@pytest.mark.parametrize("prefix", ["", "a{b", "a b", "x}"])
def test_a_bad_redis_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        RedisReplayCache(None, prefix)


# -- the algorithm and the key --------------------------------------------------------------


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{b64json(header)}.{b64json(claims)}.{signature}"


def claims_for(clock: FakeClock) -> dict[str, Any]:
    return {"jti": "j1", "htm": "POST", "htu": URL, "iat": int(clock.now().timestamp())}


async def test_alg_none_is_refused(verifier: DPoPVerifier, clock: FakeClock) -> None:
    proof = unsigned(
        {"typ": "dpop+jwt", "alg": "none", "jwk": public_jwk(EC_KEY)}, claims_for(clock)
    )
    with refused("alg none is not allowed: proofs must be signed with an asymmetric key"):
        await verifier.verify(proof, method="POST", url=URL)


async def test_hs256_is_refused_even_keyed_with_the_public_key(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    jwk = public_jwk(EC_KEY)
    secret = json.dumps(jwk).encode()  # the classic key-confusion attempt (PyJWT refuses it)
    signing_input = unsigned({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}, claims_for(clock))
    mac = hmac.new(secret, signing_input.rstrip(".").encode(), hashlib.sha256).digest()
    proof = signing_input + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with refused("alg HS256 is not allowed"):
        await verifier.verify(proof, method="POST", url=URL)


async def test_an_algorithm_off_the_allow_list_is_refused(clock: FakeClock) -> None:
    verifier = DPoPVerifier(clock, MemoryReplayCache(clock), algorithms=["ES256"])
    with refused(r"alg EdDSA is not allowed \(allowed: \['ES256'\]\)"):
        await verifier.verify(make_proof(ED_KEY, "EdDSA", clock.now()), method="POST", url=URL)


@pytest.mark.parametrize("key", [EC_KEY, ED_KEY, RSA_KEY], ids=["EC", "OKP", "RSA"])
async def test_a_private_key_in_the_jwk_header_is_refused(
    verifier: DPoPVerifier, clock: FakeClock, key: Any
) -> None:
    alg = {"EC": "ES256", "OKP": "EdDSA", "RSA": "RS256"}[public_jwk(key)["kty"]]
    proof = make_proof(key, alg, clock.now(), jwk=private_jwk(key))
    with refused("holds private key material") as err:
        await verifier.verify(proof, method="POST", url=URL)
    assert private_jwk(key)["d"] not in str(err.value)


async def test_a_bad_signature_is_refused(verifier: DPoPVerifier, clock: FakeClock) -> None:
    header, payload, signature = make_proof(EC_KEY, "ES256", clock.now()).split(".")
    tampered_claims = {**claims_for(clock), "htm": "POST", "jti": "changed"}
    with refused("signature does not verify"):
        await verifier.verify(
            f"{header}.{b64json(tampered_claims)}.{signature}", method="POST", url=URL
        )
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    with refused("signature does not verify"):
        await verifier.verify(f"{header}.{payload}.{flipped}", method="POST", url=URL)


@pytest.mark.parametrize(
    ("signer", "alg"), [(EC_OTHER, "ES256"), (ED_KEY, "EdDSA")], ids=["ES256", "EdDSA"]
)
async def test_a_proof_signed_by_another_key_than_its_jwk_header_is_refused(
    verifier: DPoPVerifier, clock: FakeClock, signer: Any, alg: str
) -> None:
    other = EC_KEY if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()
    proof = make_proof(signer, alg, clock.now(), jwk=public_jwk(other))
    with refused("signature does not verify with the key in the jwk header"):
        await verifier.verify(proof, method="POST", url=URL)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        pytest.param(lambda h: h.pop("jwk"), "no jwk header", id="no jwk"),
        pytest.param(
            lambda h: h.update(jwk="key"), "'jwk' in header must be a JWK", id="a string jwk"
        ),
        pytest.param(lambda h: h.update(typ="JWT"), "typ must be 'dpop\\+jwt'", id="typ JWT"),
        pytest.param(lambda h: h.pop("typ"), "typ must be", id="no typ"),
        pytest.param(lambda h: h.update(crit=["exp"], exp=1), "crit", id="a crit header"),
        pytest.param(
            lambda h: h["jwk"].update(kty="RSA"), "ES256 needs a EC key", id="kty for another alg"
        ),
        pytest.param(lambda h: h["jwk"].update(crv="P-384"), "needs a key on", id="another curve"),
        pytest.param(lambda h: h["jwk"].update(alg="ES384"), "is for alg", id="the key's alg"),
        pytest.param(lambda h: h["jwk"].update(use="enc"), "not a signing key", id="use enc"),
        pytest.param(
            lambda h: h["jwk"].update(x=h["jwk"]["y"]), "not a valid public key", id="off-curve"
        ),
        pytest.param(lambda h: h["jwk"].pop("y"), "not a valid public key", id="missing y"),
        pytest.param(
            lambda h: h.update(jwk={"kty": "oct", "k": "c2VjcmV0"}), "private key", id="oct key"
        ),
    ],
)
async def test_a_bad_header_is_refused(
    verifier: DPoPVerifier,
    clock: FakeClock,
    mutate: Callable[[dict[str, Any]], object],
    reason: str,
) -> None:
    header: dict[str, Any] = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(EC_KEY)}
    mutate(header)
    # Signed for real with the right key, so only the header is wrong.
    signing = pyjwt.encode(claims_for(clock), EC_KEY, algorithm="ES256", headers=header)
    with refused(reason):
        await verifier.verify(signing, method="POST", url=URL)


async def test_an_rsa_key_under_2048_bits_is_refused(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    with pytest.warns(UserWarning, match="1024 bits"):  # PyJWT warns the signer, rightly
        proof = make_proof(RSA_SMALL, "RS256", clock.now())
    with refused("at least 2048 bits"):
        await verifier.verify(proof, method="POST", url=URL)


# -- claims, shape, nonce, ath ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "reason"),
    [("jti", "jti claim missing"), ("htm", "htm claim missing"), ("htu", "htu claim missing")],
)
async def test_a_missing_claim_is_refused(
    verifier: DPoPVerifier, clock: FakeClock, drop: str, reason: str
) -> None:
    with refused(reason):
        await verifier.verify(
            make_proof(EC_KEY, "ES256", clock.now(), drop=(drop,)), method="POST", url=URL
        )


@pytest.mark.parametrize(
    ("proof", "reason"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param([], "no DPoP header", id="no header"),
        pytest.param(["a.b.c", "d.e.f"], "more than one DPoP header", id="two headers"),
        pytest.param("a.b.c, d.e.f", "more than one DPoP proof", id="two folded into one"),
        pytest.param("x" * 9000, "too large", id="too large"),
        pytest.param("a.b.c.d.e", "JWE", id="a JWE"),
        pytest.param("abc", "three dot-separated parts", id="not a JWT"),
        pytest.param("é.b.c", "not ASCII", id="not ASCII"),
        pytest.param("e30.e30.", "base64url-encoded JSON with an alg", id="no alg"),
    ],
)
async def test_a_malformed_proof_is_refused(
    verifier: DPoPVerifier, proof: Any, reason: str
) -> None:
    with refused(reason):
        await verifier.verify(proof, method="POST", url=URL)


async def test_every_refusal_is_an_invalid_dpop_proof(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    with pytest.raises(AuthenticationError) as err:
        await verifier.verify(
            make_proof(EC_KEY, "ES256", clock.now(), htm="GET"), method="POST", url=URL
        )
    assert err.value.oauth_error == "invalid_dpop_proof"
    assert err.value.status == 401


async def test_a_required_nonce_must_be_echoed(verifier: DPoPVerifier, clock: FakeClock) -> None:
    now = clock.now()
    for proof in (make_proof(EC_KEY, "ES256", now), make_proof(EC_KEY, "ES256", now, nonce="no")):
        with pytest.raises(AuthenticationError, match="nonce") as err:
            await verifier.verify(proof, method="POST", url=URL, nonce="n-123")
        assert err.value.oauth_error == "use_dpop_nonce"
    good = make_proof(EC_KEY, "ES256", now, nonce="n-123")
    assert await verifier.verify(good, method="POST", url=URL, nonce="n-123")


def test_ath_is_the_hash_of_the_example_token_of_rfc_9449() -> None:
    # RFC 9449 §7.1, Figure 12 (the token) and Figure 13 (its ath).
    token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
    assert access_token_hash(token) == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


async def test_ath_must_match_the_presented_access_token(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    token = "eyJ.access-token-value.sig"
    now = clock.now()
    ok = make_proof(EC_KEY, "ES256", now, htm="GET", ath=access_token_hash(token))
    assert await verifier.verify(ok, method="GET", url=URL, access_token=token)
    cases = [
        (
            make_proof(EC_KEY, "ES256", now, htm="GET", ath=access_token_hash("another")),
            "ath does not match",
        ),
        (make_proof(EC_KEY, "ES256", now, htm="GET"), "ath claim missing"),
    ]
    for proof, reason in cases:
        with refused(reason) as err:
            await verifier.verify(proof, method="GET", url=URL, access_token=token)
        assert token not in str(err.value)
        assert proof not in str(err.value)


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        pytest.param({"algorithms": ["none"]}, "not allowed", id="none"),
        pytest.param({"algorithms": ["ES256", "HS256"]}, "not allowed", id="HS256"),
        pytest.param({"algorithms": ["XY999"]}, "unknown DPoP algorithms", id="unknown"),
        pytest.param({"algorithms": []}, "at least one", id="empty"),
        pytest.param({"algorithms": "ES256"}, "list of names", id="a string"),
        pytest.param({"max_age": timedelta(0)}, "max_age", id="zero max_age"),
        pytest.param({"leeway": timedelta(seconds=-1)}, "leeway", id="negative leeway"),
    ],
)
def test_a_bad_configuration_is_a_config_error(
    clock: FakeClock, kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        DPoPVerifier(clock, MemoryReplayCache(clock), **kwargs)


# -- thumbprint and check_bound --------------------------------------------------------------


def test_thumbprint_matches_the_example_of_rfc_7638() -> None:
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
            "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
            "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
            "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqD"
            "Kgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("key", [EC_KEY, ED_KEY, RSA_KEY], ids=["EC", "OKP", "RSA"])
def test_thumbprint_ignores_optional_and_private_members(key: Any) -> None:
    expected = independent_thumbprint(public_jwk(key))
    assert thumbprint(public_jwk(key)) == expected
    assert thumbprint({**public_jwk(key), "kid": "k", "use": "sig"}) == expected
    assert thumbprint(private_jwk(key)) == expected


@pytest.mark.parametrize(
    "jwk",
    [{"kty": "oct", "k": "abc"}, {"kty": "EC", "crv": "P-256", "x": "a"}, {"x": "a"}, {}],
)
def test_thumbprint_refuses_what_is_no_public_key(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"kty|member"):
        thumbprint(jwk)


async def test_check_bound_accepts_only_the_key_the_token_is_bound_to(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    jkt = await verifier.verify(make_proof(EC_KEY, "ES256", clock.now()), method="POST", url=URL)
    other = await verifier.verify(
        make_proof(EC_OTHER, "ES256", clock.now()), method="POST", url=URL
    )
    introspection = {"active": True, "token_type": "DPoP", "cnf": {"jkt": jkt}}
    assert check_bound(introspection, jkt)
    assert not check_bound(introspection, other)
    assert not check_bound({"active": True}, jkt)  # an unbound token
    assert not check_bound({"active": True, "cnf": {"x5t#S256": jkt}}, jkt)
    assert not check_bound({"active": True, "cnf": jkt}, jkt)
    assert not check_bound({"active": True, "cnf": {"jkt": ""}}, "")
    assert not check_bound({"active": True, "cnf": {"jkt": "é"}}, jkt)


# -- the docs ---------------------------------------------------------------------------------


def docs_example() -> dict[str, Any]:
    """The resource-server example of docs/dpop.md, executed as published."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    source = next(b for b in blocks if "def check_dpop_request" in b)
    namespace: dict[str, Any] = {}
    exec(compile(source, str(DOCS), "exec"), namespace)
    return namespace


async def test_the_resource_server_example_in_the_docs_works(
    verifier: DPoPVerifier, clock: FakeClock
) -> None:
    example = docs_example()
    check: Callable[..., dict[str, Any]] = example["check_dpop_request"]
    now = clock.now()
    jkt = await verifier.verify(make_proof(ED_KEY, "EdDSA", now), method="POST", url=URL)
    token = "eyJhbGciOiJFZERTQSJ9.bound-token.sig"
    introspection = {"active": True, "token_type": "DPoP", "cnf": {"jkt": jkt}, "scope": "read"}
    seen: dict[str, float] = {}
    api = "https://orders.example/items"

    def request(proof: str, scheme: str = "DPoP") -> dict[str, Any]:
        return check(
            authorization=f"{scheme} {token}",
            dpop=[proof],
            method="GET",
            url=api,
            introspect=lambda t: introspection if t == token else {"active": False},
            seen=seen,
            now=now.timestamp(),
        )

    ath = access_token_hash(token)
    proof = make_proof(ED_KEY, "EdDSA", now, htm="GET", htu=api, ath=ath)
    assert request(proof)["scope"] == "read"
    with pytest.raises(PermissionError, match="replay"):
        request(proof)
    with pytest.raises(PermissionError, match="Authorization: DPoP"):
        request(make_proof(ED_KEY, "EdDSA", now, htm="GET", htu=api, ath=ath), scheme="Bearer")
    with pytest.raises(PermissionError, match="not bound to the proof's key"):
        request(make_proof(EC_OTHER, "ES256", now, htm="GET", htu=api, ath=ath))
    with pytest.raises(PermissionError, match="ath"):
        request(make_proof(ED_KEY, "EdDSA", now, htm="GET", htu=api, ath=access_token_hash("x")))
    with pytest.raises(PermissionError, match="htu"):
        request(make_proof(ED_KEY, "EdDSA", now, htm="GET", htu=URL, ath=ath))
    with pytest.raises(PermissionError, match="iat"):
        request(make_proof(ED_KEY, "EdDSA", now, htm="GET", htu=api, ath=ath, iat=1))
    with pytest.raises(PermissionError, match="private"):
        request(
            make_proof(ED_KEY, "EdDSA", now, htm="GET", htu=api, ath=ath, jwk=private_jwk(ED_KEY))
        )
    # the docs' thumbprint agrees with the broker's
    assert example["jwk_thumbprint"](public_jwk(ED_KEY)) == jkt


# -- hostile input ----------------------------------------------------------------------------

_b64 = st.text(alphabet="ABCabc019-_=+/ é", max_size=400)
_jwk_values = st.one_of(_b64, st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2))


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(
        [{"kty": t} for t in ("EC", "OKP", "RSA", "oct", "XYZ")]
        + [public_jwk(EC_KEY), public_jwk(ED_KEY), public_jwk(RSA_KEY)]
    ),
    members=st.dictionaries(
        st.sampled_from(["kty", "crv", "x", "y", "n", "e", "alg", "use", "key_ops", "kid"]),
        st.one_of(
            _jwk_values,
            st.sampled_from(["P-256", "Ed25519", "sig", "ES256", "EdDSA", "RS256", "AQAB"]),
            st.lists(st.sampled_from(["sign", "verify", "encrypt"]), max_size=2),
        ),
        max_size=3,
    ),
)
def test_whatever_the_jwk_header_holds_the_answer_is_a_refusal(
    base: dict[str, Any], members: dict[str, Any]
) -> None:
    clock = FakeClock()
    verifier = DPoPVerifier(clock, MemoryReplayCache(clock))
    jwk = {**base, **members}
    alg = {"EC": "ES256", "OKP": "EdDSA", "RSA": "PS256"}.get(str(base["kty"]), "ES256")
    proof = unsigned({"typ": "dpop+jwt", "alg": alg, "jwk": jwk}, claims_for(clock), "c2ln")
    with pytest.raises(AuthenticationError):
        asyncio.run(verifier.verify(proof, method="POST", url=URL))


@settings(max_examples=200, deadline=None)
@given(
    proof=st.one_of(
        st.text(max_size=300),
        st.from_regex(r"[A-Za-z0-9_-]{0,40}(\.[A-Za-z0-9_=-]{0,40}){2}", fullmatch=True),
    )
)
def test_whatever_the_header_holds_the_answer_is_a_refusal(proof: str) -> None:
    clock = FakeClock()
    verifier = DPoPVerifier(clock, MemoryReplayCache(clock))
    with pytest.raises(AuthenticationError):
        asyncio.run(verifier.verify(proof, method="POST", url=URL))


_claim_values = st.one_of(
    st.text(max_size=20),
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.just("\ud800"),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=200, deadline=None)
@given(
    claims=st.dictionaries(
        st.sampled_from(["jti", "htm", "htu", "iat", "nonce", "ath"]), _claim_values, max_size=4
    )
)
def test_whatever_the_claims_hold_a_signed_proof_is_refused_or_accepted_never_a_crash(
    claims: dict[str, Any],
) -> None:
    clock = FakeClock()
    verifier = DPoPVerifier(clock, MemoryReplayCache(clock))
    token = "an-access-token"
    good = {
        "jti": "j",
        "htm": "POST",
        "htu": URL,
        "iat": int(clock.now().timestamp()),
        "nonce": "n",
        "ath": access_token_hash(token),
    }
    payload = json.dumps({**good, **claims}).encode()
    proof = pyjwt.api_jws.encode(
        payload, EC_KEY, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": public_jwk(EC_KEY)}
    )
    try:
        jkt = asyncio.run(
            verifier.verify(proof, method="POST", url=URL, access_token=token, nonce="n")
        )
    except AuthenticationError:
        return
    assert jkt == independent_thumbprint(public_jwk(EC_KEY))
