"""What one STS session is called and tagged with: pure functions, no I/O.

- ``RoleSessionName`` is derived from the lease id, so CloudTrail's
  ``assumed-role/<role>/<session>`` leads back to the lease (and a crashed mint's session can be
  found by the lease id alone).
- Session tags ``jit:lease``, ``jit:task`` and ``jit:principal`` name the lease, the task and the
  workload, for CloudTrail and for ABAC conditions in the role's policies
  (``aws:PrincipalTag/jit:task``).

Both follow AWS's character rules. A value that has to change (a character AWS refuses, a
``+``, or too long) becomes a prefix of its cleaned form, ``+`` and 32 hex characters of the
SHA-256 of the original. A value that is kept never contains ``+``, and a changed one always
does, so two different originals never end up as the same name or tag (short of a SHA-256
collision): a principal cannot choose an id that reads as another principal's tag.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from broker.types import MintRequest

__all__ = [
    "MAX_SESSION_NAME",
    "MAX_TAG_VALUE",
    "SESSION_PREFIX",
    "TAG_LEASE",
    "TAG_PRINCIPAL",
    "TAG_TASK",
    "session_name",
    "session_tags",
    "tag_value",
]

SESSION_PREFIX: Final = "jit-"
MAX_SESSION_NAME: Final = 64  # RoleSessionName: 2-64 of [\w+=,.@-]
MAX_TAG_VALUE: Final = 256  # session tag values: 0-256 of letters, digits, space, _.:/=+-@
TAG_LEASE: Final = "jit:lease"
TAG_TASK: Final = "jit:task"
TAG_PRINCIPAL: Final = "jit:principal"

_SESSION_BAD = re.compile(r"[^A-Za-z0-9_=,.@-]")  # AWS allows "+": kept for the digest
_TAG_BAD = re.compile(r"[^A-Za-z0-9 _.:/=\-@]")  # likewise
_HASH_CHARS: Final = 32


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:_HASH_CHARS]


def _fit(original: str, cleaned: str, limit: int, joiner: str) -> str:
    """``cleaned`` if it is ``original`` unchanged and within ``limit``; otherwise a prefix of
    it, ``joiner`` (never in a kept value) and a digest of the original, within ``limit``."""
    if cleaned == original and len(cleaned) <= limit:
        return cleaned
    suffix = joiner + _digest(original)
    return cleaned[: limit - len(suffix)] + suffix


def session_name(lease_id: str) -> str:
    """``jit-<lease id>`` as an STS ``RoleSessionName`` (at most 64 characters of
    ``[\\w+=,.@-]``). A broker lease id (49 characters of hex and a dot) is kept verbatim."""
    name = SESSION_PREFIX + lease_id
    return _fit(name, _SESSION_BAD.sub("-", name), MAX_SESSION_NAME, "+")


def tag_value(value: str) -> str:
    """``value`` as a session tag value (at most 256 of letters, digits, space and
    ``_.:/=+-@``)."""
    return _fit(value, _TAG_BAD.sub("_", value), MAX_TAG_VALUE, "+")


def session_tags(request: MintRequest) -> list[dict[str, str]]:
    """The session tags of ``request``'s session, in the shape STS takes."""
    return [
        {"Key": TAG_LEASE, "Value": tag_value(request.lease_id)},
        {"Key": TAG_TASK, "Value": tag_value(request.task_id)},
        {"Key": TAG_PRINCIPAL, "Value": tag_value(request.principal.id)},
    ]
