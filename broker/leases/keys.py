"""The Redis key layout and lease ids (ADR 0001, ADR 0060). Pure: no I/O.

::

    {prefix}:{t:<task key>}        hash  a task and every lease of it (fields below)
    {prefix}:{o:<owner key>}       hash  the owner's tasks: task key → created ms; "#": live count
    {prefix}:{due:<n>}             zset  due shard n: lease id → when the reaper must look (ms)
    {prefix}:{due}                 zset  the due shards: n → a time at or before its earliest entry
    {prefix}:{o:<owner key>}:m:<minute>  string  the owner's mints this minute (quota)
    {prefix}:{q:<policy owner key>}  hash  "#": live leases of a policy owner's grants (quota)
    {prefix}:{q:<policy owner key>}:m:<minute>  string  their mints this minute (quota)
    {prefix}:{overdue}             set   leases whose revocation failed too often or too long
    {prefix}:{retry:<issuer key>}  set   leases whose revocation at that issuer waits in backoff

One hash per task holds the task and its leases, so every script that changes a lease touches
one key (one Redis Cluster slot), and a task with a lease costs one small (listpack-encoded)
hash. The due index is split into many small shards (a lease goes to shard ``suffix mod N``),
each small enough to stay listpack-encoded, with an index of shards by their earliest entry so
the reaper reads only shards that have something due; both spread the writes of a busy
deployment over many slots instead of one hot ``{due}``.

Task hash fields: ``o`` owner, ``t`` task id, ``p`` purpose, ``s`` state (``o`` open, ``c``
completed), ``c`` created ms, ``d`` deadline ms, ``x`` completed ms, ``n`` live leases. Each
lease has fields named by its 8-hex suffix ``S``: ``S`` its state (``m`` minting, ``a`` active,
``r`` revoking, ``R`` revoked, ``F`` failed), ``Sm`` its immutable facts, ``Sr`` the resource,
``Sh`` the issuer's handle, ``Sk`` the key binding (cnf), and while revoked or retried: ``Sv``
revision, ``Sl``/``Su`` the revocation lock and its end, ``ST`` trigger, ``SP`` previous state,
``SX`` revoked at, ``SA`` attempts, ``SE`` last error, ``SF`` first failure, ``SO`` overdue,
``Sq`` / ``Sw`` when the ``lease.minted`` / ``lease.revoked`` record was committed, until it is
known to be in the chain (then cleared).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from broker.errors import InvalidRequest, NotFound
from broker.types import TASK_ID_RULE, valid_task_id

__all__ = [
    "DEFAULT_DUE_SHARDS",
    "Keys",
    "new_lease_id",
    "owner_key",
    "split_lease_id",
    "task_key",
    "task_key_of",
    "validate_task_id",
]

_LEASE_ID = re.compile(r"^([0-9a-f]{16})\.([0-9a-f]{8})$")
#: Shards of the due index: at 100,000 live leases each holds about 100 (listpack-encoded).
DEFAULT_DUE_SHARDS = 1024


def task_key(owner: str, task_id: str) -> str:
    """A task is its owner's: two workloads using one task id never share a task."""
    return hashlib.sha256(f"{owner}\0{task_id}".encode()).hexdigest()[:16]


def owner_key(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def new_lease_id(tkey: str) -> str:
    """``<task key>.<32 random bits>``: unique within its task (the script that records it
    refuses a suffix the task already has), so unique everywhere."""
    return f"{tkey}.{secrets.token_hex(4)}"


def split_lease_id(lease_id: str) -> tuple[str, str]:
    """(task key, suffix) of a lease id; NotFound for anything that is not a lease id."""
    m = _LEASE_ID.match(lease_id)
    if m is None:
        raise NotFound("no such lease")
    return m.group(1), m.group(2)


def task_key_of(lease_id: str) -> str:
    """The task key inside a lease id; NotFound for anything that is not a lease id."""
    return split_lease_id(lease_id)[0]


def validate_task_id(task_id: str) -> None:
    if not valid_task_id(task_id):
        raise InvalidRequest(f"task id: {TASK_ID_RULE}")


class Keys:
    def __init__(self, prefix: str, due_shards: int = DEFAULT_DUE_SHARDS) -> None:
        if not prefix or any(c in prefix for c in "{} "):
            raise ValueError(f"invalid key prefix {prefix!r}")
        if due_shards < 1:
            raise ValueError("due_shards must be at least 1")
        self.prefix = prefix
        self.due_shards = due_shards
        self.due = f"{prefix}:{{due}}"
        self.overdue = f"{prefix}:{{overdue}}"

    def task(self, tkey: str) -> str:
        return f"{self.prefix}:{{t:{tkey}}}"

    def lease_task(self, lease_id: str) -> str:
        return self.task(task_key_of(lease_id))

    def owner(self, owner: str) -> str:
        return f"{self.prefix}:{{o:{owner_key(owner)}}}"

    def owner_rate(self, owner: str, minute: int) -> str:
        return f"{self.prefix}:{{o:{owner_key(owner)}}}:m:{minute}"

    def policy_owner(self, owner: str) -> str:
        return f"{self.prefix}:{{q:{owner_key(owner)}}}"

    def policy_owner_rate(self, owner: str, minute: int) -> str:
        return f"{self.prefix}:{{q:{owner_key(owner)}}}:m:{minute}"

    def shard_of(self, lease_id: str) -> int:
        return int(split_lease_id(lease_id)[1], 16) % self.due_shards

    def due_shard(self, n: int) -> str:
        return f"{self.prefix}:{{due:{n}}}"

    def retry(self, issuer: str) -> str:
        """The leases whose revocation at ``issuer`` failed and waits in backoff: retried at
        once when the issuer answers again."""
        return f"{self.prefix}:{{retry:{hashlib.sha256(issuer.encode()).hexdigest()[:16]}}}"
