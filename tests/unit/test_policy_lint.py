"""Loading and lint: every problem is a PolicyError with the exact file and 1-based line.

In the table, the line marked ``# <-`` is where the error must point.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from broker.errors import PolicyError
from broker.policy import lint_policy_dir, load_policy_dir, load_policy_text

KNOWN_CLAIMS: dict[str, set[str] | None] = {
    "github": {"sub", "ref", "repository_id", "environment", "actor"},
    "generic": None,
}
ISSUERS = {"jwt", "pg-orders"}

GOOD = """\
owner: team-payments
workloads:
  - issuer: github
    claims:
      repository_id: "123456"
grants:
  - name: orders-read
    issuer: jwt
    resource: "https://orders.internal/*"
    actions: [read]
    max_ttl: 1h
    approval: none
"""


def marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if "# <-" in line]
    assert len(lines) == 1, "mark exactly one line with # <-"
    return lines[0]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


CASES = [
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 1h
            approval: none
            approvers: [alice]   # <-
        """,
        "grants[0].approvers: unknown key (allowed: actions, approval, default_ttl, delegation, "
        "delivery, governance, issuer, max_ttl, name, resource, when)",
        id="an unknown key in a grant points at that key",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grant: []   # <-
        """,
        "grant: unknown key (allowed: description, grants, owner, permissions, workloads)",
        id="a misspelt top-level key is an error, not ignored",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              ref: {glob: "refs/*", exact: x}   # <-
        permissions: [introspect]
        """,
        "workloads[0].claims.ref.exact: unknown key (allowed: glob, one_of, regex)",
        id="an unknown matcher kind points at the claim",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 1 hour   # <-
            approval: none
        """,
        "max_ttl: not a duration: '1 hour' (use e.g. 200ms, 90s, 15m, 1h, 1h30m, 7d)",
        id="a bad duration points at max_ttl",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 10m
            default_ttl: 1h   # <-
            approval: none
        """,
        "default_ttl 1h is longer than max_ttl 10m",
        id="a default_ttl over max_ttl points at default_ttl",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 0s   # <-
            approval: none
        """,
        "max_ttl must be longer than zero",
        id="a zero max_ttl is an error",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              sub:
                regex: "repo:acme/.*"   # <-
        permissions: [introspect]
        """,
        "regex 'repo:acme/.*' must be anchored: ^...$",
        id="an unanchored regex points at the regex",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              sub: {regex: '^repo:acme/.*\\$'}   # <-
        permissions: [introspect]
        """,
        "regex '^repo:acme/.*\\\\$' must be anchored: ^...$",
        id="an escaped dollar does not anchor a regex",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              sub: {regex: "^repo:(acme$"}   # <-
        permissions: [introspect]
        """,
        "invalid regex '^repo:(acme$': missing ), unterminated subpattern at position 6",
        id="a regex that does not compile is an error",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 1h
            approval: none
            when: 'claims.ref == '   # <-
        """,
        "when: invalid CEL: Syntax error: mismatched input '<EOF>' expecting ...",
        id="a CEL syntax error points at when",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 1h
            approval: none
            when: >-   # <-
              token.ref == "main"
        """,
        "when: unknown variable(s) token (use claims, now, principal, request)",
        id="a CEL condition using an unknown variable points at when",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              repo_id: "1"   # <-
        permissions: [introspect]
        """,
        "identity issuer 'github' has no claim 'repo_id' (did you mean 'repository_id'?)",
        id="a claim the identity issuer does not produce points at the claim",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: gitlab   # <-
        permissions: [introspect]
        """,
        "unknown identity issuer 'gitlab' (configured: generic, github)",
        id="an unknown identity issuer points at the workload issuer",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: postgres   # <-
            resource: r
            actions: [read]
            max_ttl: 1h
            approval: none
        """,
        "unknown issuer 'postgres' (configured: jwt, pg-orders)",
        id="an unknown issuer instance points at the grant issuer",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - {name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h, approval: none}
          - name: g   # <-
            issuer: jwt
            resource: r
            actions: [write]
            max_ttl: 1h
            approval: none
        """,
        "duplicate grant name 'g' (first at line 4)",
        id="a duplicate grant name points at the second name",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions:
              - read
              - "read write"   # <-
            max_ttl: 1h
            approval: none
        """,
        "grants[0].actions[1]: Expected `str` matching regex '^[A-Za-z0-9_.:-]+$'",
        id="an invalid action points at that list item",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: []   # <-
            max_ttl: 1h
            approval: none
        """,
        "grants[0].actions: Expected `array` of length >= 1",
        id="an empty action list is an error",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g   # <-
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 1h
        """,
        "grants[0]: missing required key 'approval'",
        id="a grant must say whether it needs approval",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        grants:
          - name: g
            issuer: jwt
            resource: r
            actions: [read]
            max_ttl: 1h
            approval: no   # <-
        """,
        "grants[0].approval: Invalid enum value 'no'",
        id="approval no is a string not a boolean and is not a valid value",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              environment: {one_of: []}   # <-
        permissions: [introspect]
        """,
        "one_of needs at least one value",
        id="an empty one_of is an error",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              environment: {glob: "p*", regex: "^p.*$"}   # <-
        permissions: [introspect]
        """,
        "workloads[0].claims.environment: give exactly one of glob, regex, one_of",
        id="a matcher with two kinds is an error",
    ),
    pytest.param(
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              environment: 1.5   # <-
        permissions: [introspect]
        """,
        "workloads[0].claims.environment: expected a string, an integer, a boolean or one of "
        "{glob: ...}, {regex: ...}, {one_of: [...]}",
        id="a float claim value is an error",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        permissions: [introspekt]   # <-
        """,
        "permissions[0]: Invalid enum value 'introspekt'",
        id="an unknown permission is an error",
    ),
    pytest.param(
        """\
        owner: o   # <-
        workloads: [{issuer: github}]
        """,
        "the document grants nothing: add grants or permissions",
        id="a document that grants nothing is an error",
    ),
    pytest.param(
        """\
        owner: team/payments   # <-
        workloads: [{issuer: github}]
        permissions: [introspect]
        """,
        "owner: Expected `str` matching regex '^[A-Za-z0-9][A-Za-z0-9_.@-]*$'",
        id="an owner with a slash is an error",
    ),
    pytest.param(
        """\
        owner: o
        owner: p   # <-
        workloads: [{issuer: github}]
        permissions: [introspect]
        """,
        "duplicate key 'owner'",
        id="a duplicate key is an error, not last-one-wins",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}
        permissions: [introspect]   # <-
        """,
        "invalid YAML: expected ',' or ']', but got '<scalar>'",
        id="invalid YAML points at the problem",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        permissions: [introspect]
        ---   # <-
        owner: p
        """,
        "invalid YAML: a policy file holds one document (found another after ---)",
        id="a second YAML document in one file is an error",
    ),
    pytest.param(
        """\
        owner: o
        workloads: [{issuer: github}]
        permissions: !!set {introspect}   # <-
        """,
        "unsupported YAML tag tag:yaml.org,2002:set",
        id="an unsupported YAML tag is an error",
    ),
    pytest.param(
        """\
        # only a comment   # <-
        """,
        "the file holds no policy document",
        id="an empty file is an error",
    ),
]


