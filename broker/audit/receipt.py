"""The credential receipt: the whole story of one lease (or one task) told from audit records.

In order: who asked (identity: the principal of the decision, and any ``auth.*`` record of the
same request) → what they asked for and what policy decided (``decision``: resource, actions,
reasons, grant, policy version) → the approval, when the grant needed one (every
``approval.*`` record of the approval that minted the lease) → the mint (``lease.minted`` or
``lease.mint_failed``) → each use (``lease.introspected``, ``lease.used``) → the revocation with
its trigger (``lease.revoked``, ``lease.revoke_failed``, ``lease.overdue``,
``lease.mint_cleaned``; ``task.completed`` when the task's end triggered it).

Records are linked by ``lease_id``; a decision is found by the ``request_id`` it shares with the
mint or the approval request, or else as the last decision for the same principal, task and
issuer before it. Pure: takes decoded records, returns a :class:`Receipt`; the CLI renders it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

__all__ = ["Hop", "Receipt", "Step", "build_receipt"]

_MINT = {"lease.minted", "lease.mint_failed"}
_USE = {"lease.introspected", "lease.used"}
_REVOKE = {"lease.revoked", "lease.revoke_failed", "lease.overdue", "lease.mint_cleaned"}


class Step(msgspec.Struct, frozen=True, kw_only=True):
    stage: str  # identity | decision | approval | mint | use | revocation | task
    seq: int | None
    time: str | None
    type: str
    outcome: str
    summary: str
    lease_id: str | None = None
    record: dict[str, Any] | None = None


class Hop(msgspec.Struct, frozen=True, kw_only=True):
    """One link of a delegation chain (ADR 0040): the subject, then each actor in order, with
    the lease minted at that hop when the records hold it."""

    who: str
    role: str  # subject | actor
    lease_id: str | None = None


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: str | None
    task_id: str | None
    principal: str | None
    leases: list[str]
    steps: list[Step]
    chain: list[Hop] = msgspec.field(default_factory=list)  # a delegated lease's whole chain


def _d(r: Mapping[str, Any]) -> Mapping[str, Any]:
    detail = r.get("detail")
    return detail if isinstance(detail, dict) else {}


def _names(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value) if value else "none"


def _acting(d: Mapping[str, Any]) -> str:
    """`` acting: B <- A (from lease L)`` for a delegated request's record, else empty."""
    act = d.get("act")
    if not isinstance(act, list) or not act:
        return ""
    parent = f", delegated from lease {d['parent_lease_id']}" if d.get("parent_lease_id") else ""
    return f"; acting: {' <- '.join(map(str, act))}{parent}"


def _summary(r: Mapping[str, Any]) -> str:
    t = str(r.get("type", ""))
    d = _d(r)
    reasons = r.get("reasons") or []
    why = f"; reasons: {'; '.join(map(str, reasons))}" if reasons else ""
    if t == "decision":
        actions = ",".join(map(str, d.get("actions") or []))
        grant = f" via grant {d['grant']}" if d.get("grant") else ""
        ttl = f", ttl {d['ttl_seconds']}s" if d.get("ttl_seconds") is not None else ""
        return (
            f"{r.get('outcome', 'ok')}: {d.get('resource', '?')} [{actions}] on "
            f"{r.get('issuer', '?')}{grant}{ttl} (policy {d.get('policy_version', '?')})"
            f"{_acting(d)}{why}"
        )
    if t.startswith("approval."):
        tag = f" [approval {d.get('approval_id')}]"
        if t == "approval.opened":
            return (
                f"opened for grant {d.get('grant', '?')}; approvers: "
                f"{_names(d.get('approvers'))}{tag}{why}"
            )
        who = d.get("by") or d.get("approved_by")
        who_s = f" by {_names(who)}" if who else ""
        extra = f" ({d['decision']})" if d.get("decision") else ""
        return f"{t.removeprefix('approval.')}{extra}{who_s}{tag}{why}"
    if t == "lease.minted":
        actions = ",".join(map(str, d.get("actions") or []))
        return (
            f"minted {d.get('resource', '?')} [{actions}] until {d.get('not_after', '?')} "
            f"(grant {d.get('grant', '?')}, policy {d.get('policy_version', '?')})"
            f"{_acting(d)}"
        )
    if t in _USE:
        by = d.get("caller") or d.get("reporter")
        parts = [
            f"by {by}" if by else "",
            f"via {d['via']}" if d.get("via") else "",
            f"{d['action']} on {d.get('resource') or '?'}" if d.get("action") else "",
            f"from {d['client_address']}" if d.get("client_address") else "",
            f"active={d['active']}" if "active" in d else "",
        ]
        return " ".join([t.removeprefix("lease."), *(p for p in parts if p)]) + why
    if t == "lease.revoked":
        lag = f", {d['lag_ms']}ms after expiry" if d.get("lag_ms") is not None else ""
        return f"revoked (trigger: {d.get('trigger', '?')}, attempt {d.get('attempts', '?')}{lag})"
    if t == "task.completed":
        return f"task completed ({d.get('leases', '?')} leases)"
    return f"{t}{why}"


