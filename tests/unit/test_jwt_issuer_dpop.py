"""The JWT issuer with DPoP (RFC 9449): a request bound to a key (``MintRequest.cnf``) gets a
token carrying ``cnf.jkt`` (RFC 7800) and ``token_type`` DPoP, verified here by PyJWT with only
the published JWKS; an unbound request is unchanged; anything but a jkt is refused. The full
path runs too: proof → DPoPVerifier → mint → a resource server's proof with ``ath`` →
check_bound."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from broker.errors import ScopeNotSupported
from broker.identity.dpop import (
    DPoPVerifier,
    MemoryReplayCache,
    access_token_hash,
    check_bound,
    thumbprint,
)
from broker.issuer import IssuerContext
from broker.testing import FakeClock, mint_request
from broker.types import MintRequest, Scope
from issuers.jwt import JWTIssuer
from issuers.jwt.keys import generate_key

BROKER = "https://broker.test"
RESOURCE = "https://orders.example"
SCOPE = Scope.of("jwt", RESOURCE, ["read", "write"])
TOKEN_URL = f"{BROKER}/oauth/token"

CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
CLIENT_JWK = dict(ECAlgorithm.to_jwk(CLIENT_KEY.public_key(), as_dict=True))
THIEF_KEY = ed25519.Ed25519PrivateKey.generate()
THIEF_JWK = dict(OKPAlgorithm.to_jwk(THIEF_KEY.public_key(), as_dict=True))


@pytest.fixture(params=["EdDSA", "ES256"])
def issuer(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> JWTIssuer:
    algorithm: str = request.param
    generate_key(tmp_path / "keys", algorithm, clock.now())
    config = {"keys_dir": str(tmp_path / "keys"), "algorithm": algorithm}
    return JWTIssuer(IssuerContext(name="jwt", config=config, clock=clock, broker_url=BROKER))


@pytest.fixture
def verifier(clock: FakeClock) -> DPoPVerifier:
    return DPoPVerifier(clock, MemoryReplayCache(clock))


def bound_request(clock: FakeClock, cnf: dict[str, str] | None) -> MintRequest:
    req = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
    return msgspec.structs.replace(req, cnf=cnf)


def verified_claims(issuer: JWTIssuer, token: str) -> dict[str, Any]:
    """PyJWT, an independent implementation, with only the published JWKS."""
    kid = pyjwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in issuer.jwks()["keys"] if k["kid"] == kid)
    claims: dict[str, Any] = pyjwt.decode(
        token,
        key=pyjwt.PyJWK.from_dict(jwk),
        algorithms=[issuer.algorithm],
        audience=RESOURCE,
        issuer=BROKER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims


def proof(key: Any, jwk: dict[str, Any], alg: str, clock: FakeClock, **claims: Any) -> str:
    payload = {"jti": secrets.token_urlsafe(12), "iat": int(clock.now().timestamp()), **claims}
    return pyjwt.encode(payload, key, algorithm=alg, headers={"typ": "dpop+jwt", "jwk": jwk})


async def test_a_bound_request_gets_a_token_with_cnf_jkt_and_token_type_dpop(
    issuer: JWTIssuer, clock: FakeClock
) -> None:
    jkt = thumbprint(CLIENT_JWK)
    req = bound_request(clock, {"jkt": jkt})
    cred = await issuer.mint(req)
    claims = verified_claims(issuer, cred.secret.reveal())
    assert claims["cnf"] == {"jkt": jkt}
    assert cred.token_type == "DPoP"
    # Everything else is what an unbound token carries; the token still introspects.
    assert claims["jti"] == req.lease_id
    assert claims["scope"] == "read write"
    assert pyjwt.get_unverified_header(cred.secret.reveal())["typ"] == "at+jwt"
    assert issuer.identify(cred.secret.reveal(), clock.now()) == req.lease_id
    assert cred.handle == {}
    assert cred.metadata == {"kid": issuer.ring.signing.kid}


async def test_an_unbound_request_is_unchanged(issuer: JWTIssuer, clock: FakeClock) -> None:
    cred = await issuer.mint(bound_request(clock, None))
    assert "cnf" not in verified_claims(issuer, cred.secret.reveal())
    assert cred.token_type == "Bearer"


@pytest.mark.parametrize(
    ("cnf", "reason"),
    [
        pytest.param({"x5t#S256": "A" * 43}, "only to a DPoP key", id="mTLS binding"),
        pytest.param({"jkt": "A" * 43, "kid": "k"}, "only to a DPoP key", id="an extra member"),
        pytest.param({}, "only to a DPoP key", id="empty"),
        pytest.param({"jkt": "short"}, "SHA-256 JWK thumbprint", id="a short jkt"),
        pytest.param({"jkt": "A" * 42 + "="}, "SHA-256 JWK thumbprint", id="padding"),
        pytest.param({"jkt": "A" * 42 + "+"}, "SHA-256 JWK thumbprint", id="not base64url"),
    ],
)
async def test_a_binding_the_issuer_cannot_express_is_refused(
    issuer: JWTIssuer, clock: FakeClock, cnf: dict[str, str], reason: str
) -> None:
    with pytest.raises(ScopeNotSupported, match=reason):
        await issuer.mint(bound_request(clock, cnf))


def test_the_issuer_says_what_it_can_bind_to(issuer: JWTIssuer) -> None:
    assert issuer.confirmation_methods == frozenset({"jkt"})


async def test_the_whole_path_binds_the_token_to_the_client_key_only(
    issuer: JWTIssuer, clock: FakeClock, verifier: DPoPVerifier
) -> None:
    # 1. The client asks the broker for a token with a proof; the broker binds the token.
    token_proof = proof(CLIENT_KEY, CLIENT_JWK, "ES256", clock, htm="POST", htu=TOKEN_URL)
    jkt = await verifier.verify(token_proof, method="POST", url=TOKEN_URL)
    cred = await issuer.mint(bound_request(clock, {"jkt": jkt}))
    token = cred.secret.reveal()
    claims = verified_claims(issuer, token)
    assert claims["cnf"]["jkt"] == jkt == thumbprint(CLIENT_JWK)

    # 2. The client calls the resource server with the token and a proof made for it.
    api = f"{RESOURCE}/items"
    ath = access_token_hash(token)
    rs_proof = proof(CLIENT_KEY, CLIENT_JWK, "ES256", clock, htm="GET", htu=api, ath=ath)
    rs_jkt = await verifier.verify(rs_proof, method="GET", url=api, access_token=token)
    introspection = {"active": True, "token_type": "DPoP", "cnf": claims["cnf"]}
    assert check_bound(introspection, rs_jkt)
    assert check_bound(claims, rs_jkt)  # a verified token's claims work as well

    # 3. A thief with the token but another key makes a perfectly valid proof — for the
    # wrong key.
    stolen = proof(THIEF_KEY, THIEF_JWK, "EdDSA", clock, htm="GET", htu=api, ath=ath)
    thief_jkt = await verifier.verify(stolen, method="GET", url=api, access_token=token)
    assert not check_bound(introspection, thief_jkt)
    assert not check_bound(claims, thief_jkt)
