"""/v1/approvals (workloads follow their requests; approvers decide) and /slack/interactions.

Who calls is decided per request: a workload identity token (the requester), a human identity
token of a configured person (an approver), or in ``jit dev`` the development approver key.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody, Parameter

from broker.api.auth import bearer_or_audit, broker_of, client_address, request_id
from broker.api.schemas import ApprovalOut, ReviewIn, ReviewOut
from broker.api.v1 import issued_response, parse_ttl
from broker.approvals import ApprovalState, ApprovalView
from broker.errors import AuthenticationError, InvalidRequest, PermissionDenied
from broker.service import Broker, Issued
from broker.types import Principal

__all__ = ["ApprovalsController", "SlackController", "approval_out"]

ApprovalId = Parameter(pattern=r"^[0-9a-f]{32}$", max_length=32)
DEV_APPROVER_PREFIX = "jitdev-approver-"


def approval_out(broker: Broker, view: ApprovalView, issued: Issued | None = None) -> ApprovalOut:
    return ApprovalOut(
        approval_id=view.id,
        state=view.state.value,
        owner=view.owner,
        task_id=view.task.id,
        purpose=view.task.purpose,
        issuer=view.scope.issuer,
        resource=view.scope.resource,
        actions=list(view.scope.actions),
        ttl=int(view.ttl.total_seconds()),
        grant=view.grant,
        policy_version=view.policy_version,
        approvers=list(view.approvers),
        quorum=view.quorum,
        needed=view.needed,
        reviews=[
            ReviewOut(
                person=r.person,
                decision=r.decision,
                at=r.at,
                via=r.via,
                ttl=int(r.ttl.total_seconds()) if r.ttl else None,
                actions=list(r.actions) if r.actions else None,
                reason=r.reason,
            )
            for r in view.reviews
        ],
        created_at=view.created_at,
        expires_at=view.expires_at,
        decided_at=view.decided_at,
        on_behalf_of=view.on_behalf_of,
        link=f"{broker.settings.public_url}/v1/approvals/{view.id}",
        lease_id=issued.lease.id if issued else view.lease_id,
        credential=issued_response(issued) if issued else None,
    )


async def caller(request: Request[Any, Any, State]) -> tuple[Principal | None, str | None]:
    """(the workload, or None; the approver person, or None)."""
    broker, rid = broker_of(request), request_id(request)
    token = await bearer_or_audit(request, broker, rid)
    if token.startswith(DEV_APPROVER_PREFIX):
        try:
            return None, broker.check_dev_approver(token)
        except AuthenticationError as exc:
            await broker.audit.emit(
                "auth.failed", outcome="deny", reasons=[exc.message], request_id=rid
            )
            raise
    principal = await broker.authenticate(token, request_id=rid)
    return principal, broker.approvals.people.for_principal(principal)


async def approver(request: Request[Any, Any, State]) -> str:
    principal, person = await caller(request)
    if person is None:
        who = principal.id if principal else "caller"
        raise PermissionDenied(f"{who} is not a configured approver")
    return person


class ApprovalsController(Controller):
    path = "/v1/approvals"
    tags = ["approvals"]

    @get("/", summary="Pending approval requests: yours (workload), or those you may decide")
    async def list_approvals(self, request: Request[Any, Any, State]) -> list[ApprovalOut]:
        broker = broker_of(request)
        principal, person = await caller(request)
        views = await broker.approvals.list_for(
            owner=principal.id if principal and person is None else None, person=person
        )
        return [approval_out(broker, v) for v in views]

    @get("/{approval_id:str}", summary="One approval request; ?wait=SECONDS long-polls")
    async def get_approval(
        self,
        request: Request[Any, Any, State],
        approval_id: str = ApprovalId,
        wait: FromQuery[int] = 0,
    ) -> ApprovalOut:
        broker = broker_of(request)
        principal, person = await caller(request)
        max_wait = broker.settings.approvals.max_wait.total_seconds()
        if not 0 <= wait <= max_wait:
            raise InvalidRequest(f"wait must be between 0 and {int(max_wait)} seconds")
        owner = principal.id if principal else None
        view = await broker.approvals.get_for(approval_id, owner=owner, person=person)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while view.state is ApprovalState.PENDING and loop.time() < deadline:
            await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))
            view = await broker.approvals.get(approval_id)
        if principal is not None and view.owner == principal.id:
            view, issued = await broker.collect(
                principal,
                approval_id,
                origin=client_address(request),
                request_id=request_id(request),
            )
            return approval_out(broker, view, issued)
        return approval_out(broker, view)

    @post("/{approval_id:str}/cancel", status_code=200, summary="Cancel your pending request")
    async def cancel(
        self, request: Request[Any, Any, State], approval_id: str = ApprovalId
    ) -> ApprovalOut:
        broker = broker_of(request)
        principal, _ = await caller(request)
        if principal is None:
            raise PermissionDenied("only the requesting workload may cancel")
        return approval_out(broker, await broker.approvals.cancel(approval_id, owner=principal.id))

    @post("/{approval_id:str}/approve", status_code=200, summary="Approve (maybe narrower)")
    async def approve(
        self,
        request: Request[Any, Any, State],
        data: JSONBody[ReviewIn],
        approval_id: str = ApprovalId,
    ) -> ApprovalOut:
        broker = broker_of(request)
        person = await approver(request)
        view = await broker.approvals.review(
            approval_id,
            person=person,
            decision="approve",
            ttl=parse_ttl(data.ttl),
            actions=data.actions,
            reason=data.reason,
        )
        return approval_out(broker, view)

    @post("/{approval_id:str}/deny", status_code=200, summary="Deny, with a reason")
    async def deny(
        self,
        request: Request[Any, Any, State],
        data: JSONBody[ReviewIn],
        approval_id: str = ApprovalId,
    ) -> ApprovalOut:
        broker = broker_of(request)
        person = await approver(request)
        if not data.reason:
            raise InvalidRequest("a denial needs a reason")
        view = await broker.approvals.review(
            approval_id, person=person, decision="deny", reason=data.reason
        )
        return approval_out(broker, view)


class SlackController(Controller):
    path = "/slack"
    tags = ["slack"]
    include_in_schema = False

    @post("/interactions", status_code=200, summary="Slack interactivity (Approve / Deny)")
    async def interactions(self, request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
        broker = broker_of(request)
        notifier = broker.approvals.notifier
        if notifier is None:
            raise InvalidRequest("Slack is not configured")
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        # The signature is checked before anything in the body is read.
        try:
            notifier.verify(headers, body)  # type: ignore[attr-defined]
        except AuthenticationError as exc:
            await broker.audit.emit(
                "auth.failed", outcome="deny", reasons=[exc.message], detail={"via": "slack"}
            )
            raise
        fingerprint = hashlib.sha256(
            headers.get("x-slack-signature", "").encode() + b"|" + body
        ).hexdigest()
        if await broker.approvals.store.seen_slack_request(fingerprint, 10 * 60 * 1000):
            await broker.audit.emit(
                "auth.failed",
                outcome="deny",
                reasons=["replayed Slack request"],
                detail={"via": "slack"},
            )
            raise AuthenticationError("replayed Slack request")
        action = notifier.parse_action(body)  # type: ignore[attr-defined]
        person = broker.approvals.people.for_slack(action.slack_user)
        if person is None:
            view = await broker.approvals.get(action.approval_id)
            await broker.audit.emit(
                "approval.refused_review",
                outcome="deny",
                principal=view.owner,
                reasons=[f"Slack user {action.slack_user} is not a configured approver"],
                detail={"approval_id": view.id, "via": "slack"},
            )
            raise PermissionDenied("this Slack user is not a configured approver")
        await broker.approvals.review(
            action.approval_id,
            person=person,
            decision=action.decision,
            via="slack",
            reason="denied in Slack" if action.decision == "deny" else "",
        )
        return Response({"ok": True})
