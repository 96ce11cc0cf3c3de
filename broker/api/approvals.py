"""/v1/approvals (workloads follow their requests; approvers decide) and /slack/interactions.

Who calls is decided per request: a workload identity token (the requester), a human identity
token of a configured person (an approver), or in ``jit dev`` the development approver key.
The rules are :class:`broker.service.approval_desk.ApprovalDesk`'s; this module is HTTP only.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody, Parameter

from broker.api.auth import bearer, broker_of, client_address, request_id
from broker.api.openapi import BEARER, operation, problems
from broker.api.schemas import ApprovalOut, ReviewIn, approval_out, parse_ttl
from broker.types import Principal

__all__ = ["ApprovalsController", "SlackController"]

ApprovalId = Parameter(pattern=r"^[0-9a-f]{32}$", max_length=32)
_ERRORS = (400, 401, 403, 404)


async def _caller(request: Request[Any, Any, State]) -> tuple[Principal | None, str | None]:
    broker = broker_of(request)
    return await broker.callers.approval_caller(
        await bearer(request), request_id=request_id(request)
    )


async def _approver(request: Request[Any, Any, State]) -> str:
    broker = broker_of(request)
    return await broker.callers.approver(await bearer(request), request_id=request_id(request))


class ApprovalsController(Controller):
    path = "/v1/approvals"
    tags = ["approvals"]

    @get(
        "/",
        summary="Pending approval requests: yours (workload), or those you may decide",
        operation_id="listApprovals",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_ERRORS),
    )
    async def list_approvals(self, request: Request[Any, Any, State]) -> list[ApprovalOut]:
        broker = broker_of(request)
        principal, person = await _caller(request)
        views = await broker.desk.list(principal, person)
        return [approval_out(broker.settings.public_url, v) for v in views]

    @get(
        "/{approval_id:str}",
        summary="One approval request; ?wait=SECONDS long-polls",
        operation_id="getApproval",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_ERRORS, 409),
    )
    async def get_approval(
        self,
        request: Request[Any, Any, State],
        approval_id: str = ApprovalId,
        wait: FromQuery[int] = 0,
    ) -> ApprovalOut:
        """To the workload that made it, an approved request carries its credential, once."""
        broker = broker_of(request)
        principal, person = await _caller(request)
        view, issued = await broker.desk.get(
            approval_id,
            principal,
            person,
            wait=wait,
            origin=client_address(request),
            request_id=request_id(request),
        )
        return approval_out(broker.settings.public_url, view, issued)

    @post(
        "/{approval_id:str}/cancel",
        status_code=200,
        summary="Cancel your pending request",
        operation_id="cancelApproval",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_ERRORS, 409),
    )
    async def cancel(
        self, request: Request[Any, Any, State], approval_id: str = ApprovalId
    ) -> ApprovalOut:
        broker = broker_of(request)
        principal, _ = await _caller(request)
        view = await broker.desk.cancel(approval_id, principal)
        return approval_out(broker.settings.public_url, view)

    @post(
        "/{approval_id:str}/approve",
        status_code=200,
        summary="Approve (maybe narrower)",
        operation_id="approveRequest",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_ERRORS, 409, body=True),
    )
    async def approve(
        self,
        request: Request[Any, Any, State],
        data: JSONBody[ReviewIn],
        approval_id: str = ApprovalId,
    ) -> ApprovalOut:
        broker = broker_of(request)
        view = await broker.desk.approve(
            approval_id,
            await _approver(request),
            ttl=parse_ttl(data.ttl),
            actions=data.actions,
            reason=data.reason,
        )
        return approval_out(broker.settings.public_url, view)

    @post(
        "/{approval_id:str}/deny",
        status_code=200,
        summary="Deny, with a reason",
        operation_id="denyRequest",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_ERRORS, 409, body=True),
    )
    async def deny(
        self,
        request: Request[Any, Any, State],
        data: JSONBody[ReviewIn],
        approval_id: str = ApprovalId,
    ) -> ApprovalOut:
        broker = broker_of(request)
        view = await broker.desk.deny(approval_id, await _approver(request), reason=data.reason)
        return approval_out(broker.settings.public_url, view)


class SlackController(Controller):
    path = "/slack"
    tags = ["slack"]
    include_in_schema = False

    @post("/interactions", status_code=200, summary="Slack interactivity (Approve / Deny)")
    async def interactions(self, request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        await broker_of(request).desk.slack_interaction(headers, await request.body())
        return Response({"ok": True})