def _step(stage: str, r: Mapping[str, Any]) -> Step:
    seq = r.get("seq")
    return Step(
        stage=stage,
        seq=seq if isinstance(seq, int) else None,
        time=str(r["time"]) if r.get("time") is not None else None,
        type=str(r.get("type", "")),
        outcome=str(r.get("outcome", "ok")),
        summary=_summary(r),
        lease_id=r.get("lease_id") if isinstance(r.get("lease_id"), str) else None,
        record=dict(r),
    )


def _decision_for(
    records: list[Mapping[str, Any]], anchor: int, request_ids: set[str], principal: Any, task: Any
) -> list[int]:
    """Positions of the decisions behind the record at ``anchor``."""
    if request_ids:
        found = [
            i
            for i, r in enumerate(records[:anchor])
            if r.get("type") == "decision" and r.get("request_id") in request_ids
        ]
        if found:
            return found
    anchor_rec = records[anchor]
    for i in range(anchor - 1, -1, -1):
        r = records[i]
        if (
            r.get("type") == "decision"
            and r.get("principal") == principal
            and r.get("task_id") == task
            and r.get("issuer") == anchor_rec.get("issuer")
            and r.get("outcome") in ("ok", "approval_required")
        ):
            return [i]
    return []


def _lease_positions(records: list[Mapping[str, Any]], lease_id: str) -> set[int]:
    """Everything about one lease: its own records, its approval, its decision, identity."""
    own = [i for i, r in enumerate(records) if r.get("lease_id") == lease_id]
    if not own:
        return set()
    chosen = set(own)
    first = records[own[0]]
    principal, task = first.get("principal"), first.get("task_id")
    approval_ids = {
        _d(records[i]).get("approval_id")
        for i in own
        if str(records[i].get("type", "")).startswith("approval.")
    } - {None}
    approval = [
        i
        for i, r in enumerate(records)
        if str(r.get("type", "")).startswith("approval.")
        and _d(r).get("approval_id") in approval_ids
    ]
    chosen.update(approval)
    mint = next((i for i in own if records[i].get("type") in _MINT), own[0])
    anchor = min(approval) if approval else mint
    request_ids = {
        str(records[i]["request_id"])
        for i in [*approval, *own]
        if records[i].get("request_id") is not None
    }
    decisions = _decision_for(records, anchor, request_ids, principal, task)
    chosen.update(decisions)
    request_ids |= {
        str(records[i]["request_id"]) for i in decisions if records[i].get("request_id")
    }
    chosen.update(
        i
        for i, r in enumerate(records)
        if str(r.get("type", "")).startswith("auth.") and r.get("request_id") in request_ids
    )
    # The task's end, when that is what revoked the lease.
    if any(_d(records[i]).get("trigger") == "task_completed" for i in own):
        chosen.update(
            i
            for i, r in enumerate(records)
            if r.get("type") == "task.completed"
            and r.get("task_id") == task
            and r.get("principal") == principal
        )
    return chosen


