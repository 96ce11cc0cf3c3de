"""How long to wait before trying again: the one backoff rule of the broker.

Used by every loop that retries forever against something that may be down — revocations at an
issuer, Slack posts, audit sink deliveries, Shared Signals pushes. Pure: no I/O, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

__all__ = ["backoff"]


def backoff(
    attempt: int,
    *,
    base: timedelta,
    cap: timedelta,
    rand: Callable[[], float] = random.random,
) -> timedelta:
    """Delay before retry number ``attempt`` (1 = after the first failure): exponential from
    ``base``, capped at ``cap``, with "equal jitter" (between half and all of it) so replicas
    that failed together do not retry together, and never shorter than half the step."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    step = min(cap.total_seconds(), base.total_seconds() * 2 ** min(attempt - 1, 62))
    return timedelta(seconds=step / 2 + rand() * step / 2)
