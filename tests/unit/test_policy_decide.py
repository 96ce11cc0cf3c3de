"""decide(), can() and explain(): matchers, every deny reason, approval, CEL, least privilege."""

from __future__ import annotations

import ast
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.policy import (
    Allow,
    Deny,
    NeedsApproval,
    PolicySet,
    can,
    decide,
    explain,
    load_policy_dir,
    load_policy_text,
)
from broker.types import Intent, Principal, Scope, Task

NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def policy(text: str, **kwargs: Any) -> PolicySet:
    return load_policy_text(textwrap.dedent(text), file="test.yaml", **kwargs)


def gh(**claims: Any) -> Principal:
    base: dict[str, Any] = {
        "repository_id": "123456",
        "ref": "refs/heads/main",
        "sub": "repo:acme/orders:ref:refs/heads/main",
        "environment": "prod",
    }
    base.update(claims)
    return Principal(id=f"github:{base['sub']}", issuer="github", subject=base["sub"], claims=base)


def intent(
    actions: tuple[str, ...] = ("read",),
    resource: str = "https://orders.internal/v1",
    issuer: str = "jwt",
    ttl: timedelta | None = None,
    purpose: str = "",
) -> Intent:
    return Intent(
        task=Task(id="task-1", purpose=purpose),
        scope=Scope.of(issuer, resource, actions),
        ttl=ttl,
    )


ORDERS = policy(
    """
    owner: team-payments
    workloads:
      - issuer: github
        claims:
          repository_id: "123456"
          ref: {glob: "refs/heads/*"}
          sub: {regex: "^repo:acme/.*$"}
          environment: {one_of: [prod, staging]}
    grants:
      - name: orders-rw
        issuer: jwt
        resource: "https://orders.internal/*"
        actions: [read, write]
        max_ttl: 1h
        default_ttl: 10m
        approval: none
      - name: orders-admin
        issuer: jwt
        resource: "https://orders.internal/*"
        actions: [read, write, admin]
        max_ttl: 30m
        approval: required
    """
)


DEV = load_policy_dir(ROOT / "broker" / "dev", known_claims={"dev": None}, issuers={"jwt"})


# -- workload matchers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "allowed"),
    [
        pytest.param({}, True, id="a principal whose claims all match is trusted"),
        pytest.param(
            {"repository_id": "654321"}, False, id="an exact claim with another value fails"
        ),
        pytest.param(
            {"repository_id": 123456},
            True,
            id="an integer claim matches the same digits written as a string",
        ),
        pytest.param(
            {"ref": "refs/heads/feature/x"},
            True,
            id="a glob star matches slashes inside the value",
        ),
        pytest.param({"ref": "refs/tags/v1"}, False, id="a glob must match the whole value"),
        pytest.param(
            {"ref": "xrefs/heads/main"}, False, id="a glob does not match inside a longer value"
        ),
        pytest.param(
            {"sub": "repo:evil/orders:ref:refs/heads/main"},
            False,
            id="a regex that does not match fails",
        ),
        pytest.param(
            {"sub": "xrepo:acme/orders"}, False, id="an anchored regex does not match mid-value"
        ),
        pytest.param({"environment": "staging"}, True, id="one_of accepts any listed value"),
        pytest.param({"environment": "dev"}, False, id="one_of rejects an unlisted value"),
        pytest.param(
            {"environment": ["prod"]}, False, id="a list claim never matches a scalar matcher"
        ),
    ],
)
def test_workload_matchers(claims: dict[str, Any], allowed: bool) -> None:
    decision = decide(ORDERS, gh(**claims), intent(), NOW)
    assert isinstance(decision, Allow) is allowed


def test_a_missing_claim_is_not_trusted_and_says_which() -> None:
    p = gh()
    del p.claims["environment"]
    decision = decide(ORDERS, p, intent(), NOW)
    assert isinstance(decision, Deny)
    assert decision.reasons == (
        "team-payments: workload not trusted: claim 'environment' is missing",
    )


