"""Assemble the audit trail from settings: keys, chain, durable sinks, delivery.

Fails closed: outside dev mode ``audit.signing_key_file`` and ``audit.hmac_key_file`` are
required (dev mode generates both in memory and says so in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
import redis.asyncio as aioredis

from broker.audit.chain import AuditChain
from broker.audit.log import AuditLog, AuditSink
from broker.audit.signing import CheckpointSigner, HmacKey
from broker.audit.sinks import AuditDelivery, JsonLinesFileSink, StreamSink, WebhookSink
from broker.clock import Clock
from broker.config import AuditSettings
from broker.errors import ConfigError
from broker.state.scripts import ReplicaWait

__all__ = ["build_audit", "load_audit_keys"]

log = logging.getLogger("jit.audit")


def load_audit_keys(
    settings: AuditSettings, *, dev: bool = False
) -> tuple[CheckpointSigner, HmacKey]:
    """The checkpoint signing key and the HMAC key; generated in memory in dev mode when the
    settings name no file."""
    if settings.signing_key_file:
        signer = CheckpointSigner.from_file(settings.signing_key_file)
    elif dev:
        signer = CheckpointSigner.generate()
        log.warning("audit: checkpoint signing key generated in memory (dev mode)")
    else:
        raise ConfigError(
            "audit.signing_key_file is required: an Ed25519 PEM key that signs the audit "
            "chain's checkpoints (generate one with `jit audit keygen`)"
        )
    if settings.hmac_key_file:
        hmac_key = HmacKey.from_file(settings.hmac_key_file)
    elif dev:
        hmac_key = HmacKey.generate()
    else:
        raise ConfigError(
            "audit.hmac_key_file is required: at least 32 random bytes, e.g. "
            "`openssl rand -hex 32 > audit-hmac.key`"
        )
    return signer, hmac_key


def build_audit(
    settings: AuditSettings,
    *,
    clock: Clock,
    redis: aioredis.Redis,
    key_prefix: str,
    sinks: Sequence[AuditSink] = (),
    dev: bool = False,
    replica_id: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    wait: ReplicaWait | None = None,
) -> AuditLog:
    """The broker's :class:`AuditLog`: chained in Redis under ``key_prefix``, with the
    in-process ``sinks`` (e.g. the logging sink) and the durable sinks of ``settings`` (the
    JSON-lines file, webhooks) fed by the delivery loop that :meth:`AuditLog.run` drives."""
    signer, hmac_key = load_audit_keys(settings, dev=dev)
    chain = AuditChain(
        redis,
        key_prefix,
        clock,
        signer,
        checkpoint_every=settings.checkpoint_every,
        checkpoint_interval=settings.checkpoint_interval,
        stream_maxlen=settings.stream_maxlen,
        wait=wait,
    )
    durable: list[StreamSink] = []
    if settings.file:
        durable.append(JsonLinesFileSink(settings.file))
    try:
        durable.extend(WebhookSink(w, transport=transport) for w in settings.webhooks)
    except ConfigError:
        for sink in durable:
            if isinstance(sink, JsonLinesFileSink):
                sink.close()
        raise
    delivery = (
        AuditDelivery(redis, key_prefix, durable, clock, replica_id=replica_id) if durable else None
    )
    return AuditLog(clock, sinks, chain=chain, delivery=delivery, hmac_key=hmac_key)
