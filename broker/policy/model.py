"""The policy document schema: what an owner may write in a policy YAML file.

Owns the msgspec Structs for the written form (every one forbids unknown keys: a key we do not
know is an error, never ignored) and the constants of the language. Workload entries, claim
matchers and grants are declared as ``Any`` inside their parents and converted one by one by
``broker.policy.compile``, so that one bad entry does not hide the problems of the others and
every error can name the exact entry. docs/policy.md is the reference for this schema; keep the
two in step.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, get_args

import msgspec

__all__ = [
    "ACTION_PATTERN",
    "CEL_VARIABLES",
    "DEFAULT_TTL_CAP",
    "GRANT_NAME_PATTERN",
    "MAX_DELEGATION_DEPTH",
    "OWNER_PATTERN",
    "PERMISSIONS",
    "ApprovalSpec",
    "ClaimPattern",
    "DelegationSpec",
    "DeliverySpec",
    "DocumentSpec",
    "GovernanceSpec",
    "GrantSpec",
    "WorkloadSpec",
]

#: An action name: letters, digits and ``_ . : -``.
ACTION_PATTERN: Final = r"^[A-Za-z0-9_.:-]+$"
#: A grant name (unique within its document); the grant's id is ``<owner>/<name>``.
GRANT_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: An owner: a team or person, without spaces or ``/`` (it prefixes grant ids).
OWNER_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"
#: What ``permissions:`` may list, beyond grants. ``introspect``: may call /oauth/introspect.
Permission = Literal["introspect"]
PERMISSIONS: Final[frozenset[str]] = frozenset(get_args(Permission))
#: The variables a ``when`` condition may use.
CEL_VARIABLES: Final = frozenset({"claims", "principal", "request", "now"})
#: The longest delegation chain a policy may allow (``delegation.max_depth``).
MAX_DELEGATION_DEPTH: Final = 8
#: ``default_ttl`` when a grant gives none: min(max_ttl, this many seconds).
DEFAULT_TTL_CAP: Final = 15 * 60

Action = Annotated[str, msgspec.Meta(pattern=ACTION_PATTERN)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class ClaimPattern(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A claim matcher written as a mapping; exactly one key is set. (A plain string, integer
    or boolean is an exact match and needs no mapping.)"""

    glob: str | None = None  # fnmatch-style, whole value: * ? [abc]
    regex: str | None = None  # must be anchored: ^...$
    one_of: list[str | int | bool] | None = None  # any of these exact values


class WorkloadSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One trusted workload: an identity issuer and the claims its token must carry."""

    issuer: NonEmpty  # the identity issuer's configured name (Principal.issuer)
    # claim name → str | int | bool (exact) or a ClaimPattern; each value is converted on its
    # own so that an error can name the claim.
    claims: dict[str, Any] = msgspec.field(default_factory=dict)


class ApprovalSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who must approve a grant's requests, and how many of them."""

    # people (names from the config's approvals.people) or groups ("group:<name>")
    approvers: Annotated[list[NonEmpty], msgspec.Meta(min_length=1)]
    quorum: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    expires_after: str | int | None = None  # how long a request may wait; None: config default
    channel: str | None = None  # Slack channel id; None: the config's default channel


class GovernanceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a grant's credentials may be used, checked on every reported use (introspection,
    usage reports). Use after the task completed and use outside the intent are always checked."""

    # Where uses may come from: CIDR blocks, and/or "request" (the address that asked for the
    # credential). Empty: not checked.
    networks: list[NonEmpty] = msgspec.field(default_factory=list)
    max_uses_per_minute: Annotated[int, msgspec.Meta(ge=1)] = 600
    # What a violation does: revoke the lease and the rest of its task (default), only the
    # lease, or only raise an alert.
    on_violation: Literal["revoke_task", "revoke_lease", "alert"] = "revoke_task"


class DelegationSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Who may act for the grant's workloads (RFC 8693 ``actor_token``) and how long a chain of
    delegations may grow. Each actor entry is written like a ``workloads`` entry (an identity
    issuer and claim matchers) and converted on its own."""

    actors: Annotated[list[Any], msgspec.Meta(min_length=1)]  # each a WorkloadSpec
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=MAX_DELEGATION_DEPTH)] = 1


class DeliverySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How an agent's tool (``jit mcp``) may hand the grant's credential on. By default the
    secret goes to a file only; ``reveal_to_model: true`` lets it appear in a tool result."""

    reveal_to_model: bool = False


class GrantSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One grant: what the document's workloads may ask for, and on which terms."""

    name: Annotated[str, msgspec.Meta(pattern=GRANT_NAME_PATTERN)]
    issuer: NonEmpty  # an issuer instance name from the config
    resource: NonEmpty  # exact, or a glob (* ? [..])
    actions: Annotated[list[Action], msgspec.Meta(min_length=1)]
    max_ttl: str | int  # a duration: 90s, 15m, 1h, 1h30m, or a number of seconds
    default_ttl: str | int | None = None  # <= max_ttl; None: min(max_ttl, 15m)
    # "none", "required" (approvers: the config's approvals.default_approvers), or a mapping
    approval: Literal["none", "required"] | ApprovalSpec
    governance: GovernanceSpec | None = None
    when: str | None = None  # a CEL condition over claims, principal, request, now
    delegation: DelegationSpec | None = None  # None: nobody may act for the workload
    delivery: DeliverySpec | None = None  # None: the defaults (never revealed to a model)


class DocumentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One policy document (one per file)."""

    owner: Annotated[str, msgspec.Meta(pattern=OWNER_PATTERN)]
    description: str = ""
    workloads: Annotated[list[Any], msgspec.Meta(min_length=1)]  # each a WorkloadSpec
    permissions: list[Permission] = msgspec.field(default_factory=list)
    grants: list[Any] = msgspec.field(default_factory=list)  # each a GrantSpec