@pytest.mark.parametrize(
    ("exact", "claim", "allowed"),
    [
        pytest.param("42", 42, True, id="a quoted policy value matches an integer claim"),
        pytest.param("42", "42", True, id="a quoted policy value matches a string claim"),
        pytest.param("42", "042", False, id="integers are compared as decimal text"),
        pytest.param("true", True, True, id="a boolean claim is compared as true"),
        pytest.param("True", True, False, id="booleans are compared in lower case only"),
        pytest.param("1", True, False, id="a boolean claim is not the integer 1"),
        pytest.param("4.2", 4.2, False, id="a float claim never matches"),
    ],
)
def test_exact_claims_compare_as_text(exact: str, claim: Any, allowed: bool) -> None:
    pol = policy(
        f"""
        owner: o
        workloads: [{{issuer: k8s, claims: {{x: "{exact}"}}}}]
        grants: [{{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,
                   approval: none}}]
        """
    )
    p = Principal(id="k8s:a", issuer="k8s", subject="a", claims={"x": claim})
    assert isinstance(decide(pol, p, intent(resource="r"), NOW), Allow) is allowed


def test_an_unquoted_yaml_integer_in_the_policy_matches_the_string_claim() -> None:
    pol = policy(
        """
        owner: o
        workloads: [{issuer: github, claims: {repository_id: 123456}}]
        grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,
                  approval: none}]
        """
    )
    assert isinstance(decide(pol, gh(), intent(resource="r"), NOW), Allow)


def test_a_principal_from_another_identity_issuer_is_not_trusted() -> None:
    p = Principal(id="gitlab:x", issuer="gitlab", subject="x", claims=gh().claims)
    decision = decide(ORDERS, p, intent(), NOW)
    assert decision == Deny(
        reasons=("team-payments: workload not trusted: no entry for identity issuer 'gitlab'",),
        policy_version=ORDERS.version,
    )


def test_a_client_principal_is_never_a_trusted_workload() -> None:
    p = Principal(id="c", issuer="github", subject="c", claims=gh().claims, kind="client")
    assert isinstance(decide(ORDERS, p, intent(), NOW), Deny)
    assert not can(DEV, p, "introspect")


def test_any_workload_entry_may_match_and_misses_are_listed_per_entry() -> None:
    pol = policy(
        """
        owner: o
        workloads:
          - {issuer: github, claims: {repository_id: "1"}}
          - {issuer: github, claims: {repository_id: "123456", ref: refs/heads/prod}}
          - {issuer: github, claims: {repository_id: "123456"}}
        grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,
                  approval: none}]
        """
    )
    assert isinstance(decide(pol, gh(), intent(resource="r"), NOW), Allow)
    decision = decide(pol, gh(repository_id="9"), intent(resource="r"), NOW)
    assert isinstance(decision, Deny)
    assert decision.reasons == (
        "o: workload not trusted: entry 1: claim 'repository_id' did not match; "
        "entry 2: claim 'repository_id' did not match; "
        "entry 3: claim 'repository_id' did not match",
    )


# -- grant coverage and deny reasons -----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "reasons"),
    [
        pytest.param(
            intent(issuer="pg"),
            (
                "team-payments/orders-rw: grant is for issuer 'jwt', not 'pg'",
                "team-payments/orders-admin: grant is for issuer 'jwt', not 'pg'",
            ),
            id="another issuer instance is denied, naming the grant's issuer",
        ),
        pytest.param(
            intent(resource="https://billing.internal/x"),
            (
                "team-payments/orders-rw: resource 'https://billing.internal/x' not matched",
                "team-payments/orders-admin: resource 'https://billing.internal/x' not matched",
            ),
            id="a resource outside the glob is denied",
        ),
        pytest.param(
            intent(actions=("read", "delete")),
            (
                "team-payments/orders-rw: actions not allowed: delete",
                "team-payments/orders-admin: actions not allowed: delete",
            ),
            id="an action no grant lists is denied, naming only that action",
        ),
        pytest.param(
            intent(ttl=timedelta(hours=2)),
            (
                "team-payments/orders-rw: ttl too long: asked 7200s, max 3600s",
                "team-payments/orders-admin: ttl too long: asked 7200s, max 1800s",
            ),
            id="a ttl over max_ttl is denied with asked and max",
        ),
        pytest.param(
            intent(actions=("delete",), ttl=timedelta(hours=2)),
            (
                "team-payments/orders-rw: actions not allowed: delete; "
                "ttl too long: asked 7200s, max 3600s",
                "team-payments/orders-admin: actions not allowed: delete; "
                "ttl too long: asked 7200s, max 1800s",
            ),
            id="every failed check of a grant is listed",
        ),
        pytest.param(
            intent(actions=()),
            ("the request names no actions",),
            id="a request without actions is denied",
        ),
        pytest.param(
            intent(ttl=timedelta(0)),
            ("the requested ttl must be longer than zero",),
            id="a zero ttl is denied",
        ),
    ],
)
def test_deny_reasons(request_: Intent, reasons: tuple[str, ...]) -> None:
    assert decide(ORDERS, gh(), request_, NOW) == Deny(
        reasons=reasons, policy_version=ORDERS.version
    )


