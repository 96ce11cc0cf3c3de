"""Leases: every credential is a lease in Redis, revoked for real at the issuer.

- :mod:`.ttl` — TTL maths and retry backoff (pure)
- :mod:`.keys` — the key layout and lease ids (ADR 0001)
- :mod:`.store` — records and the Lua scripts that change them atomically
- :mod:`.manager` — write-ahead issuance and the one revocation path
- :mod:`.reaper` — leaderless, claim-based expiry in every replica

See docs/revocation.md.
"""

from broker.leases.manager import LeaseManager, TaskView
from broker.leases.reaper import Reaper
from broker.leases.store import LeaseStore
from broker.leases.ttl import TtlDecision, resolve_ttl

__all__ = [
    "LeaseManager",
    "LeaseStore",
    "Reaper",
    "TaskView",
    "TtlDecision",
    "backoff",
    "resolve_ttl",
]
