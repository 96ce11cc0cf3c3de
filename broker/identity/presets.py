"""Claim presets: how the verified claims of one kind of workload token become a Principal.

Owns the per-platform claim mapping (the model is Fulcio's per-CI claim tables):

- ``generic``: any OIDC issuer. Every claim whose value is a string, integer, boolean or list of
  strings, except the registered ``iss``/``aud``/``exp``/``iat``/``nbf``/``jti``.
- ``github``: GitHub Actions OIDC tokens. Only the documented claims; ``repository_id`` and
  ``repository_owner_id`` are required (policies should pin these immutable ids, not names).
- ``gitlab``: GitLab CI ``id_tokens``. Only the documented claims, minus personal data
  (``user_email``, ``user_identities``); ``project_id`` and ``namespace_id`` are required.
- ``kubernetes``: projected service-account tokens. The nested ``kubernetes.io`` claim is
  flattened into ``namespace``, ``serviceaccount``, ``serviceaccount_uid``, ``pod``, ``pod_uid``,
  ``node``, ``node_uid``; the namespace and service account are required.

Every preset takes the subject from ``sub`` (required, a non-empty string) and puts it in the
claims too. ``Principal.id`` is ``"<identity-issuer name>:<sub>"``. Claim values are kept as the
token gives them (GitHub and GitLab send ids as strings, GitLab's ``runner_id`` is a number);
values of any other shape (objects, floats, mixed lists) are dropped. docs/identity.md lists the
claims; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.config import IdentityIssuerSettings
from broker.errors import AuthenticationError
from broker.types import Principal

__all__ = ["PRESETS", "Preset", "known_claims", "principal_from_claims"]

#: Registered claims that describe the token, not the workload: never in Principal.claims.
TOKEN_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "jti"})


def _is_value(value: Any) -> bool:
    """A claim value a policy can match: str, int, bool, or a list of str."""
    if isinstance(value, str | int | bool):  # bool is an int; float is neither
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _present(value: Any) -> bool:
    """A required claim is there: a non-empty string or an integer (not a bool)."""
    if isinstance(value, bool):
        return False
    return (isinstance(value, str) and value != "") or isinstance(value, int)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Preset:
    """One claim mapping. ``claims`` None means any claim passes (generic)."""

    name: str
    claims: frozenset[str] | None
    required: tuple[str, ...] = ()
    # Turns the raw claims into the flat claims the preset then filters (kubernetes).
    flatten: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

    def normalise(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        flat = self.flatten(raw) if self.flatten is not None else dict(raw)
        if self.claims is None:
            names = [k for k in flat if k not in TOKEN_CLAIMS]
        else:
            names = [k for k in flat if k in self.claims]
        return {k: _copy(flat[k]) for k in names if _is_value(flat[k])}


GITHUB_CLAIMS = frozenset(
    {
        "sub",
        "actor",
        "actor_id",
        "triggering_actor",
        "base_ref",
        "check_run_id",
        "enterprise",
        "enterprise_id",
        "environment",
        "event_name",
        "head_ref",
        "job_workflow_ref",
        "job_workflow_sha",
        "ref",
        "ref_type",
        "repository",
        "repository_id",
        "repository_owner",
        "repository_owner_id",
        "repository_visibility",
        "run_attempt",
        "run_id",
        "run_number",
        "runner_environment",
        "sha",
        "workflow",
        "workflow_ref",
        "workflow_sha",
    }
)

GITLAB_CLAIMS = frozenset(
    {
        "sub",
        "namespace_id",
        "namespace_path",
        "project_id",
        "project_path",
        "project_visibility",
        "user_id",
        "user_login",
        "user_access_level",
        "pipeline_id",
        "pipeline_source",
        "job_id",
        "ref",
        "ref_type",
        "ref_path",
        "ref_protected",
        "environment",
        "environment_protected",
        "deployment_tier",
        "runner_id",
        "runner_environment",
        "sha",
        "ci_config_ref_uri",
        "ci_config_sha",
    }
)

KUBERNETES_CLAIMS = frozenset(
    {
        "sub",
        "namespace",
        "serviceaccount",
        "serviceaccount_uid",
        "pod",
        "pod_uid",
        "node",
        "node_uid",
    }
)


def _flatten_kubernetes(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``{"kubernetes.io": {"namespace", "serviceaccount": {name, uid}, "pod": {...},
    "node": {...}}}`` → flat claims. Raises AuthenticationError when the namespace or service
    account is missing or ``sub`` does not name that service account."""
    k8s = raw.get("kubernetes.io")
    k8s = k8s if isinstance(k8s, dict) else {}
    namespace = k8s.get("namespace")
    account = k8s.get("serviceaccount")
    account = account if isinstance(account, dict) else {}
    name = account.get("name")
    missing = [
        claim
        for claim, value in (
            ("kubernetes.io.namespace", namespace),
            ("kubernetes.io.serviceaccount.name", name),
        )
        if not (isinstance(value, str) and value)
    ]
    if missing:
        raise AuthenticationError(
            f"token lacks claims the kubernetes preset requires: {', '.join(missing)}"
        )
    expected_sub = f"system:serviceaccount:{namespace}:{name}"
    if raw.get("sub") != expected_sub:
        raise AuthenticationError(
            "token sub does not name the service account in its kubernetes.io claim"
        )
    flat: dict[str, Any] = {"sub": raw["sub"], "namespace": namespace, "serviceaccount": name}
    for claim, obj in (
        ("serviceaccount", account),
        ("pod", k8s.get("pod")),
        ("node", k8s.get("node")),
    ):
        if not isinstance(obj, dict):
            continue
        if claim != "serviceaccount" and isinstance(obj.get("name"), str):
            flat[claim] = obj["name"]
        if isinstance(obj.get("uid"), str):
            flat[f"{claim}_uid"] = obj["uid"]
    return flat


