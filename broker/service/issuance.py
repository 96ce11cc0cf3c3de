"""A credential request, decided and minted: authenticate → decide → (approval) → mint.

:meth:`Issuance.request` decides the intent against the running policy and either mints (the
lease manager writes the lease ahead of the issuer call, see broker.leases.manager) or, for a
grant that needs approval, opens or joins an approval request. An approved request's
credential is minted here once, by :meth:`Issuance.collect`, for the approved (possibly
narrower) scope, with its clock started at the approval.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec

from broker.approvals import Approvals, ApprovalState, ApprovalView
from broker.audit import AuditLog
from broker.clock import Clock
from broker.config import LimitsSettings
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
from broker.leases.ttl import TtlDecision, resolve_ttl
from broker.policy import Allow, Deny, NeedsApproval, PolicySet, decide
from broker.service.policy import LivePolicy
from broker.types import Credential, Intent, Lease, MintRequest, Principal

__all__ = ["Issuance", "Issued", "exports_of"]

log = logging.getLogger(__name__)


class Issued(msgspec.Struct, frozen=True, kw_only=True):
    """A minted credential with its lease and the decision behind it."""

    lease: Lease
    credential: Credential
    grant: str
    policy_version: str
    ttl_capped_by: str | None = None
    exports: Exports | None = None  # how it maps onto a process (issuers that say; ADR 0031)


def exports_of(
    issuer: Issuer | None, lease: Lease, credential: Credential, params: Mapping[str, str]
) -> Exports | None:
    """The issuer's :class:`Exports` for a credential it just minted, or None (the issuer
    defines none, or its answer is unusable: logged, and the credential is still returned)."""
    if issuer is None or not isinstance(issuer, ExportsEnvironment):
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
    ) -> None:
        self.policy = policy
        self.issuers = issuers
        self.manager = manager
        self.approvals = approvals
        self.audit = audit
        self.clock = clock
        self.limits = limits

    async def request(
        self,
        principal: Principal,
        intent: Intent,
        *,
        on_behalf_of: str | None = None,
        origin: str | None = None,
        request_id: str | None = None,
    ) -> Issued | ApprovalView:
        """Decide and mint. For a grant that needs approval: open (or join the identical)
        approval request and return it — or, once it is approved and not yet collected, the
        credential minted for it."""
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
        if isinstance(decision, Deny):
            await self.audit.emit(
                "decision", outcome="deny", reasons=list(decision.reasons), detail=detail, **common
            )
            raise PermissionDenied("no grant allows this request", decision.reasons)
        detail["grant"] = decision.grant
        issuer = self.issuers.get(scope.issuer)
        if issuer is None:  # policy lint checks this at load; kept as a guard
            raise InvalidRequest(f"unknown issuer {scope.issuer!r}")
        issuer.check_scope(scope)
        if intent.cnf and not set(intent.cnf) <= getattr(
            issuer, "confirmation_methods", frozenset()
        ):
            raise ScopeNotSupported(f"issuer {scope.issuer!r} cannot bind a credential to a key")
        deadline, ttl = await self._ttl(principal, intent, decision.ttl, issuer)
        detail["ttl_seconds"] = int(ttl.ttl.total_seconds())
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
        await self.audit.emit(
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
            detail={"grant": decision.grant, "policy_version": decision.policy_version},
        )
        return Issued(
            lease=lease,
            credential=credential,
            grant=decision.grant,
            policy_version=decision.policy_version,
            ttl_capped_by=ttl.capped_by,
            exports=exports_of(issuer, lease, credential, intent.params),
        )

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
