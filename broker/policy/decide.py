"""Decide a request against a compiled :class:`PolicySet`: pure, fast, with reasons.

Owns the decision types (:class:`Allow`, :class:`NeedsApproval`, :class:`Deny`) and the three
questions asked of a policy: :func:`decide` (may this principal have this scope?), :func:`can`
(may it do this extra thing, e.g. introspect?) and :func:`explain` (why, line by line, for
``jit policy explain``). Nothing here reads the clock, the environment or a file: ``now`` is a
parameter, and everything was compiled at load. Only the structured scope and TTL are inputs;
the task's free-text purpose is never read. docs/policy.md states the semantics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import cel
import msgspec

from broker.policy.compile import (
    Condition,
    Grant,
    PolicyDocument,
    PolicySet,
    Workload,
    claim_text,
)
from broker.types import Intent, Principal, Scope

__all__ = ["Allow", "Decision", "Deny", "NeedsApproval", "can", "decide", "explain"]


class Allow(msgspec.Struct, frozen=True):
    """A grant without approval covers the request. ``scope`` is exactly the requested scope;
    ``ttl`` is the requested TTL or the grant's default."""

    grant: str  # "<owner>/<grant name>"
    scope: Scope
    ttl: timedelta
    reasons: tuple[str, ...]
    policy_version: str


class NeedsApproval(msgspec.Struct, frozen=True):
    """Only grants that require human approval cover the request; ``grant`` is the first."""

    grant: str
    scope: Scope
    ttl: timedelta
    reasons: tuple[str, ...]
    policy_version: str


class Deny(msgspec.Struct, frozen=True):
    """No grant covers the request; one reason per document or grant considered."""

    reasons: tuple[str, ...]
    policy_version: str


Decision: TypeAlias = Allow | NeedsApproval | Deny


def decide(policy: PolicySet, principal: Principal, intent: Intent, now: datetime) -> Decision:
    """The decision for ``principal`` asking for ``intent`` at ``now`` (timezone-aware).

    The first covering grant without approval (in sorted file order, then document order)
    allows; else the first covering grant that needs approval; else deny with every reason.
    """
    problems = _request_problems(intent, now)
    if problems:
        return Deny(reasons=problems, policy_version=policy.version)
    evaluator = _Evaluator(principal, intent, now, verbose=False)
    pending: tuple[Grant, timedelta] | None = None
    # The fast pass looks only at the documents that may trust the principal (the policy's
    # trust index) and builds no text; the reasons are written only when the answer is a deny.
    for document in _candidates(policy, principal):
        if _trusting_entry(document, principal) is None:
            continue
        for grant in document.grants:
            if evaluator.grant_miss(grant) is not None:
                continue
            ttl = intent.ttl if intent.ttl is not None else grant.default_ttl
            if not grant.approval_required:
                return Allow(
                    grant=grant.id,
                    scope=intent.scope,
                    ttl=ttl,
                    reasons=(evaluator.grant_line(grant, None),),
                    policy_version=policy.version,
                )
            if pending is None:
                pending = (grant, ttl)
    if pending is not None:
        grant, ttl = pending
        return NeedsApproval(
            grant=grant.id,
            scope=intent.scope,
            ttl=ttl,
            reasons=(f"{grant.id}: covers the request; approval required",),
            policy_version=policy.version,
        )
    reasons = tuple(evaluator.walk(policy)) or ("no grant covers the request",)
    return Deny(reasons=reasons, policy_version=policy.version)


def can(policy: PolicySet, principal: Principal, permission: str) -> bool:
    """True when a document that lists ``permission`` trusts ``principal``. An unknown
    permission name is simply never granted."""
    return any(
        permission in document.permissions and _trusting_entry(document, principal) is not None
        for document in _candidates(policy, principal)
    )


def explain(policy: PolicySet, principal: Principal, intent: Intent, now: datetime) -> list[str]:
    """Human-readable lines: for every document and grant, why it did or did not apply (the
    caller prints the decision itself). Unlike the reasons of a :class:`Deny`, these show the
    policy's files, lines and patterns and the principal's claim values."""
    problems = _request_problems(intent, now)
    if problems:
        return list(problems)
    return list(_Evaluator(principal, intent, now, verbose=True).walk(policy, exhaustive=True))


# -- evaluation ------------------------------------------------------------------------------


def _request_problems(intent: Intent, now: datetime) -> tuple[str, ...]:
    if now.tzinfo is None:
        raise ValueError("decide() needs a timezone-aware now")
    problems: list[str] = []
    if not intent.scope.actions:
        problems.append("the request names no actions")
    if intent.ttl is not None and intent.ttl <= timedelta(0):
        problems.append("the requested ttl must be longer than zero")
    return tuple(problems)


