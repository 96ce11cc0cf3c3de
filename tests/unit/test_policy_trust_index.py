"""The policy's trust index (issue 14 goal 6) prunes the documents decide() and can() look at,
and never changes an answer: for generated policies and principals the candidates include every
document that trusts the principal, and decide()/can() answer exactly what trying every document
in order answers."""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.policy import PolicySet, can, decide, load_policy_dir
from broker.policy.decide import _trusting_entry
from broker.types import Intent, Principal, Scope, Task

# The module (the package exports a function of the same name).
decide_module = importlib.import_module("broker.policy.decide")
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
VALUES = ("a", "b", "app-1", "7")

# One workload entry each: every kind of matcher, literal and wildcard, and entries that can
# only be tried (no texts known).
ENTRIES = (
    "{issuer: gh, claims: {repo: a}}",
    "{issuer: gh, claims: {repo: {one_of: [a, b]}, env: b}}",
    "{issuer: gh, claims: {repo: {regex: '^app-1$'}}}",
    "{issuer: gh, claims: {repo: {glob: 'app-1'}, env: {one_of: [a, '7']}}}",
    "{issuer: gh, claims: {repo: {glob: 'app-*'}}}",
    "{issuer: gh, claims: {env: {regex: '^[ab]$'}}}",
    "{issuer: gh, claims: {}}",
    "{issuer: gl, claims: {id: 7}}",
    "{issuer: gl, claims: {id: {one_of: [7, a]}, repo: {regex: '^a.*$'}}}",
    "{issuer: gh, claims: {flag: true}}",
)


def write_policy(tmp: Path, picks: list[list[int]]) -> PolicySet:
    for i, entries in enumerate(picks):
        grant = "\n".join(
            [
                "grants:",
                f"  - {{name: g, issuer: jwt, resource: 'https://r{i % 3}', actions: [read],",
                f"      max_ttl: 1h, approval: {'none' if i % 2 else 'required'}}}",
            ]
        )
        workloads = "\n".join(f"  - {ENTRIES[e]}" for e in entries)
        text = f"owner: o{i:02d}\nworkloads:\n{workloads}\n{grant}\npermissions: [introspect]\n"
        (tmp / f"o{i:02d}.yaml").write_text(text)
    return load_policy_dir(tmp)


def every_document(policy: PolicySet, principal: Principal) -> Iterator[Any]:
    """The reference: every document, in order (what decide() did before the index)."""
    if principal.kind != "workload":
        return
    yield from policy.documents


claim_values = st.one_of(
    st.sampled_from(VALUES), st.integers(0, 9), st.booleans(), st.just(["a"]), st.none()
)
principals = st.builds(
    lambda issuer, claims: Principal(id=f"{issuer}:x", issuer=issuer, subject="x", claims=claims),
    st.sampled_from(("gh", "gl", "other")),
    st.dictionaries(st.sampled_from(("repo", "env", "id", "flag")), claim_values, max_size=4),
)
documents = st.lists(
    st.lists(st.integers(0, len(ENTRIES) - 1), min_size=1, max_size=3), min_size=1, max_size=8
)


@settings(max_examples=150, deadline=None)
@given(
    picks=documents, who=st.lists(principals, min_size=1, max_size=6), resource=st.integers(0, 3)
)
def test_the_index_never_changes_a_decision_or_a_permission(
    tmp_path_factory: pytest.TempPathFactory,
    picks: list[list[int]],
    who: list[Principal],
    resource: int,
) -> None:
    policy = write_policy(tmp_path_factory.mktemp("policy"), picks)
    request = Intent(task=Task("t"), scope=Scope.of("jwt", f"https://r{resource}", ["read"]))
    for principal in who:
        trusting = [
            i for i, d in enumerate(policy.documents) if _trusting_entry(d, principal) is not None
        ]
        candidates = policy.trust.candidates(principal.issuer, principal.claims)
        assert set(trusting) <= set(candidates), (principal, trusting, candidates)
        assert candidates == sorted(candidates)
        indexed = (decide(policy, principal, request, NOW), can(policy, principal, "introspect"))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(decide_module, "_candidates", every_document)
            reference = (
                decide(policy, principal, request, NOW),
                can(policy, principal, "introspect"),
            )
        assert indexed == reference


def test_pinned_documents_are_found_by_their_id_and_others_are_not_tried(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"team-{i:02d}.yaml").write_text(
            textwrap.dedent(
                f"""\
                owner: team-{i:02d}
                workloads:
                  - issuer: gh
                    claims: {{repository_id: "{1000 + i}", ref: {{glob: "refs/heads/*"}}}}
                  - issuer: gh
                    claims: {{repository: {{regex: "^acme/svc-{i:02d}$"}}}}
                grants:
                  - {{name: g, issuer: jwt, resource: "https://svc-{i:02d}", actions: [read],
                      max_ttl: 1h, approval: none}}
                """
            )
        )
    (tmp_path / "zz-wild.yaml").write_text(
        "owner: zz\nworkloads:\n  - {issuer: gh, claims: {repository: {glob: 'acme/*'}}}\n"
        "grants:\n  - {name: g, issuer: jwt, resource: 'https://wild', actions: [read],"
        " max_ttl: 1h, approval: none}\n"
    )
    policy = load_policy_dir(tmp_path)
    me = Principal(
        id="gh:svc-07",
        issuer="gh",
        subject="svc-07",
        claims={"repository_id": "1007", "repository": "acme/svc-07", "ref": "refs/heads/main"},
    )
    # Its own document (by id and by the literal regex) and the wildcard one: nothing else.
    assert policy.trust.candidates("gh", me.claims) == [7, 50]
    got = decide(policy, me, Intent(Task("t"), Scope.of("jwt", "https://svc-07", ["read"])), NOW)
    assert getattr(got, "grant", None) == "team-07/g"
    stranger = Principal(id="gh:x", issuer="gh", subject="x", claims={"repository_id": "1"})
    assert policy.trust.candidates("gh", stranger.claims) == [50]
    denied = decide(
        policy,
        stranger,
        Intent(Task("t"), Scope.of("jwt", "https://svc-07", ["read"]), ttl=timedelta(minutes=5)),
        NOW,
    )
    # The deny still gives one reason per document, as docs/policy.md says.
    assert len(getattr(denied, "reasons", ())) == 51
