"""Assemble a broker from settings: every part built once, in order, failing closed.

Nothing here grows with the number of leases: no lease is loaded at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from broker.approvals import Approvals, ApprovalStore, People
from broker.audit import AuditSink, LoggingSink, build_audit
from broker.clock import Clock, SystemClock
from broker.config import ClientSettings, PersonSettings, Settings
from broker.errors import ConfigError, StoreUnavailable
from broker.governance import Governance
from broker.identity import DevIdentityIssuer, TokenVerifier
from broker.identity.dpop import DPoPVerifier, RedisReplayCache
from broker.leases import LeaseManager, LeaseStore, Reaper
from broker.leases.health import IssuerHealth
from broker.metrics import Metrics, MetricsSink
from broker.policy import load_policy_dir
from broker.registry import load_issuers, validate_issuer_configs
from broker.replica import new_replica_id
from broker.service.approval_desk import ApprovalDesk
from broker.service.broker import Broker
from broker.service.callers import DEV_APPROVER, Callers, Client
from broker.service.documents import Documents, KeyRotationWatcher
from broker.service.idempotency import PURPOSE, Idempotency
from broker.service.issuance import Issuance
from broker.service.policy import LivePolicy
from broker.service.reconcile import Reconciler
from broker.service.stateguard import StateGuard
from broker.service.supervisor import Component, Supervisor
from broker.service.tokens import Tokens
from broker.service.workloads import Workloads
from broker.ssf import SsfTransmitter
from broker.state.connect import redis_client
from broker.types import Secret

__all__ = ["build_broker"]


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
    replica_id = new_replica_id()
    validate_issuer_configs(settings.issuers)  # a config mistake is named before Redis is asked
    if redis is None:
        redis = redis_client(settings.redis_url)
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
    # A backend that is down degrades only its own issuer (broker/leases/health.py): start-up
    # records it and goes on, so an outage of one backend never stops a replica.
    health = IssuerHealth(
        issuers,
        clock,
        interval=settings.reaper.health_interval,
        retry_interval=settings.reaper.health_retry_interval,
        timeout=settings.reaper.issuer_timeout,
    )
    await health.check_all()

    if dev:
        settings = _with_dev_approver(settings)
    people = People(settings.approvals)
    policy_directory = policy_dir or settings.policy_dir
    policy = load_policy_dir(
        policy_directory,
        known_claims=verifier.known_claims(),
        issuers=set(issuers),
        approvers=people.known_names(),
        has_default_approvers=bool(people.expand(())),
    )

    metrics = Metrics(issuers=issuers)
    sinks: list[AuditSink] = list(audit_sinks) if audit_sinks is not None else [LoggingSink()]
    sinks.append(MetricsSink(metrics))
    # The hash chain in Redis; the file and webhook sinks are fed from its stream (docs/audit.md).
    audit = build_audit(
        settings.audit,
        clock=clock,
        redis=redis,
        key_prefix=settings.key_prefix,
        sinks=sinks,
        dev=dev,
        replica_id=replica_id,
    )
    ssf: SsfTransmitter | None = None
    if settings.ssf.receivers or settings.ssf.signing_key_file:
        ssf = SsfTransmitter(
            settings.ssf,
            redis,
            settings.key_prefix,
            clock,
            issuer_url=settings.public_url,
            dev=dev,
            audit=audit,
        )
        audit.add_sink(ssf.sink())  # every lease.revoked event becomes a Security Event Token

    store = LeaseStore(
        redis,
        settings.key_prefix,
        due_shards=settings.reaper.due_shards,
        send=audit.sender(redis),  # concurrent mints share the write-ahead round trip
    )
    manager = LeaseManager(
        store, issuers, audit, clock, settings.reaper, replica_id=replica_id, health=health
    )
    health.on_recovery = manager.retry_now
    reaper = Reaper(manager, settings.reaper, clock)
    approval_store = ApprovalStore(redis, settings.key_prefix)
    notifier = _slack_notifier(settings, clock)
    approvals = Approvals(
        approval_store,
        settings.approvals,
        clock,
        audit,
        notifier=notifier,
        default_channel=settings.approvals.slack.default_channel
        if settings.approvals.slack
        else None,
        replica_id=replica_id,
    )
    live_policy = LivePolicy(
        policy,
        policy_directory,
        audit,
        known_claims=verifier.known_claims,
        issuers=set(issuers),
        approvers=people.known_names(),
        has_default_approvers=bool(people.expand(())),
    )
    governance = Governance(manager, live_policy, redis, settings.key_prefix, clock, audit)
    dpop = DPoPVerifier(clock, RedisReplayCache(redis, f"{settings.key_prefix}:dpop"))
    _gauges(metrics, redis, store, audit, ssf)

    callers = Callers(
        verifier,
        audit,
        approvals.people,
        dpop,
        public_url=settings.public_url,
        clients=_load_clients(settings.clients),
        dev_admin_key=dev_admin_key,
        dev_approver_key=dev_approver_key,
    )
    issuance = Issuance(
        live_policy, issuers, manager, approvals, audit, clock, settings.limits, settings.quotas
    )
    documents = Documents(issuers)
    guard = StateGuard(
        redis, settings.key_prefix, audit, clock, interval=settings.reaper.state_check_interval
    )
    await guard.start()
    reconciler = Reconciler(
        issuers,
        manager,
        audit,
        clock,
        redis,
        settings.key_prefix,
        interval=settings.reaper.reconcile_interval,
        timeout=settings.reaper.issuer_timeout * 3,
    )
    metrics.set_gauge_sources(
        issuer_health=lambda: {n: st.healthy for n, st in health.status.items()},
        state_lost=lambda: guard.lost,
    )
    components: dict[str, Component] = {
        "state-guard": guard,
        "reconcile": reconciler,
        "issuer-health": health,
        "reaper": reaper,
        "approvals": approvals,
        "audit": audit,
        "key-rotation": KeyRotationWatcher(documents, audit),
    }
    if ssf is not None:
        components["ssf"] = ssf
    await audit.emit(
        "broker.started",
        detail={"policy_version": policy.version, "issuers": sorted(issuers), "dev": dev},
    )
    return Broker(
        settings=settings,
        clock=clock,
        redis=redis,
        issuers=issuers,
        health=health,
        audit=audit,
        live_policy=live_policy,
        verifier=verifier,
        dpop=dpop,
        manager=manager,
        reaper=reaper,
        approvals=approvals,
        governance=governance,
        metrics=metrics,
        callers=callers,
        issuance=issuance,
        workloads=Workloads(manager),
        tokens=Tokens(
            issuers,
            manager,
            governance,
            live_policy,
            audit,
            clock,
            public_url=settings.public_url,
        ),
        desk=ApprovalDesk(
            approvals,
            approval_store,
            issuance,
            audit,
            clock,
            max_wait=settings.approvals.max_wait,
            slack=notifier,
        ),
        documents=documents,
        guard=guard,
        reconciler=reconciler,
        idempotency=Idempotency(redis, settings.key_prefix, audit.derive_key(PURPOSE), clock),
        # Room for the reaper's drain: revocations in flight finish (issuer_timeout) and
        # what it cancels is given back to the other replicas (ADR 0051).
        supervisor=Supervisor(
            components, stop_timeout=settings.reaper.issuer_timeout + timedelta(seconds=5)
        ),
        ssf=ssf,
        dev_identity=dev_identity,
        metrics_token=_read_token(settings.metrics.token_file, "metrics.token_file"),
    )


def _gauges(
    metrics: Metrics,
    redis: aioredis.Redis,
    store: LeaseStore,
    audit: Any,
    ssf: SsfTransmitter | None,
) -> None:
    """The scrape-time gauges: live and overdue leases, and how far each sink is behind."""

    async def leases_active() -> int:
        return await store.live_count()

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
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}:***@" if parts.username else "***@"
        return urlunsplit(parts._replace(netloc=user + host))
    return url
