"""The JWT issuer: the conformance kit (EdDSA and ES256), tokens verified by an independent
library (PyJWT), exact claims, identify() against forgeries, key rotation, and strict config."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt as jose_jwt

import issuers.jwt.keys as keys_module
from broker.errors import ConfigError, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, Introspectable, Issuer, IssuerContext, PublishesKeys
from broker.testing import FakeClock, IssuerConformance, lease_for, mint_request
from broker.types import Credential, MintRequest, Principal, Scope
from issuers.jwt import JWTIssuer
from issuers.jwt.keys import RELOAD_INTERVAL, generate_key, list_keys, prune_keys

BROKER = "https://broker.test"
RESOURCE = "https://orders.example"
SCOPE = Scope.of("jwt", RESOURCE, ["read", "write"])


def make_issuer(
    clock: FakeClock,
    keys_dir: Path | None,
    *,
    dev: bool = False,
    name: str = "jwt",
    **config: Any,
) -> JWTIssuer:
    if keys_dir is not None:
        config["keys_dir"] = str(keys_dir)
    return JWTIssuer(
        IssuerContext(name=name, config=config, clock=clock, broker_url=BROKER, dev=dev)
    )


def request(clock: FakeClock, ttl: float = 300, scope: Scope = SCOPE) -> MintRequest:
    return mint_request(scope, now=clock.now(), ttl=timedelta(seconds=ttl))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: object) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def verify_like_a_resource_server(
    issuer: JWTIssuer, token: str, audience: str, *, check_time: bool = False
) -> dict[str, Any]:
    """PyJWT, an independent implementation, with only the published JWKS."""
    kid = pyjwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in issuer.jwks()["keys"] if k["kid"] == kid)
    options = {} if check_time else {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
    claims: dict[str, Any] = pyjwt.decode(
        token,
        key=pyjwt.PyJWK.from_dict(jwk),
        algorithms=[issuer.algorithm],
        audience=audience,
        issuer=BROKER,
        options=options,  # type: ignore[arg-type]
    )
    return claims


# -- the conformance kit ---------------------------------------------------------------------


class TestJWTIssuerConformanceEdDSA(IssuerConformance[JWTIssuer]):
    algorithm = "EdDSA"

    @pytest.fixture
    async def issuer(self, clock: FakeClock, tmp_path: Path) -> AsyncIterator[JWTIssuer]:
        generate_key(tmp_path / "keys", self.algorithm, clock.now())
        issuer = make_issuer(clock, tmp_path / "keys", algorithm=self.algorithm)
        yield issuer
        await issuer.aclose()

    def scope(self) -> Scope:
        return SCOPE

    def narrower_scope(self) -> Scope | None:
        return Scope.of("jwt", RESOURCE, ["read"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of("jwt", "orders", ["read"])  # not an absolute URI: no usable aud

    async def credential_works(
        self, issuer: JWTIssuer, credential: Credential, scope: Scope
    ) -> bool:
        token = credential.secret.reveal()
        # A tiny introspection endpoint (ADR 0003): the issuer recognises its token and the
        # broker's lease state says whether it is still active.
        lease_id = issuer.identify(token, self.clock.now())
        if lease_id is None or self.revoked_by_broker(lease_id):
            return False
        # And the resource server checks signature, iss and aud with the published keys.
        try:
            verify_like_a_resource_server(issuer, token, scope.resource)
        except pyjwt.InvalidTokenError:
            return False
        return True

    async def credential_allows(
        self, issuer: JWTIssuer, credential: Credential, action: str
    ) -> bool | None:
        if not await self.credential_works(issuer, credential, self.scope()):
            return False
        claims = verify_like_a_resource_server(issuer, credential.secret.reveal(), RESOURCE)
        return action in claims["scope"].split()


class TestJWTIssuerConformanceES256(TestJWTIssuerConformanceEdDSA):
    algorithm = "ES256"


# -- tokens, as an independent verifier sees them ---------------------------------------------


@pytest.fixture
def keys_dir(tmp_path: Path, clock: FakeClock) -> Path:
    generate_key(tmp_path / "keys", "EdDSA", clock.now())
    return tmp_path / "keys"


@pytest.fixture
def issuer(clock: FakeClock, keys_dir: Path) -> JWTIssuer:
    return make_issuer(clock, keys_dir)


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
async def test_pyjwt_verifies_a_minted_token_with_the_published_jwks(
    tmp_path: Path, algorithm: str
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))  # PyJWT checks real time
    generate_key(tmp_path, algorithm, clock.now())
    issuer = make_issuer(clock, tmp_path, algorithm=algorithm)
    req = request(clock, ttl=300)
    token = (await issuer.mint(req)).secret.reveal()
    header = pyjwt.get_unverified_header(token)
    assert header == {"alg": algorithm, "kid": issuer.ring.signing.kid, "typ": "at+jwt"}
    jwks = issuer.jwks()
    assert [(k["kid"], k["alg"], k["use"]) for k in jwks["keys"]] == [
        (issuer.ring.signing.kid, algorithm, "sig")
    ]
    assert all("d" not in k for k in jwks["keys"])
    key = pyjwt.PyJWK.from_dict(jwks["keys"][0])
    claims = pyjwt.decode(
        token, key=key, algorithms=[algorithm], audience=RESOURCE, issuer=BROKER
    )  # signature, exp, iat, nbf, aud and iss, all checked
    assert claims["jti"] == req.lease_id
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, key=key, algorithms=[algorithm], audience="https://other.example")
    other = "ES256" if algorithm == "EdDSA" else "EdDSA"
    with pytest.raises(pyjwt.InvalidAlgorithmError):
        pyjwt.decode(token, key=key, algorithms=[other], audience=RESOURCE)


async def test_every_claim_is_present_and_exact(issuer: JWTIssuer, clock: FakeClock) -> None:
    principal = Principal(id="github:repo:acme/api", issuer="github", subject="repo:acme/api")
    clock.advance(timedelta(microseconds=250_000))
    req = mint_request(
        SCOPE, now=clock.now(), ttl=timedelta(minutes=10), task_id="build-42", principal=principal
    )
    credential = await issuer.mint(req)
    token = credential.secret.reveal()
    iat = int(req.issued_at.timestamp())
    exp = int(req.not_after.timestamp())
    assert verify_like_a_resource_server(issuer, token, RESOURCE) == {
        "iss": BROKER,
        "sub": "github:repo:acme/api",
        "aud": RESOURCE,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": req.lease_id,
        "task_id": "build-42",
        "scope": "read write",
        "client_id": "github:repo:acme/api",
        "authorization_details": [
            {"type": "jwt", "locations": [RESOURCE], "actions": ["read", "write"]}
        ],
    }
    assert exp - iat == 600
    kid = issuer.ring.signing.kid
    assert credential.handle == {}
    assert credential.metadata == {"kid": kid}
    assert credential.token_type == "Bearer"
    assert credential.expires_at == datetime.fromtimestamp(exp, UTC)


@settings(max_examples=60, deadline=None)
@given(
    start_us=st.integers(min_value=0, max_value=999_999),
    ttl_us=st.integers(min_value=1_000_000, max_value=3_600_000_000),
)
def test_exp_is_not_after_rounded_down_never_later(
    tmp_path_factory: pytest.TempPathFactory, start_us: int, ttl_us: int
) -> None:
    clock = FakeClock()
    keys = tmp_path_factory.mktemp("keys")
    generate_key(keys, "EdDSA", clock.now())
    issuer = make_issuer(clock, keys)
    clock.advance(timedelta(microseconds=start_us))
    req = mint_request(SCOPE, now=clock.now(), ttl=timedelta(microseconds=ttl_us))
    credential = asyncio.run(issuer.mint(req))
    exp = verify_like_a_resource_server(issuer, credential.secret.reveal(), RESOURCE)["exp"]
    assert exp == int(req.not_after.timestamp())
    assert credential.expires_at == datetime.fromtimestamp(exp, UTC)
    assert credential.expires_at <= req.not_after
    assert req.not_after - credential.expires_at < timedelta(seconds=1)


# -- identify(): only our own, unexpired, untampered tokens -----------------------------------


async def test_identify_returns_the_lease_id_until_exp(issuer: JWTIssuer, clock: FakeClock) -> None:
    req = request(clock, ttl=60)
    token = (await issuer.mint(req)).secret.reveal()
    assert issuer.identify(token, clock.now()) == req.lease_id
    assert issuer.identify(token, req.not_after - timedelta(microseconds=1)) == req.lease_id
    assert issuer.identify(token, req.not_after) is None
    assert issuer.identify(token, req.not_after + timedelta(days=1)) is None


async def test_a_token_signed_by_an_unknown_key_is_not_identified(
    issuer: JWTIssuer, clock: FakeClock, tmp_path: Path
) -> None:
    generate_key(tmp_path / "other", "EdDSA", clock.now())
    stranger = make_issuer(clock, tmp_path / "other")  # same name, same iss, another key
    token = (await stranger.mint(request(clock))).secret.reveal()
    assert stranger.identify(token, clock.now()) is not None
    assert issuer.identify(token, clock.now()) is None


async def test_a_token_of_another_algorithm_is_not_identified(
    issuer: JWTIssuer, clock: FakeClock, tmp_path: Path
) -> None:
    generate_key(tmp_path / "es", "ES256", clock.now())
    es = make_issuer(clock, tmp_path / "es", algorithm="ES256")
    token = (await es.mint(request(clock))).secret.reveal()
    assert issuer.identify(token, clock.now()) is None


async def test_a_tampered_token_is_not_identified(issuer: JWTIssuer, clock: FakeClock) -> None:
    token = (await issuer.mint(request(clock))).secret.reveal()
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["jti"] = "someone-elses-lease"
    assert issuer.identify(f"{header}.{b64json(claims)}.{signature}", clock.now()) is None
    claims = {**claims, "exp": claims["exp"] + 3600}
    assert issuer.identify(f"{header}.{b64json(claims)}.{signature}", clock.now()) is None
    flipped = ("A" if signature[5] != "A" else "B").join([signature[:5], signature[6:]])
    assert issuer.identify(f"{header}.{payload}.{flipped}", clock.now()) is None
    assert issuer.identify(f"{header}.{payload}.", clock.now()) is None


async def test_alg_none_and_hmac_key_confusion_are_not_identified(
    issuer: JWTIssuer, clock: FakeClock
) -> None:
    token = (await issuer.mint(request(clock))).secret.reveal()
    _, payload, _ = token.split(".")
    kid = issuer.ring.signing.kid
    for alg in ("none", "None", "NONE"):
        forged = f"{b64json({'alg': alg, 'kid': kid, 'typ': 'at+jwt'})}.{payload}."
        assert issuer.identify(forged, clock.now()) is None
    # HS256 with the public key as the HMAC secret (the classic RS/HS confusion)
    public_x = issuer.jwks()["keys"][0]["x"]
    signing_input = f"{b64json({'alg': 'HS256', 'kid': kid, 'typ': 'at+jwt'})}.{payload}"
    for secret in (public_x.encode(), json.dumps(issuer.jwks()["keys"][0]).encode()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert issuer.identify(f"{signing_input}.{b64(mac)}", clock.now()) is None


async def test_our_key_with_the_wrong_iss_typ_or_no_jti_is_not_identified(
    issuer: JWTIssuer, clock: FakeClock, keys_dir: Path
) -> None:
    req = request(clock)
    token = (await issuer.mint(req)).secret.reveal()
    other_iss = make_issuer(clock, keys_dir, issuer="https://another-broker.test")
    assert other_iss.identify(token, clock.now()) is None

    key = issuer.ring.signing
    claims = verify_like_a_resource_server(issuer, token, RESOURCE)
    header = {"alg": "EdDSA", "kid": key.kid}

    def sign(h: dict[str, Any], c: dict[str, Any]) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc's RFC 9864 note on EdDSA
            return jose_jwt.encode(h, c, key.private, algorithms=["EdDSA"])

    assert issuer.identify(sign({**header, "typ": "at+jwt"}, claims), clock.now()) == req.lease_id
    assert issuer.identify(sign({**header, "typ": "JWT"}, claims), clock.now()) is None
    no_jti = {k: v for k, v in claims.items() if k != "jti"}
    assert issuer.identify(sign({**header, "typ": "at+jwt"}, no_jti), clock.now()) is None
    for bad_exp in ("9999999999", None, True, 1.5e10):
        bad = {**claims, "exp": bad_exp}
        assert issuer.identify(sign({**header, "typ": "at+jwt"}, bad), clock.now()) is None


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b.c", "...", "..", "x" * 20_000, "é.é.é", "eyJ.eyJ.sig", "\x00.\x00.\x00"],
)
def test_identify_never_raises_for_garbage(
    issuer: JWTIssuer, clock: FakeClock, garbage: str
) -> None:
    assert issuer.identify(garbage, clock.now()) is None


def test_identify_returns_none_for_non_strings(issuer: JWTIssuer, clock: FakeClock) -> None:
    for value in (None, 42, b"a.b.c"):
        assert issuer.identify(value, clock.now()) is None  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    token=st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_-]{0,60}(\.[A-Za-z0-9_-]{0,60}){2}")
)
def test_identify_never_raises_for_any_text(
    tmp_path_factory: pytest.TempPathFactory, token: str
) -> None:
    clock = FakeClock()
    keys = tmp_path_factory.mktemp("keys")
    generate_key(keys, "EdDSA", clock.now())
    assert make_issuer(clock, keys).identify(token, clock.now()) is None


# -- rotation ---------------------------------------------------------------------------------


async def test_rotation_signs_with_the_new_key_while_old_tokens_still_verify(
    issuer: JWTIssuer, clock: FakeClock, keys_dir: Path
) -> None:
    key_a = issuer.ring.signing.kid
    req_a = request(clock, ttl=3600)
    token_a = (await issuer.mint(req_a)).secret.reveal()

    info_b = generate_key(keys_dir, "EdDSA", clock.now())  # `jit keys rotate` on a live broker
    still_a = await issuer.mint(request(clock))
    assert still_a.metadata["kid"] == key_a  # the directory is looked at most once a second

    clock.advance(RELOAD_INTERVAL)
    req_b = request(clock, ttl=3600)
    credential_b = await issuer.mint(req_b)
    token_b = credential_b.secret.reveal()
    assert credential_b.metadata["kid"] == info_b.kid
    assert pyjwt.get_unverified_header(token_b)["kid"] == info_b.kid

    assert issuer.identify(token_a, clock.now()) == req_a.lease_id
    assert issuer.identify(token_b, clock.now()) == req_b.lease_id
    assert [k["kid"] for k in issuer.jwks()["keys"]] == [key_a, info_b.kid]
    for token in (token_a, token_b):  # a resource server with the new JWKS takes both
        assert verify_like_a_resource_server(issuer, token, RESOURCE)["aud"] == RESOURCE

    # prune: A goes only once every token it could have signed has expired
    retired = info_b.created_at
    life = issuer.capabilities.max_ttl
    assert prune_keys(keys_dir, max_token_lifetime=life, now=retired + life) == []
    removed = prune_keys(
        keys_dir, max_token_lifetime=life, now=retired + life + timedelta(seconds=1)
    )
    assert [k.kid for k in removed] == [key_a]
    assert [k.kid for k in list_keys(keys_dir)] == [info_b.kid]
    clock.advance(RELOAD_INTERVAL)
    assert [k["kid"] for k in issuer.jwks()["keys"]] == [info_b.kid]
    assert issuer.identify(token_a, clock.now()) is None
    assert issuer.identify(token_b, clock.now()) == req_b.lease_id


async def test_a_directory_broken_at_runtime_fails_health_but_keeps_signing(
    issuer: JWTIssuer, clock: FakeClock, keys_dir: Path
) -> None:
    await issuer.check_health()
    kid = issuer.ring.signing.kid
    (keys_dir / "misplaced.pem").write_text("not a key")
    clock.advance(RELOAD_INTERVAL)
    with pytest.raises(IssuerUnavailable, match=r"misplaced\.pem"):
        await issuer.check_health()
    credential = await issuer.mint(request(clock))
    assert credential.metadata["kid"] == kid
    (keys_dir / "misplaced.pem").unlink()
    clock.advance(RELOAD_INTERVAL)
    await issuer.check_health()


async def test_keys_are_parsed_once_not_per_mint(
    issuer: JWTIssuer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = keys_module._parse_pem

    def counting(pem: bytes, where: str) -> Any:
        calls.append(where)
        return real(pem, where)

    monkeypatch.setattr(keys_module, "_parse_pem", counting)
    for _ in range(20):
        token = (await issuer.mint(request(clock))).secret.reveal()
        assert issuer.identify(token, clock.now()) is not None
        clock.advance(0.3)  # several reload intervals pass; the directory is unchanged
    assert calls == []


# -- revoke, health, reprs, warnings ----------------------------------------------------------


async def test_revoke_is_a_noop_and_the_token_stays_cryptographically_valid(
    issuer: JWTIssuer, clock: FakeClock
) -> None:
    req = request(clock)
    credential = await issuer.mint(req)
    assert await issuer.revoke(lease_for(req, credential)) is None
    assert await issuer.revoke(lease_for(req)) is None
    # ADR 0003: only the broker's lease state (introspection) makes it inactive
    assert issuer.identify(credential.secret.reveal(), clock.now()) == req.lease_id


async def test_eddsa_never_emits_joserfcs_deprecation_warning(
    clock: FakeClock, keys_dir: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        issuer = make_issuer(clock, keys_dir)
        token = (await issuer.mint(request(clock))).secret.reveal()
        assert issuer.identify(token, clock.now()) is not None
        issuer.jwks()
        await issuer.check_health()


async def test_no_repr_shows_private_key_material(issuer: JWTIssuer, keys_dir: Path) -> None:
    private = str(issuer.ring.signing.private.as_dict(private=True)["d"])
    pem = next(keys_dir.iterdir()).read_text()
    body = "".join(pem.splitlines()[1:-1])
    for text in (repr(issuer), str(issuer), repr(issuer.ring), repr(issuer.ring.signing)):
        assert private not in text
        assert body not in text


def test_the_issuer_is_registered_and_implements_every_protocol(issuer: JWTIssuer) -> None:
    (ep,) = [e for e in entry_points(group="jit_broker.issuers") if e.name == "jwt"]
    assert ep.load() is JWTIssuer
    assert isinstance(issuer, Issuer)
    assert isinstance(issuer, PublishesKeys)
    assert isinstance(issuer, Introspectable)


# -- scope ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        "https://api.example.com",
        "https://api.example.com/v1/orders?tenant=7",
        "http://localhost:8080/",
        "urn:example:orders",
        "spiffe://prod.example/orders",
    ],
)
def test_check_scope_accepts_an_absolute_uri(issuer: JWTIssuer, resource: str) -> None:
    issuer.check_scope(Scope.of("jwt", resource, ["read"]))


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        pytest.param(Scope.of("jwt", "orders", ["read"]), "absolute URI", id="a bare name"),
        pytest.param(Scope.of("jwt", "/orders", ["read"]), "absolute URI", id="a path"),
        pytest.param(Scope.of("jwt", "", ["read"]), "absolute URI", id="empty"),
        pytest.param(Scope.of("jwt", "https://", ["read"]), "absolute URI", id="no host"),
        pytest.param(Scope.of("jwt", "https://a.test#x", ["read"]), "fragment", id="fragment"),
        pytest.param(Scope.of("jwt", "https://a b.test", ["read"]), "absolute URI", id="space"),
        pytest.param(Scope.of("jwt", "1http://a.test", ["read"]), "absolute URI", id="scheme"),
        pytest.param(Scope.of("jwt", RESOURCE, []), "at least one action", id="no actions"),
        pytest.param(Scope.of("jwt", RESOURCE, ["read write"]), "scope token", id="a space"),
        pytest.param(Scope.of("jwt", RESOURCE, ['re"ad']), "scope token", id="a quote"),
        pytest.param(Scope.of("jwt", RESOURCE, [""]), "non-empty", id="an empty action"),
        pytest.param(Scope.of("pg", RESOURCE, ["read"]), "not 'jwt'", id="another issuer"),
    ],
)
async def test_check_scope_and_mint_refuse_what_a_token_cannot_express(
    issuer: JWTIssuer, clock: FakeClock, scope: Scope, reason: str
) -> None:
    with pytest.raises(ScopeNotSupported, match=reason):
        issuer.check_scope(scope)
    with pytest.raises(ScopeNotSupported):
        await issuer.mint(request(clock, scope=scope))


# -- configuration ----------------------------------------------------------------------------


def test_capabilities_come_from_config(clock: FakeClock, keys_dir: Path) -> None:
    issuer = make_issuer(clock, keys_dir, max_ttl="1h30m", default_ttl=90)
    assert issuer.capabilities == Capabilities(
        max_ttl=timedelta(minutes=90), default_ttl=timedelta(seconds=90), revocable=True
    )
    assert make_issuer(clock, keys_dir).capabilities == Capabilities(
        max_ttl=timedelta(hours=1), default_ttl=timedelta(minutes=15), revocable=True
    )
    assert make_issuer(clock, keys_dir, max_ttl="900", default_ttl="15m").capabilities.max_ttl == (
        timedelta(minutes=15)
    )


async def test_iss_defaults_to_the_broker_url_and_can_be_set(
    clock: FakeClock, keys_dir: Path
) -> None:
    assert make_issuer(clock, keys_dir).issuer == BROKER
    custom = make_issuer(clock, keys_dir, issuer="https://tokens.example")
    token = (await custom.mint(request(clock))).secret.reveal()
    assert (
        pyjwt.decode(token, options={"verify_signature": False})["iss"] == "https://tokens.example"
    )
    assert custom.identify(token, clock.now()) is not None


@pytest.mark.parametrize(
    ("config", "names"),
    [
        pytest.param({"colour": "blue"}, "colour", id="an unknown key"),
        pytest.param({"algorithm": "RS256"}, "algorithm", id="an unsupported algorithm"),
        pytest.param({"algorithm": "HS256"}, "algorithm", id="a symmetric algorithm"),
        pytest.param({"max_ttl": "forever"}, "max_ttl", id="a bad duration"),
        pytest.param({"max_ttl": True}, "max_ttl", id="a boolean duration"),
        pytest.param({"default_ttl": "0s"}, "default_ttl", id="a zero ttl"),
        pytest.param({"default_ttl": -5}, "default_ttl", id="a negative ttl"),
        pytest.param({"max_ttl": "5m", "default_ttl": "15m"}, "default_ttl", id="default > max"),
        pytest.param({"issuer": ""}, "issuer", id="an empty issuer"),
        pytest.param({"issuer": 7}, "issuer", id="a non-string issuer"),
        pytest.param({"keys_dir": ""}, "keys_dir", id="an empty keys_dir"),
    ],
)
def test_invalid_config_is_a_config_error_naming_the_key(
    clock: FakeClock, keys_dir: Path, config: dict[str, Any], names: str
) -> None:
    config = {"keys_dir": str(keys_dir), **config}
    with pytest.raises(ConfigError, match=names) as err:
        JWTIssuer(IssuerContext(name="tokens", config=config, clock=clock, broker_url=BROKER))
    assert "'tokens'" in err.value.message


def test_an_empty_keys_dir_outside_dev_says_how_to_create_a_key(
    clock: FakeClock, tmp_path: Path
) -> None:
    for dev in (False, True):
        with pytest.raises(ConfigError, match=r"jit keys rotate --dir"):
            make_issuer(clock, tmp_path, dev=dev)
    with pytest.raises(ConfigError, match="does not exist"):
        make_issuer(clock, tmp_path / "missing")


def test_keys_dir_is_required_outside_dev(clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match=r"keys_dir: required.*jit keys rotate"):
        make_issuer(clock, None)


def test_a_keys_dir_of_another_algorithm_is_a_config_error(
    clock: FakeClock, keys_dir: Path
) -> None:
    with pytest.raises(ConfigError, match="EdDSA but the issuer's algorithm is ES256"):
        make_issuer(clock, keys_dir, algorithm="ES256")


async def test_dev_mode_without_keys_dir_signs_with_an_in_memory_key(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = make_issuer(clock, None, dev=True, algorithm="ES256")
    assert issuer.ring.directory is None
    assert "in-memory key" in caplog.text
    req = request(clock)
    token = (await issuer.mint(req)).secret.reveal()
    assert issuer.identify(token, clock.now()) == req.lease_id
    assert verify_like_a_resource_server(issuer, token, RESOURCE)["jti"] == req.lease_id
    await issuer.check_health()


def test_dev_mode_with_keys_dir_uses_the_directory(clock: FakeClock, keys_dir: Path) -> None:
    issuer = make_issuer(clock, keys_dir, dev=True)
    assert issuer.ring.directory == keys_dir
    assert issuer.ring.signing.kid == list_keys(keys_dir)[0].kid
