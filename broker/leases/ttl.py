"""TTL maths, pure: how long a credential lives.

No I/O and no clock: callers pass the values in. Kept apart so the rules are easy to test
exhaustively (tests/unit/test_ttl.py).
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

from broker.errors import InvalidRequest
from broker.issuer import Capabilities

__all__ = ["TtlDecision", "resolve_ttl"]


class TtlDecision(msgspec.Struct, frozen=True):
    """The TTL a credential gets. ``capped_by`` names what shortened the asked-for TTL
    (``"issuer"``, ``"broker"`` or ``"task"``), None when nothing did."""

    ttl: timedelta
    capped_by: str | None = None


def resolve_ttl(
    requested: timedelta | None,
    *,
    grant_default: timedelta,
    grant_max: timedelta,
    issuer: Capabilities,
    hard_max: timedelta,
    task_remaining: timedelta | None = None,
) -> TtlDecision:
    """The TTL for one credential.

    - Nothing asked: the grant's default. Asked: exactly that, if the grant allows it (the
      policy has already refused more than the grant's ``max_ttl``; this re-checks it).
    - Capped by the issuer's ``max_ttl``, the broker's hard ceiling and, for an expiry-only
      issuer (one that cannot revoke), the task's remaining time. Capping is reported.
    - Below the issuer's ``min_ttl``: an explicit request is refused (it would outlive what the
      caller asked for); a default is raised to the minimum.
    """
    if requested is not None and requested <= timedelta(0):
        raise InvalidRequest("ttl must be positive")
    if requested is not None and requested > grant_max:
        raise InvalidRequest(
            f"ttl {_fmt(requested)} exceeds the grant's max_ttl of {_fmt(grant_max)}"
        )
    ttl = requested if requested is not None else grant_default
    capped_by: str | None = None
    for limit, name in (
        (issuer.max_ttl, "issuer"),
        (hard_max, "broker"),
        (task_remaining if not issuer.revocable else None, "task"),
    ):
        if limit is not None and ttl > limit:
            ttl, capped_by = limit, name
    if ttl < issuer.min_ttl:
        if capped_by == "task":
            raise InvalidRequest(
                f"the task has {_fmt(ttl)} left, less than this issuer's minimum TTL of "
                f"{_fmt(issuer.min_ttl)}"
            )
        if requested is not None:
            raise InvalidRequest(
                f"ttl {_fmt(requested)} is below this issuer's minimum of {_fmt(issuer.min_ttl)}"
            )
        ttl = issuer.min_ttl
    return TtlDecision(ttl=ttl, capped_by=capped_by)


def _fmt(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    return f"{d.total_seconds():g}s"
