"""Wire types of the /v1 JSON API (msgspec Structs; unknown fields are rejected) and the
conversions between them and the broker's values. The one place the secret leaves its
``Secret`` wrapper is :func:`issued_response`: the answer to the credential's owner."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Annotated, Literal

import msgspec

from broker.approvals import ApprovalView
from broker.clock import parse_duration
from broker.errors import InvalidRequest
from broker.issuer import Exports
from broker.leases import TaskView
from broker.service import Issued
from broker.types import Intent, Lease, Scope, Task, TaskId

__all__ = [
    "ApprovalOut",
    "CredentialRequest",
    "CredentialResponse",
    "ExplainRequest",
    "JsonWebKey",
    "JsonWebKeySet",
    "LeaseView",
    "RevokeAllOut",
    "TaskIn",
    "TaskOut",
    "approval_out",
    "explain_intent",
    "intent_from_request",
    "issued_response",
    "lease_view",
    "new_task_id",
    "parse_ttl",
    "task_out",
]

Identifier = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
]
Action = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Resource = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Ttl = (
    Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)]
    | Annotated[str, msgspec.Meta(max_length=16)]
)


class TaskIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: TaskId
    purpose: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    # How long the task may run (first request only): seconds or a duration ("2h").
    ttl: Ttl | None = None


ParamName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ParamValue = Annotated[str, msgspec.Meta(max_length=8192)]


class CredentialRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ask for one credential for one task. ``ttl`` is seconds or a duration (``"10m"``);
    omitted, the grant's default applies. Without a task the credential is its own task."""

    issuer: Identifier
    resource: Resource
    actions: Annotated[list[Action], msgspec.Meta(min_length=1, max_length=32)]
    task: TaskIn | None = None
    ttl: Ttl | None = None
    # Issuer-specific, non-secret inputs (e.g. ``public_key`` for ssh/x509); see the issuer's page.
    params: Annotated[dict[ParamName, ParamValue], msgspec.Meta(max_length=8)] | None = None
    # An agent acting for a person names them (a configured person, Slack id or identity): that
    # person cannot approve the request (separation of duties) and is shown to approvers.
    on_behalf_of: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    # How the client hands the secret on (recorded in the audit; docs/agents.md): "file" (a
    # 0600 file), "env" (a process's environment) or "model" (shown to an AI model, allowed
    # only by a grant with delivery.reveal_to_model). None: returned to the caller, as ever.
    delivery: Literal["file", "env", "model"] | None = None


class ExplainRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the caller would ask for; nothing is minted."""

    issuer: Identifier
    resource: Resource
    actions: Annotated[list[Action], msgspec.Meta(min_length=1, max_length=32)]
    ttl: Ttl | None = None


class CredentialOut(msgspec.Struct, frozen=True):
    token_type: str
    secret: str  # the credential itself (e.g. the JWT); shown once, never stored
    metadata: dict[str, str]


class CredentialResponse(msgspec.Struct, frozen=True):
    lease_id: str
    task_id: str
    issuer: str
    resource: str
    actions: list[str]
    issued_at: datetime
    expires_at: datetime
    ttl: int
    grant: str
    policy_version: str
    credential: CredentialOut
    ttl_capped_by: str | None = None
    # How the credential maps onto a process (env vars, 0600 files), for issuers that say
    # (``jit exec``; docs/adr/0031). Names parts of ``credential``; never a secret itself.
    exports: Exports | None = None


class ReviewOut(msgspec.Struct, frozen=True):
    person: str
    decision: str
    at: datetime
    via: str
    ttl: int | None = None
    actions: list[str] | None = None
    reason: str = ""


class ApprovalOut(msgspec.Struct, frozen=True, kw_only=True):
    approval_id: str
    state: str
    owner: str
    task_id: str
    purpose: str
    issuer: str
    resource: str
    actions: list[str]
    ttl: int
    grant: str
    policy_version: str
    approvers: list[str]
    quorum: int
    needed: int
    reviews: list[ReviewOut]
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    on_behalf_of: str | None
    link: str
    lease_id: str | None = None
    credential: CredentialResponse | None = None  # once approved, to its owner, once


class ReviewIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Approve (optionally narrower: a shorter ttl, a subset of the actions) or deny."""

    ttl: Ttl | None = None
    actions: Annotated[list[Action], msgspec.Meta(min_length=1, max_length=32)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class LeaseView(msgspec.Struct, frozen=True):
    id: str
    task_id: str
    owner: str
    state: str
    issuer: str
    resource: str
    actions: list[str]
    issued_at: datetime
    not_after: datetime
    purpose: str = ""
    revoked_at: datetime | None = None
    revoke_trigger: str | None = None
    revoke_attempts: int = 0
    overdue: bool = False


class JsonWebKey(msgspec.Struct, frozen=True, omit_defaults=True):
    """A public key (RFC 7517): OKP (Ed25519), EC or RSA."""

    kty: str
    kid: str | None = None
    alg: str | None = None
    use: str | None = None
    crv: str | None = None
    x: str | None = None
    y: str | None = None
    n: str | None = None
    e: str | None = None


class JsonWebKeySet(msgspec.Struct, frozen=True):
    keys: list[JsonWebKey]


class RevokeAllOut(msgspec.Struct, frozen=True):
    revoked: int  # how many live leases were revoked


class TaskOut(msgspec.Struct, frozen=True):
    task_id: str
    state: str
    created_at: datetime
    completed_at: datetime | None
    deadline: datetime | None
    leases: list[LeaseView]


def lease_view(lease: Lease) -> LeaseView:
    return LeaseView(
        id=lease.id,
        task_id=lease.task_id,
        owner=lease.owner,
        state=str(lease.state),
        issuer=lease.scope.issuer,
        resource=lease.scope.resource,
        actions=list(lease.scope.actions),
        issued_at=lease.issued_at,
        not_after=lease.not_after,
        purpose=lease.purpose,
        revoked_at=lease.revoked_at,
        revoke_trigger=lease.revoke_trigger,
        revoke_attempts=lease.attempts,
        overdue=lease.overdue,
    )


def task_out(view: TaskView) -> TaskOut:
    return TaskOut(
        task_id=view.task_id,
        state=view.state,
        created_at=view.created_at,
        completed_at=view.completed_at,
        deadline=view.deadline,
        leases=[lease_view(le) for le in view.leases],
    )


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


def explain_intent(data: ExplainRequest) -> Intent:
    return Intent(
        task=Task(new_task_id(), auto=True),
        scope=Scope.of(data.issuer, data.resource, data.actions),
        ttl=parse_ttl(data.ttl),
    )


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
        exports=issued.exports,
    )


def approval_out(public_url: str, view: ApprovalView, issued: Issued | None = None) -> ApprovalOut:
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
        link=f"{public_url.rstrip('/')}/v1/approvals/{view.id}",
        lease_id=issued.lease.id if issued else view.lease_id,
        credential=issued_response(issued) if issued else None,
    )
