"""The `approval:` setting of a grant: its forms, and the checks against the config's people."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.errors import PolicyError
from broker.policy import load_policy_text

DOC = """
owner: platform
workloads:
  - issuer: ci
grants:
  - name: deploy
    issuer: jwt
    resource: https://prod
    actions: [deploy]
    max_ttl: 1h
    approval: {approval}
"""
KNOWN = {"alice", "bob", "group:sre"}


def grant(approval: str, **options: object):  # type: ignore[no-untyped-def]
    policy = load_policy_text(DOC.format(approval=approval), file="p.yaml", **options)  # type: ignore[arg-type]
    return policy.documents[0].grants[0]


def test_none_needs_nobody() -> None:
    g = grant("none")
    assert g.approval is None
    assert not g.approval_required


def test_required_means_the_config_default_approvers() -> None:
    g = grant("required")
    assert g.approval_required
    assert g.approval is not None
    assert g.approval.approvers == ()
    assert g.approval.quorum == 1


def test_a_mapping_names_approvers_quorum_expiry_and_channel() -> None:
    g = grant("{approvers: [group:sre, alice], quorum: 2, expires_after: 30m, channel: C01}")
    assert g.approval is not None
    assert g.approval.approvers == ("group:sre", "alice")
    assert g.approval.quorum == 2
    assert g.approval.expires_after == timedelta(minutes=30)
    assert g.approval.channel == "C01"


@pytest.mark.parametrize(
    ("approval", "reason"),
    [
        ("{approvers: [mallory]}", "unknown approver 'mallory'"),
        ("{approvers: [alice], quorum: 2}", "quorum 2 needs at least 2 approvers"),
        ("{approvers: []}", "approvers"),
        ("{approvers: [alice], quorum: 0}", "quorum"),
        ("{approvers: [alice], expires_after: soon}", "not a duration"),
        ("{approvers: [alice], wat: 1}", "wat"),
        ("maybe", "approval"),
    ],
)
def test_invalid_approval_settings_fail_with_the_line(approval: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason) as exc:
        grant(approval, approvers=KNOWN)
    assert exc.value.file == "p.yaml"
    assert exc.value.line is not None


def test_required_without_default_approvers_is_an_error() -> None:
    with pytest.raises(PolicyError, match="has nobody to ask"):
        grant("required", approvers=KNOWN, has_default_approvers=False)


def test_names_are_not_checked_without_a_config() -> None:
    assert grant("{approvers: [whoever]}").approval is not None
