"""The approval flow: open (or merge) a request, decide it, expire it, mint once when approved.

HTTP-free. The broker calls :meth:`Approvals.open` when policy answers NeedsApproval,
:meth:`Approvals.review` for each human decision (Slack, API or CLI), :meth:`Approvals.sweep`
from its background loop (expiry, Slack retries), and :meth:`Approvals.claim_mint` /
:meth:`Approvals.mark_minted` around the one mint of an approved request.

Slack is a notifier, never the source of truth: if it is down the request stays pending, the post
is retried with backoff, and it can be decided through the API meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

import msgspec
from redis.exceptions import RedisClusterException, RedisError

from broker.approvals.model import ApprovalState, ApprovalView, Review
from broker.approvals.people import People
from broker.approvals.store import ApprovalStore
from broker.audit import AuditLog
from broker.clock import Clock, to_ms
from broker.config import ApprovalSettings
from broker.errors import BrokerError, Conflict, InvalidRequest, NotFound, PermissionDenied
from broker.policy.compile import ApprovalRule
from broker.retry import backoff
from broker.types import Intent, Principal, Scope

__all__ = ["Approvals", "Notifier", "TooManyPending"]

log = logging.getLogger("jit.approvals")

_ID_CHARS = frozenset("0123456789abcdef")
_RETENTION = timedelta(days=1)  # decided requests stay readable this long
_MERGE_GRACE = timedelta(minutes=5)  # an identical request sees the outcome this long
_POST_BACKOFF_BASE = timedelta(seconds=5)
_POST_BACKOFF_CAP = timedelta(minutes=5)


class TooManyPending(BrokerError):
    status = 429
    code = "too-many-pending"
    oauth_error = "slow_down"


class SlackRefLike(Protocol):
    channel: str
    ts: str


class Notifier(Protocol):
    """What the approval flow needs from Slack (broker.approvals.slack.SlackNotifier)."""

    async def post_request(self, a: ApprovalView, channel: str) -> Any: ...

    async def update_request(self, a: ApprovalView) -> None: ...

    async def post_review(self, a: ApprovalView, review: Review) -> None: ...

    async def notify_people(self, slack_user_ids: Sequence[str], a: ApprovalView) -> None: ...

    async def aclose(self) -> None: ...


class SlackActionLike(Protocol):
    approval_id: str
    decision: str  # approve | deny
    slack_user: str


class SlackInbound(Protocol):
    """What the inbound edge needs from Slack: verify a signed request, read its click
    (broker.approvals.slack.SlackNotifier)."""

    def verify(self, headers: Mapping[str, str], body: bytes) -> None: ...

    def parse_action(self, body: bytes) -> SlackActionLike: ...


def _valid_id(aid: str) -> bool:
    return len(aid) == 32 and set(aid) <= _ID_CHARS


class Approvals:
    def __init__(
        self,
        store: ApprovalStore,
        settings: ApprovalSettings,
        clock: Clock,
        audit: AuditLog,
        *,
        notifier: Notifier | None = None,
        default_channel: str | None = None,
        replica_id: str = "",
    ) -> None:
        self.store = store
        self.settings = settings
        self.people = People(settings)
        self.clock = clock
        self.audit = audit
        self.notifier = notifier
        self.default_channel = default_channel
        self.replica_id = replica_id or secrets.token_hex(6)
        # Slack updates run in the background: Slack waits only 3 s for an interaction's answer,
        # and a decision must never wait for (or fail with) a notification.
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def idle(self) -> None:
        """Wait for the background Slack updates started so far (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- open ------------------------------------------------------------------------------

    async def open(
        self,
        principal: Principal,
        intent: Intent,
        *,
        ttl: timedelta,
        grant: str,
        grant_owner: str,
        rule: ApprovalRule,
        policy_version: str,
        on_behalf_of: str | None = None,
        request_id: str | None = None,
    ) -> ApprovalView:
        """Open an approval request, or return the identical one already pending."""
        now = self.clock.now()
        approvers = self.people.expand(rule.approvers)
        behind = self.people.behind(principal, on_behalf_of)
        eligible = [p for p in approvers if p not in behind]
        if len(eligible) < rule.quorum:
            raise PermissionDenied(
                f"grant {grant!r} needs {rule.quorum} approval(s) but only {len(eligible)} "
                "approver(s) are not behind this request",
                (f"{grant}: approvers {list(approvers)}; behind the request {list(behind)}",),
            )
        expires_at = now + (rule.expires_after or self.settings.default_expiry)
        digest = _digest(principal.id, intent, ttl, on_behalf_of)
        aid = secrets.token_hex(16)
        # The merge key outlives the request by a grace period, so a client polling with the
        # same request (the OAuth convention) learns it was denied or expired.
        merge_ms = int((expires_at - now + _MERGE_GRACE).total_seconds() * 1000)
        existing = await self.store.reserve_merge(principal.id, digest, aid, merge_ms)
        if existing is not None:
            found = await self.store.load(existing)
            if found is not None and not found.view.lease_id:
                view = found.view
                if view.state is ApprovalState.PENDING and now >= view.expires_at:
                    view = await self.get(view.id)
                return view
            await self.store.release_merge(principal.id, digest, existing)
            return await self.open(
                principal,
                intent,
                ttl=ttl,
                grant=grant,
                grant_owner=grant_owner,
                rule=rule,
                policy_version=policy_version,
                on_behalf_of=on_behalf_of,
                request_id=request_id,
            )
        if await self.store.pending_count(principal.id, to_ms(now)) >= (
            self.settings.max_pending_per_workload
        ):
            await self.store.release_merge(principal.id, digest, aid)
            raise TooManyPending(
                f"too many pending approval requests for this workload "
                f"(limit {self.settings.max_pending_per_workload})"
            )
        view = ApprovalView(
            id=aid,
            state=ApprovalState.PENDING,
            owner=principal.id,
            principal=principal,
            task=intent.task,
            scope=intent.scope,
            ttl=ttl,
            grant=grant,
            grant_owner=grant_owner,
            policy_version=policy_version,
            approvers=approvers,
            quorum=rule.quorum,
            created_at=now,
            expires_at=expires_at,
            on_behalf_of=on_behalf_of,
            requester_people=behind,
            channel=rule.channel or self.default_channel,
            params=dict(intent.params),
            cnf=intent.cnf,
        )
        await self.store.create(
            view,
            digest=digest,
            retention_ms=int((expires_at - now + _RETENTION).total_seconds()) * 1000,
        )
        await self.audit.emit(
            "approval.opened",
            principal=principal.id,
            task_id=intent.task.id,
            issuer=intent.scope.issuer,
            request_id=request_id,
            detail={
                "approval_id": aid,
                "grant": grant,
                "policy_version": policy_version,
                "resource": intent.scope.resource,
                "actions": list(intent.scope.actions),
                "ttl_seconds": int(ttl.total_seconds()),
                "approvers": list(approvers),
                "quorum": rule.quorum,
                "expires_at": expires_at.isoformat(),
                "on_behalf_of": on_behalf_of,
            },
        )
        await self._post(view)
        return view

    # -- read ------------------------------------------------------------------------------

    async def get(self, aid: str) -> ApprovalView:
        if not _valid_id(aid):
            raise NotFound("no such approval request")
        found = await self.store.load(aid)
        if found is None:
            raise NotFound("no such approval request")
        view = found.view
        if view.state is ApprovalState.PENDING and self.clock.now() >= view.expires_at:
            await self._expire(aid)
            view = await self.get(aid)
        return view

    async def get_for(self, aid: str, *, owner: str | None, person: str | None) -> ApprovalView:
        """The request, if ``owner`` made it or ``person`` may decide it (else NotFound)."""
        view = await self.get(aid)
        if owner is not None and view.owner == owner:
            return view
        if person is not None and person in view.approvers:
            return view
        raise NotFound("no such approval request")

    async def list_for(self, *, owner: str | None, person: str | None) -> list[ApprovalView]:
        """Pending requests the owner made, or that the person may decide."""
        ids = (
            await self.store.owner_pending_ids(owner)
            if owner is not None
            else await self.store.pending_ids()
        )
        out: list[ApprovalView] = []
        for aid in ids:
            try:
                view = await self.get(aid)
            except NotFound:
                continue
            if view.state is not ApprovalState.PENDING:
                continue
            mine = owner is not None and view.owner == owner
            theirs = person is not None and person in view.approvers
            if mine or theirs:
                out.append(view)
        return sorted(out, key=lambda v: v.created_at)

    # -- decide ----------------------------------------------------------------------------

    async def review(
        self,
        aid: str,
        *,
        person: str,
        decision: str,
        via: str = "api",
        ttl: timedelta | None = None,
        actions: Sequence[str] | None = None,
        reason: str = "",
    ) -> ApprovalView:
        """Record one approver's decision. Only the request's approvers may decide, never a
        person behind the request; an approval may narrow the scope or TTL, never widen it."""
        view = await self.get(aid)
        if person not in view.approvers:
            await self._refused(view, person, "not an approver of this request")
            raise PermissionDenied(f"{person} is not an approver of this request")
        if person in view.requester_people:
            await self._refused(view, person, "is behind this request (separation of duties)")
            raise PermissionDenied(
                f"{person} is behind this request and cannot decide it (separation of duties)"
            )
        if decision not in ("approve", "deny"):
            raise InvalidRequest("decision must be approve or deny")
        narrowed_actions: tuple[str, ...] | None = None
        if decision == "approve":
            if ttl is not None and (ttl <= timedelta(0) or ttl > view.ttl):
                raise InvalidRequest(
                    f"an approval may shorten the TTL ({int(view.ttl.total_seconds())}s asked), "
                    "never lengthen it"
                )
            if actions is not None:
                narrowed_actions = tuple(sorted(set(actions)))
                if not narrowed_actions or not set(narrowed_actions) <= set(view.scope.actions):
                    raise InvalidRequest(
                        f"an approval may grant a subset of {list(view.scope.actions)}, no more"
                    )
        now = self.clock.now()
        rev = Review(
            person=person,
            decision="approve" if decision == "approve" else "deny",
            at=now,
            via="slack" if via == "slack" else "api",
            ttl=ttl if decision == "approve" else None,
            actions=narrowed_actions,
            reason=reason[:500],
        )
        result, count = await self.store.review(aid, rev, to_ms(now))
        if result == "duplicate":
            raise Conflict(f"{person} has already approved this request")
        if result == "expired":
            await self._finish(aid, "approval.expired")
            raise Conflict("the approval request has expired")
        if result.startswith("final:"):
            raise Conflict(f"the approval request is already {result.removeprefix('final:')}")
        if result == "missing":
            raise NotFound("no such approval request")
        await self.audit.emit(
            "approval.reviewed",
            principal=view.owner,
            task_id=view.task.id,
            outcome="ok" if decision == "approve" else "deny",
            reasons=[reason] if reason else [],
            detail={
                "approval_id": aid,
                "by": person,
                "via": rev.via,
                "decision": rev.decision,
                "ttl_seconds": int(rev.ttl.total_seconds()) if rev.ttl else None,
                "actions": list(narrowed_actions) if narrowed_actions else None,
                "approvals": count,
                "quorum": view.quorum,
            },
        )
        updated = await self.get(aid)
        await self._notify_review(updated, rev)
        if result in ("approved", "denied"):
            await self._finish(aid, f"approval.{result}")
            updated = await self.get(aid)
        return updated

    async def cancel(self, aid: str, *, owner: str) -> ApprovalView:
        view = await self.get_for(aid, owner=owner, person=None)
        result = await self.store.end(
            aid, ApprovalState.CANCELLED, to_ms(self.clock.now()), only_if_due=False
        )
        if result.startswith("final:"):
            raise Conflict(f"the approval request is already {result.removeprefix('final:')}")
        await self._finish(view.id, "approval.cancelled")
        return await self.get(aid)

    async def _refused(self, view: ApprovalView, person: str, why: str) -> None:
        await self.audit.emit(
            "approval.refused_review",
            outcome="deny",
            principal=view.owner,
            task_id=view.task.id,
            reasons=[f"{person} {why}"],
            detail={"approval_id": view.id, "by": person},
        )

    # -- minting ---------------------------------------------------------------------------

    def approved_terms(self, view: ApprovalView) -> tuple[Scope, timedelta]:
        """The scope and TTL the approvers agreed to: the narrowest of their approvals."""
        actions = set(view.scope.actions)
        ttl = view.ttl
        for r in view.approvals:
            if r.actions is not None:
                actions &= set(r.actions)
            if r.ttl is not None:
                ttl = min(ttl, r.ttl)
        scope = Scope.of(view.scope.issuer, view.scope.resource, actions)
        return scope, ttl

    async def claim_mint(self, view: ApprovalView, planned: str) -> tuple[str, str]:
        now = self.clock.now()
        return await self.store.claim_mint(
            view.id,
            me=self.replica_id,
            now_ms=to_ms(now),
            lock_until_ms=to_ms(now + timedelta(seconds=60)),
            planned=planned,
        )

    async def mark_minted(self, view: ApprovalView, lease_id: str) -> None:
        await self.store.minted(view.id, me=self.replica_id, lease_id=lease_id)
        if lease_id:
            found = await self.store.load(view.id)
            if found is not None:  # an identical request may now open a new approval
                await self.store.release_merge(view.owner, found.merge_key, view.id)
            await self.audit.emit(
                "approval.minted",
                principal=view.owner,
                task_id=view.task.id,
                lease_id=lease_id,
                detail={
                    "approval_id": view.id,
                    "grant": view.grant,
                    "approved_by": [r.person for r in view.approvals],
                },
            )

    # -- background ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """About once a second until ``stop``: expire due requests, (re)post to Slack."""
        while not stop.is_set():
            try:
                await self.sweep()
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("approval sweep: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("approval sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def sweep(self) -> int:
        """Expire what is due; (re)post to Slack what is not posted yet. Returns work done."""
        now_ms = to_ms(self.clock.now())
        done = 0
        for aid in await self.store.due_expiry(now_ms):
            await self._expire(aid)
            done += 1
        if self.notifier is not None:
            for aid in await self.store.due_posts(now_ms):
                found = await self.store.load(aid)
                if found is None or found.view.state is not ApprovalState.PENDING:
                    await self.store.drop_post(aid)
                    continue
                await self._post(found.view)
                done += 1
        return done

    async def _expire(self, aid: str) -> None:
        result = await self.store.end(
            aid, ApprovalState.EXPIRED, to_ms(self.clock.now()), only_if_due=True
        )
        if result == "ok":
            await self._finish(aid, "approval.expired")
        elif result.startswith("final:"):
            found = await self.store.load(aid)
            if found is not None:
                await self.store.finished(found.view)

    async def _finish(self, aid: str, event: str) -> None:
        found = await self.store.load(aid)
        if found is None:
            return
        view = found.view
        await self.store.finished(view)
        await self.store.drop_post(aid)
        await self.audit.emit(
            event,
            principal=view.owner,
            task_id=view.task.id,
            outcome="ok" if view.state is ApprovalState.APPROVED else "deny",
            detail={
                "approval_id": aid,
                "grant": view.grant,
                "state": view.state.value,
                "by": [r.person for r in view.reviews],
                "wait_ms": _ms((view.decided_at or self.clock.now()) - view.created_at),
            },
        )
        if self.notifier is not None:
            self._spawn(self._notify_final(view))

    async def _notify_final(self, view: ApprovalView) -> None:
        if self.notifier is None:
            return
        try:
            if view.slack_ts:
                await self.notifier.update_request(view)
            people = [self.people.slack_id(p) for p in (*view.requester_people, view.grant_owner)]
            ids = sorted({p for p in people if p})
            if ids:
                await self.notifier.notify_people(ids, view)
        except BrokerError as exc:
            log.warning("Slack update for approval %s failed: %s", view.id, exc.message)

    async def _notify_review(self, view: ApprovalView, review: Review) -> None:
        if self.notifier is None or not view.slack_ts:
            return
        self._spawn(self._post_review(view, review))

    async def _post_review(self, view: ApprovalView, review: Review) -> None:
        if self.notifier is None:
            return
        try:
            await self.notifier.post_review(view, review)
            await self.notifier.update_request(view)
        except BrokerError as exc:
            log.warning("Slack update for approval %s failed: %s", view.id, exc.message)

    async def _post(self, view: ApprovalView) -> None:
        if self.notifier is None:
            await self.store.drop_post(view.id)
            return
        if not view.channel:
            log.warning("approval %s: no Slack channel (grant or slack.default_channel)", view.id)
            await self.store.drop_post(view.id)
            return
        try:
            ref = await self.notifier.post_request(view, view.channel)
        except BrokerError as exc:
            attempts = int(
                await self.store.redis.hincrby(
                    f"{self.store.prefix}:{{a:{view.id}}}", "post_attempts", 1
                )
            )
            delay = backoff(attempts, base=_POST_BACKOFF_BASE, cap=_POST_BACKOFF_CAP)
            await self.store.retry_post(view.id, to_ms(self.clock.now() + delay))
            log.warning(
                "posting approval %s to Slack failed (attempt %d): %s",
                view.id,
                attempts,
                exc.message,
            )
            await self.audit.emit(
                "approval.post_failed",
                outcome="error",
                principal=view.owner,
                task_id=view.task.id,
                reasons=[exc.message],
                detail={"approval_id": view.id, "attempts": attempts},
            )
            return
        await self.store.set_slack(view.id, ref.channel, ref.ts)
        await self.audit.emit(
            "approval.posted",
            principal=view.owner,
            task_id=view.task.id,
            detail={"approval_id": view.id, "channel": ref.channel},
        )


def _digest(owner: str, intent: Intent, ttl: timedelta, on_behalf_of: str | None) -> str:
    """Identical requests (same workload, task, scope, TTL, params, on-behalf-of) merge."""
    data = msgspec.json.encode(
        [
            owner,
            "" if intent.task.auto else intent.task.id,
            intent.scope,
            int(ttl.total_seconds()),
            sorted(intent.params.items()),
            sorted((intent.cnf or {}).items()),
            on_behalf_of,
        ]
    )
    return hashlib.sha256(data).hexdigest()[:32]


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)
