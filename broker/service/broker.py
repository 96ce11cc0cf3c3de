"""The assembled broker: its parts, its use cases, and their lifecycle. Built by
:func:`broker.service.wiring.build_broker`; driven by the HTTP API (broker.api) and the CLI.

Use cases, one module each:

- :class:`~broker.service.callers.Callers` — who is calling (workloads, clients, approvers, DPoP)
- :class:`~broker.service.issuance.Issuance` — a credential request: decide, approve, mint
- :class:`~broker.service.workloads.Workloads` — a workload's own leases and tasks
- :class:`~broker.service.tokens.Tokens` — introspection, revocation, usage reports (OAuth)
- :class:`~broker.service.approval_desk.ApprovalDesk` — approvals' inbound edge (API, Slack)
- :class:`~broker.service.documents.Documents` — JWKS and issuers' public documents

Background work (the reaper, the approval sweep, audit delivery, Shared Signals, the key
rotation watcher) runs under one :class:`~broker.service.supervisor.Supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from broker.approvals import Approvals
from broker.audit import AuditLog
from broker.clock import Clock
from broker.config import Settings
from broker.governance import Governance
from broker.identity import DevIdentityIssuer, TokenVerifier
from broker.identity.dpop import DPoPVerifier
from broker.issuer import Issuer
from broker.leases import LeaseManager, Reaper
from broker.leases.health import IssuerHealth
from broker.metrics import Metrics
from broker.policy import PolicySet
from broker.service.approval_desk import ApprovalDesk
from broker.service.callers import Callers
from broker.service.documents import Documents
from broker.service.idempotency import Idempotency
from broker.service.issuance import Issuance
from broker.service.policy import LivePolicy
from broker.service.reconcile import Reconciler
from broker.service.stateguard import StateGuard
from broker.service.supervisor import Supervisor
from broker.service.tokens import Tokens
from broker.service.workloads import Workloads
from broker.ssf import SsfTransmitter
from broker.types import Secret

__all__ = ["Broker"]

log = logging.getLogger("jit.broker")


@dataclass
class Broker:
    settings: Settings
    clock: Clock
    redis: aioredis.Redis
    issuers: Mapping[str, Issuer]
    health: IssuerHealth
    audit: AuditLog
    live_policy: LivePolicy
    verifier: TokenVerifier
    dpop: DPoPVerifier
    manager: LeaseManager
    reaper: Reaper
    approvals: Approvals
    governance: Governance
    metrics: Metrics
    # use cases
    callers: Callers
    issuance: Issuance
    workloads: Workloads
    tokens: Tokens
    desk: ApprovalDesk
    documents: Documents
    guard: StateGuard
    reconciler: Reconciler
    idempotency: Idempotency
    supervisor: Supervisor
    ssf: SsfTransmitter | None = None
    dev_identity: DevIdentityIssuer | None = None
    metrics_token: Secret | None = None  # None: /metrics is open in dev, off otherwise
    # SIGTERM was received: /readyz answers 503 while the replica still serves (ADR 0051).
    draining: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def policy(self) -> PolicySet:
        """The running policy (replaced by :meth:`reload_policy`)."""
        return self.live_policy.current

    async def reload_policy(self) -> bool:
        """Load the policy directory again (SIGHUP under `jit serve`); a directory that does
        not load leaves the running policy in place. Both outcomes are audited."""
        return await self.live_policy.reload()

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Readiness: this replica serves while Redis answers and has not lost the broker's
        state (broker.service.stateguard). Each issuer's health is reported
        (``ok`` or ``degraded: …``) but a degraded issuer does not make the replica unready:
        its requests get 503s while every other issuer keeps issuing and the reaper revokes."""
        checks: dict[str, str] = {}
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except (RedisError, OSError) as exc:
            checks["redis"] = f"unavailable: {exc.__class__.__name__}"
        checks.update(self.health.report())
        checks["state"] = "lost: run `jit state accept`" if self.guard.lost else "ok"
        if self.draining:
            checks["shutdown"] = "draining"
        return checks["redis"] == "ok" and not self.guard.lost and not self.draining, checks

    def drain(self) -> None:
        """Readiness goes false at once (a load balancer stops sending new requests); the
        replica keeps serving. Safe to call from a signal handler."""
        self.draining = True

    def stop_accepting(self) -> None:
        """The server stops taking connections: approval long-polls answer what they have."""
        self.draining = True
        self.desk.closing = True

    async def start(self) -> None:
        """Start the background components (idempotent)."""
        self.supervisor.start()

    async def aclose(self) -> None:
        """Stop the background work, then close every part (each at most once)."""
        if self._closed:
            return
        self._closed = True
        await self.supervisor.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.approvals.idle(), timeout=5)
        if self.approvals.notifier is not None:
            with contextlib.suppress(Exception):
                await self.approvals.notifier.aclose()
        for issuer in self.issuers.values():
            with contextlib.suppress(Exception):
                await issuer.aclose()
        if self.ssf is not None:
            with contextlib.suppress(Exception):
                await self.ssf.aclose()
        await self.verifier.aclose()
        await self.audit.aclose()
        await self.redis.aclose()