@pytest.mark.parametrize(("text", "reason"), CASES)
def test_lint_reports_the_exact_file_and_line(tmp_path: Path, text: str, reason: str) -> None:
    """A reason ending in ``...`` is a prefix (the rest is the CEL library's own wording)."""
    path = write(tmp_path, "policy.yaml", text)
    line = marked_line(textwrap.dedent(text))
    errors = lint_policy_dir(tmp_path, known_claims=KNOWN_CLAIMS, issuers=ISSUERS)
    assert [(e.file, e.line) for e in errors] == [(str(path), line)]
    if reason.endswith("..."):
        assert errors[0].reason.startswith(reason[:-3]), errors[0].reason
    else:
        assert errors[0].reason == reason
    with pytest.raises(PolicyError) as raised:
        load_policy_dir(tmp_path, known_claims=KNOWN_CLAIMS, issuers=ISSUERS)
    assert str(raised.value) == f"{path}:{line}: {errors[0].reason}"


def test_the_good_document_passes_lint(tmp_path: Path) -> None:
    write(tmp_path, "good.yaml", GOOD)
    assert lint_policy_dir(tmp_path, known_claims=KNOWN_CLAIMS, issuers=ISSUERS) == []


def test_names_are_not_checked_when_the_config_is_not_given(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """\
        owner: o
        workloads: [{issuer: anything, claims: {whatever: x}}]
        grants: [{name: g, issuer: any-issuer, resource: r, actions: [a], max_ttl: 1h,
                  approval: none}]
        """,
    )
    assert lint_policy_dir(tmp_path) == []


