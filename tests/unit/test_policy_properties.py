"""Properties of decide() over generated policies and requests (Hypothesis).

- Monotonicity: for policies without conditions, if r2 is allowed and r1 ⊆ r2 (same issuer and
  resource, a non-empty subset of the actions, a TTL no longer), r1 is allowed — by the same
  grant. The same holds for "covered at all" (allowed or needs approval).
- Least privilege: an Allow or NeedsApproval carries exactly the requested scope.
- Purity: the same inputs give the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.policy import Allow, Deny, NeedsApproval, PolicySet, decide, load_policy_text
from broker.types import Intent, Principal, Scope, Task

NOW = datetime(2025, 6, 1, 9, 30, tzinfo=UTC)
ACTIONS = ["read", "write", "admin", "delete"]
ISSUERS = ["jwt", "pg"]
RESOURCES = ["https://a/x", "https://a/y", "https://b/x"]
RESOURCE_PATTERNS = [*RESOURCES, "https://a/*", "https://?/x", "https://[ab]/y", "*"]

PRINCIPAL = Principal(
    id="github:repo:acme/app",
    issuer="github",
    subject="repo:acme/app",
    claims={"repository_id": "42", "ref": "refs/heads/main"},
)


@st.composite
def grants(draw: st.DrawFn, index: int) -> dict[str, Any]:
    max_minutes = draw(st.integers(1, 120))
    grant: dict[str, Any] = {
        "name": f"g{index}",
        "issuer": draw(st.sampled_from(ISSUERS)),
        "resource": draw(st.sampled_from(RESOURCE_PATTERNS)),
        "actions": draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=4, unique=True)),
        "max_ttl": f"{max_minutes}m",
        "approval": draw(st.sampled_from(["none", "required"])),
    }
    if draw(st.booleans()):
        grant["default_ttl"] = f"{draw(st.integers(1, max_minutes))}m"
    return grant


@st.composite
def documents(draw: st.DrawFn, owner: str) -> dict[str, Any]:
    workload: dict[str, Any] = {"issuer": "github"}
    pin = draw(st.sampled_from(["none", "match", "miss", "glob"]))
    if pin == "match":
        workload["claims"] = {"repository_id": "42"}
    elif pin == "miss":
        workload["claims"] = {"repository_id": "43"}
    elif pin == "glob":
        workload["claims"] = {"ref": {"glob": "refs/heads/*"}}
    count = draw(st.integers(1, 4))
    return {
        "owner": owner,
        "workloads": [workload],
        "grants": [draw(grants(i)) for i in range(count)],
    }


@st.composite
def policies(draw: st.DrawFn) -> PolicySet:
    document = draw(documents("team"))
    return load_policy_text(yaml.safe_dump(document), file="generated.yaml")


@dataclass(frozen=True)
class Pair:
    """r1 ⊆ r2."""

    r1: Intent
    r2: Intent


@st.composite
def request_pairs(draw: st.DrawFn) -> Pair:
    issuer = draw(st.sampled_from(ISSUERS))
    resource = draw(st.sampled_from(RESOURCES))
    actions2 = draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=4, unique=True))
    actions1 = draw(
        st.lists(st.sampled_from(actions2), min_size=1, max_size=len(actions2), unique=True)
    )
    ttl2 = draw(st.none() | st.integers(1, 180 * 60).map(lambda s: timedelta(seconds=s)))
    if ttl2 is None:
        ttl1 = None
    else:
        ttl1 = draw(
            st.none()
            | st.integers(1, int(ttl2.total_seconds())).map(lambda s: timedelta(seconds=s))
        )
    return Pair(
        r1=Intent(task=Task(id="t1"), scope=Scope.of(issuer, resource, actions1), ttl=ttl1),
        r2=Intent(task=Task(id="t2"), scope=Scope.of(issuer, resource, actions2), ttl=ttl2),
    )


@settings(max_examples=250, deadline=None)
@given(policy=policies(), pair=request_pairs())
def test_a_narrower_request_than_an_allowed_one_is_allowed(policy: PolicySet, pair: Pair) -> None:
    d2 = decide(policy, PRINCIPAL, pair.r2, NOW)
    d1 = decide(policy, PRINCIPAL, pair.r1, NOW)
    if isinstance(d2, Allow):
        assert isinstance(d1, Allow), (d1, d2)
    if not isinstance(d2, Deny):
        assert not isinstance(d1, Deny), (d1, d2)


@settings(max_examples=150, deadline=None)
@given(policy=policies(), pair=request_pairs())
def test_a_decision_carries_exactly_the_requested_scope(policy: PolicySet, pair: Pair) -> None:
    for request in (pair.r1, pair.r2):
        decision = decide(policy, PRINCIPAL, request, NOW)
        assert decision == decide(policy, PRINCIPAL, request, NOW)
        assert decision.policy_version == policy.version
        if isinstance(decision, Allow | NeedsApproval):
            assert decision.scope == request.scope
            grant = next(g for d in policy.documents for g in d.grants if g.id == decision.grant)
            assert set(request.scope.actions) <= grant.actions
            assert decision.ttl == (request.ttl if request.ttl is not None else grant.default_ttl)
            assert decision.ttl <= grant.max_ttl
        else:
            assert decision.reasons


@settings(max_examples=150, deadline=None)
@given(policy=policies(), pair=request_pairs())
def test_an_allow_means_some_grant_without_approval_covers_the_request(
    policy: PolicySet, pair: Pair
) -> None:
    """An independent, naive restatement of the coverage rule, checked against decide()."""
    from fnmatch import fnmatchcase

    request = pair.r2
    scope = request.scope

    def trusted(workload: Any) -> bool:
        return all(m.matches(str(PRINCIPAL.claims.get(m.claim, "\0"))) for m in workload.matchers)

    covering = [
        g
        for d in policy.documents
        if any(w.issuer == "github" and trusted(w) for w in d.workloads)
        for g in d.grants
        if g.issuer == scope.issuer
        and fnmatchcase(scope.resource, g.resource)
        and set(scope.actions) <= g.actions
        and (request.ttl is None or request.ttl <= g.max_ttl)
    ]
    decision = decide(policy, PRINCIPAL, request, NOW)
    free = [g for g in covering if not g.approval_required]
    if free:
        assert isinstance(decision, Allow)
        assert decision.grant == free[0].id
    elif covering:
        assert isinstance(decision, NeedsApproval)
        assert decision.grant == covering[0].id
    else:
        assert isinstance(decision, Deny)
