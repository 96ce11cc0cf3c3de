"""The SDK's values: what the /v1 API answers, decoded (unknown fields are ignored, so a newer
broker does not break an older SDK), and the :class:`Credential`, whose secret stays a
:class:`broker.types.Secret` (redacted ``repr``; ``.reveal()`` at the point of use)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from broker.types import Secret

__all__ = [
    "Approval",
    "Credential",
    "Explanation",
    "ExportSource",
    "Exports",
    "LeaseInfo",
    "Review",
    "TaskInfo",
]


class ExportSource(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, repr_omit_defaults=True
):
    """Where one exported value comes from (the wire form of ``broker.issuer.ExportSource``):
    exactly one field is set."""

    secret: bool = False
    member: str | None = None
    metadata: str | None = None
    value: str | None = None
    file: str | None = None
    private_key: bool = False
    document: str | None = None


class Exports(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How the issuer maps a credential onto a process: env vars and 0600 files."""

    env: dict[str, ExportSource] = msgspec.field(default_factory=dict)
    files: dict[str, ExportSource] = msgspec.field(default_factory=dict)


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    """One credential and its lease. ``secret`` is a :class:`Secret`; ``private_key`` is the
    key the SDK generated for it (``generate_key=``), which never left this process."""

    lease_id: str
    task_id: str
    issuer: str
    resource: str
    actions: tuple[str, ...]
    expires_at: datetime
    token_type: str
    secret: Secret
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    issued_at: datetime | None = None
    ttl: int = 0
    grant: str = ""
    policy_version: str = ""
    ttl_capped_by: str | None = None
    exports: Exports | None = None
    private_key: Secret | None = None
    approval_id: str | None = None  # the approval request it was minted for, if any
    replayed: bool = False  # an Idempotency-Key replay of an earlier answer


class LeaseInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as ``GET /v1/leases/{id}`` shows it (never the secret)."""

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


class Explanation(msgspec.Struct, frozen=True, kw_only=True):
    """What the policy would answer this workload for a request (``POST /v1/explain``);
    nothing is minted. ``decision`` is ``allow``, ``approval_required`` or ``deny``."""

    decision: str
    reasons: list[str]
    policy_version: str = ""
    grant: str | None = None
    ttl: int | None = None  # seconds the credential would live (before issuer caps)
    reveal_to_model: bool = False  # the grant allows delivery to an AI model
    delegation_max_depth: int | None = None


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    state: str
    created_at: datetime
    completed_at: datetime | None = None
    deadline: datetime | None = None
    leases: list[LeaseInfo] = msgspec.field(default_factory=list)


class Review(msgspec.Struct, frozen=True, kw_only=True):
    person: str
    decision: str
    at: datetime
    via: str
    ttl: int | None = None
    actions: list[str] | None = None
    reason: str = ""


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    """An approval request (``/v1/approvals/{id}``). ``link`` is where it is shown."""

    approval_id: str
    state: str  # pending | approved | denied | expired | cancelled
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
    reviews: list[Review]
    created_at: datetime
    expires_at: datetime
    link: str
    decided_at: datetime | None = None
    on_behalf_of: str | None = None
    lease_id: str | None = None


# -- the wire, where the secret is still a str ------------------------------------------------


class _CredentialOut(msgspec.Struct, frozen=True):
    token_type: str
    secret: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class CredentialWire(msgspec.Struct, frozen=True, kw_only=True):
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
    credential: _CredentialOut
    ttl_capped_by: str | None = None
    exports: Exports | None = None

    def value(
        self,
        *,
        private_key: Secret | None = None,
        approval_id: str | None = None,
        replayed: bool = False,
    ) -> Credential:
        return Credential(
            lease_id=self.lease_id,
            task_id=self.task_id,
            issuer=self.issuer,
            resource=self.resource,
            actions=tuple(self.actions),
            expires_at=self.expires_at,
            token_type=self.credential.token_type,
            secret=Secret(self.credential.secret),
            metadata=dict(self.credential.metadata),
            issued_at=self.issued_at,
            ttl=self.ttl,
            grant=self.grant,
            policy_version=self.policy_version,
            ttl_capped_by=self.ttl_capped_by,
            exports=self.exports,
            private_key=private_key,
            approval_id=approval_id,
            replayed=replayed,
        )


class ApprovalWire(Approval, frozen=True, kw_only=True):
    credential: CredentialWire | None = None  # once approved, to its owner, once

    def view(self) -> Approval:
        fields = {f: getattr(self, f) for f in Approval.__struct_fields__}
        return Approval(**fields)
