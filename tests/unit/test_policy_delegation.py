"""The ``delegation:`` and ``delivery:`` grant settings: compiled and linted like the rest
(unknown keys fail closed), decided purely (who may act, how deep), shown by explain."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.errors import PolicyError
from broker.policy import Allow, Deny, PolicySet, decide, explain, load_policy_text
from broker.types import Intent, Principal, Scope, Task

NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)

DOC = """\
owner: platform
workloads:
  - issuer: dev
    claims: {role: person}
grants:
  - name: orders
    issuer: jwt
    resource: https://orders.example
    actions: [read]
    max_ttl: 1h
    approval: none
    delivery: {reveal_to_model: true}
    delegation:
      actors:
        - issuer: dev
          claims: {role: agent}
        - issuer: k8s
          claims: {namespace: agents}
      max_depth: 2
"""


def compiled(text: str = DOC, **kwargs: Any) -> PolicySet:
    return load_policy_text(textwrap.dedent(text), file="p.yaml", **kwargs)


def who(sub: str, issuer: str = "dev", **claims: str) -> Principal:
    return Principal(id=f"{issuer}:{sub}", issuer=issuer, subject=sub, claims=claims)


ALICE = who("alice", role="person")


def ask(*actors: Principal) -> Intent:
    return Intent(
        task=Task(id="t"),
        scope=Scope.of("jwt", "https://orders.example", ["read"]),
        actors=actors,
    )


def test_the_grant_compiles_with_its_actors_depth_and_delivery() -> None:
    grant = compiled().grant("platform/orders")
    assert grant is not None
    assert grant.delegation is not None
    assert grant.delegation.max_depth == 2
    assert [a.issuer for a in grant.delegation.actors] == ["dev", "k8s"]
    assert grant.reveal_to_model is True


def test_a_grant_without_the_sections_allows_no_delegation_and_no_reveal() -> None:
    grant = compiled(DOC.split("    delivery:")[0]).grant("platform/orders")
    assert grant is not None
    assert grant.delegation is None
    assert grant.reveal_to_model is False


@pytest.mark.parametrize(
    ("replace", "by", "needle"),
    [
        pytest.param(
            "max_depth: 2", "max_depth: 2\n      hops: 3", "unknown key", id="an unknown key"
        ),
        pytest.param("max_depth: 2", "max_depth: 0", "max_depth", id="a depth of zero"),
        pytest.param("max_depth: 2", "max_depth: 9", "max_depth", id="a depth above 8"),
        pytest.param(
            "{reveal_to_model: true}", "{reveal: true}", "unknown key", id="an unknown delivery key"
        ),
        pytest.param(
            "{role: agent}",
            "{role: {regex: 'agent'}}",
            "must be anchored",
            id="an unanchored actor regex",
        ),
        pytest.param(
            "approval: none",
            "approval: required",
            "cannot be delegated",
            id="delegation with approval",
        ),
        pytest.param("      actors:\n", "      actors: []\n      x:\n", "p.yaml:", id="no actors"),
    ],
)
def test_a_bad_delegation_section_fails_closed(replace: str, by: str, needle: str) -> None:
    with pytest.raises(PolicyError) as raised:
        compiled(DOC.replace(replace, by, 1))
    assert needle in str(raised.value)


def test_an_actor_of_an_unknown_identity_issuer_is_a_lint_error() -> None:
    with pytest.raises(PolicyError, match="unknown identity issuer 'k8s'"):
        compiled(known_claims={"dev": None})


@pytest.mark.parametrize(
    ("actors", "allowed", "needle"),
    [
        pytest.param((), True, "", id="no actor: the workload asks for itself"),
        pytest.param((who("a", role="agent"),), True, "", id="one allowed actor"),
        pytest.param(
            (who("b", "k8s", namespace="agents"), who("a", role="agent")),
            True,
            "",
            id="two allowed actors",
        ),
        pytest.param(
            (who("c", role="agent"), who("b", role="agent"), who("a", role="agent")),
            False,
            "delegation too deep: 3 actors in the chain, max_depth 2",
            id="three actors are one too many",
        ),
        pytest.param(
            (who("r", role="robot"),),
            False,
            "actor 'dev:r' may not act",
            id="an actor no entry matches",
        ),
        pytest.param(
            (who("a", role="agent"), who("x", "github", role="agent")),
            False,
            "actor 'github:x' may not act",
            id="every actor of the chain must match, not only the newest",
        ),
    ],
)
def test_decide_checks_every_actor_and_the_depth(
    actors: tuple[Principal, ...], allowed: bool, needle: str
) -> None:
    decision = decide(compiled(), ALICE, ask(*actors), NOW)
    assert isinstance(decision, Allow) is allowed
    if not allowed:
        assert isinstance(decision, Deny)
        assert any(needle in r for r in decision.reasons), decision.reasons


def test_explain_shows_the_delegation_setting_and_the_chain() -> None:
    plain = "\n".join(explain(compiled(), ALICE, ask(), NOW))
    assert "may be delegated, up to 2 hops" in plain
    chained = "\n".join(explain(compiled(), ALICE, ask(who("a", role="agent")), NOW))
    assert "delegated to dev:a (1 of at most 2 hops)" in chained
    refused = "\n".join(explain(compiled(), ALICE, ask(who("r", role="robot")), NOW))
    assert "actor 'dev:r' may not act for this grant" in refused
    assert "claim 'role' = 'robot' does not match 'agent'" in refused
