"""Compile one policy document: validate it completely and precompile everything decide() needs.

Owns the compiled, immutable forms (:class:`ClaimMatcher`, :class:`Workload`,
:class:`Condition`, :class:`Grant`, :class:`PolicyDocument`, :class:`PolicySet`) and
:func:`compile_document`, which turns one file's text into a :class:`PolicyDocument` or a list
of :class:`~broker.errors.PolicyError` — every problem it can find, each with the file and the
1-based line of the offending YAML node. Globs and regexes become compiled ``re`` patterns, CEL
conditions become ``cel.Program`` objects, durations become ``timedelta``: nothing is parsed
again when a request is decided.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeVar

import cel
import msgspec

from broker.config import parse_duration
from broker.errors import PolicyError
from broker.policy.model import (
    CEL_VARIABLES,
    DEFAULT_TTL_CAP,
    ApprovalSpec,
    ClaimPattern,
    DelegationSpec,
    DocumentSpec,
    GovernanceSpec,
    GrantSpec,
    WorkloadSpec,
)
from broker.policy.source import ParsedYaml, YamlPath, parse_yaml, show_path

__all__ = [
    "DEFAULT_GOVERNANCE",
    "ApprovalRule",
    "ClaimMatcher",
    "CompileOptions",
    "Condition",
    "Delegation",
    "GovernanceRule",
    "Grant",
    "PolicyDocument",
    "PolicySet",
    "TrustIndex",
    "Workload",
    "claim_text",
    "compile_document",
]

S = TypeVar("S", bound=msgspec.Struct)

# Names bound by CEL comprehension macros: ``list.exists(x, ...)`` binds ``x``.
_MACRO_BINDING = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)
_MSGSPEC_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_MSGSPEC_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_GLOB_CHARS = frozenset("*?[")


def claim_text(value: object) -> str | None:
    """The text a claim matcher compares: strings as they are, integers in decimal, booleans
    as ``true``/``false``. Anything else (lists, objects, floats, null) has no text and
    matches nothing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


