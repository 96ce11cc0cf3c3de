"""A credential request, decided and minted: authenticate → decide → (approval) → mint.

:meth:`Issuance.request` decides the intent against the running policy and either mints (the
lease manager writes the lease ahead of the issuer call, see broker.leases.manager) or, for a
grant that needs approval, opens or joins an approval request. An approved request's
credential is minted here once, by :meth:`Issuance.collect`, for the approved (possibly
narrower) scope, with its clock started at the approval.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import msgspec

from broker.approvals import Approvals, ApprovalState, ApprovalView
from broker.audit import AuditLog
from broker.clock import Clock
from broker.config import LimitsSettings, QuotaLimit, QuotaSettings
from broker.errors import (
    ApprovalRequired,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ScopeNotSupported,
)
from broker.issuer import Exports, ExportsEnvironment, Issuer
from broker.leases import LeaseManager
from broker.leases.store import Limits, Quota
from broker.leases.ttl import TtlDecision, resolve_ttl
from broker.policy import Allow, Deny, NeedsApproval, PolicySet, decide
from broker.service.delegation import Hop
from broker.service.policy import LivePolicy
from broker.types import Credential, Intent, Lease, MintRequest, Principal, Task

__all__ = ["ExplainOut", "Issuance", "Issued", "exports_of"]

log = logging.getLogger(__name__)


class ExplainOut(msgspec.Struct, frozen=True, kw_only=True):
    """The policy's answer for a caller's own request (``POST /v1/explain``); nothing minted."""

    decision: str  # allow | approval_required | deny
    reasons: list[str]
    policy_version: str
    grant: str | None = None
    ttl: int | None = None  # seconds the credential would live (before issuer caps)
    reveal_to_model: bool = False  # the grant's delivery.reveal_to_model
    delegation_max_depth: int | None = None  # the grant's delegation.max_depth, if any


class Issued(msgspec.Struct, frozen=True, kw_only=True):
    """A minted credential with its lease and the decision behind it."""

    lease: Lease
    credential: Credential
    grant: str
    policy_version: str
    ttl_capped_by: str | None = None
    exports: Exports | None = None  # how it maps onto a process (issuers that say; ADR 0031)


@functools.cache
def _exports_type(kind: type[Issuer]) -> bool:
    return issubclass(kind, ExportsEnvironment)


def _exports(issuer: Issuer) -> TypeGuard[ExportsEnvironment]:
    """Whether an issuer defines exports: a Protocol check is costly per mint, so it is made
    once per issuer type."""
    return _exports_type(type(issuer))


def exports_of(
    issuer: Issuer | None, lease: Lease, credential: Credential, params: Mapping[str, str]
) -> Exports | None:
    """The issuer's :class:`Exports` for a credential it just minted, or None (the issuer
    defines none, or its answer is unusable: logged, and the credential is still returned)."""
    if issuer is None or not _exports(issuer):
        return None
    request = MintRequest(
        lease_id=lease.id,
        task_id=lease.task_id,
        principal=lease.principal,
        scope=lease.scope,
        issued_at=lease.issued_at,
        not_after=lease.not_after,
        params=dict(params),
        cnf=lease.cnf,
    )
    try:
        exports = issuer.exports(credential, request)
        exports.check(credential)
    except Exception as exc:  # a plugin's bug must not cost the workload its credential
        log.warning(
            "issuer %r: exports() failed for lease %s (%s); the credential goes without",
            lease.scope.issuer,
            lease.id,
            exc.__class__.__name__,
        )
        return None
    return exports


class Issuance:
    def __init__(
        self,
        policy: LivePolicy,
        issuers: Mapping[str, Issuer],
        manager: LeaseManager,
        approvals: Approvals,
        audit: AuditLog,
        clock: Clock,
        limits: LimitsSettings,
        quotas: QuotaSettings | None = None,
    ) -> None:
        self.policy = policy
        self.issuers = issuers
        self.manager = manager
        self.approvals = approvals
        self.audit = audit
        self.clock = clock
        self.limits = limits
        self.quotas = quotas or QuotaSettings()

    async def request(
        self,
        principal: Principal,
        intent: Intent,
        *,
        on_behalf_of: str | None = None,
        origin: str | None = None,
        request_id: str | None = None,
        parent: Lease | None = None,
        delivery: str | None = None,
    ) -> Issued | ApprovalView:
        """Decide and mint. For a grant that needs approval: open (or join the identical)
        approval request and return it — or, once it is approved and not yet collected, the
        credential minted for it. A delegated request (``intent.actors``; see
        :meth:`delegate`) never waits for approval and is capped to ``parent``."""
        policy = self.policy.current
        now = self.clock.now()
        decision = decide(policy, principal, intent, now)
        scope = intent.scope
        common: dict[str, Any] = {
            "principal": principal.id,
            "task_id": intent.task.id,
            "issuer": scope.issuer,
            "request_id": request_id,
        }
        detail: dict[str, Any] = {
            "resource": scope.resource,
            "actions": list(scope.actions),
            "policy_version": decision.policy_version,
        }
        if intent.ttl is not None:
            detail["ttl_seconds"] = int(intent.ttl.total_seconds())
        if intent.actors:  # every hop named in the record (ADR 0040)
            detail["act"] = [a.id for a in intent.actors]
            detail["parent_lease_id"] = parent.id if parent else None
        if isinstance(decision, Deny):
            await self.audit.emit(
                "decision", outcome="deny", reasons=list(decision.reasons), detail=detail, **common
            )
            raise PermissionDenied("no grant allows this request", decision.reasons)
        detail["grant"] = decision.grant
        if delivery is not None:
            detail["delivery"] = delivery
            grant = policy.grant(decision.grant)
            if delivery == "model" and not (grant and grant.reveal_to_model):
                reason = (
                    f"grant {decision.grant} does not let the credential be shown to a model "
                    "(delivery.reveal_to_model)"
                )
                await self.audit.emit(
                    "decision", outcome="deny", reasons=[reason], detail=detail, **common
                )
                raise PermissionDenied(reason, [reason])
        issuer = self.issuers.get(scope.issuer)
        if issuer is None:  # policy lint checks this at load; kept as a guard
            raise InvalidRequest(f"unknown issuer {scope.issuer!r}")
        issuer.check_scope(scope)
        if intent.cnf and not set(intent.cnf) <= getattr(
            issuer, "confirmation_methods", frozenset()
        ):
            raise ScopeNotSupported(f"issuer {scope.issuer!r} cannot bind a credential to a key")
        deadline, ttl = await self._ttl(principal, intent, decision.ttl, issuer)
        if parent is not None and ttl.ttl > parent.not_after - self.clock.now():
            # A default TTL longer than the parent's remaining time is capped to it (an
            # explicit one was refused by delegate()).
            ttl = TtlDecision(ttl=parent.not_after - self.clock.now(), capped_by="parent")
        detail["ttl_seconds"] = int(ttl.ttl.total_seconds())
        if isinstance(decision, NeedsApproval) and intent.actors:
            raise PermissionDenied("a delegated request cannot wait for approval", decision.reasons)
        if isinstance(decision, NeedsApproval):
            await self.audit.emit(
                "decision",
                outcome="approval_required",
                reasons=list(decision.reasons),
                detail=detail,
                **common,
            )
            view = await self._open_approval(
                policy, principal, intent, decision, ttl.ttl, on_behalf_of, request_id
            )
            if view.state is ApprovalState.APPROVED:
                view, issued = await self.collect(
                    principal, view.id, origin=origin, request_id=request_id
                )
                if issued is not None:
                    return issued
            return view
        assert isinstance(decision, Allow)
        # Recorded with the mint, in the same round trip (or alone if the mint fails).
        decided = self.audit.record(
            "decision", outcome="ok", reasons=list(decision.reasons), detail=detail, **common
        )
        lease, credential = await self.manager.issue(
            principal,
            intent.task,
            decision.scope,
            ttl.ttl,
            params=intent.params,
            deadline=deadline,
            cnf=intent.cnf,
            grant=decision.grant,
            origin=origin,
            request_id=request_id,
            detail={
                "grant": decision.grant,
                "policy_version": decision.policy_version,
                **({"delivery": delivery} if delivery else {}),
            },
            parent=parent.id if parent else None,
            actors=intent.actors,
            decision=decided,
            delegable=_delegable(policy, decision.grant),
            quota=quota_for(self.quotas, decision.grant),
        )
        return Issued(
            lease=lease,
            credential=credential,
            grant=decision.grant,
            policy_version=decision.policy_version,
            ttl_capped_by=ttl.capped_by,
            exports=exports_of(issuer, lease, credential, intent.params),
        )

    def explain(self, principal: Principal, intent: Intent) -> ExplainOut:
        """What the policy would answer ``principal`` for ``intent``, without minting or
        recording anything: the decision, its reasons (as a refused request gets them) and the
        covering grant's terms. Only ever the caller's own access."""
        policy = self.policy.current
        decision = decide(policy, principal, intent, self.clock.now())
        if isinstance(decision, Deny):
            return ExplainOut(
                decision="deny",
                reasons=list(decision.reasons),
                policy_version=decision.policy_version,
            )
        grant = policy.grant(decision.grant)
        return ExplainOut(
            decision="allow" if isinstance(decision, Allow) else "approval_required",
            reasons=list(decision.reasons),
            policy_version=decision.policy_version,
            grant=decision.grant,
            ttl=int(decision.ttl.total_seconds()),
            reveal_to_model=bool(grant and grant.reveal_to_model),
            delegation_max_depth=grant.delegation.max_depth if grant and grant.delegation else None,
        )

    async def delegate(
        self,
        hop: Hop,
        intent: Intent,
        *,
        origin: str | None = None,
        request_id: str | None = None,
    ) -> Issued:
        """An RFC 8693 delegation: mint for ``hop.subject`` with ``hop.actors`` acting, as the
        policy allows (``delegation:`` on the grant) and never wider than the parent: the same
        issuer and resource, a subset of its actions, a TTL within its remaining time, a task
        deadline no later than its task's. A delegated credential lives in its parent's task
        (ADR 0040); the first hop names its task like any request."""
        parent = hop.parent
        task = intent.task
        if parent is not None:
            if not task.auto and task.id != parent.task_id:
                raise InvalidRequest(
                    f"a delegated credential lives in its parent's task ({parent.task_id}): "
                    "omit task_id or pass that one"
                )
            task = Task(id=parent.task_id, purpose=task.purpose or parent.purpose, ttl=task.ttl)
        intent = msgspec.structs.replace(intent, task=task, actors=hop.actors)
        if parent is not None:
            refusal = await self._widening(hop.subject, parent, intent)
            if refusal is not None:
                reason, oauth_error = refusal
                await self.audit.emit(
                    "decision",
                    outcome="deny",
                    reasons=[reason],
                    principal=hop.subject.id,
                    task_id=task.id,
                    issuer=intent.scope.issuer,
                    request_id=request_id,
                    detail={
                        "resource": intent.scope.resource,
                        "actions": list(intent.scope.actions),
                        "act": [a.id for a in hop.actors],
                        "parent_lease_id": parent.id,
                    },
                )
                denied = PermissionDenied(f"a delegation may only narrow: {reason}", [reason])
                denied.oauth_error = oauth_error
                raise denied
        result = await self.request(
            hop.subject, intent, origin=origin, request_id=request_id, parent=parent
        )
        if not isinstance(result, Issued):  # compile refuses delegation with approval
            raise PermissionDenied("a delegated request cannot wait for approval")
        return result

    async def _widening(
        self, subject: Principal, parent: Lease, intent: Intent
    ) -> tuple[str, str] | None:
        """(why, OAuth error) when ``intent`` asks for more than ``parent`` holds."""
        scope, held = intent.scope, parent.scope
        if scope.issuer != held.issuer or scope.resource != held.resource:
            return (
                f"the parent credential is for {held.resource} on issuer {held.issuer}, "
                f"not {scope.resource} on {scope.issuer}",
                "invalid_target",
            )
        extra = set(scope.actions) - set(held.actions)
        if extra:
            return (
                f"actions {', '.join(sorted(extra))} are not in the parent credential "
                f"({', '.join(held.actions)})",
                "invalid_scope",
            )
        now = self.clock.now()
        remaining = parent.not_after - now
        if intent.ttl is not None and intent.ttl > remaining:
            return (
                f"ttl {int(intent.ttl.total_seconds())}s is longer than the parent "
                f"credential's remaining {int(remaining.total_seconds())}s",
                "invalid_scope",
            )
        if intent.task.ttl is not None:
            deadline = await self.manager.task_deadline(
                subject.id, intent.task, default=self.limits.default_task_ttl
            )
            if now + intent.task.ttl > deadline:
                return (
                    f"task_ttl {int(intent.task.ttl.total_seconds())}s would end after the "
                    f"parent's task deadline ({deadline.isoformat()})",
                    "invalid_scope",
                )
        return None

    async def _open_approval(
        self,
        policy: PolicySet,
        principal: Principal,
        intent: Intent,
        decision: NeedsApproval,
        ttl: timedelta,
        on_behalf_of: str | None,
        request_id: str | None,
    ) -> ApprovalView:
        grant = policy.grant(decision.grant)
        if grant is None or grant.approval is None:  # cannot happen: decide() named it
            raise ApprovalRequired(decision.grant, decision.reasons)
        return await self.approvals.open(
            principal,
            intent,
            ttl=ttl,
            grant=decision.grant,
            grant_owner=grant.owner,
            rule=grant.approval,
            policy_version=decision.policy_version,
            on_behalf_of=on_behalf_of,
            request_id=request_id,
        )

    async def _ttl(
        self, principal: Principal, intent: Intent, grant_ttl: timedelta, issuer: Issuer
    ) -> tuple[datetime, TtlDecision]:
        limits = self.limits
        if intent.task.ttl is not None and not (
            timedelta(0) < intent.task.ttl <= limits.max_task_ttl
        ):
            raise InvalidRequest(
                f"task ttl must be positive and at most {int(limits.max_task_ttl.total_seconds())}s"
            )
        if issuer.capabilities.revocable:
            # Only an expiry-only credential is capped to the task, so only then read the
            # stored deadline; the lease script refuses a task past its deadline either way.
            deadline = self.clock.now() + (intent.task.ttl or limits.default_task_ttl)
        else:
            deadline = await self.manager.task_deadline(
                principal.id, intent.task, default=limits.default_task_ttl
            )
        ttl = resolve_ttl(
            intent.ttl,
            grant_default=grant_ttl,
            grant_max=grant_ttl,
            issuer=issuer.capabilities,
            hard_max=limits.max_ttl,
            task_remaining=deadline - self.clock.now(),
        )
        return deadline, ttl

    async def collect(
        self,
        principal: Principal,
        approval_id: str,
        *,
        origin: str | None = None,
        request_id: str | None = None,
    ) -> tuple[ApprovalView, Issued | None]:
        """The workload's view of its approval request; once approved, the credential is
        minted here, once, for the approved scope. The grant's clock started at approval."""
        view = await self.approvals.get_for(approval_id, owner=principal.id, person=None)
        if view.state is not ApprovalState.APPROVED or view.lease_id or view.decided_at is None:
            return view, None
        scope, approved_ttl = self.approvals.approved_terms(view)
        now = self.clock.now()
        remaining = approved_ttl - (now - view.decided_at)
        if remaining < timedelta(seconds=1):
            raise Conflict("the approved credential's time ran out before it was collected")
        planned = self.manager.plan_lease_id(principal.id, view.task.id)
        status, previous = await self.approvals.claim_mint(view, planned)
        if status != "ok":
            return await self.approvals.get(approval_id), None
        if previous:  # an earlier minter died mid-mint: make sure its credential is gone
            with contextlib.suppress(NotFound):
                await self.manager.revoke(previous, "approval_remint")
        intent = Intent(
            task=view.task, scope=scope, ttl=remaining, params=dict(view.params), cnf=view.cnf
        )
        try:
            decision = decide(self.policy.current, principal, intent, now)
            if isinstance(decision, Deny):
                raise PermissionDenied(
                    "the policy no longer allows this approved request", decision.reasons
                )
            lease, credential = await self.manager.issue(
                principal,
                view.task,
                scope,
                remaining,
                params=view.params,
                lease_id=planned,
                cnf=view.cnf,
                grant=view.grant,
                origin=origin,
                request_id=request_id,
                detail={
                    "grant": view.grant,
                    "policy_version": decision.policy_version,
                    "approval_id": view.id,
                },
            )
        except BaseException:
            await self.approvals.mark_minted(view, "")
            raise
        await self.approvals.mark_minted(view, lease.id)
        issued = Issued(
            lease=lease,
            credential=credential,
            grant=view.grant,
            policy_version=decision.policy_version,
            ttl_capped_by="approval" if approved_ttl < view.ttl else None,
            exports=exports_of(self.issuers.get(scope.issuer), lease, credential, view.params),
        )
        return await self.approvals.get(approval_id), issued


def quota_for(quotas: QuotaSettings, grant: str | None) -> Quota:
    """The quotas a lease of ``grant`` counts against (docs/configuration.md "quotas")."""
    owner = grant.split("/", 1)[0] if grant and "/" in grant else None
    owner_limit = quotas.owners.get(owner, quotas.owner) if owner else quotas.owner

    def limits(q: QuotaLimit) -> Limits:
        return Limits(live=q.live_leases or 0, per_minute=q.mints_per_minute or 0)

    return Quota(workload=limits(quotas.workload), owner=owner, owner_limits=limits(owner_limit))


def _delegable(policy: PolicySet, grant_name: str) -> bool:
    """A lease of a grant that allows delegation may become a parent: its subject (with its
    claims) must be kept for the next hop's decision."""
    grant = policy.grant(grant_name)
    return grant is not None and grant.delegation is not None