@pytest.mark.parametrize(
    ("resource", "grant_resource", "allowed"),
    [
        pytest.param("https://a/x", "https://a/x", True, id="an exact resource matches itself"),
        pytest.param("https://a/x/", "https://a/x", False, id="an exact resource is exact"),
        pytest.param("https://A/x", "https://a/x", False, id="resources are case-sensitive"),
        pytest.param("https://a/x?y=1", "https://a/*", True, id="a star covers a query string"),
        pytest.param("https://a/1", "https://a/[0-9]", True, id="a character class matches"),
        pytest.param(
            "https://a/*", "https://a/*", True, id="a wildcard request equal to the grant matches"
        ),
        pytest.param(
            "https://a/*",
            "https://a/?",
            False,
            id="a wildcard request is not inside a narrower pattern",
        ),
        pytest.param(
            "https://a/x*", "https://a/*", False, id="a wildcard request needs an identical grant"
        ),
    ],
)
def test_resource_matching(resource: str, grant_resource: str, allowed: bool) -> None:
    pol = policy(
        f"""
        owner: o
        workloads: [{{issuer: github}}]
        grants: [{{name: g, issuer: jwt, resource: "{grant_resource}", actions: [read],
                   max_ttl: 1h, approval: none}}]
        """
    )
    assert isinstance(decide(pol, gh(), intent(resource=resource), NOW), Allow) is allowed


# -- allow, least privilege, ttl, approval ------------------------------------------------------


def test_an_allow_carries_exactly_the_requested_scope_not_the_grants_actions() -> None:
    asked = intent(actions=("read",))
    decision = decide(ORDERS, gh(), asked, NOW)
    assert isinstance(decision, Allow)
    assert decision.scope == asked.scope
    assert decision.scope.actions == ("read",)
    assert decision.grant == "team-payments/orders-rw"
    assert decision.policy_version == ORDERS.version
    assert decision.reasons == (
        "team-payments/orders-rw: covers read on https://orders.internal/v1 for 600s "
        "(no approval needed)",
    )


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        pytest.param(None, timedelta(minutes=10), id="no ttl gets the grant's default_ttl"),
        pytest.param(timedelta(minutes=5), timedelta(minutes=5), id="a shorter ttl is kept"),
        pytest.param(timedelta(hours=1), timedelta(hours=1), id="exactly max_ttl is allowed"),
    ],
)
def test_the_allowed_ttl(ttl: timedelta | None, expected: timedelta) -> None:
    decision = decide(ORDERS, gh(), intent(ttl=ttl), NOW)
    assert isinstance(decision, Allow)
    assert decision.ttl == expected


@pytest.mark.parametrize(
    ("max_ttl", "expected"),
    [
        pytest.param("1h", timedelta(minutes=15), id="default_ttl defaults to 15m under max"),
        pytest.param("5m", timedelta(minutes=5), id="default_ttl defaults to a shorter max"),
        pytest.param(600, timedelta(minutes=10), id="a max_ttl in plain seconds is read"),
    ],
)
def test_the_default_default_ttl(max_ttl: object, expected: timedelta) -> None:
    pol = policy(
        f"""
        owner: o
        workloads: [{{issuer: github}}]
        grants: [{{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: {max_ttl},
                   approval: none}}]
        """
    )
    decision = decide(pol, gh(), intent(resource="r"), NOW)
    assert isinstance(decision, Allow)
    assert decision.ttl == expected


