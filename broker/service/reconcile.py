"""Reconciliation: no credential lives at a backend unless a live lease owns it.

Issuers that can list what they minted (``Inventoried``: Redis ACL users, PostgreSQL roles)
are asked for it; every listed credential whose lease is missing or finished is revoked at the
issuer (with an empty handle: the issuer finds it by the lease id, as after a crashed mint) and
recorded as ``reconcile.revoked``. The write-ahead lease (``minting``) exists before the
issuer creates anything, so a mint in flight is never mistaken for an orphan.

This is what closes the gap a Redis that lost its data (no persistence, a failover to an
empty replica) would leave: leases gone, their backend credentials still alive with nothing
left to revoke them. It runs at start, every ``reconcile_interval`` (one replica at a time, by
a lock in Redis), and on demand (``jit reconcile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from broker.audit import AuditLog
from broker.clock import Clock
from broker.errors import NotFound
from broker.issuer import Inventoried, Issuer
from broker.leases import LeaseManager
from broker.leases.keys import task_key_of
from broker.types import Lease, LeaseState, Principal, Scope

__all__ = ["ReconcileReport", "Reconciler"]

log = logging.getLogger("jit.reconcile")

_NOBODY = Principal(id="jit:reconcile", issuer="jit", subject="reconcile")


@dataclass
class ReconcileReport:
    """Per issuer: credentials listed, orphans found, orphans revoked, errors."""

    listed: dict[str, int] = field(default_factory=dict)
    orphans: dict[str, list[str]] = field(default_factory=dict)
    revoked: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.errors and all(
            self.revoked.get(n, 0) == len(ids) for n, ids in self.orphans.items()
        )


class Reconciler:
    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        manager: LeaseManager,
        audit: AuditLog,
        clock: Clock,
        redis: aioredis.Redis,
        prefix: str,
        *,
        interval: timedelta = timedelta(minutes=10),
        first_delay: timedelta = timedelta(seconds=30),
        timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self.issuers = issuers
        self.manager = manager
        self.audit = audit
        self.clock = clock
        self.redis = redis
        self.lock_key = f"{prefix}:{{reconcile}}:lock"
        self.interval = interval
        self.first_delay = first_delay
        self.timeout = timeout

    async def reconcile(self, *, dry_run: bool = False) -> ReconcileReport:
        """One pass over every issuer that can list its credentials."""
        report = ReconcileReport()
        for name, issuer in self.issuers.items():
            if not isinstance(issuer, Inventoried):
                continue
            try:
                listed = await asyncio.wait_for(issuer.inventory(), self.timeout.total_seconds())
            except Exception as exc:
                report.errors[name] = f"cannot list: {type(exc).__name__}"
                log.warning("reconcile: issuer %s cannot be listed (%s)", name, type(exc).__name__)
                continue
            report.listed[name] = len(listed)
            orphans = [lid for lid in listed if not await self._owned(lid)]
            report.orphans[name] = orphans
            report.revoked[name] = 0
            if dry_run:
                continue
            for lease_id in orphans:
                try:
                    await asyncio.wait_for(
                        issuer.revoke(_orphan(lease_id, name, self.clock)),
                        self.timeout.total_seconds(),
                    )
                except Exception as exc:
                    report.errors[name] = f"revoke failed: {type(exc).__name__}"
                    continue
                report.revoked[name] += 1
                log.warning(
                    "reconcile: revoked an orphaned credential of %s (lease %s)", name, lease_id
                )
                await self.audit.emit(
                    "reconcile.revoked",
                    outcome="error",
                    lease_id=lease_id,
                    issuer=name,
                    reasons=["the backend held a credential that no live lease owns"],
                )
        return report

    async def _owned(self, lease_id: str) -> bool:
        """True when a live lease owns ``lease_id`` (or it is not a broker lease id at all,
        which reconciliation never touches)."""
        try:
            task_key_of(lease_id)
        except NotFound:
            return True
        try:
            lease = await self.manager.get(lease_id)
        except NotFound:
            return False
        return lease.state.live

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile after ``first_delay``, then every ``interval``, one replica at a time."""
        wait = self.first_delay
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait.total_seconds())
            if stop.is_set():
                return
            wait = self.interval
            token = secrets.token_hex(8)
            try:
                lock_ms = int((self.interval / 2).total_seconds() * 1000)
                if not await self.redis.set(self.lock_key, token, nx=True, px=lock_ms):
                    continue  # another replica reconciles this round
                report = await self.reconcile()
                if report.errors:
                    log.warning("reconcile: %s", report.errors)
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("reconcile: Redis unavailable (%s)", type(exc).__name__)


def _orphan(lease_id: str, issuer: str, clock: Clock) -> Lease:
    """What an issuer's revoke() needs for a credential without a lease: its id (the name
    derives from it) and an empty handle, as after a crashed mint."""
    now = clock.now()
    return Lease(
        id=lease_id,
        task_id="",
        owner=_NOBODY.id,
        principal=_NOBODY,
        scope=Scope(issuer=issuer, resource="", actions=()),
        issued_at=now,
        not_after=now,
        state=LeaseState.REVOKING,
    )
