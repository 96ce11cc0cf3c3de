"""The inbound edge of approvals: what workloads and approvers ask of approval requests over
the API, and the button clicks Slack sends back.

Workloads see and cancel their own requests and collect the credential once approved;
approvers see the requests they may decide and approve (maybe narrower) or deny. A Slack click
counts only with a valid signature, only once (a seen-set shared by the replicas), and only
from a Slack user who is a configured approver.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from datetime import timedelta

from broker.approvals import Approvals, ApprovalState, ApprovalStore, ApprovalView, SlackInbound
from broker.audit import AuditLog
from broker.clock import Clock
from broker.errors import AuthenticationError, InvalidRequest, PermissionDenied
from broker.service.issuance import Issuance, Issued
from broker.types import Principal

__all__ = ["ApprovalDesk"]

#: How long a signed Slack request is remembered (beyond Slack's five-minute window).
_SLACK_REPLAY_WINDOW_MS = 10 * 60 * 1000
_POLL = 0.25


class ApprovalDesk:
    def __init__(
        self,
        approvals: Approvals,
        store: ApprovalStore,
        issuance: Issuance,
        audit: AuditLog,
        clock: Clock,
        *,
        max_wait: timedelta,
        slack: SlackInbound | None = None,
    ) -> None:
        self.approvals = approvals
        self.store = store
        self.issuance = issuance
        self.audit = audit
        self.clock = clock
        self.max_wait = max_wait
        self.slack = slack
        # Set when the replica stops accepting requests (it drains): a long-poll answers with
        # what it has now, and the client's next poll reaches another replica.
        self.closing = False

    async def list(self, principal: Principal | None, person: str | None) -> list[ApprovalView]:
        """Pending requests: a workload's own, or those an approver may decide."""
        owner = principal.id if principal is not None and person is None else None
        return await self.approvals.list_for(owner=owner, person=person)

    async def get(
        self,
        approval_id: str,
        principal: Principal | None,
        person: str | None,
        *,
        wait: int = 0,
        origin: str | None = None,
        request_id: str | None = None,
    ) -> tuple[ApprovalView, Issued | None]:
        """One request, long-polled up to ``wait`` seconds while pending. To the workload that
        made it, an approved request comes with its credential (minted once, here)."""
        if not 0 <= wait <= self.max_wait.total_seconds():
            raise InvalidRequest(
                f"wait must be between 0 and {int(self.max_wait.total_seconds())} seconds"
            )
        owner = principal.id if principal else None
        view = await self.approvals.get_for(approval_id, owner=owner, person=person)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while view.state is ApprovalState.PENDING and loop.time() < deadline and not self.closing:
            await asyncio.sleep(min(_POLL, max(0.0, deadline - loop.time())))
            view = await self.approvals.get(approval_id)
        if principal is not None and view.owner == principal.id:
            return await self.issuance.collect(
                principal, approval_id, origin=origin, request_id=request_id
            )
        return view, None

    async def cancel(self, approval_id: str, principal: Principal | None) -> ApprovalView:
        if principal is None:
            raise PermissionDenied("only the requesting workload may cancel")
        return await self.approvals.cancel(approval_id, owner=principal.id)

    async def approve(
        self,
        approval_id: str,
        person: str,
        *,
        ttl: timedelta | None = None,
        actions: Sequence[str] | None = None,
        reason: str = "",
    ) -> ApprovalView:
        return await self.approvals.review(
            approval_id,
            person=person,
            decision="approve",
            ttl=ttl,
            actions=list(actions) if actions is not None else None,
            reason=reason,
        )

    async def deny(self, approval_id: str, person: str, *, reason: str) -> ApprovalView:
        if not reason:
            raise InvalidRequest("a denial needs a reason")
        return await self.approvals.review(
            approval_id, person=person, decision="deny", reason=reason
        )

    async def slack_interaction(self, headers: Mapping[str, str], body: bytes) -> None:
        """A click on an Approve / Deny button, as Slack posts it. The signature is checked
        before anything in the body is read."""
        if self.slack is None:
            raise InvalidRequest("Slack is not configured")
        try:
            self.slack.verify(headers, body)
        except AuthenticationError as exc:
            await self._refused(exc.message)
            raise
        signature = {k.lower(): v for k, v in headers.items()}.get("x-slack-signature", "")
        fingerprint = hashlib.sha256(signature.encode() + b"|" + body).hexdigest()
        if await self.store.seen_slack_request(fingerprint, _SLACK_REPLAY_WINDOW_MS):
            await self._refused("replayed Slack request")
            raise AuthenticationError("replayed Slack request")
        action = self.slack.parse_action(body)
        person = self.approvals.people.for_slack(action.slack_user)
        if person is None:
            view = await self.approvals.get(action.approval_id)
            await self.audit.emit(
                "approval.refused_review",
                outcome="deny",
                principal=view.owner,
                reasons=[f"Slack user {action.slack_user} is not a configured approver"],
                detail={"approval_id": view.id, "via": "slack"},
            )
            raise PermissionDenied("this Slack user is not a configured approver")
        await self.approvals.review(
            action.approval_id,
            person=person,
            decision=action.decision,
            via="slack",
            reason="denied in Slack" if action.decision == "deny" else "",
        )

    async def _refused(self, reason: str) -> None:
        await self.audit.emit(
            "auth.failed", outcome="deny", reasons=[reason], detail={"via": "slack"}
        )
