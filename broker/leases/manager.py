"""The lease manager: write-ahead around mint, and the one path every revocation takes.

Issue::

    due entry + lease(minting) ──▶ issuer.mint() ──▶ lease(active, handle) ──▶ due at not_after

The lease and its due entry exist before the issuer is called. If the broker dies during the
mint, the reaper finds the lease still ``minting`` after ``mint_grace`` and revokes it through
the lease-id-derived name the issuer used. If revocation begins while the mint is in flight
(the task completed, the TTL ran out), the activation records the handle and reopens the
revocation, so the credential that the mint returned is revoked too.

Revoke (explicit, task completion, TTL, workload cascade, mint clean-up) always goes through
:meth:`LeaseManager.revoke` → ``_revoke``: take the lease's revocation lock (a Lua script), call
the issuer, mark the lease ``revoked``. A failure is recorded, the lease is put back on the due
index after a capped, jittered backoff, and after ``overdue_after_attempts`` it is flagged
overdue (and audited) — it is retried forever, never dropped.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec

from broker.audit import AuditLog
from broker.clock import Clock, from_ms, to_ms
from broker.config import ReaperSettings
from broker.errors import (
    BrokerError,
    Conflict,
    InvalidRequest,
    IssuerError,
    IssuerUnavailable,
    NotFound,
)
from broker.issuer import Issuer
from broker.leases.keys import new_lease_id, task_key, task_key_of, validate_task_id
from broker.leases.store import LeaseRecord, LeaseStore
from broker.replica import new_replica_id
from broker.retry import backoff
from broker.types import Credential, Lease, LeaseState, MintRequest, Principal, Scope, Task

__all__ = ["LeaseManager", "TaskView"]

log = logging.getLogger("jit.leases")

# Limits on fan-out work done inside one request (task completion, workload cascade).
_CASCADE_CONCURRENCY = 16
_MAX_LIST = 1000


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    owner: str
    state: str  # open | completed
    created_at: datetime
    completed_at: datetime | None
    deadline: datetime | None
    leases: list[Lease]


def _describe(exc: BaseException) -> str:
    """What may be stored and logged about a failure: a broker error's message (which the
    contract keeps free of secrets); for anything else only its type."""
    if isinstance(exc, BrokerError):
        return f"{type(exc).__name__}: {exc.message}"[:500]
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


class LeaseManager:
    def __init__(
        self,
        store: LeaseStore,
        issuers: Mapping[str, Issuer],
        audit: AuditLog,
        clock: Clock,
        settings: ReaperSettings,
        *,
        replica_id: str | None = None,
    ) -> None:
        self.store = store
        self.issuers = issuers
        self.audit = audit
        self.clock = clock
        self.settings = settings
        self.replica_id = replica_id or new_replica_id()

    # -- issue ------------------------------------------------------------------------------

    async def issue(
        self,
        principal: Principal,
        task: Task,
        scope: Scope,
        ttl: timedelta,
        *,
        params: Mapping[str, str] | None = None,
        deadline: datetime | None = None,
        lease_id: str | None = None,
        cnf: Mapping[str, str] | None = None,
        grant: str | None = None,
        origin: str | None = None,
        request_id: str | None = None,
        detail: Mapping[str, str] | None = None,
        parent: str | None = None,
        actors: tuple[Principal, ...] = (),
    ) -> tuple[Lease, Credential]:
        """Mint a credential for exactly ``scope`` until now + ``ttl``, as a lease of ``task``.

        ``deadline`` is the task's end if this request creates the task (see
        :meth:`task_deadline`); an expiry-only issuer's credential must not outlive the task.
        Raises Conflict if the task is completed or past its deadline, InvalidRequest for an
        unknown issuer,
        ScopeNotSupported from the issuer, IssuerUnavailable/IssuerError if the mint fails
        (anything it may have created is revoked).

        Delegation (ADR 0040): ``parent`` is the lease this one is delegated from (it must be
        active and of the same task: Conflict otherwise) and ``actors`` the chain, newest
        first; both are recorded on the lease and the chain goes to the issuer."""
        validate_task_id(task.id)
        issuer = self.issuers.get(scope.issuer)
        if issuer is None:
            raise InvalidRequest(f"unknown issuer {scope.issuer!r}")
        issuer.check_scope(scope)
        s = self.settings
        now = self.clock.now()
        not_after = now + ttl
        tkey = task_key(principal.id, task.id)
        if lease_id is not None and task_key_of(lease_id) != tkey:
            raise InvalidRequest("lease id does not belong to this task")
        lease = Lease(
            id=lease_id or new_lease_id(tkey),
            task_id=task.id,
            owner=principal.id,
            principal=principal,
            scope=scope,
            issued_at=now,
            not_after=not_after,
            state=LeaseState.MINTING,
            purpose=task.purpose,
            cnf=dict(cnf) if cnf else None,
            grant=grant,
            origin=origin,
            parent=parent,
            actors=actors,
        )
        due = min(now + s.mint_grace, not_after)
        status = await self.store.create(
            lease,
            due_ms=to_ms(due),
            task_expire_ms=to_ms(not_after + s.retention),
            deadline_ms=to_ms(deadline or self.max_deadline(now)),
            bounded=not issuer.capabilities.revocable,
        )
        if status == "completed":
            raise Conflict(f"task {task.id!r} is completed; start a new task for new credentials")
        if status == "deadline":
            raise Conflict(
                f"task {task.id!r} has reached its deadline; start a new task for new credentials"
            )
        if status == "parent":
            raise Conflict("the credential this one is delegated from is no longer active")
        if status != "ok":
            raise Conflict(f"task {task.id!r} cannot take new leases ({status})")
        common: dict[str, Any] = {
            "principal": principal.id,
            "lease_id": lease.id,
            "task_id": task.id,
            "issuer": scope.issuer,
            "request_id": request_id,
        }
        request = MintRequest(
            lease_id=lease.id,
            task_id=task.id,
            principal=principal,
            scope=scope,
            issued_at=now,
            not_after=not_after,
            params=dict(params or {}),
            cnf=dict(cnf) if cnf else None,
            actors=actors,
        )
        try:
            credential = await asyncio.wait_for(
                issuer.mint(request), s.issuer_timeout.total_seconds()
            )
            _check_credential(credential, not_after)
        except Exception as exc:
            await self.audit.emit(
                "lease.mint_failed", outcome="error", reasons=[_describe(exc)], **common
            )
            await self._revoke(lease.id, "mint_failed")  # removes what the issuer may have made
            if isinstance(exc, BrokerError):
                raise
            if isinstance(exc, TimeoutError):
                raise IssuerUnavailable(f"issuer {scope.issuer!r} did not answer in time") from None
            log.error("issuer %s failed to mint: %s", scope.issuer, type(exc).__name__)
            raise IssuerError(f"issuer {scope.issuer!r} failed to mint") from None
        result = await self.store.activate(lease.id, credential.handle, due_ms=to_ms(not_after))
        if result != "ok":
            # Revocation began while the issuer was minting (task completed, TTL ran out).
            await self.store.schedule(lease.id, to_ms(self.clock.now()))
            await self._revoke(lease.id, "task_completed")
            raise Conflict(
                f"task {task.id!r} was completed while the credential was minted; it was revoked"
            )
        delegation: dict[str, Any] = {}
        if actors:  # every hop named in the record (ADR 0040)
            delegation = {"act": [a.id for a in actors], "parent_lease_id": parent}
        await self.audit.emit(
            "lease.minted",
            detail={
                **dict(detail or {}),
                **delegation,
                "resource": scope.resource,
                "actions": list(scope.actions),
                "not_after": not_after.isoformat(),
                "ttl_seconds": int(ttl.total_seconds()),
            },
            **common,
        )
        active = msgspec.structs.replace(
            lease, state=LeaseState.ACTIVE, handle=dict(credential.handle)
        )
        return active, credential

    def plan_lease_id(self, owner: str, task_id: str) -> str:
        """A fresh lease id for ``owner``'s task, to record before :meth:`issue` is called
        with it (an approved request records it so a crashed mint can be found)."""
        return new_lease_id(task_key(owner, task_id))

    def max_deadline(self, now: datetime) -> datetime:
        return now + timedelta(days=3650)  # effectively none (only for direct callers)

    async def task_deadline(self, owner: str, task: Task, *, default: timedelta) -> datetime:
        """The task's deadline: the stored one for an existing task, else now + its declared
        ``ttl`` (or ``default``). Raises Conflict when it has passed."""
        validate_task_id(task.id)
        now = self.clock.now()
        stored = await self.store.task_deadline_ms(task_key(owner, task.id), owner)
        if stored is None:
            return now + (task.ttl or default)
        deadline = from_ms(stored)
        if deadline <= now:
            raise Conflict(
                f"task {task.id!r} has reached its deadline; start a new task for new credentials"
            )
        return deadline

    # -- read -------------------------------------------------------------------------------

    async def get(self, lease_id: str, *, owner: str | None = None) -> Lease:
        """The lease; NotFound if it does not exist or (with ``owner``) is not the owner's."""
        task_key_of(lease_id)  # NotFound for a malformed id
        rec = await self.store.load(lease_id)
        if rec is None or (owner is not None and rec.lease.owner != owner):
            raise NotFound("no such lease")
        return rec.lease

    async def get_visible(self, lease_id: str, caller: str) -> Lease:
        """The lease, for its owner or for an actor of its delegation chain (who holds it, or
        delegated it on); NotFound for anyone else, exactly like a lease that does not exist."""
        lease = await self.get(lease_id)
        if lease.owner != caller and caller not in {a.id for a in lease.actors}:
            raise NotFound("no such lease")
        return lease

    async def list(
        self, owner: str, *, include_inactive: bool = False, limit: int = _MAX_LIST
    ) -> builtins.list[Lease]:
        """The owner's leases, newest first: live ones, and with ``include_inactive`` those
        finished within the retention window."""
        ids = await self.store.owner_lease_ids(
            owner, include_done=include_inactive, limit=min(limit, _MAX_LIST)
        )
        out: builtins.list[Lease] = []
        seen: set[str] = set()
        for lid, rec in zip(ids, await self.store.load_many(ids), strict=True):
            if rec is None:  # its record expired after the retention window
                await self.store.forget_owner_entry(owner, lid)
                continue
            if lid in seen or rec.lease.owner != owner:
                continue
            seen.add(lid)
            if include_inactive or rec.lease.state.live:
                out.append(rec.lease)
        return out

    async def get_task(self, owner: str, task_id: str) -> TaskView:
        validate_task_id(task_id)
        task = await self.store.load_task(owner, task_key(owner, task_id))
        if task is None:
            raise NotFound("no such task")
        records = await self.store.load_many(task.lease_ids)
        return TaskView(
            task_id=task.task_id,
            owner=owner,
            state=task.state,
            created_at=task.created_at,
            completed_at=task.completed_at,
            deadline=task.deadline,
            leases=sorted((r.lease for r in records if r), key=lambda le: le.issued_at),
        )

    async def overdue(self, limit: int = 100) -> builtins.list[Lease]:
        ids = await self.store.overdue_ids(limit)
        return [r.lease for r in await self.store.load_many(ids) if r]

    # -- revoke -----------------------------------------------------------------------------

    async def revoke(self, lease_id: str, trigger: str, *, owner: str | None = None) -> Lease:
        """Revoke one lease (idempotent). Returns it ``revoked``, or ``revoking`` if the issuer
        failed (it will be retried) or another replica is revoking it right now."""
        lease = await self.get(lease_id, owner=owner)
        if lease.state.live:
            await self._revoke(lease_id, trigger)
        await self._revoke_descendants(lease)
        return await self.get(lease_id)

    async def _revoke_descendants(self, lease: Lease) -> None:
        """Revoke every lease delegated from ``lease``, at any depth (ADR 0040). They all live
        in its task, so this walks the task's lease set: one slot, no extra index. A child
        created concurrently is either in the set already or refused by the create script,
        which requires an active parent."""
        task = await self.store.load_task(lease.owner, task_key_of(lease.id))
        if task is None or len(task.lease_ids) < 2:
            return
        children: dict[str, builtins.list[Lease]] = {}
        for rec in await self.store.load_many(task.lease_ids):
            if rec is not None and rec.lease.parent is not None:
                children.setdefault(rec.lease.parent, []).append(rec.lease)
        found: builtins.list[str] = []
        todo = [lease.id]
        while todo:
            for child in children.pop(todo.pop(), []):
                todo.append(child.id)
                if child.state.live:
                    found.append(child.id)
        await self._revoke_all(found, "parent_revoked")

    async def complete_task(self, owner: str, task_id: str) -> TaskView:
        """Close the task to new credentials and revoke every lease of it. Idempotent."""
        validate_task_id(task_id)
        s = self.settings
        now = self.clock.now()
        ids = await self.store.complete_task(
            owner,
            task_key(owner, task_id),
            now_ms=to_ms(now),
            expire_ms=to_ms(now + s.retention),
        )
        if ids is None:
            raise NotFound("no such task")
        await self._revoke_all(ids, "task_completed")
        await self.audit.emit(
            "task.completed", principal=owner, task_id=task_id, detail={"leases": len(ids)}
        )
        return await self.get_task(owner, task_id)

    async def revoke_workload(self, owner: str, trigger: str = "workload") -> int:
        """Revoke every live lease of ``owner`` (cascade). Returns how many were live."""
        ids = await self.store.owner_lease_ids(owner, include_done=False, limit=1_000_000)
        records = await self.store.load_many(ids)
        live = [r.lease.id for r in records if r and r.lease.owner == owner and r.lease.state.live]
        await self._revoke_all(live, trigger)
        await self.audit.emit(
            "workload.revoked", principal=owner, detail={"leases": len(live), "trigger": trigger}
        )
        return len(live)

    async def _revoke_all(self, lease_ids: builtins.list[str], trigger: str) -> None:
        sem = asyncio.Semaphore(_CASCADE_CONCURRENCY)

        async def one(lid: str) -> None:
            async with sem:
                await self._revoke(lid, trigger)

        await asyncio.gather(*(one(lid) for lid in lease_ids))

    async def reap(self, lease_id: str) -> str:
        """What the reaper does with a lease id it claimed from the due index. Returns what
        happened: ``gone``, ``done``, ``rescheduled`` or ``revoked``/``failed``/``busy``."""
        rec = await self.store.load(lease_id)
        if rec is None:
            await self.store.drop_due(lease_id)
            return "gone"
        lease = rec.lease
        if not lease.state.live:
            await self.store.drop_due(lease_id)
            return "done"
        now = self.clock.now()
        now_ms = to_ms(now)
        not_after_ms = to_ms(lease.not_after)
        if lease.state is LeaseState.ACTIVE and not_after_ms > now_ms:
            await self.store.schedule(lease_id, not_after_ms)
            return "rescheduled"
        if lease.state is LeaseState.MINTING:
            grace_ms = rec.created_ms + int(self.settings.mint_grace.total_seconds() * 1000)
            if min(grace_ms, not_after_ms) > now_ms:
                await self.store.schedule(lease_id, min(grace_ms, not_after_ms))
                return "rescheduled"
        if lease.state is LeaseState.REVOKING:
            if rec.locker and rec.locker != self.replica_id and rec.lock_until_ms > now_ms:
                await self.store.schedule(lease_id, rec.lock_until_ms)
                return "busy"
            trigger = rec.trigger or "ttl"
        elif lease.state is LeaseState.MINTING and not_after_ms > now_ms:
            trigger = "mint_timeout"
        else:
            trigger = "ttl"
        return await self._revoke(lease_id, trigger)

    async def _revoke(self, lease_id: str, trigger: str) -> str:
        """The one revocation path. Returns revoked | failed | busy | done | gone | retry."""
        s = self.settings
        for _ in range(3):  # "again": the handle arrived while we revoked without it
            now = self.clock.now()
            status, rev = await self.store.begin_revoke(
                lease_id,
                me=self.replica_id,
                now_ms=to_ms(now),
                lock_until_ms=to_ms(now + s.visibility_timeout),
                trigger=trigger,
            )
            if status == "busy":
                return "busy"
            if status != "ok":
                return "gone" if status == "missing" else "done"
            rec = await self.store.load(lease_id)
            if rec is None:
                return "gone"
            lease = rec.lease
            issuer = self.issuers.get(lease.scope.issuer)
            try:
                if issuer is None:
                    raise IssuerError(f"issuer {lease.scope.issuer!r} is not configured")
                await asyncio.wait_for(issuer.revoke(lease), s.issuer_timeout.total_seconds())
            except Exception as exc:
                await self._failed(rec, exc)
                return "failed"
            done = self.clock.now()
            final = (
                LeaseState.FAILED
                if rec.trigger == "mint_failed" and rec.prev_state == LeaseState.MINTING.value
                else LeaseState.REVOKED
            )
            result = await self.store.finish_revoke(
                lease_id,
                me=self.replica_id,
                rev=rev,
                now_ms=to_ms(done),
                final=final,
                retention_ms=int(s.retention.total_seconds() * 1000),
            )
            if result == "again":
                continue
            if result != "ok":
                return "busy"  # our lock expired and another replica took over
            await self.store.settle(
                lease_id,
                lease.owner,
                done_ms=to_ms(done),
                retention_ms=int(s.retention.total_seconds() * 1000),
                overdue=lease.overdue,
            )
            used_trigger = rec.trigger or trigger
            lag = (done - lease.not_after).total_seconds()
            detail: dict[str, Any] = {"trigger": used_trigger, "attempts": lease.attempts + 1}
            if used_trigger == "ttl":
                detail["lag_ms"] = int(lag * 1000)  # the metrics read it from this record
            await self.audit.emit(
                "lease.revoked" if final is LeaseState.REVOKED else "lease.mint_cleaned",
                principal=lease.owner,
                lease_id=lease_id,
                task_id=lease.task_id,
                issuer=lease.scope.issuer,
                detail=detail,
            )
            return final.value
        await self.store.schedule(lease_id, to_ms(self.clock.now()))
        return "retry"

    async def _failed(self, rec: LeaseRecord, exc: BaseException) -> None:
        s = self.settings
        lease = rec.lease
        reason = _describe(exc)
        attempts, newly_overdue = await self.store.fail_revoke(
            lease.id, me=self.replica_id, error=reason, overdue_after=s.overdue_after_attempts
        )
        if attempts < 0:
            return  # another replica holds the lease now
        delay = backoff(attempts, base=s.backoff_base, cap=s.backoff_cap)
        await self.store.schedule(lease.id, to_ms(self.clock.now() + delay))
        log.warning(
            "revoking lease %s at issuer %s failed (attempt %d, retry in %.1fs): %s",
            lease.id,
            lease.scope.issuer,
            attempts,
            delay.total_seconds(),
            reason,
        )
        common: dict[str, Any] = {
            "principal": lease.owner,
            "lease_id": lease.id,
            "task_id": lease.task_id,
            "issuer": lease.scope.issuer,
        }
        await self.audit.emit(
            "lease.revoke_failed",
            outcome="error",
            reasons=[reason],
            detail={"attempts": attempts, "retry_in_ms": int(delay.total_seconds() * 1000)},
            **common,
        )
        if newly_overdue:
            await self.store.mark_overdue(lease.id)
            log.error("lease %s is overdue: %d failed revocations", lease.id, attempts)
            await self.audit.emit(
                "lease.overdue",
                outcome="error",
                reasons=[reason],
                detail={"attempts": attempts},
                **common,
            )


def _check_credential(credential: Credential, not_after: datetime) -> None:
    """Fail closed on an issuer that breaks the contract."""
    if credential.expires_at > not_after:
        raise IssuerError("the issuer returned a credential that outlives its lease")
    secret = credential.secret.reveal()
    if secret and any(secret in v for v in credential.handle.values()):
        raise IssuerError("the issuer put the secret in the credential's handle")