def test_a_request_only_an_approval_grant_covers_needs_approval_naming_it() -> None:
    decision = decide(
        ORDERS, gh(), intent(actions=("admin", "read"), ttl=timedelta(minutes=20)), NOW
    )
    assert decision == NeedsApproval(
        grant="team-payments/orders-admin",
        scope=Scope.of("jwt", "https://orders.internal/v1", ["admin", "read"]),
        ttl=timedelta(minutes=20),
        reasons=("team-payments/orders-admin: covers the request; approval required",),
        policy_version=ORDERS.version,
    )


def test_a_grant_without_approval_wins_over_an_earlier_one_that_needs_it(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "owner: a\nworkloads: [{issuer: github}]\n"
        "grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,"
        " approval: required}]\n"
    )
    (tmp_path / "b.yaml").write_text(
        "owner: b\nworkloads: [{issuer: github}]\n"
        "grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,"
        " approval: none}]\n"
    )
    decision = decide(load_policy_dir(tmp_path), gh(), intent(resource="r"), NOW)
    assert isinstance(decision, Allow)
    assert decision.grant == "b/g"


def test_a_document_that_does_not_trust_the_caller_does_not_hide_a_later_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(
        "owner: a\nworkloads: [{issuer: gitlab}]\n"
        "grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,"
        " approval: none}]\n"
    )
    (tmp_path / "b.yaml").write_text(
        "owner: b\nworkloads: [{issuer: github}]\n"
        "grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,"
        " approval: none}]\n"
    )
    policies = load_policy_dir(tmp_path, known_claims={"github": None, "gitlab": None})
    decision = decide(policies, gh(), intent(resource="r"), NOW)
    assert isinstance(decision, Allow)
    assert decision.grant == "b/g"
    denied = decide(policies, gh(), intent(resource="other"), NOW)
    assert isinstance(denied, Deny)
    assert any(r.startswith("b/g:") for r in denied.reasons), denied.reasons


def test_among_several_allowing_grants_the_first_in_sorted_file_order_wins(tmp_path: Path) -> None:
    for name in ("z.yaml", "m.yml", "a.yaml"):
        owner = name.split(".")[0]
        (tmp_path / name).write_text(
            f"owner: {owner}\nworkloads: [{{issuer: github}}]\n"
            "grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,"
            " approval: none}]\n"
        )
    decision = decide(load_policy_dir(tmp_path), gh(), intent(resource="r"), NOW)
    assert isinstance(decision, Allow)
    assert decision.grant == "a/g"


def test_actions_from_two_grants_are_not_combined() -> None:
    pol = policy(
        """
        owner: o
        workloads: [{issuer: github}]
        grants:
          - {name: r, issuer: jwt, resource: x, actions: [read], max_ttl: 1h, approval: none}
          - {name: w, issuer: jwt, resource: x, actions: [write], max_ttl: 1h, approval: none}
        """
    )
    assert isinstance(decide(pol, gh(), intent(actions=("read", "write"), resource="x"), NOW), Deny)


def test_a_document_with_only_permissions_denies_credentials_with_a_reason() -> None:
    pol = policy("owner: rs\nworkloads: [{issuer: github}]\npermissions: [introspect]\n")
    assert decide(pol, gh(), intent(), NOW) == Deny(
        reasons=("rs: trusts this workload but has no grants",), policy_version=pol.version
    )
    assert can(pol, gh(), "introspect")


def test_the_task_purpose_never_changes_a_decision() -> None:
    for purpose in ("", "URGENT: production down, allow admin", "ignore all rules"):
        decision = decide(ORDERS, gh(), intent(actions=("delete",), purpose=purpose), NOW)
        assert isinstance(decision, Deny)


# -- CEL conditions ----------------------------------------------------------------------------


def cel_policy(when: str) -> PolicySet:
    return policy(
        f"""
        owner: o
        workloads: [{{issuer: github}}]
        grants:
          - name: g
            issuer: jwt
            resource: "https://orders.internal/*"
            actions: [read, write]
            max_ttl: 1h
            default_ttl: 15m
            approval: none
            when: {when!r}
        """
    )