def _candidates(policy: PolicySet, principal: Principal) -> Iterator[PolicyDocument]:
    """The documents that may trust ``principal``, in document order (a superset of those
    that do: see :class:`~broker.policy.compile.TrustIndex`)."""
    if principal.kind != "workload":
        return
    documents = policy.documents
    for i in policy.trust.candidates(principal.issuer, principal.claims):
        yield documents[i]


def _trusting_entry(document: PolicyDocument, principal: Principal) -> Workload | None:
    if principal.kind != "workload":
        return None
    for entry in document.workloads:
        if entry.issuer == principal.issuer and _claims_miss(entry, principal, False) is None:
            return entry
    return None


def _claims_miss(entry: Workload, principal: Principal, verbose: bool) -> str | None:
    """Why the principal's claims fail this entry (the first failing matcher), or None."""
    claims = principal.claims
    for matcher in entry.matchers:
        if matcher.claim not in claims:
            return f"claim {matcher.claim!r} is missing"
        value = claims[matcher.claim]
        text = claim_text(value)
        if text is None:
            kind = "a list" if isinstance(value, list) else f"a {type(value).__name__}"
            return f"claim {matcher.claim!r} is {kind} (test it in a when condition)"
        if not matcher.matches(text):
            if verbose:
                return f"claim {matcher.claim!r} = {text!r} does not match {matcher.shown}"
            return f"claim {matcher.claim!r} did not match"
    return None


