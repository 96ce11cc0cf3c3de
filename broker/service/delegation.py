"""Who is calling in an RFC 8693 delegation (``actor_token``): the subject whose authority is
used, the chain of actors, and the credential it is delegated from (ADR 0040).

- ``subject_token`` is either an identity token (the first hop: a person or workload
  delegates its own authority), or an access token this broker issued (a further hop: the
  holder of a delegated or ordinary credential passes it on). The latter is recognised by the
  issuer that signed it (``Introspectable.identify``) and leads to its lease, which must be
  active; the subject is then the lease's principal and the chain grows by one.
- ``actor_token`` is the acting party's own identity token, verified like any identity token.

Nothing here decides: :meth:`broker.service.issuance.Issuance.delegate` asks the policy and
checks that the hop only narrows.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.clock import Clock
from broker.errors import AuthenticationError, InvalidRequest
from broker.service.callers import Callers
from broker.service.tokens import Tokens
from broker.types import Lease, LeaseState, Principal

__all__ = ["Hop", "authenticate_hop"]


@dataclass(frozen=True)
class Hop:
    """One authenticated delegation step."""

    subject: Principal  # whose authority: the identity token's, or the parent lease's principal
    actors: tuple[Principal, ...]  # newest first; actors[0] presented the actor_token
    parent: Lease | None  # the credential delegated from; None for the first hop


async def authenticate_hop(
    callers: Callers,
    tokens: Tokens,
    clock: Clock,
    *,
    subject_token: str,
    actor_token: str,
    subject_is_access_token: bool,
    request_id: str | None = None,
) -> Hop:
    """Verify both tokens. AuthenticationError for a token that does not verify (or a parent
    credential that is no longer active), InvalidRequest for a chain that makes no sense."""
    actor = await callers.workload(actor_token, request_id=request_id)
    parent = await tokens.lease_of(subject_token)
    if parent is None:
        if subject_is_access_token:
            await callers.refused(
                "subject_token is not an active access token of this broker",
                request_id=request_id,
            )
            raise AuthenticationError("subject_token is not an active access token of this broker")
        subject = await callers.workload(subject_token, request_id=request_id)
        earlier: tuple[Principal, ...] = ()
    else:
        if parent.state is not LeaseState.ACTIVE or clock.now() >= parent.not_after:
            await callers.refused(
                "subject_token: the credential is no longer active", request_id=request_id
            )
            raise AuthenticationError("subject_token: the credential is no longer active")
        if parent.cnf:
            # A sender-constrained token is usable only with its key's proofs; passing it on
            # as a bearer subject_token would strip that binding.
            raise InvalidRequest("subject_token is bound to a DPoP key and cannot be delegated")
        subject, earlier = parent.principal, parent.actors
    if actor.id == subject.id or actor.id in {a.id for a in earlier}:
        raise InvalidRequest(f"{actor.id} is already in the delegation chain")
    return Hop(subject=subject, actors=(actor, *earlier), parent=parent)