def test_an_issuer_with_unknown_claim_set_accepts_any_claim(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """\
        owner: o
        workloads: [{issuer: generic, claims: {custom_claim: x}}]
        permissions: [introspect]
        """,
    )
    assert lint_policy_dir(tmp_path, known_claims=KNOWN_CLAIMS) == []


def test_lint_lists_every_problem_in_every_file_sorted_by_file_and_line(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        """\
        owner: o
        workloads:
          - issuer: github
            claims:
              nope: "1"
              sub: {regex: "x"}
        grants:
          - {name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1x, approval: none}
          - {name: h, issuer: nope, resource: r, actions: [read], max_ttl: 1h, approval: none,
             when: "bad =="}
        """,
    )
    b = write(tmp_path, "b.yml", "owner: [\n")
    write(tmp_path, "c.yaml", GOOD)
    errors = lint_policy_dir(tmp_path, known_claims=KNOWN_CLAIMS, issuers=ISSUERS)
    assert [(e.file, e.line) for e in errors] == [
        (str(a), 5),
        (str(a), 6),
        (str(a), 8),
        (str(a), 9),
        (str(a), 10),
        (str(b), 2),
    ]
    with pytest.raises(PolicyError) as raised:
        load_policy_dir(tmp_path, known_claims=KNOWN_CLAIMS, issuers=ISSUERS)
    assert (raised.value.file, raised.value.line) == (str(a), 5)


def test_the_same_grant_id_in_two_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    second = write(tmp_path, "b.yaml", GOOD)
    errors = lint_policy_dir(tmp_path)
    assert [(e.file, e.line, e.reason) for e in errors] == [
        (
            str(second),
            7,
            f"grant id 'team-payments/orders-read' is already defined at {tmp_path / 'a.yaml'}:7",
        )
    ]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        pytest.param(
            lambda d: d / "missing",
            "policy directory not found",
            id="a missing directory is an error",
        ),
        pytest.param(
            lambda d: d,
            "no policy files (*.yaml, *.yml) in the directory",
            id="an empty directory is an error",
        ),
        pytest.param(
            lambda d: (d / "README.md").write_text("# policies") and d,
            "no policy files (*.yaml, *.yml) in the directory",
            id="a directory with no yaml files is an error",
        ),
        pytest.param(
            lambda d: (d / "f.yaml").write_text(GOOD) and d / "f.yaml",
            "not a directory",
            id="a file instead of a directory is an error",
        ),
    ],
)
def test_directory_problems(tmp_path: Path, setup: object, reason: str) -> None:
    assert callable(setup)
    target = setup(tmp_path)
    errors = lint_policy_dir(target)
    assert [(e.file, e.line, e.reason) for e in errors] == [(str(target), None, reason)]
    with pytest.raises(PolicyError, match="^" + str(target)):
        load_policy_dir(target)


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_bytes(b"owner: \xff\xfe\n")
    errors = lint_policy_dir(tmp_path)
    assert [(e.file, e.reason) for e in errors] == [
        (str(tmp_path / "bad.yaml"), "the file is not UTF-8")
    ]


