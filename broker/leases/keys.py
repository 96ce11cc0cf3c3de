"""The Redis key layout and lease ids (ADR 0001). Pure: no I/O.

::

    {prefix}:{t:<task_key>}:task          hash   task_id, owner, state (open|completed), times
    {prefix}:{t:<task_key>}:leases        set    the task's lease ids
    {prefix}:{t:<task_key>}:lease:<id>    hash   one lease (never its secret)
    {prefix}:{due}                        zset   lease id → when the reaper must look at it (ms)
    {prefix}:{overdue}                    set    leases whose revocation failed N times
    {prefix}:{retry:<issuer key>}         set    leases whose revocation at that issuer failed
    {prefix}:{o:<owner_key>}:live         zset   the owner's live leases (score: issued_at)
    {prefix}:{o:<owner_key>}:done         zset   the owner's finished leases (score: revoked_at)

Everything a per-lease script touches (task, its lease set, the lease) shares the hash tag
``{t:<task_key>}``, so it lives in one Redis Cluster slot. The lease id starts with the task key,
so a lease id alone leads to its slot.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from broker.errors import InvalidRequest, NotFound
from broker.types import TASK_ID_RULE, valid_task_id

__all__ = ["Keys", "new_lease_id", "owner_key", "task_key", "task_key_of", "validate_task_id"]

_LEASE_ID = re.compile(r"^([0-9a-f]{16})\.[0-9a-f]{32}$")


def task_key(owner: str, task_id: str) -> str:
    """A task is its owner's: two workloads using one task id never share a task."""
    return hashlib.sha256(f"{owner}\0{task_id}".encode()).hexdigest()[:16]


def owner_key(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def new_lease_id(tkey: str) -> str:
    """``<task key>.<128 random bits>``."""
    return f"{tkey}.{secrets.token_hex(16)}"


def task_key_of(lease_id: str) -> str:
    """The task key inside a lease id; NotFound for anything that is not a lease id."""
    m = _LEASE_ID.match(lease_id)
    if m is None:
        raise NotFound("no such lease")
    return m.group(1)


def validate_task_id(task_id: str) -> None:
    if not valid_task_id(task_id):
        raise InvalidRequest(f"task id: {TASK_ID_RULE}")


class Keys:
    def __init__(self, prefix: str) -> None:
        if not prefix or any(c in prefix for c in "{} "):
            raise ValueError(f"invalid key prefix {prefix!r}")
        self.prefix = prefix
        self.due = f"{prefix}:{{due}}"
        self.overdue = f"{prefix}:{{overdue}}"

    def task(self, tkey: str) -> str:
        return f"{self.prefix}:{{t:{tkey}}}:task"

    def task_leases(self, tkey: str) -> str:
        return f"{self.prefix}:{{t:{tkey}}}:leases"

    def lease(self, lease_id: str) -> str:
        return f"{self.prefix}:{{t:{task_key_of(lease_id)}}}:lease:{lease_id}"

    def owner_live(self, owner: str) -> str:
        return f"{self.prefix}:{{o:{owner_key(owner)}}}:live"

    def owner_done(self, owner: str) -> str:
        return f"{self.prefix}:{{o:{owner_key(owner)}}}:done"

    def retry(self, issuer: str) -> str:
        """The leases whose revocation at ``issuer`` failed and waits in backoff: retried at
        once when the issuer answers again."""
        return f"{self.prefix}:{{retry:{hashlib.sha256(issuer.encode()).hexdigest()[:16]}}}"
