"""The OAuth token operations on issued credentials: introspection (RFC 7662), revocation
(RFC 7009) and usage reports from resource servers.

A token leads to its lease through the issuer that recognises it (``Introspectable``). Every
introspection and report of a known credential is a *use*, recorded and checked against its
grant's governance rules (which may revoke it, and its task, before the answer is given).

A token an issuer recognised is remembered by its SHA-256 digest for a few seconds (never past
its ``exp``, read from the very bytes that were verified; a token without a readable ``exp`` is
not remembered), so a resource server that introspects the same credential again and again
does not pay a signature check each time. The lease is still read on every call: revocation
and expiry answer as before; a key removed from the issuer's key ring stops a remembered token
within those seconds, as the key ring's own refresh does.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from broker.audit import AuditEvent, AuditLog
from broker.clock import Clock
from broker.errors import InvalidRequest, NotFound
from broker.governance import Governance
from broker.issuer import Introspectable, Issuer
from broker.leases import LeaseManager
from broker.policy import can
from broker.service.callers import Client
from broker.service.policy import LivePolicy
from broker.types import Lease, LeaseState, Principal, act_claim

__all__ = ["Tokens"]

#: How long a recognised token is remembered (seconds), and how many are.
REMEMBER_SECONDS = 5.0
REMEMBER_MAX = 10_000


def _jwt_exp(token: str) -> float | None:
    """The integer ``exp`` of a compact JWS's JSON payload, or None (not a JWT, no ``exp``)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = msgspec.json.decode(payload)
    except (ValueError, msgspec.DecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int):
        return None
    return float(exp)


def _active(lease: Lease | None, now: datetime) -> bool:
    return lease is not None and lease.state is LeaseState.ACTIVE and now < lease.not_after


