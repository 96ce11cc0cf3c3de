"""/v1: credentials, leases and tasks for the calling workload (and only its own)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from broker.api.auth import broker_of, client_address, principal, request_id
from broker.api.schemas import (
    CredentialOut,
    CredentialRequest,
    CredentialResponse,
    LeaseView,
    TaskOut,
    lease_view,
    task_out,
)
from broker.approvals import ApprovalState
from broker.config import parse_duration
from broker.errors import Conflict, InvalidRequest, PermissionDenied
from broker.service import Issued
from broker.types import TASK_ID_PATTERN, Intent, Principal, Scope, Task

__all__ = ["V1Controller", "intent_from_request", "issued_response"]

LeaseId = Parameter(pattern=r"^[A-Za-z0-9._-]{1,64}$", max_length=64)
TaskIdParam = Parameter(pattern=TASK_ID_PATTERN, max_length=128)


def new_task_id() -> str:
    return "auto-" + secrets.token_hex(8)


def parse_ttl(value: int | str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        ttl = parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(f"ttl: {exc}") from None
    if ttl <= timedelta(0):
        raise InvalidRequest("ttl must be positive")
    return ttl


def intent_from_request(data: CredentialRequest) -> Intent:
    task = (
        Task(id=data.task.id, purpose=data.task.purpose, ttl=parse_ttl(data.task.ttl))
        if data.task
        else Task(new_task_id(), auto=True)
    )
    return Intent(
        task=task,
        scope=Scope.of(data.issuer, data.resource, data.actions),
        ttl=parse_ttl(data.ttl),
        params=dict(data.params or {}),
    )


def issued_response(issued: Issued) -> CredentialResponse:
    lease, cred = issued.lease, issued.credential
    return CredentialResponse(
        lease_id=lease.id,
        task_id=lease.task_id,
        issuer=lease.scope.issuer,
        resource=lease.scope.resource,
        actions=list(lease.scope.actions),
        issued_at=lease.issued_at,
        expires_at=cred.expires_at,
        ttl=int((cred.expires_at - lease.issued_at).total_seconds()),
        grant=issued.grant,
        policy_version=issued.policy_version,
        # The one place the secret leaves its wrapper: the response to its owner.
        credential=CredentialOut(
            token_type=cred.token_type, secret=cred.secret.reveal(), metadata=dict(cred.metadata)
        ),
        ttl_capped_by=issued.ttl_capped_by,
    )


class V1Controller(Controller):
    path = "/v1"
    tags = ["v1"]
    dependencies = {"caller": Provide(principal)}

    @post("/credentials", status_code=201, summary="Request a credential for a task")
    async def request_credential(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        data: JSONBody[CredentialRequest],
    ) -> Response[Any]:
        """201 with the credential; or, when the grant needs approval, 202 with the approval
        request (follow it at ``link``). Repeating an identical request answers with the same
        approval request; once approved, it answers 201 with the credential (minted once)."""
        from broker.api.approvals import approval_out

        broker, rid = broker_of(request), request_id(request)
        intent = intent_from_request(data)
        cnf = await broker.verify_dpop(
            request.headers.getall("dpop", []), path="/v1/credentials", request_id=rid
        )
        if cnf is not None:
            intent = msgspec.structs.replace(intent, cnf=cnf)
        result = await broker.request_credential(
            caller,
            intent,
            on_behalf_of=data.on_behalf_of,
            origin=client_address(request),
            request_id=rid,
        )
        if isinstance(result, Issued):
            return Response(issued_response(result), status_code=201)
        view = result
        if view.state is ApprovalState.APPROVED:
            view, issued = await broker.collect(
                caller, view.id, origin=client_address(request), request_id=rid
            )
            if issued is not None:
                return Response(issued_response(issued), status_code=201)
        if view.state is ApprovalState.DENIED:
            reasons = [f"{r.person}: {r.reason}" for r in view.reviews if r.decision == "deny"]
            raise PermissionDenied(f"approval request {view.id} was denied", reasons)
        if view.state in (ApprovalState.EXPIRED, ApprovalState.CANCELLED):
            raise Conflict(f"approval request {view.id} is {view.state.value}")
        return Response(
            approval_out(broker, view),
            status_code=202,
            headers={"Location": f"/v1/approvals/{view.id}"},
        )

    @get("/leases", summary="The caller's leases")
    async def list_leases(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        all: FromQuery[bool] = False,
    ) -> list[LeaseView]:
        leases = await broker_of(request).list_leases(caller, include_inactive=all)
        return [lease_view(le) for le in leases]

    @get("/leases/{lease_id:str}", summary="One of the caller's leases")
    async def get_lease(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        lease_id: str = LeaseId,
    ) -> LeaseView:
        return lease_view(await broker_of(request).get_lease(caller, lease_id))

    @delete("/leases/{lease_id:str}", status_code=200, summary="Revoke one of the caller's leases")
    async def revoke_lease(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        lease_id: str = LeaseId,
    ) -> LeaseView:
        return lease_view(await broker_of(request).revoke_lease(caller, lease_id))

    @post("/leases/revoke-all", status_code=200, summary="Revoke every live lease of the caller")
    async def revoke_all(
        self, request: Request[Any, Any, State], caller: NamedDependency[Principal]
    ) -> dict[str, int]:
        return {"revoked": await broker_of(request).revoke_workload(caller)}

    @get("/tasks/{task_id:str}", summary="One of the caller's tasks with its leases")
    async def get_task(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        task_id: str = TaskIdParam,
    ) -> TaskOut:
        return task_out(await broker_of(request).get_task(caller, task_id))

    @post(
        "/tasks/{task_id:str}/complete",
        status_code=200,
        summary="Complete a task: revoke all its leases",
    )
    async def complete_task(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        task_id: str = TaskIdParam,
    ) -> TaskOut:
        return task_out(await broker_of(request).complete_task(caller, task_id))


class IssuerDocuments(Controller):
    """Public documents of issuers (a CA certificate, an SSH CA key, a revocation list). Public
    by design, like ``/.well-known/jwks.json``: relying parties fetch them without credentials."""

    path = "/v1/issuers"
    tags = ["issuers"]

    @get(
        "/{issuer:str}/{document:str}",
        summary="A public document of an issuer (CA certificate, KRL, CRL)",
    )
    async def document(
        self,
        request: Request[Any, Any, State],
        issuer: FromPath[str],
        document: FromPath[str],
    ) -> Response[bytes]:
        content_type, body = await broker_of(request).issuer_document(issuer, document)
        return Response(
            body, media_type=content_type, headers={"Cache-Control": "public, max-age=30"}
        )
