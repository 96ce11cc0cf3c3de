"""Frozen value types shared by every part of the broker and by issuer plugins.

This is a contract module: it imports nothing else from ``broker``. Everything here is a frozen
msgspec Struct (or ``Secret``), so values can be passed between layers, hashed, and encoded to
the wire or to Redis without surprises.

Times are timezone-aware UTC ``datetime`` values; durations are ``timedelta``.
"""

from __future__ import annotations

import enum
import hmac
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "TASK_ID_PATTERN",
    "TASK_ID_RULE",
    "Credential",
    "Intent",
    "Lease",
    "LeaseState",
    "MintRequest",
    "Principal",
    "Scope",
    "Secret",
    "Task",
    "TaskId",
    "act_claim",
    "valid_task_id",
]

#: The one task-id syntax (API bodies, path parameters, OAuth parameters, Redis keys): ASCII
#: letters, digits and ``. _ : @ -``, 1-128 characters. CI systems' ids fit
#: (``1234-1-build``, ``pipeline:42``); spaces, slashes and non-ASCII look-alikes do not.
TASK_ID_PATTERN: Final = r"^[A-Za-z0-9._:@-]{1,128}$"
TASK_ID_RULE: Final = "1-128 characters of A-Z a-z 0-9 . _ : @ -"
_TASK_ID = re.compile(TASK_ID_PATTERN, re.ASCII)
TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=TASK_ID_PATTERN)]


def valid_task_id(value: str) -> bool:
    return _TASK_ID.fullmatch(value) is not None


class Secret:
    """A secret value whose ``repr``/``str`` never show it.

    Reveal it only at the API edge with :meth:`reveal`. msgspec cannot encode a ``Secret``
    (it is not a Struct or a builtin), so an accidental attempt to write one to Redis, an audit
    record or a JSON response fails loudly instead of leaking.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value: Final = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


class Scope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a credential may do: on which issuer instance, which resource, which actions.

    ``actions`` is kept sorted and free of duplicates (use :meth:`of`), so two equal scopes are
    equal values.
    """

    issuer: str
    resource: str
    actions: tuple[str, ...]

    @classmethod
    def of(cls, issuer: str, resource: str, actions: Any) -> Scope:
        return cls(issuer=issuer, resource=resource, actions=tuple(sorted(set(actions))))

    def covers(self, other: Scope) -> bool:
        """True when ``other`` asks for nothing outside this scope (same issuer and resource)."""
        return (
            self.issuer == other.issuer
            and self.resource == other.resource
            and set(other.actions) <= set(self.actions)
        )


