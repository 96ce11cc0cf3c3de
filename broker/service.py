"""The broker's use cases, free of HTTP: authenticate → decide → issue; introspect; revoke.

``Broker`` owns the wiring of the parts (verifier, policy, lease manager, reaper, issuers, audit)
and is what ``broker.api`` calls. ``build_broker()`` assembles one from settings, failing closed
on anything that does not load. It does nothing whose cost grows with the number of leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from broker.approvals import Approvals, ApprovalState, ApprovalStore, ApprovalView, People
from broker.audit import AuditLog, AuditSink, LoggingSink, build_audit
from broker.clock import Clock, SystemClock
from broker.config import ClientSettings, PersonSettings, Settings
from broker.errors import (
    ApprovalRequired,
    AuthenticationError,
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PolicyError,
    ScopeNotSupported,
    StoreUnavailable,
)
from broker.governance import Governance
from broker.identity import DevIdentityIssuer, TokenVerifier
from broker.identity.dpop import DPoPVerifier, RedisReplayCache
from broker.issuer import Introspectable, Issuer, PublishesDocuments, PublishesKeys
from broker.leases import LeaseManager, LeaseStore, Reaper, TaskView
from broker.leases.ttl import TtlDecision, resolve_ttl
from broker.metrics import Metrics, MetricsSink
from broker.policy import Allow, Deny, NeedsApproval, PolicySet, can, decide, load_policy_dir
from broker.registry import load_issuers
from broker.ssf import SsfTransmitter
from broker.types import Credential, Intent, Lease, LeaseState, Principal, Secret

__all__ = ["DEV_APPROVER", "Broker", "Issued", "build_broker"]

#: The approver that ``jit dev`` configures (authenticated by the dev approver key).
DEV_APPROVER = "dev-approver"

log = logging.getLogger("jit.broker")


class Issued(msgspec.Struct, frozen=True, kw_only=True):
    lease: Lease
    credential: Credential
    grant: str
    policy_version: str
    ttl_capped_by: str | None = None


@dataclass
class Client:
    client_id: str
    secret: Secret
    permissions: frozenset[str]
    resources: frozenset[str] = frozenset()  # what it serves: usage reports by lease id


@dataclass
class Broker:
    settings: Settings
    clock: Clock
    redis: aioredis.Redis
    verifier: TokenVerifier
    policy: PolicySet
    issuers: dict[str, Issuer]
    manager: LeaseManager
    reaper: Reaper
    audit: AuditLog
    approvals: Approvals
    clients: dict[str, Client] = field(default_factory=dict)
    dev_identity: DevIdentityIssuer | None = None
    dev_admin_key: Secret | None = None
    dev_approver_key: Secret | None = None
    ssf: SsfTransmitter | None = None
    metrics: Metrics = field(default_factory=lambda: Metrics(issuers=()))
    metrics_token: Secret | None = None  # None: /metrics is open in dev, off otherwise
    in_memory: bool = False
    _reaper_task: asyncio.Task[None] | None = None
    _approvals_task: asyncio.Task[None] | None = None
    _ssf_task: asyncio.Task[None] | None = None
    _audit_task: asyncio.Task[None] | None = None
    _kids: frozenset[str] | None = None
    governance: Governance = field(init=False)
    dpop: DPoPVerifier = field(init=False)

    def __post_init__(self) -> None:
        self.governance = Governance(
            self.manager,
            lambda: self.policy,
            self.redis,
            self.settings.key_prefix,
            self.clock,
            self.audit,
        )
        self.dpop = DPoPVerifier(
            self.clock, RedisReplayCache(self.redis, f"{self.settings.key_prefix}:dpop")
        )

    async def verify_dpop(
        self, proofs: list[str], *, path: str, request_id: str | None = None
    ) -> dict[str, str] | None:
        """The confirmation (``{"jkt": ...}``) for a request carrying a DPoP proof (RFC 9449);
        None without one. The proof must be for POST to this broker's public URL + ``path``."""
        if not proofs:
            return None
        url = self.settings.public_url.rstrip("/") + path
        try:
            jkt = await self.dpop.verify(proofs, method="POST", url=url)
        except AuthenticationError as exc:
            await self.audit.emit(
                "auth.failed",
                outcome="deny",
                reasons=[exc.message],
                detail={"dpop": True},
                request_id=request_id,
            )
            raise
        return {"jkt": jkt}

    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    # -- identity ---------------------------------------------------------------------------

    async def authenticate(self, token: str, *, request_id: str | None = None) -> Principal:
        try:
            return await self.verifier.verify(token)
        except AuthenticationError as exc:
            await self.audit.emit(
                "auth.failed", outcome="deny", reasons=[exc.message], request_id=request_id
            )
            raise

    async def authenticate_client(
        self, client_id: str, secret: str, *, request_id: str | None = None
    ) -> Client:
        client = self.clients.get(client_id)
        # Compare against a dummy when the client is unknown so timing does not reveal ids.
        expected = client.secret.reveal() if client else secrets.token_urlsafe(32)
        ok = hmac.compare_digest(expected.encode(), secret.encode())
        if client is None or not ok:
            await self.audit.emit(
                "auth.failed",
                outcome="deny",
                reasons=["invalid client credentials"],
                detail={"client_id": client_id},
                request_id=request_id,
            )
            raise AuthenticationError("invalid client credentials")
        return client

    def check_dev_admin(self, presented: str) -> None:
        if self.dev_admin_key is None:
            raise NotFound("not found")
        if not hmac.compare_digest(self.dev_admin_key.reveal().encode(), presented.encode()):
            raise AuthenticationError("invalid development admin key")

    # -- issuance ---------------------------------------------------------------------------

    async def request_credential(
        self,
        principal: Principal,
        intent: Intent,
        *,
        on_behalf_of: str | None = None,
        origin: str | None = None,
        request_id: str | None = None,
    ) -> Issued | ApprovalView:
        """Decide and mint; or, for a grant that needs approval, open (or join) an approval
        request and return it (the credential comes from :meth:`collect` once approved)."""
        now = self.clock.now()
        decision = decide(self.policy, principal, intent, now)
        scope = intent.scope
        common: dict[str, Any] = {
            "principal": principal.id,
            "task_id": intent.task.id,
            "issuer": scope.issuer,
            "request_id": request_id,
        }
        detail: dict[str, Any] = {
            "resource": scope.resource,
            "actions": list(scope.actions),
            "policy_version": decision.policy_version,
        }
        if intent.ttl is not None:
            detail["ttl_seconds"] = int(intent.ttl.total_seconds())
        if isinstance(decision, Deny):
            await self.audit.emit(
                "decision", outcome="deny", reasons=list(decision.reasons), detail=detail, **common
            )
            raise PermissionDenied("no grant allows this request", decision.reasons)
        detail["grant"] = decision.grant
        issuer = self.issuers.get(scope.issuer)
        if issuer is None:  # policy lint checks this at load; kept as a guard
            raise InvalidRequest(f"unknown issuer {scope.issuer!r}")
        issuer.check_scope(scope)
        if intent.cnf and not set(intent.cnf) <= getattr(
            issuer, "confirmation_methods", frozenset()
        ):
            raise ScopeNotSupported(f"issuer {scope.issuer!r} cannot bind a credential to a key")
        deadline, ttl = await self._ttl(principal, intent, decision.ttl, issuer)
        detail["ttl_seconds"] = int(ttl.ttl.total_seconds())
        if isinstance(decision, NeedsApproval):
            await self.audit.emit(
                "decision",
                outcome="approval_required",
                reasons=list(decision.reasons),
                detail=detail,
                **common,
            )
            grant = self.policy.grant(decision.grant)
            if grant is None or grant.approval is None:  # cannot happen: decide() named it
                raise ApprovalRequired(decision.grant, decision.reasons)
            return await self.approvals.open(
                principal,
                intent,
                ttl=ttl.ttl,
                grant=decision.grant,
                grant_owner=grant.owner,
                rule=grant.approval,
                policy_version=decision.policy_version,
                on_behalf_of=on_behalf_of,
                request_id=request_id,
            )
        assert isinstance(decision, Allow)
        await self.audit.emit(
            "decision", outcome="ok", reasons=list(decision.reasons), detail=detail, **common
        )
        lease, credential = await self.manager.issue(
            principal,
            intent.task,
            decision.scope,
            ttl.ttl,
            params=intent.params,
            deadline=deadline,
            cnf=intent.cnf,
            grant=decision.grant,
            origin=origin,
            request_id=request_id,
            detail={"grant": decision.grant, "policy_version": decision.policy_version},
        )
        return Issued(
            lease=lease,
            credential=credential,
            grant=decision.grant,
            policy_version=decision.policy_version,
            ttl_capped_by=ttl.capped_by,
        )

    async def _ttl(
        self, principal: Principal, intent: Intent, grant_ttl: timedelta, issuer: Issuer
    ) -> tuple[datetime, TtlDecision]:
        limits = self.settings.limits
        if intent.task.ttl is not None and not (
            timedelta(0) < intent.task.ttl <= limits.max_task_ttl
        ):
            raise InvalidRequest(
                f"task ttl must be positive and at most {int(limits.max_task_ttl.total_seconds())}s"
            )
        if issuer.capabilities.revocable:
            # Only an expiry-only credential is capped to the task, so only then read the
            # stored deadline; the lease script refuses a task past its deadline either way.
            deadline = self.clock.now() + (intent.task.ttl or limits.default_task_ttl)
        else:
            deadline = await self.manager.task_deadline(
                principal.id, intent.task, default=limits.default_task_ttl
            )
        ttl = resolve_ttl(
            intent.ttl,
            grant_default=grant_ttl,
            grant_max=grant_ttl,
            issuer=issuer.capabilities,
            hard_max=limits.max_ttl,
            task_remaining=deadline - self.clock.now(),
        )
        return deadline, ttl

    # -- approvals --------------------------------------------------------------------------

    async def collect(
        self,
        principal: Principal,
        approval_id: str,
        *,
        origin: str | None = None,
        request_id: str | None = None,
    ) -> tuple[ApprovalView, Issued | None]:
        """The workload's view of its approval request; once approved, the credential is
        minted here, once, for the approved scope. The grant's clock started at approval."""
        view = await self.approvals.get_for(approval_id, owner=principal.id, person=None)
        if view.state is not ApprovalState.APPROVED or view.lease_id or view.decided_at is None:
            return view, None
        scope, approved_ttl = self.approvals.approved_terms(view)
        now = self.clock.now()
        remaining = approved_ttl - (now - view.decided_at)
        if remaining < timedelta(seconds=1):
            raise Conflict("the approved credential's time ran out before it was collected")
        planned = self.manager.plan_lease_id(principal.id, view.task.id)
        status, previous = await self.approvals.claim_mint(view, planned)
        if status != "ok":
            return await self.approvals.get(approval_id), None
        if previous:  # an earlier minter died mid-mint: make sure its credential is gone
            with contextlib.suppress(NotFound):
                await self.manager.revoke(previous, "approval_remint")
        intent = Intent(
            task=view.task, scope=scope, ttl=remaining, params=dict(view.params), cnf=view.cnf
        )
        try:
            decision = decide(self.policy, principal, intent, now)
            if isinstance(decision, Deny):
                raise PermissionDenied(
                    "the policy no longer allows this approved request", decision.reasons
                )
            lease, credential = await self.manager.issue(
                principal,
                view.task,
                scope,
                remaining,
                params=view.params,
                lease_id=planned,
                cnf=view.cnf,
                grant=view.grant,
                origin=origin,
                request_id=request_id,
                detail={
                    "grant": view.grant,
                    "policy_version": decision.policy_version,
                    "approval_id": view.id,
                },
            )
        except BaseException:
            await self.approvals.mark_minted(view, "")
            raise
        await self.approvals.mark_minted(view, lease.id)
        issued = Issued(
            lease=lease,
            credential=credential,
            grant=view.grant,
            policy_version=decision.policy_version,
            ttl_capped_by="approval" if approved_ttl < view.ttl else None,
        )
        return await self.approvals.get(approval_id), issued

    def approver_for(self, principal: Principal) -> str:
        """The person behind a human identity token; PermissionDenied if not an approver."""
        person = self.approvals.people.for_principal(principal)
        if person is None:
            raise PermissionDenied(f"{principal.id} is not a configured approver")
        return person

    def check_dev_approver(self, presented: str) -> str:
        if self.dev_approver_key is None:
            raise AuthenticationError("not an approver key")
        if not hmac.compare_digest(self.dev_approver_key.reveal().encode(), presented.encode()):
            raise AuthenticationError("invalid development approver key")
        return DEV_APPROVER

    # -- leases and tasks -------------------------------------------------------------------

    async def list_leases(self, principal: Principal, *, include_inactive: bool) -> list[Lease]:
        return await self.manager.list(principal.id, include_inactive=include_inactive)

    async def get_lease(self, principal: Principal, lease_id: str) -> Lease:
        return await self.manager.get(lease_id, owner=principal.id)

    async def revoke_lease(self, principal: Principal, lease_id: str) -> Lease:
        return await self.manager.revoke(lease_id, "explicit", owner=principal.id)

    async def complete_task(self, principal: Principal, task_id: str) -> TaskView:
        return await self.manager.complete_task(principal.id, task_id)

    async def get_task(self, principal: Principal, task_id: str) -> TaskView:
        return await self.manager.get_task(principal.id, task_id)

    async def revoke_workload(self, principal: Principal) -> int:
        return await self.manager.revoke_workload(principal.id, "workload")

    # -- OAuth introspection / revocation ---------------------------------------------------

    def may_introspect(self, principal: Principal) -> bool:
        return can(self.policy, principal, "introspect")

    async def find_lease_for_token(self, token: str) -> Lease | None:
        now = self.clock.now()
        for issuer in self.issuers.values():
            if isinstance(issuer, Introspectable):
                lease_id = issuer.identify(token, now)
                if lease_id is not None:
                    try:
                        return await self.manager.get(lease_id)
                    except NotFound:
                        return None
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

        Every introspection of a known token is a use: it is recorded and checked against the
        grant's governance rules (which may revoke it, and its task, before we answer)."""
        lease = await self.find_lease_for_token(token)
        if lease is not None:
            violations = await self.governance.record_use(
                lease,
                reporter=caller,
                via="introspection",
                resource=resource,
                action=action,
                client_address=client_address,
            )
            if violations:
                lease = await self.manager.get(lease.id)
        now = self.clock.now()
        active = lease is not None and lease.state is LeaseState.ACTIVE and now < lease.not_after
        await self.audit.emit(
            "lease.introspected",
            outcome="ok" if active else "deny",
            lease_id=lease.id if lease else None,
            task_id=lease.task_id if lease else None,
            # A keyed digest, never the token: who holds the key can match a leaked token.
            detail={"caller": caller, "active": active, "token_hmac": self.audit.hmac(token)},
        )
        if lease is None or not active:
            return {"active": False}
        answer: dict[str, Any] = {
            "active": True,
            "scope": " ".join(lease.scope.actions),
            "client_id": lease.owner,
            "sub": lease.owner,
            "aud": lease.scope.resource,
            "iss": self.settings.public_url,
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
            lease = await self.find_lease_for_token(token)
            if lease is not None and lease_id and lease_id != lease.id:
                raise InvalidRequest("token and lease_id name different credentials")
        elif lease_id:
            with contextlib.suppress(NotFound):
                lease = await self.manager.get(lease_id)
            if lease is not None and lease.scope.resource not in serves:
                lease = None
        if lease is None:
            raise NotFound("no such credential")
        violations = await self.governance.record_use(
            lease,
            reporter=caller,
            via="report",
            resource=resource,
            action=action,
            client_address=client_address,
        )
        lease = await self.manager.get(lease.id)
        now = self.clock.now()
        return {
            "lease_id": lease.id,
            "active": lease.state is LeaseState.ACTIVE and now < lease.not_after,
            "violations": [v.rule for v in violations],
        }

    async def revoke_token(
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
        lease = await self.find_lease_for_token(token)
        if lease is None:
            return
        if client is not None and "revoke" in client.permissions:
            await self.manager.revoke(lease.id, "explicit")
        elif principal is not None and lease.owner == principal.id:
            await self.manager.revoke(lease.id, "explicit", owner=principal.id)
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

    # -- key material -----------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        keys: list[Any] = []
        for issuer in self.issuers.values():
            if isinstance(issuer, PublishesKeys):
                keys.extend(issuer.jwks().get("keys", []))
        return {"keys": keys}

    async def issuer_document(self, issuer_name: str, document: str) -> tuple[str, bytes]:
        """A public document of an issuer (CA certificate, KRL, ...): (content type, body)."""
        issuer: object = self.issuers.get(issuer_name)
        if not isinstance(issuer, PublishesDocuments):
            raise NotFound("no such issuer document")
        docs = await issuer.documents()
        if document not in docs:
            raise NotFound("no such issuer document")
        return docs[document]

    # -- lifecycle --------------------------------------------------------------------------

    async def ready(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except (RedisError, OSError) as exc:
            checks["redis"] = f"unavailable: {exc.__class__.__name__}"
        for name, issuer in self.issuers.items():
            try:
                await issuer.check_health()
                checks[f"issuer:{name}"] = "ok"
            except Exception as exc:
                checks[f"issuer:{name}"] = f"unhealthy: {exc.__class__.__name__}"
        return checks

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._reaper_task = asyncio.create_task(self.reaper.run(self._stop), name="jit-reaper")
        self._approvals_task = asyncio.create_task(self._sweep_approvals(), name="jit-approvals")
        if self.ssf is not None:
            self._ssf_task = asyncio.create_task(self.ssf.run(self._stop), name="jit-ssf")
        self._audit_task = asyncio.create_task(self.audit.run(self._stop), name="jit-audit")

    async def reload_policy(self) -> bool:
        """Load the policy directory again (SIGHUP under `jit serve`). A directory that does
        not load leaves the running policy in place (fail closed). Both outcomes are audited."""
        old = self.policy.version
        try:
            policy = load_policy_dir(
                self.settings.policy_dir,
                known_claims=self.verifier.known_claims(),
                issuers=set(self.issuers),
                approvers=self.approvals.people.known_names(),
                has_default_approvers=bool(self.approvals.people.expand(())),
            )
        except PolicyError as exc:
            log.error("policy reload failed, keeping version %s: %s", old, exc.message)
            await self.audit.emit(
                "policy.reload_failed",
                outcome="error",
                reasons=[exc.message],
                detail={"policy_version": old},
            )
            return False
        self.policy = policy
        await self.audit.emit(
            "policy.reloaded", detail={"old_version": old, "policy_version": policy.version}
        )
        log.info("policy reloaded: %s -> %s", old, policy.version)
        return True

    def signing_kids(self) -> frozenset[str]:
        return frozenset(str(k.get("kid")) for k in self.jwks()["keys"])

    async def _notice_key_rotation(self) -> None:
        kids = self.signing_kids()
        if self._kids is not None and kids != self._kids:
            await self.audit.emit(
                "keys.rotated",
                detail={
                    "added": sorted(kids - self._kids),
                    "removed": sorted(self._kids - kids),
                },
            )
        self._kids = kids

    async def _sweep_approvals(self) -> None:
        """About once a second: expire due approval requests, retry Slack posts, and notice
        signing-key rotations (audited)."""
        self._kids = self.signing_kids()
        while not self._stop.is_set():
            try:
                await self._notice_key_rotation()
                await self.approvals.sweep()
            except (RedisError, OSError) as exc:
                log.warning("approval sweep: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("approval sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    async def aclose(self) -> None:
        self._stop.set()
        for task in (self._reaper_task, self._approvals_task, self._ssf_task, self._audit_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.approvals.idle(), timeout=5)
        if self.approvals.notifier is not None:
            with contextlib.suppress(Exception):
                await self.approvals.notifier.aclose()
        for issuer in self.issuers.values():
            with contextlib.suppress(Exception):
                await issuer.aclose()
        if self.ssf is not None:
            with contextlib.suppress(Exception):
                await self.ssf.aclose()
        await self.verifier.aclose()
        await self.audit.aclose()
        await self.redis.aclose()


def _load_clients(clients: Sequence[ClientSettings]) -> dict[str, Client]:
    out: dict[str, Client] = {}
    for c in clients:
        try:
            secret = Path(c.secret_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"client {c.client_id!r}: cannot read secret_file {c.secret_file}: {exc.strerror}"
            ) from None
        if len(secret) < 16:
            raise ConfigError(f"client {c.client_id!r}: secret must be at least 16 characters")
        out[c.client_id] = Client(
            c.client_id, Secret(secret), frozenset(c.permissions), frozenset(c.resources)
        )
    return out


async def build_broker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    redis: aioredis.Redis | None = None,
    dev: bool = False,
    dev_identity: DevIdentityIssuer | None = None,
    dev_admin_key: Secret | None = None,
    dev_approver_key: Secret | None = None,
    policy_dir: str | Path | None = None,
    audit_sinks: Sequence[AuditSink] | None = None,
    extra_static_keys: Mapping[str, Any] | None = None,
) -> Broker:
    """Assemble a broker. Fails closed (ConfigError/StoreUnavailable) on anything that does
    not load or answer: the policy, an issuer, Redis."""
    clock = clock or SystemClock()
    in_memory = redis is not None and dev
    if redis is None:
        redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        await redis.aclose()
        raise StoreUnavailable(
            f"Redis at {_redact_url(settings.redis_url)} is not answering: {exc}"
        ) from None

    identity = list(settings.identity)
    static_keys: dict[str, Any] = dict(extra_static_keys or {})
    if dev_identity is not None:
        identity.append(dev_identity.settings())
        static_keys[dev_identity.name] = dev_identity.keyset()
    verifier = TokenVerifier(identity, clock, static_keys=static_keys)

    issuers = load_issuers(
        settings.issuers,
        clock=clock,
        broker_url=settings.public_url,
        dev=dev,
        redis=redis,
        key_prefix=settings.key_prefix,
    )
    for name, issuer in issuers.items():
        try:
            await issuer.check_health()
        except Exception as exc:
            raise ConfigError(f"issuer {name!r} failed its health check: {exc}") from exc

    if dev:
        settings = _with_dev_approver(settings)
    people = People(settings.approvals)
    policy = load_policy_dir(
        policy_dir or settings.policy_dir,
        known_claims=verifier.known_claims(),
        issuers=set(issuers),
        approvers=people.known_names(),
        has_default_approvers=bool(people.expand(())),
    )

    sinks: list[AuditSink] = list(audit_sinks) if audit_sinks is not None else [LoggingSink()]
    metrics = Metrics(issuers=issuers)
    sinks.append(MetricsSink(metrics))
    ssf: SsfTransmitter | None = None
    if settings.ssf.receivers or settings.ssf.signing_key_file:
        ssf = SsfTransmitter(
            settings.ssf, redis, settings.key_prefix, clock, issuer_url=settings.public_url, dev=dev
        )
        sinks.append(ssf.sink())  # every lease.revoked event becomes a Security Event Token
    # The hash chain in Redis; the file and webhook sinks are fed from its stream (docs/audit.md).
    audit = build_audit(
        settings.audit,
        clock=clock,
        redis=redis,
        key_prefix=settings.key_prefix,
        sinks=sinks,
        dev=dev,
    )
    if ssf is not None:
        ssf.audit = audit
    store = LeaseStore(redis, settings.key_prefix)
    manager = LeaseManager(store, issuers, audit, clock, settings.reaper)

    async def leases_active() -> int:
        return int(await redis.zcard(store.keys.due))

    async def leases_overdue() -> int:
        return int(await redis.scard(store.keys.overdue))

    async def sink_lag() -> dict[str, int]:
        lag: dict[str, int] = dict(await audit.sink_lag())
        if ssf is not None:
            lag.update({f"ssf:{k}": v for k, v in (await ssf.lag()).items()})
        return lag

    metrics.set_gauge_sources(
        leases_active=leases_active, overdue=leases_overdue, sink_lag=sink_lag
    )
    reaper = Reaper(manager, settings.reaper, clock)
    approvals = Approvals(
        ApprovalStore(redis, settings.key_prefix),
        settings.approvals,
        clock,
        audit,
        notifier=_slack_notifier(settings, clock),
        default_channel=settings.approvals.slack.default_channel
        if settings.approvals.slack
        else None,
        replica_id=manager.replica_id,
    )
    await audit.emit(
        "broker.started",
        detail={
            "policy_version": policy.version,
            "issuers": sorted(issuers),
            "dev": dev,
        },
    )
    return Broker(
        settings=settings,
        clock=clock,
        redis=redis,
        verifier=verifier,
        policy=policy,
        issuers=issuers,
        manager=manager,
        reaper=reaper,
        audit=audit,
        approvals=approvals,
        clients=_load_clients(settings.clients),
        dev_identity=dev_identity,
        dev_admin_key=dev_admin_key,
        dev_approver_key=dev_approver_key,
        ssf=ssf,
        metrics=metrics,
        metrics_token=_read_token(settings.metrics.token_file, "metrics.token_file"),
        in_memory=in_memory,
    )


def _read_token(path: str | None, key: str) -> Secret | None:
    if path is None:
        return None
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if len(value) < 16:
        raise ConfigError(f"{key}: the token in {path} must be at least 16 characters")
    return Secret(value)


def _with_dev_approver(settings: Settings) -> Settings:
    """``jit dev``: add the development approver (it approves with the dev approver key) and
    make it the default approver."""
    a = settings.approvals
    people = {**a.people, DEV_APPROVER: a.people.get(DEV_APPROVER, PersonSettings())}
    approvals = msgspec.structs.replace(
        a,
        people=people,
        default_approvers=a.default_approvers or [DEV_APPROVER],
    )
    return msgspec.structs.replace(settings, approvals=approvals)


def _slack_notifier(settings: Settings, clock: Clock) -> Any:
    slack = settings.approvals.slack
    if slack is None:
        return None
    from broker.approvals.slack import SlackNotifier

    return SlackNotifier(slack, clock, broker_url=settings.public_url)


def _redact_url(url: str) -> str:
    """Drop a password from a redis:// URL before it reaches a message."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}:***@" if parts.username else "***@"
        return urlunsplit(parts._replace(netloc=user + host))
    return url