@pytest.mark.parametrize(
    ("when", "request_", "outcome"),
    [
        pytest.param(
            'claims.ref == "refs/heads/main" && request.ttl_seconds <= 600',
            intent(ttl=timedelta(minutes=10)),
            None,
            id="a true condition over claims and request allows",
        ),
        pytest.param(
            'claims.ref == "refs/heads/main" && request.ttl_seconds <= 600',
            intent(ttl=timedelta(minutes=11)),
            "o/g: condition is false",
            id="a false condition denies",
        ),
        pytest.param(
            "request.ttl_seconds <= 600",
            intent(ttl=None),
            "o/g: condition is false",
            id="ttl_seconds is the grant default when the request names no ttl",
        ),
        pytest.param(
            "request.ttl_seconds <= 600",
            intent(ttl=timedelta(seconds=600.5)),
            "o/g: condition is false",
            id="ttl_seconds rounds a fractional ttl up",
        ),
        pytest.param(
            'request.actions == ["read"] && request.issuer == "jwt" && '
            'request.resource.startsWith("https://orders.internal/") && '
            'request.task_id == "task-1"',
            intent(),
            None,
            id="the request variable holds issuer resource actions and task id",
        ),
        pytest.param(
            'principal.id == "github:repo:acme/orders:ref:refs/heads/main" && '
            'principal.issuer == "github" && principal.subject.startsWith("repo:")',
            intent(),
            None,
            id="the principal variable holds id issuer and subject",
        ),
        pytest.param(
            f"now == {int(NOW.timestamp())} && (now / 3600) % 24 == 12",
            intent(),
            None,
            id="now is the given time in unix seconds",
        ),
        pytest.param(
            'claims.groups.exists(g, g == "admins")',
            intent(),
            "o/g: condition failed: KeyError: 'groups'",
            id="a missing claim in a condition is an error that denies",
        ),
        pytest.param(
            "claims.ref",
            intent(),
            "o/g: condition gave str, not a bool",
            id="a condition that is not a bool denies",
        ),
        pytest.param(
            "1 / (request.ttl_seconds - request.ttl_seconds) == 1",
            intent(),
            "o/g: condition failed: ZeroDivisionError: division by zero in CEL expression",
            id="an evaluation error denies",
        ),
    ],
)
def test_cel_conditions(when: str, request_: Intent, outcome: str | None) -> None:
    pol = cel_policy(when)
    decision = decide(pol, gh(), request_, NOW)
    if outcome is None:
        assert isinstance(decision, Allow), decision
    else:
        assert decision == Deny(reasons=(outcome,), policy_version=pol.version)


def test_a_list_claim_can_be_tested_in_a_condition() -> None:
    pol = cel_policy('"admins" in claims.groups')
    assert isinstance(decide(pol, gh(groups=["admins", "dev"]), intent(), NOW), Allow)
    assert isinstance(decide(pol, gh(groups=["dev"]), intent(), NOW), Deny)


def test_a_condition_is_only_evaluated_when_everything_else_matches() -> None:
    pol = cel_policy("claims.nope == 1")
    decision = decide(pol, gh(), intent(actions=("admin",)), NOW)
    assert decision == Deny(
        reasons=("o/g: actions not allowed: admin",), policy_version=pol.version
    )


def test_decide_uses_the_given_now_and_never_the_clock() -> None:
    pol = cel_policy(f"now < {int(NOW.timestamp())}")
    assert isinstance(decide(pol, gh(), intent(), NOW - timedelta(seconds=1)), Allow)
    assert isinstance(decide(pol, gh(), intent(), NOW), Deny)
    assert isinstance(decide(pol, gh(), intent(), datetime(2001, 1, 1, tzinfo=UTC)), Allow)


def test_decide_refuses_a_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(ORDERS, gh(), intent(), datetime(2025, 1, 1))


def test_the_policy_package_never_reads_the_clock() -> None:
    forbidden = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}
    for path in sorted((ROOT / "broker" / "policy").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                module = getattr(node, "module", None) or ""
                assert "time" not in names, path
                assert module != "time", path
                assert "broker.clock" not in names, path
                assert module != "broker.clock", path
            if isinstance(node, ast.Attribute) and node.attr in forbidden:
                assert not (isinstance(node.value, ast.Name) and node.value.id == "datetime"), (
                    f"{path.name} calls datetime.{node.attr}"
                )


# -- can() ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pol", "principal", "permission", "expected"),
    [
        pytest.param(
            DEV,
            Principal(id="dev:alice", issuer="dev", subject="alice"),
            "introspect",
            True,
            id="a trusted workload of a document listing introspect may introspect",
        ),
        pytest.param(
            DEV,
            Principal(id="dev:alice", issuer="dev", subject="alice"),
            "revoke",
            False,
            id="a permission the document does not list is refused",
        ),
        pytest.param(
            DEV,
            Principal(id="github:x", issuer="github", subject="x"),
            "introspect",
            False,
            id="an untrusted workload may not introspect",
        ),
        pytest.param(
            ORDERS, gh(), "introspect", False, id="a document without permissions grants none"
        ),
    ],
)
def test_can(pol: PolicySet, principal: Principal, permission: str, expected: bool) -> None:
    assert can(pol, principal, permission) is expected


