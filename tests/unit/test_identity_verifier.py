"""TokenVerifier: real tokens (RSA, EC, Ed25519) from fake IdPs on httpx.MockTransport become the
right Principal; every bad token is a 401 whose message names the reason and never the token."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc.errors import SecurityWarning

from broker.config import IdentityIssuerSettings
from broker.errors import AuthenticationError, ConfigError
from broker.identity import MAX_TOKEN_BYTES, TokenVerifier
from broker.testing import FakeClock
from tests.unit.test_identity_support import (
    EC_K8S,
    ED_GENERIC,
    RSA_GH,
    RSA_GL,
    RSA_STRAY,
    FakeIdP,
    b64url,
    hs256_with_public_pem,
    network,
    sign,
    times,
    unsigned,
)

AUD = "jit-broker"


@dataclass
class World:
    clock: FakeClock
    verifier: TokenVerifier
    github: FakeIdP
    gitlab: FakeIdP
    k8s: FakeIdP
    generic: FakeIdP
    http: httpx.AsyncClient

    # Realistic payloads, after the examples in each platform's documentation.
    def github_claims(self, **over: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "jti": "example-id",
            "sub": "repo:octo-org/octo-repo:environment:prod",
            "environment": "prod",
            "aud": AUD,
            "ref": "refs/heads/main",
            "sha": "d6b3a1f0c2e94f1e8a7b5c4d3e2f1a0b9c8d7e6f",
            "repository": "octo-org/octo-repo",
            "repository_owner": "octo-org",
            "actor_id": "12",
            "repository_visibility": "private",
            "repository_id": "74",
            "repository_owner_id": "65",
            "run_id": "5171298317",
            "run_number": "10",
            "run_attempt": "2",
            "runner_environment": "github-hosted",
            "actor": "octocat",
            "workflow": "example-workflow",
            "head_ref": "",
            "base_ref": "",
            "event_name": "workflow_dispatch",
            "ref_type": "branch",
            "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_ref": (
                "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main"
            ),
            "iss": self.github.issuer,
            **times(self.clock),
        }
        claims.update(over)
        return claims

    def gitlab_claims(self, **over: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "namespace_id": "72",
            "namespace_path": "my-group",
            "project_id": "20",
            "project_path": "my-group/my-project",
            "user_id": "1",
            "user_login": "sample-user",
            "user_email": "sample-user@example.com",
            "user_identities": [{"provider": "github", "extern_uid": "2435223452345"}],
            "pipeline_id": "574",
            "pipeline_source": "push",
            "job_id": "302",
            "ref": "feature-branch-1",
            "ref_type": "branch",
            "ref_path": "refs/heads/feature-branch-1",
            "ref_protected": "false",
            "environment": "test-environment2",
            "environment_protected": "false",
            "deployment_tier": "testing",
            "runner_id": 1,
            "runner_environment": "self-hosted",
            "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "ci_config_ref_uri": (
                "gitlab.example.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main"
            ),
            "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            "jti": "235b3a54-b797-45c7-ae9a-f72d7bc6ef5b",
            "iss": self.gitlab.issuer,
            "sub": "project_path:my-group/my-project:ref_type:branch:ref:feature-branch-1",
            "aud": AUD,
            **times(self.clock),
        }
        claims.update(over)
        return claims

    def k8s_claims(self, **over: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "aud": [AUD, "https://kubernetes.default.svc"],
            "iss": self.k8s.issuer,
            "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
            "kubernetes.io": {
                "namespace": "payments",
                "node": {"name": "ip-10-0-1-7", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
                "pod": {"name": "worker-69cbfb9798-jv9gn", "uid": "778a530c-b3f4-47c0"},
                "serviceaccount": {"name": "worker", "uid": "a087d5a0-e1dd-43ec"},
                "warnafter": 1700081020,
            },
            "sub": "system:serviceaccount:payments:worker",
            **times(self.clock, lifetime=3600),
        }
        claims.update(over)
        return claims

    def generic_claims(self, **over: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.generic.issuer,
            "aud": AUD,
            "sub": "svc-reporting",
            "jti": "j-1",
            "team": "data",
            "tier": 2,
            "on_call": True,
            "groups": ["readers", "writers"],
            "score": 0.5,
            "profile": {"nested": "dropped"},
            **times(self.clock),
        }
        claims.update(over)
        return claims

    def gh_token(self, **over: Any) -> str:
        return sign(self.github_claims(**over), RSA_GH, "RS256")


@pytest.fixture
async def world(clock: FakeClock) -> AsyncIterator[World]:
    github = FakeIdP("token.actions.githubusercontent.com", [RSA_GH])
    gitlab = FakeIdP("gitlab.example.com", [RSA_GL], jwks_path="/oauth/discovery/keys")
    k8s = FakeIdP("oidc.eks.example.com", [EC_K8S, RSA_STRAY], jwks_path="/keys")
    generic = FakeIdP("idp.example.com", [ED_GENERIC])
    http = network(github, gitlab, k8s, generic)
    issuers = [
        IdentityIssuerSettings(
            name="github",
            issuer=github.issuer,
            audiences=[AUD],
            preset="github",
            jwks_uri=github.jwks_uri,
            algorithms=["RS256"],
        ),
        # No jwks_uri: found through discovery.
        IdentityIssuerSettings(
            name="gitlab", issuer=gitlab.issuer, audiences=[AUD], preset="gitlab"
        ),
        IdentityIssuerSettings(
            name="k8s",
            issuer=k8s.issuer,
            audiences=[AUD],
            preset="kubernetes",
            jwks_uri=k8s.jwks_uri,
            algorithms=["ES256"],
        ),
        IdentityIssuerSettings(
            name="corp",
            issuer=generic.issuer,
            audiences=["other", AUD],
            jwks_uri=generic.jwks_uri,
            algorithms=["EdDSA", "ES256"],
        ),
    ]
    verifier = TokenVerifier(issuers, clock, http=http)
    yield World(clock, verifier, github, gitlab, k8s, generic, http)
    await verifier.aclose()
    await http.aclose()


# -- valid tokens ---------------------------------------------------------------------------------


async def test_a_github_actions_token_becomes_a_principal_with_the_documented_claims(
    world: World,
) -> None:
    p = await world.verifier.verify(world.gh_token())
    assert p.id == "github:repo:octo-org/octo-repo:environment:prod"
    assert p.issuer == "github"
    assert p.subject == "repo:octo-org/octo-repo:environment:prod"
    assert p.kind == "workload"
    expected = {
        k: v
        for k, v in world.github_claims().items()
        if k not in {"jti", "aud", "iss", "iat", "nbf", "exp"}
    }
    assert p.claims == expected
    assert p.claims["repository_id"] == "74"
    assert p.claims["repository_owner_id"] == "65"


async def test_a_gitlab_ci_token_becomes_a_principal_without_personal_data(world: World) -> None:
    p = await world.verifier.verify(sign(world.gitlab_claims(), RSA_GL, "RS256"))
    assert p.id == "gitlab:project_path:my-group/my-project:ref_type:branch:ref:feature-branch-1"
    assert p.issuer == "gitlab"
    assert p.claims["project_id"] == "20"
    assert p.claims["namespace_id"] == "72"
    assert p.claims["runner_id"] == 1  # an int stays an int
    assert p.claims["ci_config_ref_uri"].endswith(".gitlab-ci.yml@refs/heads/main")
    assert "user_email" not in p.claims
    assert "user_identities" not in p.claims
    assert not {"iss", "aud", "exp", "iat", "nbf", "jti"} & set(p.claims)


async def test_a_kubernetes_service_account_token_is_flattened(world: World) -> None:
    p = await world.verifier.verify(sign(world.k8s_claims(), EC_K8S, "ES256"))
    assert p.id == "k8s:system:serviceaccount:payments:worker"
    assert p.claims == {
        "sub": "system:serviceaccount:payments:worker",
        "namespace": "payments",
        "serviceaccount": "worker",
        "serviceaccount_uid": "a087d5a0-e1dd-43ec",
        "pod": "worker-69cbfb9798-jv9gn",
        "pod_uid": "778a530c-b3f4-47c0",
        "node": "ip-10-0-1-7",
        "node_uid": "58456cb0-dd00-45ed-b797-5578fdceaced",
    }


async def test_a_generic_oidc_token_keeps_every_simple_claim(world: World) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)  # the EdDSA notice is silenced in broker
        p = await world.verifier.verify(sign(world.generic_claims(), ED_GENERIC, "EdDSA"))
    assert p.id == "corp:svc-reporting"
    assert p.claims == {
        "sub": "svc-reporting",
        "team": "data",
        "tier": 2,
        "on_call": True,
        "groups": ["readers", "writers"],
    }


@pytest.mark.parametrize(
    ("describe", "over"),
    [
        pytest.param(
            "expired 10s ago", {"exp": -310}, id="a token expired within the leeway passes"
        ),
        pytest.param(
            "nbf 10s ahead", {"nbf": 10}, id="a token not yet valid within the leeway passes"
        ),
        pytest.param("iat 10s ahead", {"iat": 10}, id="an iat a little ahead (clock skew) passes"),
    ],
)
async def test_small_clock_skew_is_tolerated(
    world: World, describe: str, over: dict[str, int]
) -> None:
    claims = world.github_claims(**times(world.clock, **over))
    assert (await world.verifier.verify(sign(claims, RSA_GH, "RS256"))).issuer == "github"


@pytest.mark.parametrize(
    ("lifetime", "accepted"),
    [
        pytest.param(86400, True, id="exactly the maximum lifetime is accepted"),
        pytest.param(86401, False, id="one second over the maximum is refused"),
    ],
)
async def test_the_maximum_token_lifetime_is_inclusive(
    world: World, lifetime: int, accepted: bool
) -> None:
    token = world.gh_token(**times(world.clock, lifetime=lifetime))
    if accepted:
        assert (await world.verifier.verify(token)).issuer == "github"
    else:
        with pytest.raises(AuthenticationError, match="token lifetime 86401s exceeds"):
            await world.verifier.verify(token)


async def test_the_lifetime_counts_from_iat_not_from_now(world: World) -> None:
    # Issued 1000 s ago and valid for 86400 - 500 s more: 86900 s in all, over the maximum.
    now = int(world.clock.now().timestamp())
    token = world.gh_token(iat=now - 1000, nbf=now - 1000, exp=now + 86400 - 500)
    with pytest.raises(AuthenticationError, match="token lifetime 86900s exceeds"):
        await world.verifier.verify(token)


async def test_a_token_with_neither_iat_nor_nbf_counts_its_lifetime_from_now(world: World) -> None:
    claims = world.github_claims(**times(world.clock, lifetime=86401))
    del claims["iat"], claims["nbf"]
    with pytest.raises(AuthenticationError, match="token lifetime 86401s exceeds"):
        await world.verifier.verify(sign(claims, RSA_GH, "RS256"))
    claims["exp"] -= 2
    assert (await world.verifier.verify(sign(claims, RSA_GH, "RS256"))).issuer == "github"


async def test_a_token_of_exactly_the_size_limit_is_not_too_large(world: World) -> None:
    with pytest.raises(AuthenticationError) as info:
        await world.verifier.verify("a" * MAX_TOKEN_BYTES)
    assert "malformed token" in info.value.message


async def test_the_lifetime_counts_from_nbf_when_a_token_has_no_iat(world: World) -> None:
    claims = world.github_claims(**times(world.clock, lifetime=86401))
    del claims["iat"]
    with pytest.raises(AuthenticationError, match="token lifetime 86401s exceeds"):
        await world.verifier.verify(sign(claims, RSA_GH, "RS256"))


async def test_an_audience_list_is_accepted_when_one_entry_matches(world: World) -> None:
    p = await world.verifier.verify(world.gh_token(aud=["https://github.com/octo-org", AUD]))
    assert p.issuer == "github"


async def test_a_token_without_kid_verifies_when_the_issuer_has_one_key(world: World) -> None:
    token = sign(world.github_claims(), RSA_GH, "RS256", kid=None)
    assert (await world.verifier.verify(token)).issuer == "github"


async def test_unknown_non_critical_header_parameters_are_ignored(world: World) -> None:
    token = sign(world.github_claims(), RSA_GH, "RS256", header={"x5t": "thumb", "vendor": "x"})
    assert (await world.verifier.verify(token)).issuer == "github"


async def test_a_large_token_under_the_size_limit_still_verifies(world: World) -> None:
    token = world.gh_token(padding="x" * 10_000)
    assert 13_000 < len(token) <= MAX_TOKEN_BYTES
    assert (await world.verifier.verify(token)).issuer == "github"


async def test_two_issuer_configs_on_one_iss_are_told_apart_by_audience(clock: FakeClock) -> None:
    idp = FakeIdP("token.actions.githubusercontent.com", [RSA_GH])
    common = {"issuer": idp.issuer, "jwks_uri": idp.jwks_uri, "preset": "github"}
    issuers = [
        IdentityIssuerSettings(name="gh-staging", audiences=["staging"], **common),
        IdentityIssuerSettings(name="gh-prod", audiences=["prod"], **common),
    ]
    async with network(idp) as http:
        verifier = TokenVerifier(issuers, clock, http=http)
        claims = {
            "iss": idp.issuer,
            "aud": "prod",
            "sub": "repo:o/r:ref:refs/heads/main",
            "repository_id": "1",
            "repository_owner_id": "2",
            **times(clock),
        }
        assert (await verifier.verify(sign(claims, RSA_GH, "RS256"))).issuer == "gh-prod"
        for aud in ("nobody", [{"not": "a string"}], 7):
            claims["aud"] = aud
            with pytest.raises(AuthenticationError, match="audience not accepted"):
                await verifier.verify(sign(claims, RSA_GH, "RS256"))
        await verifier.aclose()


# -- rejected tokens -------------------------------------------------------------------------------

Case = Callable[[World], str]


def _tampered(w: World) -> str:
    head, _, sig = w.gh_token().split(".")
    return f"{head}.{b64url(w.github_claims(repository_id='999'))}.{sig}"


def _es256_header_on_rsa_key(w: World) -> str:
    # k8s allows ES256; the token names the RSA key the IdP also publishes.
    return sign(w.k8s_claims(), EC_K8S, "ES256", kid="k8s-rsa")


REJECTED: list[Any] = [
    pytest.param(
        lambda w: w.gh_token(**times(w.clock, exp=-400)), "token expired", id="an expired token"
    ),
    pytest.param(
        lambda w: w.gh_token(**times(w.clock, nbf=600)),
        "not yet valid",
        id="a token whose nbf is in the future",
    ),
    pytest.param(
        lambda w: w.gh_token(**times(w.clock, iat=600, exp=900)),
        "issued in the future",
        id="a token issued in the future",
    ),
    pytest.param(
        lambda w: w.gh_token(aud="https://github.com/octo-org"),
        "audience not accepted",
        id="a token for another audience",
    ),
    pytest.param(
        lambda w: w.gh_token(aud=["a", "b"]),
        "audience not accepted",
        id="a token whose audience list has none of ours",
    ),
    pytest.param(
        lambda w: w.gh_token(iss=w.gitlab.issuer),
        "unknown signing key kid=gh-1 for issuer gitlab",
        id="a token signed by a trusted key but naming another trusted issuer",
    ),
    pytest.param(
        lambda w: w.gh_token(iss="https://evil.example"),
        "untrusted issuer https://evil.example",
        id="a token from an untrusted issuer",
    ),
    pytest.param(
        lambda w: w.gh_token(iss=None), "token has no iss claim", id="a token without an issuer"
    ),
    pytest.param(
        lambda w: unsigned(w.github_claims()),
        "algorithm none not allowed for issuer github",
        id="an unsigned alg none token",
    ),
    pytest.param(
        lambda w: hs256_with_public_pem(w.github_claims(), RSA_GH, "gh-1"),
        "algorithm HS256 not allowed for issuer github",
        id="an HS256 token keyed with the RSA public key (HS/RS confusion)",
    ),
    pytest.param(
        lambda w: sign(w.k8s_claims(), RSA_STRAY, "RS256"),
        "algorithm RS256 not allowed for issuer k8s",
        id="an RS256 token for an issuer that only allows ES256",
    ),
    pytest.param(
        _es256_header_on_rsa_key,
        "cannot verify ES256 tokens",
        id="an allowed alg with a key of the wrong type",
    ),
    pytest.param(
        lambda w: sign(w.github_claims(), RSA_GH, "RS256", kid="nope"),
        "unknown signing key kid=nope for issuer github",
        id="a token naming an unknown kid",
    ),
    pytest.param(
        lambda w: sign(w.github_claims(), RSA_GL, "RS256", kid="gh-1"),
        "signature does not verify",
        id="a token signed by another key under a known kid",
    ),
    pytest.param(_tampered, "signature does not verify", id="a token with a tampered payload"),
    pytest.param(lambda w: "", "missing token", id="an empty token"),
    pytest.param(lambda w: "garbage", "malformed token", id="garbage"),
    pytest.param(lambda w: "a.b.c.d", "malformed token", id="four parts"),
    pytest.param(lambda w: "!!!.@@@.###", "malformed token", id="three parts of bad base64"),
    pytest.param(
        lambda w: f"{b64url('[1]')}.{b64url('{}')}.sig",
        "malformed token",
        id="a header that is not a JSON object",
    ),
    pytest.param(
        lambda w: f"{b64url({'alg': 'RS256'})}.{b64url('[1,2]')}.c2ln",
        "payload is not a JSON object",
        id="a payload that is not a JSON object",
    ),
    pytest.param(
        lambda w: f"{b64url({'alg': 'RS256'})}.{b64url('[' * 5000)}.c2ln",
        "payload is not JSON",
        id="a deeply nested payload",
    ),
    pytest.param(lambda w: "a.b.c.d.e", "encrypted tokens", id="an encrypted JWE"),
    pytest.param(lambda w: "é.b.c", "malformed token", id="a token that is not ASCII"),
    pytest.param(lambda w: "a" * (MAX_TOKEN_BYTES + 1), "too large", id="a token over 16 KiB"),
    pytest.param(
        lambda w: w.gh_token(**times(w.clock, lifetime=2 * 86400)),
        "token lifetime 172800s exceeds the 86400s allowed for issuer github",
        id="a token whose lifetime is too long",
    ),
    pytest.param(
        lambda w: w.gh_token(aud=None), "token has no aud claim", id="a token without aud"
    ),
    pytest.param(
        lambda w: w.gh_token(iss=""), "token has no iss claim", id="a token with an empty iss"
    ),
    pytest.param(
        lambda w: w.gh_token(iss=7), "token has no iss claim", id="a token whose iss is a number"
    ),
    pytest.param(
        lambda w: sign(w.github_claims(), EC_K8S, "ES256"),
        "algorithm ES256 not allowed for issuer github",
        id="an algorithm the issuer does not allow (though not forbidden)",
    ),
    pytest.param(
        lambda w: w.gh_token(nbf="soon"), "invalid nbf claim", id="a token whose nbf is a string"
    ),
    pytest.param(
        lambda w: w.gh_token(exp=None), "token has no exp claim", id="a token without exp"
    ),
    pytest.param(
        lambda w: w.gh_token(exp="soon"), "invalid exp claim", id="a token whose exp is a string"
    ),
    pytest.param(
        lambda w: w.gh_token(sub=42), "invalid sub claim", id="a token whose sub is a number"
    ),
    pytest.param(
        lambda w: w.gh_token(repository_id=None, repository_owner_id=""),
        "github preset requires: repository_id, repository_owner_id",
        id="a github token without the immutable ids",
    ),
    pytest.param(
        lambda w: sign(w.k8s_claims(**{"kubernetes.io": {}}), EC_K8S, "ES256"),
        "kubernetes preset requires",
        id="a kubernetes token without its kubernetes.io claim",
    ),
    pytest.param(
        lambda w: sign(
            w.k8s_claims(sub="system:serviceaccount:kube-system:admin"), EC_K8S, "ES256"
        ),
        "does not name the service account",
        id="a kubernetes token whose sub names another service account",
    ),
    pytest.param(
        lambda w: sign(w.gitlab_claims(project_id=None), RSA_GL, "RS256"),
        "gitlab preset requires: project_id",
        id="a gitlab token without project_id",
    ),
    pytest.param(
        lambda w: ".".join(
            [b64url({"alg": "RS256", "crit": ["exp"], "exp": 1}), b64url(w.github_claims()), "c2ln"]
        ),
        "token header rejected (Unsupported ['exp'] in header)",
        id="a token with an unsupported critical header",
    ),
    pytest.param(
        lambda w: f"{b64url({'alg': 'RS256', 'kid': 7})}.{b64url(w.github_claims())}.c2ln",
        "token header rejected ('kid' in header must be a str)",
        id="a token whose kid is not a string",
    ),
]


@pytest.mark.parametrize(("make", "reason"), REJECTED)
async def test_bad_tokens_are_rejected_with_a_clear_401(
    world: World, make: Case, reason: str
) -> None:
    token = make(world)
    with pytest.raises(AuthenticationError) as info:
        await world.verifier.verify(token)
    err = info.value
    assert err.status == 401
    assert reason in err.message
    # The message never echoes the token or any part of it that could be replayed.
    for part in token.split("."):
        if len(part) > 16:
            assert part not in err.message


async def test_an_alg_none_token_is_refused_even_when_a_lax_library_would_take_it(
    world: World,
) -> None:
    # Same payload as a valid token, signature stripped and alg set to none: still refused.
    valid = world.gh_token()
    _, payload, _ = valid.split(".")
    token = f"{b64url({'alg': 'none', 'kid': 'gh-1'})}.{payload}."
    with pytest.raises(AuthenticationError, match="algorithm none not allowed"):
        await world.verifier.verify(token)


async def test_an_hs256_token_naming_an_hmac_algorithm_in_lower_case_is_refused(
    world: World,
) -> None:
    token = hs256_with_public_pem(world.github_claims(), RSA_GH, "gh-1").replace(
        b64url({"alg": "HS256", "typ": "JWT", "kid": "gh-1"}),
        b64url({"alg": "hs256", "typ": "JWT", "kid": "gh-1"}),
    )
    with pytest.raises(AuthenticationError, match="not allowed for issuer github"):
        await world.verifier.verify(token)


async def test_a_caller_supplied_issuer_is_escaped_and_clipped_in_the_message(world: World) -> None:
    token = world.gh_token(iss="https://evil.example/\n" + "x" * 500)
    with pytest.raises(AuthenticationError) as info:
        await world.verifier.verify(token)
    assert "\n" not in info.value.message
    assert len(info.value.message) < 120


async def test_the_clock_is_the_injected_one(world: World) -> None:
    token = world.gh_token()
    assert (await world.verifier.verify(token)).issuer == "github"
    world.clock.advance(timedelta(seconds=300 + 31))
    with pytest.raises(AuthenticationError, match="token expired"):
        await world.verifier.verify(token)


# -- configuration --------------------------------------------------------------------------------


def _settings(**over: Any) -> IdentityIssuerSettings:
    base: dict[str, Any] = {"name": "x", "issuer": "https://x", "audiences": ["a"]}
    base.update(over)
    return IdentityIssuerSettings(**base)


@pytest.mark.parametrize(
    ("issuers", "needle"),
    [
        pytest.param([_settings(algorithms=["HS256"])], "not allowed", id="an HMAC algorithm"),
        pytest.param([_settings(algorithms=["none"])], "not allowed", id="alg none"),
        pytest.param([_settings(algorithms=["RS257"])], "unknown algorithms", id="an unknown alg"),
        pytest.param([_settings(algorithms=[])], "at least one algorithm", id="no algorithm"),
        pytest.param([_settings(audiences=[])], "needs an audience", id="no audience"),
        pytest.param([_settings(), _settings()], "used twice", id="a duplicate name"),
    ],
)
def test_a_configuration_that_cannot_verify_safely_is_refused(
    clock: FakeClock, issuers: list[IdentityIssuerSettings], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        TokenVerifier(issuers, clock)


def test_static_keys_for_an_unconfigured_issuer_are_refused(clock: FakeClock) -> None:
    from joserfc.jwk import KeySet

    with pytest.raises(ConfigError, match="unconfigured"):
        TokenVerifier([_settings()], clock, static_keys={"dev": KeySet([ED_GENERIC])})


def test_known_claims_name_each_issuers_preset_claims(world: World) -> None:
    known = world.verifier.known_claims()
    assert set(known) == {"github", "gitlab", "k8s", "corp"}
    assert known["corp"] is None
    github = known["github"]
    assert github is not None
    assert {"repository_id", "repository_owner_id", "sub"} <= github
    gitlab = known["gitlab"]
    assert gitlab is not None
    assert "project_id" in gitlab
    assert "user_email" not in gitlab
    assert known["k8s"] == {
        "sub",
        "namespace",
        "serviceaccount",
        "serviceaccount_uid",
        "pod",
        "pod_uid",
        "node",
        "node_uid",
    }


# -- the verified-token cache ---------------------------------------------------------------------


async def test_a_token_presented_again_is_not_verified_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.identity.verifier as module

    checks: list[str] = []
    real = module._check_signature

    def counting(*args: Any, **kwargs: Any) -> None:
        checks.append("signature")
        real(*args, **kwargs)

    monkeypatch.setattr(module, "_check_signature", counting)
    token = world.gh_token()
    first = await world.verifier.verify(token)
    again = await world.verifier.verify(token)
    assert again == first
    assert checks == ["signature"]
    # A different token (one byte of the signature changed) is checked, and refused.
    with pytest.raises(AuthenticationError):
        await world.verifier.verify(_tampered(world))
    assert checks == ["signature", "signature"]


async def test_a_remembered_token_stops_counting_at_its_expiry_not_later(world: World) -> None:
    token = world.gh_token()
    await world.verifier.verify(token)
    world.clock.advance(timedelta(seconds=300 + 29))  # exp + leeway not yet reached
    assert (await world.verifier.verify(token)).issuer == "github"
    world.clock.advance(timedelta(seconds=2))
    with pytest.raises(AuthenticationError, match="token expired"):
        await world.verifier.verify(token)