class Tokens:
    def __init__(
        self,
        issuers: Mapping[str, Issuer],
        manager: LeaseManager,
        governance: Governance,
        policy: LivePolicy,
        audit: AuditLog,
        clock: Clock,
        *,
        public_url: str,
    ) -> None:
        self.issuers = issuers
        self.manager = manager
        self.governance = governance
        self.policy = policy
        self.audit = audit
        self.clock = clock
        self.public_url = public_url
        # digest of a recognised token → (lease id, remembered until, unix seconds)
        self._known: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def resource_server(
        self, principal: Principal | None, client: Client | None, permissions: set[str]
    ) -> tuple[bool, str]:
        """(may act as a resource server, the caller's name for the record): a configured
        client with one of ``permissions``, or a workload whose policy grants ``introspect``."""
        if client is not None:
            return bool(permissions & client.permissions), f"client:{client.client_id}"
        assert principal is not None
        return can(self.policy.current, principal, "introspect"), principal.id

    async def lease_of(self, token: str) -> Lease | None:
        """The lease behind a token some issuer recognises (signature and expiry checked, or
        the token was recognised moments ago: see the module docstring)."""
        lease_id = self._identify(token)
        if lease_id is None:
            return None
        try:
            return await self.manager.get(lease_id)
        except NotFound:
            return None

    def _identify(self, token: str) -> str | None:
        now = self.clock.now().timestamp()
        digest = hashlib.sha256(token.encode()).digest()
        known = self._known.get(digest)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._known[digest]
        for issuer in self.issuers.values():
            if isinstance(issuer, Introspectable):
                lease_id = issuer.identify(token, self.clock.now())
                if lease_id is not None:
                    exp = _jwt_exp(token)
                    if exp is not None:
                        self._known[digest] = (lease_id, min(now + REMEMBER_SECONDS, exp))
                        if len(self._known) > REMEMBER_MAX:
                            self._known.popitem(last=False)
                    return lease_id
        return None

    async def introspect(
        self,
        token: str,
        *,
        caller: str,
        resource: str | None = None,
        action: str | None = None,
        client_address: str | None = None,
    ) -> dict[str, Any]:
        """RFC 7662 response. Active only while the lease is active and before not_after.

        A known token costs two Redis round trips, each shared with concurrent requests: the
        lease's task hash read together with the use count, then one commit with the
        ``lease.used`` and ``lease.introspected`` records (a violation takes the longer way:
        the anomaly is recorded and acted on first, the lease read again)."""
        lease: Lease | None = None
        recorded = False
        lease_id = self._identify(token)
        now = self.clock.now()

        def record(found: Lease | None) -> AuditEvent:
            # The answer is decided here, with the lease as read and the time after the read.
            nonlocal recorded, now
            recorded = True
            now = self.clock.now()
            active = _active(found, now)
            return self.audit.record(
                "lease.introspected",
                outcome="ok" if active else "deny",
                lease_id=found.id if found else None,
                task_id=found.task_id if found else None,
                # A keyed digest, never the token: who holds the key can match a leaked token.
                detail={"caller": caller, "active": active, "token_hmac": self.audit.hmac(token)},
            )

        if lease_id is not None:
            try:
                lease, violations = await self.governance.use(
                    lease_id,
                    reporter=caller,
                    via="introspection",
                    resource=resource,
                    action=action,
                    client_address=client_address,
                    also=lambda found: [record(found)],
                )
            except NotFound:
                lease, violations = None, []
            if violations and lease is not None:
                recorded = False
                try:
                    lease = await self.manager.get(lease.id)
                except NotFound:
                    lease = None
        if not recorded:
            await self.audit.commit([record(lease)])
        if lease is None or not _active(lease, now):
            return {"active": False}
        answer: dict[str, Any] = {
            "active": True,
            "scope": " ".join(lease.scope.actions),
            "client_id": lease.owner,
            "sub": lease.owner,
            "aud": lease.scope.resource,
            "iss": self.public_url,
            "exp": int(lease.not_after.timestamp()),
            "iat": int(lease.issued_at.timestamp()),
            "jti": lease.id,
            "token_type": "DPoP" if lease.cnf else "Bearer",
            "task_id": lease.task_id,
            "authorization_details": [
                {
                    "type": lease.scope.issuer,
                    "locations": [lease.scope.resource],
                    "actions": list(lease.scope.actions),
                }
            ],
        }
        if lease.actors:  # RFC 8693 §4.1: the delegation chain, current actor outermost
            answer["act"] = act_claim(lease.actors)
        if lease.cnf:
            answer["cnf"] = dict(lease.cnf)  # RFC 9449 §6.2: the resource server checks it
        return answer

    async def report_use(
        self,
        *,
        caller: str,
        token: str | None,
        lease_id: str | None,
        serves: frozenset[str],
        resource: str | None,
        action: str | None,
        client_address: str | None,
    ) -> dict[str, Any]:
        """A resource server's report of one use. It counts only for a credential the reporter
        may speak for: one it presents (``token``), or, by ``lease_id``, one whose resource is
        among those the reporter ``serves`` (a configured client's ``resources``). Anything
        else is NotFound, exactly like an unknown credential: the answer says nothing about
        other workloads' leases."""
        lease: Lease | None = None
        if token:
            lease = await self.lease_of(token)
            if lease is not None and lease_id and lease_id != lease.id:
                raise InvalidRequest("token and lease_id name different credentials")
        elif lease_id:
            with contextlib.suppress(NotFound):
                lease = await self.manager.get(lease_id)
            if lease is not None and lease.scope.resource not in serves:
                lease = None
        if lease is None:
            raise NotFound("no such credential")
        used, violations = await self.governance.use(
            lease.id,
            reporter=caller,
            via="report",
            resource=resource,
            action=action,
            client_address=client_address,
        )
        if used is None:
            raise NotFound("no such credential")
        if violations:
            used = await self.manager.get(lease.id)
        return {
            "lease_id": used.id,
            "active": _active(used, self.clock.now()),
            "violations": [v.rule for v in violations],
        }

    async def revoke(
        self,
        token: str,
        *,
        principal: Principal | None,
        client: Client | None,
        request_id: str | None = None,
    ) -> None:
        """RFC 7009: revoke the lease behind ``token`` if the caller may (its owner, or a client
        with the ``revoke`` permission). An unknown token and a token the caller may not revoke
        get the same silent answer, so the endpoint is no oracle of which tokens are live; the
        refusal is audited."""
        lease = await self.lease_of(token)
        if lease is None:
            return
        if client is not None and "revoke" in client.permissions:
            await self.manager.revoke(lease.id, "explicit")
        elif principal is not None and (
            lease.owner == principal.id or principal.id in {a.id for a in lease.actors}
        ):
            # The owner, or an actor of a delegated credential's chain (ADR 0040).
            await self.manager.revoke(lease.id, "explicit")
        else:
            caller = f"client:{client.client_id}" if client else principal.id if principal else "?"
            await self.audit.emit(
                "lease.revoke_refused",
                outcome="deny",
                principal=lease.owner,
                lease_id=lease.id,
                task_id=lease.task_id,
                issuer=lease.scope.issuer,
                reasons=["the caller neither owns the credential nor may revoke for others"],
                detail={"caller": caller},
                request_id=request_id,
            )