# -- the sample policy -------------------------------------------------------------------------

ALICE = Principal(id="dev:alice", issuer="dev", subject="alice", claims={"sub": "alice"})


@pytest.mark.parametrize(
    ("actions", "resource", "kind", "grant"),
    [
        pytest.param(("read",), "https://demo.local", Allow, "dev/demo-rw", id="read is allowed"),
        pytest.param(
            ("read", "write"),
            "https://demo.local",
            Allow,
            "dev/demo-rw",
            id="read and write are allowed",
        ),
        pytest.param(
            ("admin",),
            "https://demo.local",
            NeedsApproval,
            "dev/demo-admin",
            id="admin needs approval",
        ),
        pytest.param(("read",), "https://other.local", Deny, None, id="another resource is denied"),
        pytest.param(
            ("read", "admin"), "https://demo.local", Deny, None, id="read with admin is denied"
        ),
    ],
)
def test_the_sample_dev_policy(
    actions: tuple[str, ...], resource: str, kind: type, grant: str | None
) -> None:
    decision = decide(DEV, ALICE, intent(actions=actions, resource=resource), NOW)
    assert type(decision) is kind
    if grant is not None:
        assert not isinstance(decision, Deny)
        assert decision.grant == grant
        assert decision.ttl == timedelta(minutes=15)


def test_the_sample_policy_caps_ttl_at_one_hour() -> None:
    decision = decide(
        DEV, ALICE, intent(resource="https://demo.local", ttl=timedelta(hours=2)), NOW
    )
    assert isinstance(decision, Deny)
    assert "dev/demo-rw: ttl too long: asked 7200s, max 3600s" in decision.reasons


# -- explain() -------------------------------------------------------------------------------------


def test_explain_covers_every_document_and_grant_with_the_policys_patterns(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        textwrap.dedent(
            """\
            owner: other
            workloads:
              - issuer: github
                claims: {repository_id: "999"}
            grants:
              - {name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h, approval: none}
            """
        )
    )
    (tmp_path / "b.yaml").write_text(
        textwrap.dedent(
            """\
            owner: mine
            workloads:
              - issuer: github
            grants:
              - {name: ro, issuer: jwt, resource: "https://o/*", actions: [read], max_ttl: 1h,
                 approval: none}
              - {name: rw, issuer: jwt, resource: "https://o/*", actions: [read, write],
                 max_ttl: 1h, approval: required}
            """
        )
    )
    pol = load_policy_dir(tmp_path)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    lines = explain(pol, gh(), intent(actions=("write",), resource="https://o/1"), NOW)
    assert lines == [
        f"other ({a}): workload not trusted: claim 'repository_id' = '123456' does not match '999'",
        f"grant other/g ({a}:6): not considered, the document does not trust this workload",
        f"mine ({b}): trusts this workload (entry at line 3)",
        f"grant mine/ro ({b}:5): does not apply: actions not allowed: write (grant allows read)",
        f"grant mine/rw ({b}:7): covers write on https://o/1 for 900s (approval required)",
    ]


def test_explain_shows_the_condition_that_failed() -> None:
    pol = cel_policy("request.ttl_seconds <= 60")
    assert explain(pol, gh(), intent(), NOW) == [
        "o (test.yaml): trusts this workload (entry at line 3)",
        "grant o/g (test.yaml:5): does not apply: condition 'request.ttl_seconds <= 60' is false",
    ]


def test_explain_of_a_request_without_actions_says_so() -> None:
    assert explain(ORDERS, gh(), intent(actions=()), NOW) == ["the request names no actions"]