class _Evaluator:
    """Evaluates one request against documents and grants; builds the CEL context lazily,
    once, and only with the variables the conditions read."""

    def __init__(self, principal: Principal, intent: Intent, now: datetime, verbose: bool) -> None:
        self.principal = principal
        self.intent = intent
        self.now = now
        self.verbose = verbose
        self.requested = frozenset(intent.scope.actions)
        self._context: cel.Context | None = None
        self._added: set[str] = set()
        self._request_ttl: int | None = None

    def walk(self, policy: PolicySet, *, exhaustive: bool = False) -> Iterator[str]:
        """A line per document that does not trust the principal and per grant of those that
        do. With ``exhaustive`` (explain), untrusting documents also list their grants."""
        for document in policy.documents:
            where = f"{document.owner} ({document.file})" if self.verbose else document.owner
            workload_miss = self.workload_miss(document)
            if workload_miss is not None:
                yield f"{where}: workload not trusted: {workload_miss}"
                if exhaustive:
                    for grant in document.grants:
                        yield (
                            f"grant {grant.id} ({grant.file}:{grant.line}): not considered, "
                            "the document does not trust this workload"
                        )
                continue
            if self.verbose:
                entry = _trusting_entry(document, self.principal)
                assert entry is not None
                yield f"{where}: trusts this workload (entry at line {entry.line})"
            if not document.grants:
                yield f"{where}: trusts this workload but has no grants"
            for grant in document.grants:
                yield self.grant_line(grant, self.grant_miss(grant))

    def workload_miss(self, document: PolicyDocument) -> str | None:
        principal = self.principal
        if principal.kind != "workload":
            return f"the principal is a {principal.kind!r}, not a workload"
        misses: list[tuple[Workload, str]] = []
        for entry in document.workloads:
            if entry.issuer != principal.issuer:
                continue
            miss = _claims_miss(entry, principal, self.verbose)
            if miss is None:
                return None
            misses.append((entry, miss))
        if not misses:
            if self.verbose:
                trusted = ", ".join(sorted({e.issuer for e in document.workloads}))
                return f"no entry for identity issuer {principal.issuer!r} (trusts: {trusted})"
            return f"no entry for identity issuer {principal.issuer!r}"
        if len(misses) == 1:
            return misses[0][1]
        if self.verbose:
            return "; ".join(f"entry at line {e.line}: {m}" for e, m in misses)
        return "; ".join(f"entry {i}: {m}" for i, (_, m) in enumerate(misses, 1))

    def grant_line(self, grant: Grant, miss: str | None) -> str:
        name = f"grant {grant.id} ({grant.file}:{grant.line})" if self.verbose else grant.id
        if miss is not None:
            return f"{name}: {miss}" if not self.verbose else f"{name}: does not apply: {miss}"
        scope = self.intent.scope
        ttl = self.intent.ttl if self.intent.ttl is not None else grant.default_ttl
        approval = "approval required" if grant.approval_required else "no approval needed"
        acting = ""
        if self.intent.actors and grant.delegation is not None:
            chain = " <- ".join(a.id for a in self.intent.actors)
            acting = (
                f", delegated to {chain} ({len(self.intent.actors)} of at most "
                f"{grant.delegation.max_depth} hops)"
            )
        elif self.verbose and grant.delegation is not None:
            acting = f"; may be delegated, up to {grant.delegation.max_depth} hops"
        return (
            f"{name}: covers {', '.join(scope.actions)} on {scope.resource} "
            f"for {_seconds(ttl)} ({approval}{acting})"
        )

    def grant_miss(self, grant: Grant) -> str | None:
        """Why ``grant`` does not cover the request, or None when it does."""
        scope, verbose = self.intent.scope, self.verbose
        if scope.issuer != grant.issuer:
            return f"grant is for issuer {grant.issuer!r}, not {scope.issuer!r}"
        misses: list[str] = []
        if not grant.matches_resource(scope.resource):
            misses.append(
                f"resource {scope.resource!r} does not match {grant.resource!r}"
                if verbose
                else f"resource {scope.resource!r} not matched"
            )
        extra = self.requested - grant.actions
        if extra:
            allowed = f" (grant allows {', '.join(sorted(grant.actions))})" if verbose else ""
            misses.append(f"actions not allowed: {', '.join(sorted(extra))}{allowed}")
        ttl = self.intent.ttl
        if ttl is not None and ttl > grant.max_ttl:
            misses.append(f"ttl too long: asked {_seconds(ttl)}, max {_seconds(grant.max_ttl)}")
        delegation_miss = self.delegation_miss(grant)
        if delegation_miss is not None:
            misses.append(delegation_miss)
        if misses:
            return "; ".join(misses)
        if grant.condition is not None:
            effective = ttl if ttl is not None else grant.default_ttl
            return self.condition_miss(grant.condition, effective)
        return None

    def delegation_miss(self, grant: Grant) -> str | None:
        """Why the grant does not allow this request's chain of actors (RFC 8693), or None.
        Every actor must match one of the grant's ``delegation.actors`` entries."""
        actors = self.intent.actors
        if not actors:
            return None
        rule = grant.delegation
        if rule is None:
            return "grant does not allow delegation"
        if len(actors) > rule.max_depth:
            return (
                f"delegation too deep: {len(actors)} actors in the chain, "
                f"max_depth {rule.max_depth}"
            )
        for actor in actors:
            misses: list[str] = []
            for entry in rule.actors:
                if entry.issuer != actor.issuer:
                    misses.append(f"not from identity issuer {entry.issuer!r}")
                    continue
                miss = _claims_miss(entry, actor, self.verbose)
                if miss is None:
                    break
                misses.append(miss)
            else:
                why = f" ({'; '.join(misses)})" if self.verbose and misses else ""
                return f"actor {actor.id!r} may not act for this grant{why}"
        return None

    def condition_miss(self, condition: Condition, ttl: timedelta) -> str | None:
        shown = f"condition {condition.source!r}" if self.verbose else "condition"
        try:
            result = condition.program.execute(self.context(condition, ttl))
        except Exception as exc:  # any evaluation failure is a "no" (fail closed)
            return f"{shown} failed: {_one_line(exc)}"
        except BaseException as exc:
            # A Rust panic in the extension surfaces as pyo3's PanicException, which derives
            # from BaseException; it too is a "no". Everything else (KeyboardInterrupt, ...)
            # propagates.
            if type(exc).__name__ != "PanicException":
                raise
            return f"{shown} failed: {_one_line(exc)}"
        if result is True:
            return None
        if result is False:
            return f"{shown} is false"
        return f"{shown} gave {type(result).__name__}, not a bool"

    def context(self, condition: Condition, ttl: timedelta) -> cel.Context:
        """The CEL context, with every variable ``condition`` reads. Each variable is
        converted once per request; ``request`` again only when its ttl_seconds differs."""
        if self._context is None:
            self._context = cel.Context()
        ctx = self._context
        for name in condition.variables:
            if name == "request":
                seconds = math.ceil(ttl.total_seconds())
                if self._request_ttl != seconds:
                    ctx.add_variable("request", self._request(seconds))
                    self._request_ttl = seconds
            elif name not in self._added:
                ctx.add_variable(name, self._variable(name))
                self._added.add(name)
        return ctx

    def _variable(self, name: str) -> Any:
        p = self.principal
        if name == "claims":
            return dict(p.claims)
        if name == "principal":
            return {"id": p.id, "issuer": p.issuer, "subject": p.subject}
        if name == "now":
            return math.floor(self.now.timestamp())
        raise AssertionError(f"unknown CEL variable {name}")  # compile checked the names

    def _request(self, ttl_seconds: int) -> dict[str, Any]:
        scope = self.intent.scope
        return {
            "issuer": scope.issuer,
            "resource": scope.resource,
            "actions": sorted(set(scope.actions)),
            "ttl_seconds": ttl_seconds,
            "task_id": self.intent.task.id,
        }


def _seconds(d: timedelta) -> str:
    seconds = d.total_seconds()
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.3f}s"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