def test_only_yaml_files_directly_in_the_directory_are_read(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "notes.txt", "owner: [")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "broken.yaml", "owner: [")
    policy = load_policy_dir(tmp_path)
    assert policy.files == (str(tmp_path / "a.yaml"),)
    assert [d.owner for d in policy.documents] == ["team-payments"]


def test_the_version_depends_on_file_names_and_contents_only(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    write(one, "a.yaml", GOOD)
    write(two, "a.yaml", GOOD)
    v1 = load_policy_dir(one).version
    assert v1 == load_policy_dir(two).version
    assert len(v1) == 16
    assert int(v1, 16) >= 0
    write(two, "a.yaml", GOOD.replace("1h", "2h"))
    assert load_policy_dir(two).version != v1
    (two / "a.yaml").rename(two / "b.yaml")
    write(two, "b.yaml", GOOD)
    assert load_policy_dir(two).version != v1


def test_load_policy_text_names_the_file_in_errors() -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy_text("owner: o\nworkloads: [{issuer: x}]\nbogus: 1\n", file="inline.yaml")
    assert str(raised.value).startswith("inline.yaml:3: bogus: unknown key")


@pytest.mark.parametrize(
    ("claims_yaml", "claim", "matches"),
    [
        pytest.param("on", "on", True, id="yaml on stays the string on"),
        pytest.param("yes", "yes", True, id="yaml yes stays the string yes"),
        pytest.param("1_000", "1_000", True, id="yaml 1_000 stays a string"),
        pytest.param("2024-01-01", "2024-01-01", True, id="a date stays a string"),
        pytest.param("0x1F", 31, True, id="a hex integer is read as an integer"),
        pytest.param("true", True, True, id="true is a boolean"),
    ],
)
def test_yaml_scalars_follow_the_core_schema(
    claims_yaml: str, claim: object, matches: bool
) -> None:
    from datetime import UTC, datetime

    from broker.policy import Allow, decide
    from broker.types import Intent, Principal, Scope, Task

    pol = load_policy_text(
        f"owner: o\nworkloads: [{{issuer: g, claims: {{x: {claims_yaml}}}}}]\n"
        "grants: [{name: g, issuer: jwt, resource: r, actions: [read], max_ttl: 1h,"
        " approval: none}]\n"
    )
    p = Principal(id="g:a", issuer="g", subject="a", claims={"x": claim})
    i = Intent(task=Task(id="t"), scope=Scope.of("jwt", "r", ["read"]))
    assert isinstance(decide(pol, p, i, datetime(2025, 1, 1, tzinfo=UTC)), Allow) is matches


def test_a_document_that_is_not_a_mapping_is_an_error() -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy_text("\n- owner: o\n", file="list.yaml")
    assert str(raised.value) == (
        "list.yaml:2: a policy document is a mapping: owner, workloads, grants, ..."
    )


def test_a_recursive_alias_is_an_error() -> None:
    with pytest.raises(PolicyError, match="recursive YAML alias"):
        load_policy_text("owner: o\nworkloads: &w [{issuer: g, claims: {x: *w}}]\n")


def test_a_document_larger_than_the_limit_is_an_error() -> None:
    # Each alias level doubles the values: a "billion laughs" document stops at the limit.
    levels = ["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 20)]
    text = "owner: o\nworkloads: [{issuer: g}]\nextra:\n" + "".join(
        f"  {line}\n" for line in levels
    )
    with pytest.raises(PolicyError, match="document too large"):
        load_policy_text(text)


def test_aliases_are_expanded(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """\
        owner: o
        workloads:
          - issuer: github
            claims: &pins
              repository_id: "123456"
          - issuer: generic
            claims: *pins
        permissions: [introspect]
        """,
    )
    policy = load_policy_dir(tmp_path)
    assert [w.matchers[0].claim for w in policy.documents[0].workloads] == [
        "repository_id",
        "repository_id",
    ]