PRESETS: Mapping[str, Preset] = {
    "generic": Preset("generic", None),
    "github": Preset("github", GITHUB_CLAIMS, ("repository_id", "repository_owner_id")),
    "gitlab": Preset("gitlab", GITLAB_CLAIMS, ("project_id", "namespace_id")),
    "kubernetes": Preset("kubernetes", KUBERNETES_CLAIMS, flatten=_flatten_kubernetes),
}


#: The longest ``sub`` accepted (GitHub's longest documented subjects are far shorter).
MAX_SUBJECT = 512


def _displayable(text: str) -> bool:
    return len(text) <= MAX_SUBJECT and text.isprintable() and text.strip() == text and bool(text)


def known_claims(preset: str) -> set[str] | None:
    """The claim names a preset can put in ``Principal.claims`` (None: any), for policy lint."""
    claims = PRESETS[preset].claims
    return None if claims is None else set(claims)


def principal_from_claims(settings: IdentityIssuerSettings, claims: Mapping[str, Any]) -> Principal:
    """Verified claims → Principal, by the issuer's preset.

    Only maps: it checks no signature, issuer, audience or time (the verifier has done that).
    Raises AuthenticationError (401) when a claim the preset requires is missing."""
    preset = PRESETS[settings.preset]
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError("token has no sub claim")
    if not _displayable(subject):
        # The subject becomes the owner of leases and is shown to approvers (Slack, CLI): no
        # blank, padded, control or invisible characters, and a bounded length.
        raise AuthenticationError(
            f"invalid sub claim: 1-{MAX_SUBJECT} printable characters without surrounding spaces"
        )
    missing = [c for c in preset.required if not _present(claims.get(c))]
    if missing:
        raise AuthenticationError(
            f"token lacks claims the {preset.name} preset requires: {', '.join(missing)}"
        )
    return Principal(
        id=f"{settings.name}:{subject}",
        issuer=settings.name,
        subject=subject,
        claims=preset.normalise(claims),
    )
