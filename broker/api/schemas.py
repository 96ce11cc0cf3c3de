"""Wire types of the /v1 JSON API (msgspec Structs; unknown fields are rejected)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from broker.leases import TaskView
from broker.types import Lease, TaskId

__all__ = [
    "CredentialRequest",
    "CredentialResponse",
    "LeaseView",
    "TaskIn",
    "TaskOut",
    "lease_view",
    "problem",
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


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://jit-broker.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body
