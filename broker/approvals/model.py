"""Approval requests as values: states, reviews, and the view every layer shares.

An approval request is opened when a request falls inside a grant with ``approval:`` set. It is
decided by humans (in Slack or through the API/CLI); once approved, the credential is minted once,
for the approved scope, when the workload collects it. A contract module for the approval layer:
imports only ``broker.types``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from broker.types import Principal, Scope, Task

__all__ = ["ApprovalState", "ApprovalView", "Review"]


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self is not ApprovalState.PENDING


class Review(msgspec.Struct, frozen=True, kw_only=True):
    """One approver's decision. An approval may narrow the request: a shorter ``ttl`` and/or a
    subset of the ``actions``; never wider."""

    person: str  # the approver's name from config (approvals.people)
    decision: Literal["approve", "deny"]
    at: datetime
    via: Literal["slack", "api"] = "api"
    ttl: timedelta | None = None
    actions: tuple[str, ...] | None = None
    reason: str = ""


class ApprovalView(msgspec.Struct, frozen=True, kw_only=True):
    """An approval request as stored and shown. Never holds a secret."""

    id: str
    state: ApprovalState
    owner: str  # the requesting workload's Principal.id
    principal: Principal
    task: Task
    scope: Scope  # what was asked for
    ttl: timedelta  # what was asked for (or the grant's default)
    grant: str  # "<owner>/<grant name>"
    grant_owner: str  # the policy document's owner (a team or person)
    policy_version: str
    approvers: tuple[str, ...]  # the people (names) who may approve
    quorum: int
    reviews: tuple[Review, ...] = ()
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    on_behalf_of: str | None = None  # the person an agent acts for, when the request names one
    requester_people: tuple[str, ...] = ()  # people behind the request: they cannot approve it
    channel: str | None = None  # Slack channel for the request message
    slack_ts: str | None = None  # the Slack message, once posted
    approved_scope: Scope | None = None  # the scope approved (<= scope), once approved
    approved_ttl: timedelta | None = None  # the TTL approved (<= ttl), once approved
    lease_id: str | None = None  # the credential's lease, once minted
    params: dict[str, str] = msgspec.field(default_factory=dict)  # the request's issuer inputs
    cnf: dict[str, str] | None = None  # the DPoP key the credential will be bound to

    @property
    def approvals(self) -> tuple[Review, ...]:
        return tuple(r for r in self.reviews if r.decision == "approve")

    @property
    def needed(self) -> int:
        """Approvals still needed."""
        return max(0, self.quorum - len(self.approvals))
