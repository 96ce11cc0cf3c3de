"""Who is calling: workload identity tokens, OAuth clients, approvers, DPoP key bindings.

Every refusal is audited (``auth.failed``) with its reason, never with the token. Secrets are
compared in constant time; an unknown client id is compared against a dummy so timing does not
reveal which ids exist.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from broker.approvals import People
from broker.audit import AuditLog
from broker.errors import AuthenticationError, NotFound, PermissionDenied
from broker.identity import TokenVerifier
from broker.identity.dpop import DPoPVerifier
from broker.types import Principal, Secret

__all__ = ["DEV_APPROVER", "DEV_APPROVER_PREFIX", "Callers", "Client"]

#: The approver that ``jit dev`` configures (authenticated by the dev approver key).
DEV_APPROVER = "dev-approver"
#: The dev approver key starts with this, so it is never mistaken for an identity token.
DEV_APPROVER_PREFIX = "jitdev-approver-"


@dataclass(frozen=True)
class Client:
    """A configured OAuth client (a resource server)."""

    client_id: str
    secret: Secret
    permissions: frozenset[str]
    resources: frozenset[str] = field(default=frozenset())  # what it serves (usage reports)


class Callers:
    def __init__(
        self,
        verifier: TokenVerifier,
        audit: AuditLog,
        people: People,
        dpop: DPoPVerifier,
        *,
        public_url: str,
        clients: dict[str, Client] | None = None,
        dev_admin_key: Secret | None = None,
        dev_approver_key: Secret | None = None,
    ) -> None:
        self.verifier = verifier
        self.audit = audit
        self.people = people
        self.dpop = dpop
        self.public_url = public_url.rstrip("/")
        self.clients = dict(clients or {})
        self.dev_admin_key = dev_admin_key
        self.dev_approver_key = dev_approver_key

    async def refused(
        self, reason: str, *, request_id: str | None = None, **detail: str | bool
    ) -> None:
        """Record a refused caller (the HTTP edge calls this for a missing bearer token)."""
        await self.audit.emit(
            "auth.failed",
            outcome="deny",
            reasons=[reason],
            detail=dict(detail) or {},
            request_id=request_id,
        )

    async def workload(self, token: str, *, request_id: str | None = None) -> Principal:
        """The verified workload behind an identity token (AuthenticationError otherwise)."""
        try:
            return await self.verifier.verify(token)
        except AuthenticationError as exc:
            await self.refused(exc.message, request_id=request_id)
            raise

    async def client(self, client_id: str, secret: str, *, request_id: str | None = None) -> Client:
        client = self.clients.get(client_id)
        expected = client.secret.reveal() if client else secrets.token_urlsafe(32)
        ok = hmac.compare_digest(expected.encode(), secret.encode())
        if client is None or not ok:
            await self.refused(
                "invalid client credentials", request_id=request_id, client_id=client_id
            )
            raise AuthenticationError("invalid client credentials")
        return client

    def check_dev_admin(self, presented: str) -> None:
        """The development admin key (``jit dev`` only; NotFound elsewhere)."""
        if self.dev_admin_key is None:
            raise NotFound("not found")
        if not hmac.compare_digest(self.dev_admin_key.reveal().encode(), presented.encode()):
            raise AuthenticationError("invalid development admin key")

    async def approval_caller(
        self, token: str, *, request_id: str | None = None
    ) -> tuple[Principal | None, str | None]:
        """Who calls the approvals API: ``(workload, None)`` for a workload, ``(principal,
        person)`` for a configured approver's human identity token, ``(None, dev-approver)``
        for the development approver key."""
        if token.startswith(DEV_APPROVER_PREFIX):
            key = self.dev_approver_key
            if key is None or not hmac.compare_digest(key.reveal().encode(), token.encode()):
                reason = (
                    "not an approver key" if key is None else "invalid development approver key"
                )
                await self.refused(reason, request_id=request_id)
                raise AuthenticationError(reason)
            return None, DEV_APPROVER
        principal = await self.workload(token, request_id=request_id)
        return principal, self.people.for_principal(principal)

    async def approver(self, token: str, *, request_id: str | None = None) -> str:
        """The configured person behind ``token``; PermissionDenied for anyone else."""
        principal, person = await self.approval_caller(token, request_id=request_id)
        if person is None:
            who = principal.id if principal else "caller"
            raise PermissionDenied(f"{who} is not a configured approver")
        return person

    async def dpop_binding(
        self, proofs: list[str], *, path: str, request_id: str | None = None
    ) -> dict[str, str] | None:
        """The confirmation (``{"jkt": ...}``) for a request carrying a DPoP proof (RFC 9449);
        None without one. The proof must be for POST to this broker's public URL + ``path``."""
        if not proofs:
            return None
        try:
            jkt = await self.dpop.verify(proofs, method="POST", url=self.public_url + path)
        except AuthenticationError as exc:
            await self.refused(exc.message, request_id=request_id, dpop=True)
            raise
        return {"jkt": jkt}
