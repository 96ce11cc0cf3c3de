"""Claim presets, on their own: which claims each preset keeps, which it requires, and the
Principal it builds. (The verifier tests run the same presets behind real signatures.)"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from broker.config import IdentityIssuerSettings
from broker.errors import AuthenticationError
from broker.identity import PRESETS, known_claims, principal_from_claims

GITHUB = {
    "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
    "repository": "octo-org/octo-repo",
    "repository_id": "74",
    "repository_owner": "octo-org",
    "repository_owner_id": "65",
    "check_run_id": "1234",
    "workflow_sha": "abc",
    "enterprise_id": "2",
    "repo_property_team": "payments",  # admin-set custom property: not in the preset
    "iss": "https://token.actions.githubusercontent.com",
    "aud": "jit-broker",
    "exp": 2,
    "iat": 1,
    "nbf": 1,
    "jti": "j",
}

GITLAB = {
    "sub": "project_path:my-group/my-project:ref_type:branch:ref:main",
    "namespace_id": "72",
    "project_id": "20",
    "project_visibility": "private",
    "user_access_level": "maintainer",
    "user_email": "someone@example.com",
    "user_identities": [{"provider": "github", "extern_uid": "1"}],
    "groups_direct": ["my-group"],
    "runner_id": 1,
}


def issuer(preset: str, name: str = "ci") -> IdentityIssuerSettings:
    return IdentityIssuerSettings(
        name=name,
        issuer="https://idp",
        audiences=["jit-broker"],
        preset=preset,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("preset", "claims", "expected"),
    [
        pytest.param(
            "github",
            GITHUB,
            {
                "sub": GITHUB["sub"],
                "repository": "octo-org/octo-repo",
                "repository_id": "74",
                "repository_owner": "octo-org",
                "repository_owner_id": "65",
                "check_run_id": "1234",
                "workflow_sha": "abc",
                "enterprise_id": "2",
            },
            id="github keeps its documented claims and drops registered and unknown ones",
        ),
        pytest.param(
            "gitlab",
            GITLAB,
            {
                "sub": GITLAB["sub"],
                "namespace_id": "72",
                "project_id": "20",
                "project_visibility": "private",
                "user_access_level": "maintainer",
                "runner_id": 1,
            },
            id="gitlab keeps its documented claims and drops personal data",
        ),
        pytest.param(
            "generic",
            {
                "sub": "s",
                "iss": "i",
                "aud": ["a"],
                "exp": 2,
                "iat": 1,
                "nbf": 1,
                "jti": "j",
                "email": "e@x",
                "n": 3,
                "flag": False,
                "roles": ["a", "b"],
                "mixed": ["a", 1],
                "ratio": 0.5,
                "obj": {"k": "v"},
                "nothing": None,
            },
            {"sub": "s", "email": "e@x", "n": 3, "flag": False, "roles": ["a", "b"]},
            id="generic keeps every str int bool or list of str claim except registered ones",
        ),
    ],
)
def test_presets_keep_exactly_their_claims(
    preset: str, claims: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert principal_from_claims(issuer(preset), claims).claims == expected


def test_github_ids_given_as_numbers_are_kept_as_numbers() -> None:
    p = principal_from_claims(issuer("github"), {**GITHUB, "repository_id": 74})
    assert p.claims["repository_id"] == 74


def test_the_principal_is_named_after_the_issuer_and_the_subject() -> None:
    p = principal_from_claims(issuer("github", name="gh"), GITHUB)
    assert p.id == "gh:repo:octo-org/octo-repo:ref:refs/heads/main"
    assert p.issuer == "gh"
    assert p.subject == GITHUB["sub"]


def test_list_claims_are_copied_not_shared() -> None:
    raw = {"sub": "s", "roles": ["a"]}
    p = principal_from_claims(issuer("generic"), raw)
    raw["roles"].append("admin")
    assert p.claims["roles"] == ["a"]


K8S = {
    "sub": "system:serviceaccount:payments:worker",
    "kubernetes.io": {
        "namespace": "payments",
        "serviceaccount": {"name": "worker", "uid": "sa-uid"},
    },
}


def test_kubernetes_without_pod_or_node_binding_keeps_what_is_there() -> None:
    p = principal_from_claims(issuer("kubernetes"), K8S)
    assert p.claims == {
        "sub": K8S["sub"],
        "namespace": "payments",
        "serviceaccount": "worker",
        "serviceaccount_uid": "sa-uid",
    }


def test_kubernetes_keeps_the_node_binding_of_a_token_without_a_pod() -> None:
    claims = {**K8S, "kubernetes.io": {**K8S["kubernetes.io"], "node": {"name": "n1", "uid": "n"}}}
    p = principal_from_claims(issuer("kubernetes"), claims)
    assert (p.claims["node"], p.claims["node_uid"]) == ("n1", "n")
    assert "pod" not in p.claims


@pytest.mark.parametrize(
    "sub",
    [
        pytest.param("   ", id="only spaces"),
        pytest.param(" alice", id="a leading space"),
        pytest.param("alice\n", id="a trailing newline"),
        pytest.param("ali\x00ce", id="a NUL"),
        pytest.param("ali\u200bce", id="a zero-width space"),
        pytest.param("x" * 513, id="513 characters"),
    ],
)
def test_a_subject_that_cannot_be_shown_safely_is_a_401(sub: str) -> None:
    with pytest.raises(AuthenticationError, match="invalid sub claim"):
        principal_from_claims(issuer("generic"), {"sub": sub})


def test_a_subject_of_512_printable_characters_is_accepted() -> None:
    assert principal_from_claims(issuer("generic"), {"sub": "x" * 512}).subject == "x" * 512


@pytest.mark.parametrize(
    ("preset", "claims", "needle"),
    [
        pytest.param("generic", {"x": 1}, "no sub claim", id="any preset needs sub"),
        pytest.param("generic", {"sub": ""}, "no sub claim", id="an empty sub is no sub"),
        pytest.param("generic", {"sub": 5}, "no sub claim", id="a numeric sub is no sub"),
        pytest.param(
            "github",
            {k: v for k, v in GITHUB.items() if k != "repository_owner_id"},
            "requires: repository_owner_id",
            id="github needs repository_owner_id",
        ),
        pytest.param(
            "github",
            {**GITHUB, "repository_id": True},
            "requires: repository_id",
            id="a boolean is not a repository id",
        ),
        pytest.param(
            "gitlab",
            {"sub": "s", "project_id": "1"},
            "requires: namespace_id",
            id="gitlab needs namespace_id",
        ),
        pytest.param(
            "kubernetes",
            {"sub": "system:serviceaccount:a:b", "kubernetes.io": {"namespace": "a"}},
            "kubernetes.io.serviceaccount.name",
            id="kubernetes needs the service account",
        ),
        pytest.param(
            "kubernetes",
            {"sub": "system:serviceaccount:a:b", "kubernetes.io": "a"},
            "kubernetes.io.namespace",
            id="a kubernetes.io claim that is not an object",
        ),
        pytest.param(
            "kubernetes",
            {
                "sub": "system:serviceaccount:42:worker",
                "kubernetes.io": {"namespace": 42, "serviceaccount": {"name": "worker"}},
            },
            "kubernetes.io.namespace",
            id="a kubernetes namespace that is not a string",
        ),
        pytest.param(
            "kubernetes",
            {**K8S, "sub": "system:serviceaccount:payments:other"},
            "does not name the service account",
            id="kubernetes sub must match the service account",
        ),
    ],
)
def test_missing_required_claims_are_a_401(
    preset: str, claims: dict[str, Any], needle: str
) -> None:
    with pytest.raises(AuthenticationError) as info:
        principal_from_claims(issuer(preset), claims)
    assert info.value.status == 401
    assert needle in info.value.message


def test_known_claims_list_what_each_preset_can_produce() -> None:
    assert known_claims("generic") is None
    for name in ("github", "gitlab", "kubernetes"):
        names = known_claims(name)
        assert names is not None
        assert "sub" in names
        # Every claim a preset can produce is something a policy may name, and nothing else.
        assert names == set(PRESETS[name].claims or ())
    gitlab = known_claims("gitlab")
    assert gitlab is not None
    assert not {"user_email", "user_identities"} & gitlab


def test_every_preset_the_config_accepts_exists() -> None:
    info = msgspec.inspect.type_info(IdentityIssuerSettings)
    assert isinstance(info, msgspec.inspect.StructType)
    (preset,) = [f for f in info.fields if f.name == "preset"]
    assert isinstance(preset.type, msgspec.inspect.LiteralType)
    assert set(preset.type.values) == set(PRESETS)
