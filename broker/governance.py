"""Session governance: every reported use of a credential is recorded and checked against its
grant's rules; a violation revokes the credential (and, by default, the rest of its task) and
raises an alert that names the rule and the evidence.

Uses come from introspection (``/oauth/introspect`` with the extension parameters
``resource``, ``action`` and ``client_address``) and from usage reports (``POST /v1/usage``).
The rules (policy ``governance:``, docs/governance.md):

- ``use_after_completion`` — used after its task completed (always checked);
- ``out_of_intent`` — used against another resource, or for an action it was not granted
  (always checked when the reporter says which);
- ``foreign_address`` — used from outside the expected networks (CIDRs and/or ``request``: the
  address that asked for it), when the grant names any;
- ``rate`` — more than ``max_uses_per_minute`` reported uses in a minute.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis

from broker.audit import AuditEvent, AuditLog
from broker.clock import Clock
from broker.errors import NotFound
from broker.leases import LeaseManager
from broker.leases.keys import task_key_of
from broker.policy.compile import DEFAULT_GOVERNANCE, GovernanceRule, PolicySet
from broker.state.scripts import Op, Script
from broker.types import Lease, LeaseState

__all__ = ["Governance", "Violation"]

log = logging.getLogger("jit.governance")

# KEYS: the use counter of one lease and minute; ARGV: its lifetime (ms). -> the count so far.
_COUNT = Script(
    """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
)


class Violation(msgspec.Struct, frozen=True):
    rule: str
    evidence: dict[str, str]


class Governance:
    def __init__(
        self,
        manager: LeaseManager,
        policy: Callable[[], PolicySet],
        redis: aioredis.Redis,
        prefix: str,
        clock: Clock,
        audit: AuditLog,
    ) -> None:
        self.manager = manager
        self.policy = policy
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self.audit = audit

    def rule_for(self, lease: Lease) -> GovernanceRule:
        grant = self.policy().grant(lease.grant) if lease.grant else None
        return grant.governance if grant is not None else DEFAULT_GOVERNANCE

    def count_op(self, lease_id: str, now: datetime) -> Op:
        """Count one use of the lease in this minute (a key in the task's hash slot, kept two
        minutes); the op's result is the count so far."""
        minute = int(now.timestamp() // 60)
        key = f"{self.prefix}:{{t:{task_key_of(lease_id)}}}:uses:{lease_id}:{minute}"
        return _COUNT.op([key], [120_000])

    async def use(
        self,
        lease_id: str,
        *,
        reporter: str,
        via: str,
        resource: str | None = None,
        action: str | None = None,
        client_address: str | None = None,
        also: Callable[[Lease], Sequence[AuditEvent]] | None = None,
    ) -> tuple[Lease | None, list[Violation]]:
        """Record one use of the lease ``lease_id`` and enforce the rules. Returns the lease as
        it was loaded (None if there is no such lease: nothing is recorded) and the violations
        found (after acting on them).

        One shared round trip loads the lease with its task and counts the use; one commit
        then records the ``lease.used`` record — together with the records ``also`` makes from
        the lease when nothing is violated (an introspection's own record), so a clean use
        costs two round trips, both shared with concurrent requests."""
        now = self.clock.now()
        lease, task, (count,) = await self.manager.get_with(
            lease_id, [self.count_op(lease_id, now)]
        )
        if lease is None:
            return None, []
        used = self.audit.record(
            "lease.used",
            principal=lease.owner,
            lease_id=lease.id,
            task_id=lease.task_id,
            issuer=lease.scope.issuer,
            detail={
                "reporter": reporter,
                "via": via,
                "resource": resource,
                "action": action,
                "client_address": client_address,
            },
        )
        completed_at = task.completed_at if task is not None and task.state == "completed" else None
        rule = self.rule_for(lease)
        violations = self._check(
            lease, rule, now, completed_at, int(count), resource, action, client_address
        )
        if not violations:
            await self.audit.commit([used, *(also(lease) if also is not None else ())])
            return lease, []
        await self.audit.commit([used])
        await self._act(lease, rule, violations, reporter)
        return lease, violations

    def _check(
        self,
        lease: Lease,
        rule: GovernanceRule,
        now: datetime,
        completed_at: datetime | None,
        uses: int,
        resource: str | None,
        action: str | None,
        client_address: str | None,
    ) -> list[Violation]:
        found: list[Violation] = []
        if completed_at is None and lease.revoke_trigger == "task_completed":
            completed_at = lease.revoked_at
        if completed_at is not None:
            found.append(
                Violation(
                    "use_after_completion",
                    {"completed_at": completed_at.isoformat(), "used_at": now.isoformat()},
                )
            )
        if resource is not None and resource != lease.scope.resource:
            found.append(
                Violation("out_of_intent", {"resource": resource, "intent": lease.scope.resource})
            )
        if action is not None and action not in lease.scope.actions:
            found.append(
                Violation(
                    "out_of_intent",
                    {"action": action, "granted": ",".join(lease.scope.actions)},
                )
            )
        checks_address = bool(rule.networks or rule.pin_request_address)
        if (
            client_address is not None
            and checks_address
            and not _address_allowed(client_address, rule, lease.origin)
        ):
            expected = [str(n) for n in rule.networks]
            if rule.pin_request_address:
                expected.append(f"request:{lease.origin or 'unknown'}")
            found.append(
                Violation(
                    "foreign_address",
                    {"address": client_address, "expected": ",".join(expected)},
                )
            )
        if uses > rule.max_uses_per_minute:
            found.append(
                Violation(
                    "rate",
                    {"uses_this_minute": str(uses), "limit": str(rule.max_uses_per_minute)},
                )
            )
        return found

    async def _act(
        self, lease: Lease, rule: GovernanceRule, violations: list[Violation], reporter: str
    ) -> None:
        action = rule.on_violation
        if any(v.rule == "use_after_completion" for v in violations) and action != "alert":
            action = "revoke_task"  # the task is over: nothing of it may live on
        names = sorted({v.rule for v in violations})
        detail: dict[str, Any] = {"rules": names, "action": action, "reporter": reporter}
        for v in violations:
            for k, val in v.evidence.items():
                detail[f"{v.rule}.{k}"] = val
        log.warning(
            "anomaly on lease %s (task %s): %s -> %s", lease.id, lease.task_id, names, action
        )
        await self.audit.emit(
            "anomaly.detected",
            outcome="deny",
            principal=lease.owner,
            lease_id=lease.id,
            task_id=lease.task_id,
            issuer=lease.scope.issuer,
            reasons=[f"{v.rule}: {_evidence(v)}" for v in violations],
            detail=detail,
        )
        if action == "alert":
            return
        trigger = f"anomaly:{names[0]}"
        targets = [lease.id]
        if action == "revoke_task":
            try:
                view = await self.manager.get_task(lease.owner, lease.task_id)
                targets = [le.id for le in view.leases if le.state.live] or targets
            except NotFound:
                pass
            if lease.id not in targets and lease.state is not LeaseState.REVOKED:
                targets.append(lease.id)
        for lease_id in targets:
            await self.manager.revoke(lease_id, trigger)


def _address_allowed(address: str, rule: GovernanceRule, origin: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if rule.pin_request_address and origin is not None and address == origin:
        return True
    return any(ip in net for net in rule.networks)


def _evidence(v: Violation) -> str:
    return ", ".join(f"{k}={val}" for k, val in sorted(v.evidence.items()))