@dataclass(frozen=True, slots=True)
class ClaimMatcher:
    """One compiled claim matcher. ``shown`` is how the policy wrote it (for explain)."""

    claim: str
    kind: Literal["exact", "glob", "regex", "one_of"]
    shown: str
    # exact and one_of; for a glob or regex without wildcards, the one text it matches (only
    # the trust index reads it there: ``matches`` uses the pattern)
    values: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None  # glob and regex, matched against the whole value

    def matches(self, text: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(text) is not None
        return text in self.values


@dataclass(frozen=True, slots=True)
class Workload:
    """A trusted workload: principals of this identity issuer whose claims all match."""

    issuer: str
    matchers: tuple[ClaimMatcher, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled ``when`` expression and the CEL variables it reads."""

    source: str
    program: cel.Program
    variables: frozenset[str]  # a subset of CEL_VARIABLES


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """A compiled ``approval:`` setting. ``approvers`` are names as written (people and
    ``group:<name>``); empty means the config's default approvers."""

    approvers: tuple[str, ...]
    quorum: int
    expires_after: timedelta | None
    channel: str | None


@dataclass(frozen=True, slots=True)
class GovernanceRule:
    """A compiled ``governance:`` setting (defaults when the grant has none)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    pin_request_address: bool = False
    max_uses_per_minute: int = 600
    on_violation: str = "revoke_task"


DEFAULT_GOVERNANCE = GovernanceRule()


@dataclass(frozen=True, slots=True)
class Delegation:
    """A compiled ``delegation:`` setting: every actor of a chain must match one of ``actors``
    (matched like a trusted workload), and the chain holds at most ``max_depth`` actors."""

    actors: tuple[Workload, ...]
    max_depth: int


@dataclass(frozen=True, slots=True)
class Grant:
    """A compiled grant. ``id`` is ``<owner>/<name>``."""

    id: str
    owner: str
    name: str
    issuer: str
    resource: str
    resource_pattern: re.Pattern[str] | None  # None: ``resource`` is matched exactly
    actions: frozenset[str]
    max_ttl: timedelta
    default_ttl: timedelta
    approval: ApprovalRule | None  # None: no approval needed
    condition: Condition | None
    governance: GovernanceRule
    file: str
    line: int
    delegation: Delegation | None = None  # None: nobody may act for the workload
    reveal_to_model: bool = False  # delivery.reveal_to_model: a tool result may hold the secret

    @property
    def approval_required(self) -> bool:
        return self.approval is not None

    def matches_resource(self, resource: str) -> bool:
        """The requested resource is inside this grant's resource.

        A requested resource holding ``*`` or ``[`` is matched only by an identical grant
        resource: a wildcard in a request is never taken to be inside a narrower pattern."""
        if self.resource_pattern is None or "*" in resource or "[" in resource:
            return resource == self.resource
        return self.resource_pattern.fullmatch(resource) is not None


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """One compiled policy document (one file)."""

    owner: str
    description: str
    file: str
    workloads: tuple[Workload, ...]
    permissions: frozenset[str]
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class TrustIndex:
    """Which documents can trust a principal, found without trying every document.

    A workload entry trusts a principal only if each of its matchers matches, so an entry with
    a matcher that admits a known set of texts (exact, ``one_of``, or a glob or regex without
    wildcards, such as ``^acme/app$``) can only trust principals whose claim text is in that
    set: such an entry is filed under ``(issuer, claim, text)`` for each text of its most
    selective such matcher (the fewest texts). Entries with only wildcard globs and regexes (or
    no matchers) are filed under their issuer, to be tried always. :meth:`candidates` is
    therefore a superset of the documents that trust the principal, in document order;
    ``decide`` and ``can`` still try each candidate's entries, so the index changes how many
    documents are looked at, never an answer.
    """

    by_value: dict[tuple[str, str, str], tuple[int, ...]]
    keys: dict[str, tuple[str, ...]]  # issuer → the claim names entries are filed under
    always: dict[str, tuple[int, ...]]  # issuer → documents with an entry to try always

    @classmethod
    def build(cls, documents: tuple[PolicyDocument, ...]) -> TrustIndex:
        by_value: dict[tuple[str, str, str], list[int]] = {}
        keys: dict[str, list[str]] = {}
        always: dict[str, list[int]] = {}
        for i, document in enumerate(documents):
            for entry in document.workloads:
                known = [(m.claim, v) for m in entry.matchers if (v := _texts(m)) is not None]
                if not known:
                    _add(always.setdefault(entry.issuer, []), i)
                    continue
                claim, values = min(known, key=lambda cv: len(cv[1]))
                claims = keys.setdefault(entry.issuer, [])
                if claim not in claims:
                    claims.append(claim)
                for value in values:
                    _add(by_value.setdefault((entry.issuer, claim, value), []), i)
        return cls(
            by_value={k: tuple(v) for k, v in by_value.items()},
            keys={k: tuple(v) for k, v in keys.items()},
            always={k: tuple(v) for k, v in always.items()},
        )

    def candidates(self, issuer: str, claims: Mapping[str, object]) -> list[int]:
        """Indexes of the documents that may trust a principal of ``issuer`` with ``claims``
        (ascending: document order)."""
        found: set[int] = set(self.always.get(issuer, ()))
        for claim in self.keys.get(issuer, ()):
            if claim in claims:
                text = claim_text(claims[claim])
                if text is not None:
                    found.update(self.by_value.get((issuer, claim, text), ()))
        return sorted(found)


# A regex body (between ^ and $) or a glob made only of these characters matches exactly itself.
_LITERAL = re.compile(r"[A-Za-z0-9_/@:=,;~ -]*")


def _literal(body: str, pattern: re.Pattern[str]) -> frozenset[str]:
    """``{body}`` when ``pattern`` (compiled from a glob or an anchored regex whose text is
    ``body``) matches exactly that one text; else empty."""
    if body and _LITERAL.fullmatch(body) and pattern.fullmatch(body):
        return frozenset({body})
    return frozenset()


def _texts(matcher: ClaimMatcher) -> frozenset[str] | None:
    """Every claim text ``matcher`` admits, when that is a known finite set (None: any text
    matching a wildcard pattern)."""
    if matcher.pattern is None or matcher.values:
        return matcher.values
    return None


def _add(into: list[int], i: int) -> None:
    if not into or into[-1] != i:
        into.append(i)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every compiled document of a policy directory, in sorted file order.

    ``version`` is a short sha256 over the sorted file names and contents: two brokers with
    the same files report the same version. ``files`` are the files read, as shown in errors.
    ``trust`` is built from the documents (:class:`TrustIndex`).
    """

    version: str
    documents: tuple[PolicyDocument, ...]
    files: tuple[str, ...]
    trust: TrustIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trust", TrustIndex.build(self.documents))

    def grant(self, grant_id: str) -> Grant | None:
        for document in self.documents:
            for grant in document.grants:
                if grant.id == grant_id:
                    return grant
        return None


@dataclass(frozen=True, slots=True)
class CompileOptions:
    """What the configuration knows, to check names against (None: not checked).

    ``known_claims``: identity-issuer name → the claim names its preset produces (None: any).
    ``issuers``: the configured issuer instance names.
    """

    known_claims: Mapping[str, Collection[str] | None] | None = None
    issuers: Collection[str] | None = None
    # Approver names the config knows: people and "group:<name>" (None: not checked), and
    # whether ``approval: required`` (the config's default approvers) has anyone to ask.
    approvers: Collection[str] | None = None
    has_default_approvers: bool = True


def compile_document(
    text: str, *, file: str, options: CompileOptions
) -> tuple[PolicyDocument | None, list[PolicyError]]:
    """Compile one file. Returns the document, or None and every problem found."""
    try:
        source = parse_yaml(text, file=file)
    except PolicyError as exc:
        return None, [exc]
    compiler = _Compiler(source, file, options)
    document = compiler.document()
    if compiler.errors:
        return None, compiler.errors
    return document, []


class _Compiler:
    def __init__(self, source: ParsedYaml, file: str, options: CompileOptions) -> None:
        self.source = source
        self.file = file
        self.options = options
        self.errors: list[PolicyError] = []

    def error(self, path: YamlPath, reason: str) -> None:
        self.errors.append(PolicyError(reason, file=self.file, line=self.source.line_of(path)))

    # -- structure --------------------------------------------------------------------------

    def convert(self, value: Any, tp: type[S], path: YamlPath) -> S | None:
        """msgspec-validate ``value`` as ``tp``; on failure record the error at the line of
        the node msgspec names (its ``$.grants[0].actions`` path, relative to ``path``)."""
        try:
            return msgspec.convert(value, tp, strict=True)
        except msgspec.ValidationError as exc:
            self._validation_error(str(exc), tp, path)
            return None

    def _validation_error(self, text: str, tp: type[msgspec.Struct], base: YamlPath) -> None:
        m = _MSGSPEC_AT.match(text)
        assert m is not None  # the pattern matches any text
        message, where = m.group("message"), m.group("path") or "$"
        path: YamlPath = base
        for step in _MSGSPEC_STEP.finditer(where):
            name, index = step.groups()
            path = (*path, int(index)) if index is not None else (*path, name)
        if unknown := _UNKNOWN_FIELD.match(message):
            field = unknown.group("field")
            # Every struct converts its nested entries separately, so an unknown key is
            # always one of ``tp``'s own.
            allowed = ", ".join(sorted(f.encode_name for f in msgspec.structs.fields(tp)))
            self.error(
                (*path, field), f"{show_path((*path, field))}: unknown key (allowed: {allowed})"
            )
        elif missing := _MISSING_FIELD.match(message):
            self.error(path, f"{show_path(path)}: missing required key {missing.group('field')!r}")
        elif not path and message.startswith("Expected `object`"):
            self.error(path, "a policy document is a mapping: owner, workloads, grants, ...")
        else:
            self.error(path, f"{show_path(path)}: {message}")

    # -- document ---------------------------------------------------------------------------

    def document(self) -> PolicyDocument | None:
        spec = self.convert(self.source.value, DocumentSpec, ())
        if spec is None:
            return None
        if not spec.grants and not spec.permissions:
            self.error((), "the document grants nothing: add grants or permissions")
        workloads = [
            w
            for i, raw in enumerate(spec.workloads)
            if (w := self.workload(raw, ("workloads", i))) is not None
        ]
        grants: list[Grant] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(spec.grants):
            path: YamlPath = ("grants", i)
            # Names are checked on the raw entry, so a duplicate is reported even when the
            # entry has other problems.
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                if name in seen:
                    self.error(
                        (*path, "name"),
                        f"duplicate grant name {name!r} (first at line {seen[name]})",
                    )
                else:
                    seen[name] = self.source.line_of((*path, "name"))
            grant = self.grant(spec.owner, raw, path)
            if grant is not None:
                grants.append(grant)
        return PolicyDocument(
            owner=spec.owner,
            description=spec.description,
            file=self.file,
            workloads=tuple(workloads),
            permissions=frozenset(spec.permissions),
            grants=tuple(grants),
        )

    # -- workloads --------------------------------------------------------------------------

    def workload(self, raw: Any, path: YamlPath) -> Workload | None:
        spec = self.convert(raw, WorkloadSpec, path)
        if spec is None:
            return None
        known = self.options.known_claims
        allowed: Collection[str] | None = None
        if known is not None:
            if spec.issuer not in known:
                configured = ", ".join(sorted(known)) or "none"
                self.error(
                    (*path, "issuer"),
                    f"unknown identity issuer {spec.issuer!r} (configured: {configured})",
                )
                return None
            allowed = known[spec.issuer]
        matchers: list[ClaimMatcher] = []
        for name, value in spec.claims.items():
            claim_path = (*path, "claims", name)
            if allowed is not None and name not in allowed:
                hint = difflib.get_close_matches(name, sorted(allowed), n=1)
                did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.error(
                    claim_path,
                    f"identity issuer {spec.issuer!r} has no claim {name!r}{did_you_mean}",
                )
                continue
            matcher = self.matcher(name, value, claim_path)
            if matcher is not None:
                matchers.append(matcher)
        return Workload(
            issuer=spec.issuer, matchers=tuple(matchers), line=self.source.line_of(path)
        )

    def matcher(self, claim: str, raw: Any, path: YamlPath) -> ClaimMatcher | None:
        if isinstance(raw, dict):
            spec = self.convert(raw, ClaimPattern, path)
            if spec is None:
                return None
            return self.pattern_matcher(claim, spec, path)
        text = claim_text(raw)
        if text is None:
            self.error(
                path,
                f"{show_path(path)}: expected a string, an integer, a boolean or one of "
                "{glob: ...}, {regex: ...}, {one_of: [...]}",
            )
            return None
        return ClaimMatcher(claim, "exact", repr(text), values=frozenset({text}))

    def pattern_matcher(
        self, claim: str, spec: ClaimPattern, path: YamlPath
    ) -> ClaimMatcher | None:
        given = [k for k in ("glob", "regex", "one_of") if getattr(spec, k) is not None]
        if len(given) != 1:
            self.error(path, f"{show_path(path)}: give exactly one of glob, regex, one_of")
            return None
        if spec.glob is not None:
            pattern = re.compile(fnmatch.translate(spec.glob))
            return ClaimMatcher(
                claim,
                "glob",
                f"glob {spec.glob!r}",
                values=_literal(spec.glob, pattern),
                pattern=pattern,
            )
        if spec.regex is not None:
            regex_path = (*path, "regex")
            if not _anchored(spec.regex):
                self.error(regex_path, f"regex {spec.regex!r} must be anchored: ^...$")
                return None
            try:
                compiled = re.compile(spec.regex)
            except re.error as exc:
                self.error(regex_path, f"invalid regex {spec.regex!r}: {exc}")
                return None
            return ClaimMatcher(
                claim,
                "regex",
                f"regex {spec.regex!r}",
                values=_literal(spec.regex[1:-1], compiled),
                pattern=compiled,
            )
        assert spec.one_of is not None
        if not spec.one_of:
            self.error((*path, "one_of"), "one_of needs at least one value")
            return None
        values = frozenset(t for v in spec.one_of if (t := claim_text(v)) is not None)
        return ClaimMatcher(claim, "one_of", f"one of {sorted(values)}", values=values)

    # -- grants -----------------------------------------------------------------------------

    def grant(self, owner: str, raw: Any, path: YamlPath) -> Grant | None:
        spec = self.convert(raw, GrantSpec, path)
        if spec is None:
            return None
        ok = True
        issuers = self.options.issuers
        if issuers is not None and spec.issuer not in issuers:
            configured = ", ".join(sorted(issuers)) or "none"
            self.error(
                (*path, "issuer"), f"unknown issuer {spec.issuer!r} (configured: {configured})"
            )
            ok = False
        max_ttl = self.duration(spec.max_ttl, (*path, "max_ttl"))
        default_ttl: timedelta | None = None
        if max_ttl is not None and spec.default_ttl is None:
            default_ttl = min(max_ttl, timedelta(seconds=DEFAULT_TTL_CAP))
        elif spec.default_ttl is not None:
            default_ttl = self.duration(spec.default_ttl, (*path, "default_ttl"))
            if default_ttl is not None and max_ttl is not None and default_ttl > max_ttl:
                self.error(
                    (*path, "default_ttl"),
                    f"default_ttl {spec.default_ttl} is longer than max_ttl {spec.max_ttl}",
                )
                ok = False
        condition: Condition | None = None
        if spec.when is not None:
            condition = self.condition(spec.when, (*path, "when"))
            ok = ok and condition is not None
        pattern = None
        if _GLOB_CHARS & set(spec.resource):
            pattern = re.compile(fnmatch.translate(spec.resource))
        approval_ok, approval = self.approval(spec.approval, (*path, "approval"))
        governance = self.governance(spec.governance, (*path, "governance"))
        delegation_ok, delegation = self.delegation(spec.delegation, (*path, "delegation"))
        if delegation is not None and approval is not None:
            # A delegated request cannot wait for a human: the approval would be collected by
            # whoever repeats the request, without the chain (ADR 0040).
            self.error(
                (*path, "delegation"),
                "delegation: a grant that needs approval cannot be delegated "
                "(use a separate grant without approval for delegated requests)",
            )
            delegation_ok = False
        if (
            not ok
            or not approval_ok
            or not delegation_ok
            or governance is None
            or max_ttl is None
            or default_ttl is None
        ):
            return None
        return Grant(
            id=f"{owner}/{spec.name}",
            owner=owner,
            name=spec.name,
            issuer=spec.issuer,
            resource=spec.resource,
            resource_pattern=pattern,
            actions=frozenset(spec.actions),
            max_ttl=max_ttl,
            default_ttl=default_ttl,
            approval=approval,
            governance=governance,
            condition=condition,
            file=self.file,
            line=self.source.line_of(path),
            delegation=delegation,
            reveal_to_model=spec.delivery.reveal_to_model if spec.delivery else False,
        )

    def delegation(
        self, spec: DelegationSpec | None, path: YamlPath
    ) -> tuple[bool, Delegation | None]:
        """(ok, the compiled setting); None without a ``delegation:`` section."""
        if spec is None:
            return True, None
        actors = [self.workload(raw, (*path, "actors", i)) for i, raw in enumerate(spec.actors)]
        if any(a is None for a in actors):
            return False, None
        return True, Delegation(
            actors=tuple(a for a in actors if a is not None), max_depth=spec.max_depth
        )

    def governance(self, spec: GovernanceSpec | None, path: YamlPath) -> GovernanceRule | None:
        """The compiled rule (the defaults without a spec); None after reporting an error."""
        if spec is None:
            return DEFAULT_GOVERNANCE
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        pin = False
        ok = True
        for i, raw in enumerate(spec.networks):
            if raw == "request":
                pin = True
                continue
            try:
                networks.append(ipaddress.ip_network(raw, strict=True))
            except ValueError as exc:
                self.error((*path, "networks", i), f"not a network (CIDR) or 'request': {exc}")
                ok = False
        if not ok:
            return None
        return GovernanceRule(
            networks=tuple(networks),
            pin_request_address=pin,
            max_uses_per_minute=spec.max_uses_per_minute,
            on_violation=spec.on_violation,
        )

    def approval(
        self, spec: str | ApprovalSpec, path: YamlPath
    ) -> tuple[bool, ApprovalRule | None]:
        """(ok, the compiled rule); the rule is None for ``approval: none``."""
        if spec == "none":
            return True, None
        if spec == "required":
            if not self.options.has_default_approvers:
                self.error(
                    path,
                    "approval: required has nobody to ask: name approvers here "
                    "(approval: {approvers: [...]}) or set approvals.default_approvers in config",
                )
                return False, None
            return True, ApprovalRule(approvers=(), quorum=1, expires_after=None, channel=None)
        assert isinstance(spec, ApprovalSpec)
        ok = True
        known = self.options.approvers
        if known is not None:
            for i, name in enumerate(spec.approvers):
                if name not in known:
                    self.error((*path, "approvers", i), f"unknown approver {name!r}")
                    ok = False
        expires: timedelta | None = None
        if spec.expires_after is not None:
            expires = self.duration(spec.expires_after, (*path, "expires_after"))
            ok = ok and expires is not None
        if known is not None and ok:
            people = {n for n in known if not n.startswith("group:")}
            direct = [n for n in spec.approvers if not n.startswith("group:")]
            if not [n for n in spec.approvers if n.startswith("group:")] and (
                len(set(direct) & people) < spec.quorum
            ):
                self.error(
                    (*path, "quorum"),
                    f"quorum {spec.quorum} needs at least {spec.quorum} approvers",
                )
                ok = False
        rule = ApprovalRule(
            approvers=tuple(spec.approvers),
            quorum=spec.quorum,
            expires_after=expires,
            channel=spec.channel,
        )
        return ok, rule if ok else None

    def duration(self, raw: str | int, path: YamlPath) -> timedelta | None:
        name = str(path[-1])
        try:
            value = parse_duration(raw)
        except ValueError as exc:
            self.error(path, f"{name}: {exc}")
            return None
        if value <= timedelta(0):
            self.error(path, f"{name} must be longer than zero")
            return None
        return value

    def condition(self, source: str, path: YamlPath) -> Condition | None:
        if not source.strip():
            self.error(path, "when: empty condition")
            return None
        try:
            program = cel.compile(source)
        except Exception as exc:  # the extension raises ValueError; any failure is a bad policy
            self.error(path, f"when: invalid CEL: {_cel_message(exc)}")
            return None
        used = set(program.variables())
        unknown = used - CEL_VARIABLES - set(_MACRO_BINDING.findall(source))
        if unknown:
            names = ", ".join(sorted(unknown))
            self.error(
                path,
                f"when: unknown variable(s) {names} (use {', '.join(sorted(CEL_VARIABLES))})",
            )
            return None
        return Condition(source, program, frozenset(used & CEL_VARIABLES))


def _anchored(regex: str) -> bool:
    """Starts with ``^`` and ends with an unescaped ``$``."""
    if len(regex) < 2 or not regex.startswith("^") or not regex.endswith("$"):
        return False
    body = regex[:-1]
    backslashes = len(body) - len(body.rstrip("\\"))
    return backslashes % 2 == 0


def _cel_message(exc: BaseException) -> str:
    """The compiler's message on one line, without the echoed source and caret."""
    text = str(exc)
    found = re.search(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)", text)
    if found:
        line, column, message = found.groups()
        return f"{message} (line {line} column {column} of the expression)"
    return " ".join(text.split())[:300]
