"""The calls ``jit mcp`` makes to the broker, as a Protocol, and what they return.

These are exactly the calls the MCP tools need. Today :mod:`broker.mcp.http_adapter` implements
them over HTTP; once the workload SDK (``broker.client``) is on main, an adapter over it
replaces that module and nothing else here changes. Errors are the contract's
(:mod:`broker.errors`): ``PermissionDenied`` (policy or an approver said no), ``Conflict``
(the task is completed, an approval expired), ``NotFound``, ``InvalidRequest``,
``AuthenticationError``, and :class:`BrokerUnavailable` for a broker that does not answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from broker.errors import BrokerError
from broker.types import Secret

__all__ = ["BrokerPort", "BrokerUnavailable", "Explanation", "Granted", "LeaseInfo", "Pending"]


class BrokerUnavailable(BrokerError):
    """The broker did not answer (network, timeout, 5xx). Retryable."""

    status = 503
    code = "broker-unavailable"


@dataclass(frozen=True)
class Granted:
    """A minted credential. ``secret`` stays a :class:`Secret` until it is delivered."""

    lease_id: str
    task_id: str
    issuer: str
    resource: str
    actions: list[str]
    expires_at: datetime
    token_type: str
    secret: Secret
    grant: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    """A request waiting for a human's approval."""

    approval_id: str
    state: str
    grant: str
    needed: int
    expires_at: datetime
    link: str


@dataclass(frozen=True)
class LeaseInfo:
    id: str
    state: str
    issuer: str
    resource: str
    actions: list[str]
    not_after: datetime


@dataclass(frozen=True)
class Explanation:
    decision: str  # allow | approval_required | deny
    reasons: list[str]
    grant: str | None
    ttl: int | None
    reveal_to_model: bool


class BrokerPort(Protocol):
    async def request(
        self,
        *,
        task_id: str,
        purpose: str,
        issuer: str,
        resource: str,
        actions: list[str],
        ttl: int | None,
        task_ttl: int | None,
        delivery: str,
        idempotency_key: str,
    ) -> Granted | Pending:
        """Ask for a credential in ``task_id`` (created by its first request, which also sets
        how long the task may run: ``task_ttl`` seconds, None for the broker's default)."""
        ...

    async def approval(self, approval_id: str, *, wait: int = 0) -> Granted | Pending:
        """An approval request of the caller's: still pending (after waiting up to ``wait``
        seconds for a decision), or its credential (minted once). PermissionDenied when
        denied, Conflict when it expired."""
        ...

    async def leases(self, task_id: str) -> list[LeaseInfo]:
        """The task's leases (empty for a task that has none yet)."""
        ...

    async def revoke(self, lease_id: str) -> LeaseInfo: ...

    async def explain(
        self, *, issuer: str, resource: str, actions: list[str], ttl: int | None
    ) -> Explanation: ...

    async def complete(self, task_id: str) -> int:
        """Complete the task (revoking its leases); how many leases it had. 0 for a task
        that was never created."""
        ...

    async def aclose(self) -> None: ...