def _stage(r: Mapping[str, Any]) -> str:
    t = str(r.get("type", ""))
    if t.startswith("auth."):
        return "identity"
    if t == "decision":
        return "decision"
    if t.startswith("approval."):
        return "approval"
    if t in _MINT:
        return "mint"
    if t in _USE:
        return "use"
    if t in _REVOKE:
        return "revocation"
    return "task"


def _chain(records: list[Mapping[str, Any]], lease_id: str) -> list[Hop]:
    """The delegation chain of ``lease_id`` from the ``lease.minted`` records of it and its
    ancestors (``parent_lease_id``): empty for a lease that was not delegated."""
    minted = {
        str(r.get("lease_id")): r
        for r in records
        if r.get("type") == "lease.minted" and r.get("lease_id") is not None
    }
    mine = minted.get(lease_id)
    if mine is None or not _d(mine).get("act"):
        return []
    lineage: list[tuple[str, list[Any]]] = []  # newest first
    current: str | None = lease_id
    seen: set[str] = set()
    while current is not None and current not in seen and current in minted:
        seen.add(current)
        detail = _d(minted[current])
        act = detail.get("act")
        lineage.append((current, act if isinstance(act, list) else []))
        parent = detail.get("parent_lease_id")
        current = str(parent) if parent else None
    act = _d(mine)["act"]
    chain = [Hop(who=str(mine.get("principal", "?")), role="subject")]
    by_depth = {len(a): lid for lid, a in lineage}
    if 0 in by_depth:  # the subject's own credential, delegated on
        chain[0] = Hop(who=chain[0].who, role="subject", lease_id=by_depth[0])
    for depth, actor in enumerate(reversed(act), start=1):
        chain.append(Hop(who=str(actor), role="actor", lease_id=by_depth.get(depth)))
    return chain


def build_receipt(
    records: Iterable[Mapping[str, Any]],
    *,
    lease_id: str | None = None,
    task_id: str | None = None,
) -> Receipt:
    """The receipt of one lease, or of every lease of a task. Raises LookupError when the
    records say nothing about it."""
    if (lease_id is None) == (task_id is None):
        raise ValueError("give exactly one of lease_id, task_id")
    recs = [r for r in records if r.get("type") != "audit.checkpoint"]
    chosen: set[int] = set()
    if lease_id is not None:
        chosen = _lease_positions(recs, lease_id)
        if not chosen:
            raise LookupError(f"no audit records for lease {lease_id}")
        leases = [lease_id]
    else:
        task_recs = [i for i, r in enumerate(recs) if r.get("task_id") == task_id]
        if not task_recs:
            raise LookupError(f"no audit records for task {task_id}")
        leases = list(
            dict.fromkeys(
                str(recs[i]["lease_id"]) for i in task_recs if recs[i].get("lease_id") is not None
            )
        )
        chosen = set(task_recs)
        for lid in leases:
            chosen |= _lease_positions(recs, lid)
    ordered = [recs[i] for i in sorted(chosen)]
    principals = list(dict.fromkeys(r.get("principal") for r in ordered if r.get("principal")))
    principal = principals[0] if len(principals) == 1 else None
    steps: list[Step] = []
    if principals:
        first = ordered[0]
        steps.append(
            Step(
                stage="identity",
                seq=None,
                time=str(first.get("time")) if first.get("time") is not None else None,
                type="principal",
                outcome="ok",
                summary="authenticated as " + ", ".join(map(str, principals)),
            )
        )
    steps.extend(_step(_stage(r), r) for r in ordered)
    tasks = list(dict.fromkeys(r.get("task_id") for r in ordered if r.get("task_id")))
    return Receipt(
        lease_id=lease_id,
        task_id=task_id or (str(tasks[0]) if len(tasks) == 1 else None),
        principal=str(principal) if principal else None,
        leases=leases,
        steps=steps,
        chain=_chain(recs, lease_id) if lease_id is not None else [],
    )
