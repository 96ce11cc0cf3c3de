"""/v1: credentials, leases and tasks for the calling workload (and only its own), and the
issuers' public documents."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from broker.api.auth import broker_of, client_address, principal, request_id
from broker.api.openapi import (
    BEARER,
    DPOP,
    IDEMPOTENCY_KEY,
    ISSUER_DOCUMENT_TYPES,
    LOCATION,
    REPLAYED,
    operation,
    problems,
)
from broker.api.schemas import (
    ApprovalOut,
    CredentialRequest,
    CredentialResponse,
    ExplainRequest,
    LeaseView,
    RevokeAllOut,
    TaskOut,
    approval_out,
    explain_intent,
    intent_from_request,
    issued_response,
    lease_view,
    task_out,
)
from broker.approvals import ApprovalState
from broker.errors import Conflict, PermissionDenied
from broker.service import Issued
from broker.service.idempotency import Replay
from broker.service.issuance import ExplainOut
from broker.types import TASK_ID_PATTERN, LeaseState, Principal

__all__ = ["IssuerDocuments", "V1Controller"]

_CANONICAL = msgspec.json.Encoder(order="sorted")


def _auto_task(key: str, caller: Principal) -> str:
    """The task a keyed request without a task gets: the same on every retry."""
    return "auto-" + hashlib.sha256(f"{caller.id}\0{key}".encode()).hexdigest()[:16]


LeaseId = Parameter(pattern=r"^[A-Za-z0-9._-]{1,64}$", max_length=64)
TaskIdParam = Parameter(pattern=TASK_ID_PATTERN, max_length=128)
_AUTH = (400, 401)


class V1Controller(Controller):
    path = "/v1"
    tags = ["v1"]
    dependencies = {"caller": Provide(principal)}

    @post(
        "/credentials",
        status_code=201,
        summary="Request a credential for a task",
        operation_id="requestCredential",
        security=BEARER,
        operation_class=operation(
            parameters=[IDEMPOTENCY_KEY, DPOP], headers={201: REPLAYED, 202: LOCATION}
        ),
        responses={
            201: ResponseSpec(
                CredentialResponse,
                description="The credential and its lease",
                generate_examples=False,
            ),
            202: ResponseSpec(
                ApprovalOut,
                description="The grant needs approval: the approval request (also Location)",
                generate_examples=False,
            ),
            **problems(*_AUTH, 403, 404, 409, 422, 429, 502, body=True),
        },
    )
    async def request_credential(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        data: JSONBody[CredentialRequest],
    ) -> Response[CredentialResponse | ApprovalOut]:
        """201 with the credential; or, when the grant needs approval, 202 with the approval
        request (follow it at ``link``). Repeating an identical request answers with the same
        approval request; once approved, it answers 201 with the credential (minted once)."""
        broker, rid = broker_of(request), request_id(request)
        intent = intent_from_request(data)
        cnf = await broker.callers.dpop_binding(
            request.headers.getall("dpop", []), path="/v1/credentials", request_id=rid
        )
        if cnf is not None:
            intent = msgspec.structs.replace(intent, cnf=cnf)
        key = request.headers.get("idempotency-key")
        claim = None
        if key is not None:
            digest = hashlib.sha256(_CANONICAL.encode(data)).hexdigest()
            task = data.task.id if data.task else ""
            found = await broker.idempotency.begin(caller.id, task, key, digest)
            if isinstance(found, Replay):
                lease = await broker.workloads.lease(caller, found.lease_id)
                if lease.state is not LeaseState.ACTIVE:
                    raise Conflict(
                        f"the credential of this Idempotency-Key is {lease.state}; use a new key"
                    )
                return Response(
                    msgspec.json.decode(found.body, type=CredentialResponse),
                    status_code=201,
                    headers={"Idempotent-Replayed": "true"},
                )
            claim = found
            if data.task is None:  # the auto task must be the same on a retry
                intent = msgspec.structs.replace(
                    intent, task=msgspec.structs.replace(intent.task, id=_auto_task(key, caller))
                )
        try:
            result = await broker.issuance.request(
                caller,
                intent,
                on_behalf_of=data.on_behalf_of,
                origin=client_address(request),
                request_id=rid,
                delivery=data.delivery,
            )
        except BaseException:
            if claim is not None:
                await broker.idempotency.abandon(claim)
            raise
        if isinstance(result, Issued):
            answer = issued_response(result)
            if claim is None:
                return Response(answer, status_code=201)
            await broker.idempotency.finish(
                claim, msgspec.json.encode(answer), result.lease.id, result.credential.expires_at
            )
            return Response(answer, status_code=201)
        if claim is not None:
            await broker.idempotency.abandon(claim)
        view = result
        if view.state is ApprovalState.DENIED:
            reasons = [f"{r.person}: {r.reason}" for r in view.reviews if r.decision == "deny"]
            raise PermissionDenied(f"approval request {view.id} was denied", reasons)
        if view.state in (ApprovalState.EXPIRED, ApprovalState.CANCELLED):
            raise Conflict(f"approval request {view.id} is {view.state.value}")
        return Response(
            approval_out(broker.settings.public_url, view),
            status_code=202,
            headers={"Location": f"/v1/approvals/{view.id}"},
        )

    @post(
        "/explain",
        status_code=200,
        summary="What the policy would answer the caller for a request, without minting",
        operation_id="explainRequest",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_AUTH, body=True),
    )
    async def explain(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        data: JSONBody[ExplainRequest],
    ) -> ExplainOut:
        """The decision (allow, approval_required, deny), its reasons and the grant's terms
        for the caller's own identity only: the same facts a real request would reveal."""
        return broker_of(request).issuance.explain(caller, explain_intent(data))

    @get(
        "/leases",
        summary="The caller's leases",
        operation_id="listLeases",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_AUTH),
    )
    async def list_leases(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        all: FromQuery[bool] = False,
    ) -> list[LeaseView]:
        leases = await broker_of(request).workloads.leases(caller, include_inactive=all)
        return [lease_view(le) for le in leases]

    @get(
        "/leases/{lease_id:str}",
        summary="One of the caller's leases",
        operation_id="getLease",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_AUTH, 404),
    )
    async def get_lease(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        lease_id: str = LeaseId,
    ) -> LeaseView:
        return lease_view(await broker_of(request).workloads.lease(caller, lease_id))

    @delete(
        "/leases/{lease_id:str}",
        status_code=200,
        summary="Revoke one of the caller's leases",
        operation_id="revokeLease",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_AUTH, 404),
    )
    async def revoke_lease(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        lease_id: str = LeaseId,
    ) -> LeaseView:
        return lease_view(await broker_of(request).workloads.revoke(caller, lease_id))

    @post(
        "/leases/revoke-all",
        status_code=200,
        summary="Revoke every live lease of the caller",
        operation_id="revokeAllLeases",
        operation_class=operation(),
        security=BEARER,
        responses={
            200: ResponseSpec(RevokeAllOut, description="How many", generate_examples=False),
            **problems(*_AUTH),
        },
    )
    async def revoke_all(
        self, request: Request[Any, Any, State], caller: NamedDependency[Principal]
    ) -> dict[str, int]:
        return {"revoked": await broker_of(request).workloads.revoke_all(caller)}

    @get(
        "/tasks/{task_id:str}",
        summary="One of the caller's tasks with its leases",
        operation_id="getTask",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_AUTH, 404),
    )
    async def get_task(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        task_id: str = TaskIdParam,
    ) -> TaskOut:
        return task_out(await broker_of(request).workloads.task(caller, task_id))

    @post(
        "/tasks/{task_id:str}/complete",
        status_code=200,
        summary="Complete a task: revoke all its leases",
        operation_id="completeTask",
        operation_class=operation(),
        security=BEARER,
        responses=problems(*_AUTH, 404),
    )
    async def complete_task(
        self,
        request: Request[Any, Any, State],
        caller: NamedDependency[Principal],
        task_id: str = TaskIdParam,
    ) -> TaskOut:
        return task_out(await broker_of(request).workloads.complete(caller, task_id))


class IssuerDocuments(Controller):
    """Public documents of issuers (a CA certificate, an SSH CA key, a revocation list). Public
    by design, like ``/.well-known/jwks.json``: relying parties fetch them without credentials."""

    path = "/v1/issuers"
    tags = ["issuers"]

    @get(
        "/{issuer:str}/{document:str}",
        summary="A public document of an issuer (CA certificate, KRL, CRL)",
        operation_id="getIssuerDocument",
        operation_class=operation(binary={200: ISSUER_DOCUMENT_TYPES}),
        responses=problems(400, 404),
        media_type="application/octet-stream",
    )
    async def document(
        self,
        request: Request[Any, Any, State],
        issuer: FromPath[str],
        document: FromPath[str],
    ) -> Response[bytes]:
        content_type, body = await broker_of(request).documents.issuer_document(issuer, document)
        return Response(
            body, media_type=content_type, headers={"Cache-Control": "public, max-age=30"}
        )
