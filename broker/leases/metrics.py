"""In-process lease metrics: counters and the reaper-lag distribution.

Kept dependency-free so the lease code can record what happened; the Prometheus exposition
(issue 5) reads from here. Label values are bounded sets (issuer instance names, triggers,
outcomes) — never lease ids or principals.
"""

from __future__ import annotations

import math
from collections import Counter, deque

__all__ = ["LeaseMetrics"]


class LeaseMetrics:
    def __init__(self, lag_samples: int = 100_000) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._lags: deque[float] = deque(maxlen=lag_samples)

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += n

    def count(self, name: str, **labels: str) -> int:
        """The sum of ``name`` over every label set that includes ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lbl), v in self.counters.items() if n == name and want <= set(lbl))

    def observe_lag(self, seconds: float) -> None:
        """revoked_at - not_after for a lease revoked because its TTL ran out."""
        self._lags.append(seconds)

    def lag_quantiles(self, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[float, float]:
        """Quantiles of the recent lag samples (nearest rank); empty when there are none."""
        if not self._lags:
            return {}
        data = sorted(self._lags)
        out: dict[float, float] = {}
        for q in qs:
            rank = max(1, min(len(data), math.ceil(q * len(data))))
            out[q] = data[rank - 1]
        return out

    @property
    def lag_count(self) -> int:
        return len(self._lags)