class Task(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The unit of work a credential is bound to. ``purpose`` is shown to humans; it never
    grants anything."""

    id: str
    purpose: str = ""
    # How long the task may run, declared by its first request (later ones cannot change it).
    # None: the broker's default. No credential from an expiry-only issuer outlives it.
    ttl: timedelta | None = None
    auto: bool = False  # the broker named it (the request named no task)


class Principal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A verified caller.

    ``id`` is the stable identity that owns leases and tasks: ``"<identity-issuer-name>:<subject>"``
    (the preset decides what the subject is). ``claims`` holds the normalised claims that
    policies match on — only the claims the preset documents, never the raw token.
    """

    id: str
    issuer: str  # the configured identity issuer's name ("github", "dev", ...)
    subject: str
    claims: dict[str, Any] = msgspec.field(default_factory=dict)
    kind: str = "workload"  # "workload" | "client" (a configured OAuth client)


class Intent(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a workload asks for: a task and a scope for a while. ``ttl`` None means the grant's
    (or issuer's) default."""

    task: Task
    scope: Scope
    ttl: timedelta | None = None
    params: dict[str, str] = msgspec.field(default_factory=dict)  # see MintRequest.params
    cnf: dict[str, str] | None = None  # a verified DPoP key to bind to (see MintRequest.cnf)
    # RFC 8693 delegation: who acts for ``principal``, newest first (empty: the principal asks
    # for itself). A policy input: the grant must allow each actor and the chain's length.
    actors: tuple[Principal, ...] = ()


class MintRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an issuer receives. The lease id is known before mint, so an issuer can name what it
    creates after it and a crashed mint can still be found and revoked."""

    lease_id: str
    task_id: str
    principal: Principal
    scope: Scope
    issued_at: datetime
    not_after: datetime
    # Non-secret, issuer-specific inputs from the workload, e.g. ``public_key`` (an SSH or X.509
    # public key whose private half never leaves the workload) or ``source_address``. The issuer
    # validates them strictly and refuses unknown names (InvalidRequest). Never a secret.
    params: dict[str, str] = msgspec.field(default_factory=dict)
    # RFC 7800 confirmation: the key the credential is bound to, e.g. {"jkt": <RFC 7638
    # thumbprint>} when the request carried a verified DPoP proof (RFC 9449). An issuer that
    # can bind (the JWT issuer: the ``cnf`` claim) must; others refuse a bound request with
    # ScopeNotSupported.
    cnf: dict[str, str] | None = None
    # RFC 8693 delegation: the actors of a delegated credential, newest first (the JWT issuer
    # writes them as the nested ``act`` claim). Empty for a credential the principal asked
    # for itself. Optional: an issuer that cannot express delegation may ignore it.
    actors: tuple[Principal, ...] = ()


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    """What an issuer returns.

    ``secret`` is revealed only at the API edge. ``handle`` holds the non-secret facts that
    ``revoke()`` needs (stored in Redis with the lease); it must never contain the secret.
    ``expires_at`` must be <= the request's ``not_after``. ``metadata`` is non-secret data shown
    to the caller (e.g. a username or a certificate serial).
    """

    secret: Secret
    expires_at: datetime
    token_type: str = "Bearer"  # noqa: S105 (an RFC 6750 token type)
    handle: dict[str, str] = msgspec.field(default_factory=dict)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class LeaseState(enum.StrEnum):
    MINTING = "minting"  # write-ahead record: the issuer may have created something
    ACTIVE = "active"  # minted, handle recorded, due for revocation at not_after
    REVOKING = "revoking"  # revocation requested; retried until the issuer confirms
    REVOKED = "revoked"  # revoked at the issuer (or expired there and confirmed)
    FAILED = "failed"  # the mint failed and the clean-up revoke succeeded: nothing was issued

    @property
    def live(self) -> bool:
        return self in (LeaseState.MINTING, LeaseState.ACTIVE, LeaseState.REVOKING)


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A credential's record. Never holds the secret."""

    id: str
    task_id: str
    owner: str  # Principal.id
    principal: Principal
    scope: Scope
    issued_at: datetime
    not_after: datetime
    state: LeaseState
    handle: dict[str, str] = msgspec.field(default_factory=dict)
    purpose: str = ""
    revoked_at: datetime | None = None
    revoke_trigger: str | None = None
    attempts: int = 0  # failed revocation attempts so far
    overdue: bool = False  # revocation has failed max_attempts times (still retried)
    last_error: str | None = None
    cnf: dict[str, str] | None = None  # the key the credential is bound to (DPoP), if any
    grant: str | None = None  # the policy grant that allowed it ("<owner>/<name>")
    origin: str | None = None  # the client address the request came from, as the broker saw it
    # Delegation (RFC 8693, ADR 0040): the lease this one was delegated from (None: from an
    # identity token), and the actors, newest first. ``owner``/``principal`` stay the subject
    # whose authority it is; a delegated lease lives in its parent's task.
    parent: str | None = None
    actors: tuple[Principal, ...] = ()

    @property
    def ttl(self) -> timedelta:
        return self.not_after - self.issued_at


def act_claim(actors: tuple[Principal, ...]) -> dict[str, Any] | None:
    """The RFC 8693 §4.1 ``act`` claim for a chain of actors given newest first: the current
    actor outermost, each earlier one nested in the ``act`` of the one after it. None for no
    actors. Each actor is named by its stable id (``Principal.id``), like the token's ``sub``."""
    claim: dict[str, Any] | None = None
    for actor in reversed(actors):
        claim = {"sub": actor.id} if claim is None else {"sub": actor.id, "act": claim}
    return claim
