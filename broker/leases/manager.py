"""The lease manager: write-ahead around mint, and the one path every revocation takes.

Issue, in two round trips to Redis::

    lease(minting) + due entry ──▶ issuer.mint() ──▶ lease(active, handle) + due at not_after
                                                     + audit records (one commit, batched)

The lease and its due entry exist before the issuer is called. If the broker dies during the
mint, the reaper finds the lease still ``minting`` after ``mint_grace`` and revokes it through
the lease-id-derived name the issuer used. If revocation begins while the mint is in flight
(the task completed, the TTL ran out), the activation records the handle and reopens the
revocation, so the credential that the mint returned is revoked too.

Revoke (explicit, task completion, TTL, workload cascade, mint clean-up) always goes through
:meth:`LeaseManager.revoke` → ``_revoke``: take the lease's revocation lock (a Lua script), call
the issuer, mark the lease ``revoked``, then settle its indexes and write ``lease.revoked`` in
one commit.

A state change and its audit record travel together; a lease whose record may not have reached
the chain (the process died in between) carries a marker, and whoever touches the lease next
(the reaper at the latest) writes the missing record, marked ``recovered``.

A failed revocation is recorded, the lease is put back on the due index after a capped,
jittered backoff, and after ``overdue_after_attempts`` it is flagged
overdue (and audited) — it is retried forever, never dropped.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from redis.exceptions import RedisClusterException, RedisError

from broker.audit import AuditEvent, AuditLog
from broker.clock import Clock, from_ms, to_ms
from broker.config import ReaperSettings
from broker.errors import (
    BrokerError,
    Conflict,
    InvalidRequest,
    IssuerError,
    IssuerUnavailable,
    NotFound,
    QuotaExceeded,
    StoreUnavailable,
)
from broker.issuer import Issuer
from broker.leases.health import IssuerHealth
from broker.leases.keys import new_lease_id, split_lease_id, task_key, validate_task_id
from broker.leases.store import LeaseRecord, LeaseStore, Quota, TaskRecord
from broker.replica import new_replica_id
from broker.retry import backoff
from broker.state.scripts import Op
from broker.types import Credential, Lease, LeaseState, MintRequest, Principal, Scope, Task

__all__ = ["IssuerSlots", "LeaseManager", "TaskView"]

log = logging.getLogger("jit.leases")

# Limits on fan-out work done inside one request (task completion, workload cascade).
_CASCADE_CONCURRENCY = 16
_MAX_LIST = 1000
_MAX_TASKS = 10_000


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


class IssuerSlots:
    """The reaper's revocations per issuer: at most ``per_issuer`` calls in flight.

    A *healthy* issuer's leases queue for its slots, up to ``window`` of them (the reaper's
    whole in-flight window): a burst of expiries on a backend that answers just waits its turn
    and is revoked as fast as the backend allows. A *degraded* issuer (its backend timed out or
    is down) gets no queue: a lease that finds every slot busy, or that finds the issuer
    degraded once its turn comes, or that would take the issuer past ``backlog``, goes back on
    the due index for ``defer`` — so one hung backend never fills the window that every other
    issuer's revocations need. ``degraded`` is asked again when a queued lease gets its slot,
    because a backend may fail while a queue waits on it."""

    def __init__(self, per_issuer: int, backlog: int, defer: timedelta, window: int = 0) -> None:
        self.per_issuer = per_issuer
        self.backlog = backlog
        self.window = max(window, backlog)
        self.defer_ms = int(defer.total_seconds() * 1000)
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._held: Counter[str] = Counter()
        self._queued: set[asyncio.Task[Any]] = set()

    def queued(self, task: asyncio.Task[Any]) -> bool:
        """``task`` waits for a slot: it has not begun its revocation (a draining reaper gives
        its claim back at once rather than wait for its turn)."""
        return task in self._queued

    @contextlib.asynccontextmanager
    async def enter(
        self, issuer: str, *, degraded: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[bool]:
        """Yields True holding one of ``issuer``'s slots, or False: defer the lease."""
        slot = self._slots.get(issuer)
        if slot is None:
            slot = self._slots[issuer] = asyncio.Semaphore(self.per_issuer)
        sick = degraded()
        limit = self.backlog if sick else self.window
        if self._held[issuer] >= limit or (sick and slot.locked()):
            yield False
            return
        queued = slot.locked()
        self._held[issuer] += 1
        me = asyncio.current_task()
        if queued and me is not None:
            self._queued.add(me)
        try:
            async with slot:
                if me is not None:
                    self._queued.discard(me)
                # It fell ill while this lease queued: do not add one more call to a backend
                # that is timing out (the lease is retried after ``defer``).
                yield not (queued and degraded())
        finally:
            if me is not None:
                self._queued.discard(me)
            self._held[issuer] -= 1


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
        health: IssuerHealth | None = None,
    ) -> None:
        self.store = store
        self.issuers = issuers
        self.audit = audit
        self.clock = clock
        self.settings = settings
        self.replica_id = replica_id or new_replica_id()
        self.health = health
        self._retention_ms = int(settings.retention.total_seconds() * 1000)
        self._grace_ms = int(settings.visibility_timeout.total_seconds() * 1000)

    async def _commit(
        self, events: list[AuditEvent], ops: list[Any], cleanup: list[Any]
    ) -> list[Any]:
        return await self.audit.commit(events, ops, cleanup=cleanup, redis=self.store.redis)

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
        detail: Mapping[str, Any] | None = None,
        decision: AuditEvent | None = None,
        parent: str | None = None,
        actors: tuple[Principal, ...] = (),
        delegable: bool = False,
        quota: Quota | None = None,
    ) -> tuple[Lease, Credential]:
        """Mint a credential for exactly ``scope`` until now + ``ttl``, as a lease of ``task``.

        ``deadline`` is the task's end if this request creates the task (see
        :meth:`task_deadline`); an expiry-only issuer's credential must not outlive the task.
        ``decision`` (the policy decision's audit record) is committed with the mint's.
        Raises Conflict if the task is completed or past its deadline, InvalidRequest for an
        unknown issuer, ScopeNotSupported from the issuer, IssuerUnavailable/IssuerError if the
        mint fails (anything it may have created is revoked).

        Delegation (ADR 0040): ``parent`` is the lease this one is delegated from (it must be
        active and of the same task: Conflict otherwise) and ``actors`` the chain, newest
        first; both are recorded on the lease and the chain goes to the issuer. ``delegable``
        keeps the principal's claims, for a lease that may itself be delegated on."""
        validate_task_id(task.id)
        issuer = self.issuers.get(scope.issuer)
        if issuer is None:
            raise InvalidRequest(f"unknown issuer {scope.issuer!r}")
        issuer.check_scope(scope)
        if self.health is not None:
            self.health.require(scope.issuer)  # degraded: 503 before anything is written
        s = self.settings
        now = self.clock.now()
        not_after = now + ttl
        tkey = task_key(principal.id, task.id)
        if lease_id is not None and split_lease_id(lease_id)[0] != tkey:
            raise InvalidRequest("lease id does not belong to this task")
        for _ in range(3):  # a fresh suffix the task already has: draw another
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
            if parent is not None and split_lease_id(parent)[0] != tkey:
                raise Conflict("a delegated credential belongs to its parent's task")
            status = await self.store.create(
                lease,
                due_ms=to_ms(min(now + s.mint_grace, not_after)),
                deadline_ms=to_ms(deadline or self.max_deadline(now)),
                bounded=not issuer.capabilities.revocable,
                retention_ms=self._retention_ms,
                keep_principal=delegable or bool(actors),
                quota=quota,
            )
            if status != "exists" or lease_id is not None:
                break
        decided = [decision] if decision is not None else []
        if status != "ok":
            if decided:
                await self._commit(decided, [], [])
            if status == "completed":
                raise Conflict(
                    f"task {task.id!r} is completed; start a new task for new credentials"
                )
            if status == "deadline":
                raise Conflict(
                    f"task {task.id!r} has reached its deadline; start a new task for new "
                    "credentials"
                )
            if status == "parent":
                raise Conflict("the credential this one is delegated from is no longer active")
            if status.startswith("quota:"):
                raise await self._quota_refused(status.removeprefix("quota:"), lease, request_id)
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
            # asyncio.timeout, not wait_for: the mint runs in this task, not a task of its own
            async with asyncio.timeout(s.issuer_timeout.total_seconds()):
                credential = await issuer.mint(request)
            _check_credential(credential, not_after)
        except Exception as exc:
            self._backend_failed(scope.issuer, exc)
            failed = self.audit.record(
                "lease.mint_failed", outcome="error", reasons=[_describe(exc)], **common
            )
            await self._commit([*decided, failed], [], [])
            await self._revoke(lease.id, "mint_failed")  # removes what the issuer may have made
            if isinstance(exc, BrokerError):
                raise
            if isinstance(exc, TimeoutError):
                raise IssuerUnavailable(f"issuer {scope.issuer!r} did not answer in time") from None
            log.error("issuer %s failed to mint: %s", scope.issuer, type(exc).__name__)
            raise IssuerError(f"issuer {scope.issuer!r} failed to mint") from None
        delegation: dict[str, Any] = {}
        if actors:  # every hop named in the record (ADR 0040)
            delegation = {"act": [a.id for a in actors], "parent_lease_id": parent}
        minted = self.audit.record(
            "lease.minted",
            detail={
                **dict(detail or {}),
                **delegation,
                "resource": scope.resource,
                "actions": list(scope.actions),
                "not_after": not_after.isoformat(),
                "ttl_seconds": int(ttl.total_seconds()),
                # what the issuer says it made (no secret, by contract): the record answers
                # "which credentials did signing key K / role R / certificate serial S come from"
                **{f"metadata.{k}": str(v) for k, v in credential.metadata.items()},
            },
            **common,
        )
        committed_ms = to_ms(self.clock.now())
        try:
            results = await self._commit(
                [*decided, minted],
                [
                    self.store.activate_op(lease.id, credential.handle, committed_ms),
                    *self.store.due_ops(lease.id, to_ms(not_after)),
                ],
                [self.store.clear_marker_op(lease.id, "minted", committed_ms)],
            )
        except StoreUnavailable:
            # The activation may or may not be in Redis (or not on enough replicas: WAIT):
            # the credential is not handed out. Revoke it now if Redis answers; otherwise the
            # write-ahead lease is still there (minting, due at the mint grace) and the
            # reaper revokes it — revoke-on-doubt.
            with contextlib.suppress(BrokerError, RedisError, RedisClusterException, OSError):
                await self._revoke(lease.id, "mint_failed")
            raise
        if _text(results[0]) != "ok":
            # Revocation began while the issuer was minting (task completed, TTL ran out).
            await self.store.schedule(lease.id, to_ms(self.clock.now()))
            await self._revoke(lease.id, "task_completed")
            raise Conflict(
                f"task {task.id!r} was completed while the credential was minted; it was revoked"
            )
        active = msgspec.structs.replace(
            lease, state=LeaseState.ACTIVE, handle=dict(credential.handle)
        )
        return active, credential

    async def _quota_refused(
        self, quota: str, lease: Lease, request_id: str | None
    ) -> QuotaExceeded:
        """The 429 for a quota, recorded (``quota.refused``, which the metrics count)."""
        now = self.clock.now()
        # A minute's mints free up with the next minute; live leases as tasks end.
        retry_after = 60 - now.second if quota.endswith("mints_per_minute") else 10
        await self.audit.emit(
            "quota.refused",
            outcome="deny",
            principal=lease.owner,
            task_id=lease.task_id,
            issuer=lease.scope.issuer,
            request_id=request_id,
            reasons=[f"quota {quota} reached"],
            detail={"quota": quota, "grant": lease.grant or ""},
        )
        who = "this workload" if quota.startswith("workload") else "this policy owner's grants"
        return QuotaExceeded(
            f"quota {quota} reached for {who}; retry in {retry_after}s",
            quota=quota,
            retry_after=retry_after,
        )

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
        split_lease_id(lease_id)  # NotFound for a malformed id
        rec = await self.store.load(lease_id)
        if rec is None or (owner is not None and rec.lease.owner != owner):
            raise NotFound("no such lease")
        return rec.lease

    async def get_with(
        self, lease_id: str, ops: Sequence[Op]
    ) -> tuple[Lease | None, TaskRecord | None, builtins.list[Any]]:
        """The lease (None if it does not exist), its task's record (None likewise) and the
        results of ``ops`` on keys of the task's hash slot: one shared round trip."""
        tkey, _ = split_lease_id(lease_id)  # NotFound for a malformed id
        task, results = await self.store.load_task_with(tkey, ops)
        if task is None:
            return None, None, results
        lease = next((r.lease for r in task.leases if r.lease.id == lease_id), None)
        return lease, task, results

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
        out: builtins.list[Lease] = []
        for tkey, task in await self._owner_tasks(owner):
            if task is None:  # its record expired after the retention window
                await self.store.forget_owner_task(owner, tkey)
                continue
            out.extend(r.lease for r in task.leases if include_inactive or r.lease.state.live)
        out.sort(key=lambda le: le.issued_at, reverse=True)
        return out[: min(limit, _MAX_LIST)]

    async def _owner_tasks(self, owner: str) -> builtins.list[tuple[str, TaskRecord | None]]:
        tkeys = await self.store.owner_tasks(owner, limit=_MAX_TASKS)
        tasks = await self.store.load_tasks(tkeys)
        return [
            (k, t if t is None or t.owner == owner else None)
            for k, t in zip(tkeys, tasks, strict=True)
        ]

    async def get_task(self, owner: str, task_id: str) -> TaskView:
        validate_task_id(task_id)
        task = await self.store.load_task(owner, task_key(owner, task_id))
        if task is None:
            raise NotFound("no such task")
        return TaskView(
            task_id=task.task_id,
            owner=owner,
            state=task.state,
            created_at=task.created_at,
            completed_at=task.completed_at,
            deadline=task.deadline,
            leases=sorted((r.lease for r in task.leases), key=lambda le: le.issued_at),
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
        in its task (one hash, one slot, no extra index). A child created concurrently is
        either in the task already or refused by the create script, which requires an active
        parent."""
        task = await self.store.load_task_by_key(split_lease_id(lease.id)[0])
        if task is None or len(task.leases) < 2:
            return
        children: dict[str, builtins.list[Lease]] = {}
        for rec in task.leases:
            if rec.lease.parent is not None:
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
        now = self.clock.now()
        ids = await self.store.complete_task(
            owner,
            task_key(owner, task_id),
            now_ms=to_ms(now),
            retention_ms=self._retention_ms,
        )
        if ids is None:
            raise NotFound("no such task")
        records = await self.store.load_many(ids)
        live = [r.lease.id for r in records if r is not None and r.lease.state.live]
        await self._revoke_all(live, "task_completed")
        await self.audit.emit(
            "task.completed", principal=owner, task_id=task_id, detail={"leases": len(ids)}
        )
        return await self.get_task(owner, task_id)

    async def revoke_workload(self, owner: str, trigger: str = "workload") -> int:
        """Revoke every live lease of ``owner`` (cascade). Returns how many were live."""
        live = [
            r.lease.id
            for _, task in await self._owner_tasks(owner)
            if task is not None
            for r in task.leases
            if r.lease.state.live
        ]
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

    async def reap(self, lease_id: str, *, slots: IssuerSlots | None = None) -> str:
        """What the reaper does with a lease id it claimed from the due index. Returns what
        happened: ``gone``, ``done``, ``rescheduled``, ``deferred`` (every slot of its issuer
        is busy: back on the due index shortly) or ``revoked``/``failed``/``busy``."""
        rec = await self.store.load(lease_id)
        if rec is None:
            await self.store.drop_due(lease_id)
            return "gone"
        lease = rec.lease
        now = self.clock.now()
        now_ms = to_ms(now)
        again = await self._recover_records(rec, now_ms)
        if not lease.state.live:
            if again is None:
                await self.store.drop_due(lease_id)
            else:  # a record that may still be on its way: look again after the grace
                await self.store.schedule(lease_id, again)
            return "done"
        not_after_ms = to_ms(lease.not_after)
        if lease.state is LeaseState.ACTIVE and not_after_ms > now_ms:
            await self.store.schedule(lease_id, min(not_after_ms, again or not_after_ms))
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
        if slots is None:
            return await self._revoke(lease_id, trigger)
        issuer = lease.scope.issuer
        health = self.health

        def degraded() -> bool:
            return health is not None and not health.healthy(issuer)

        async with slots.enter(issuer, degraded=degraded) as entered:
            if entered:
                return await self._revoke(lease_id, trigger)
        # A degraded issuer's calls are all busy (a slow or frozen backend): do not queue
        # behind it, so every other issuer's revocations go on at their own pace.
        await self.store.schedule(lease_id, now_ms + slots.defer_ms)
        return "deferred"

    async def _recover_records(self, rec: LeaseRecord, now_ms: int) -> int | None:
        """Write the audit records a state change may have lost: a marker older than the
        grace (``visibility_timeout``: far longer than a commit takes to be cleared) means the
        process died between the change and its record; the record is written now, marked
        ``recovered`` (rarely a duplicate, when only the clearing was lost). Returns when to
        look again for a marker still within its grace, or None."""
        lease = rec.lease
        events: list[AuditEvent] = []
        ops: list[Any] = []
        again: int | None = None
        pending: list[tuple[str, int]] = []
        if rec.minted_pending_ms is not None:
            pending.append(("minted", rec.minted_pending_ms))
        if rec.revoked_pending_ms is not None:
            pending.append(("revoked", rec.revoked_pending_ms))
        for kind, at_ms in pending:
            if now_ms - at_ms < self._grace_ms:
                due = at_ms + self._grace_ms
                again = due if again is None else min(again, due)
                continue
            if kind == "minted":
                name = "lease.minted"
            else:
                name = "lease.mint_cleaned" if lease.state is LeaseState.FAILED else "lease.revoked"
                # its settlement was lost with it (the owner's count is recounted by
                # reconciliation, should this repeat one that did happen)
                ops += self.store.settle_ops(
                    lease, overdue=lease.overdue, retried=lease.attempts > 0
                )[1:]
            ops.append(self.store.clear_marker_op(lease.id, kind, at_ms))
            log.warning("lease %s: writing a %s record that may have been lost", lease.id, name)
            events.append(
                self.audit.record(
                    name,
                    principal=lease.owner,
                    lease_id=lease.id,
                    task_id=lease.task_id,
                    issuer=lease.scope.issuer,
                    detail={
                        "recovered": True,
                        "committed_at_ms": at_ms,
                        "resource": lease.scope.resource,
                        "actions": list(lease.scope.actions),
                        "not_after": lease.not_after.isoformat(),
                        "trigger": lease.revoke_trigger or "",
                    },
                )
            )
        if events:
            await self._commit(events, ops, [])
        return again

    async def retry_now(self, issuer: str) -> int:
        """Put every revocation waiting in backoff for ``issuer`` back on the due index now
        (the issuer answers again). Returns how many."""
        ids = await self.store.waiting_revocations(issuer)
        if ids:
            await self.store.schedule_many(ids, to_ms(self.clock.now()))
            log.info("issuer %s answers again: retrying %d revocations now", issuer, len(ids))
        return len(ids)

    def _backend_failed(self, issuer: str, exc: BaseException) -> None:
        """A timeout or an outage at the backend degrades the issuer until it answers."""
        if self.health is not None and isinstance(exc, TimeoutError | IssuerUnavailable):
            self.health.failed(issuer, exc)

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
            await self.audit.flush()  # this process's cleared markers first
            rec = await self.store.load(lease_id)
            if rec is None:
                return "gone"
            lease = rec.lease
            # its lease.minted first (if lost), then the revocation
            again = await self._recover_records(rec, to_ms(now))
            issuer = self.issuers.get(lease.scope.issuer)
            try:
                if issuer is None:
                    raise IssuerError(f"issuer {lease.scope.issuer!r} is not configured")
                await asyncio.wait_for(issuer.revoke(lease), s.issuer_timeout.total_seconds())
            except Exception as exc:
                self._backend_failed(lease.scope.issuer, exc)
                await self._failed(rec, exc)
                return "failed"
            if self.health is not None:
                self.health.succeeded(lease.scope.issuer)
            done = self.clock.now()
            final = (
                LeaseState.FAILED
                if rec.trigger == "mint_failed" and rec.prev_state == LeaseState.MINTING.value
                else LeaseState.REVOKED
            )
            (result,) = await run_one(
                self.store,
                self.store.finish_op(
                    lease_id,
                    me=self.replica_id,
                    rev=rev,
                    now_ms=to_ms(done),
                    final=final,
                    retention_ms=self._retention_ms,
                ),
            )
            result = _text(result)
            if result == "again":
                continue
            if result != "ok":
                return "busy"  # our lock expired and another replica took over
            used_trigger = rec.trigger or trigger
            lag = (done - lease.not_after).total_seconds()
            detail: dict[str, Any] = {"trigger": used_trigger, "attempts": lease.attempts + 1}
            if used_trigger == "ttl":
                detail["lag_ms"] = int(lag * 1000)  # the metrics read it from this record
            record = self.audit.record(
                "lease.revoked" if final is LeaseState.REVOKED else "lease.mint_cleaned",
                principal=lease.owner,
                lease_id=lease_id,
                task_id=lease.task_id,
                issuer=lease.scope.issuer,
                detail=detail,
            )
            settle = self.store.settle_ops(lease, overdue=lease.overdue, retried=lease.attempts > 0)
            if again is not None:  # a lease.minted record may still be on its way: keep a
                settle = [*settle[1:], *self.store.due_ops(lease_id, again)]  # due entry
            await self._commit(
                [record], settle, [self.store.clear_marker_op(lease_id, "revoked", to_ms(done))]
            )
            return final.value
        await self.store.schedule(lease_id, to_ms(self.clock.now()))
        return "retry"

    async def _failed(self, rec: LeaseRecord, exc: BaseException) -> None:
        s = self.settings
        lease = rec.lease
        reason = _describe(exc)
        attempts, newly_overdue = await self.store.fail_revoke(
            lease.id,
            me=self.replica_id,
            error=reason,
            issuer=lease.scope.issuer,
            now_ms=to_ms(self.clock.now()),
            overdue_after=s.overdue_after_attempts,
            overdue_after_ms=int(s.overdue_after.total_seconds() * 1000),
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


async def run_one(store: LeaseStore, op: Any) -> list[Any]:
    return await store.batch([op])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_credential(credential: Credential, not_after: datetime) -> None:
    """Fail closed on an issuer that breaks the contract."""
    if credential.expires_at > not_after:
        raise IssuerError("the issuer returned a credential that outlives its lease")
    secret = credential.secret.reveal()
    if secret and any(secret in v for v in credential.handle.values()):
        raise IssuerError("the issuer put the secret in the credential's handle")
