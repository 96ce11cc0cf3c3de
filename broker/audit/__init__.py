"""The audit trail: the single seam every decision, mint, approval, use and revocation goes
through, and the tamper-evident record it keeps.

Callers only ever call :meth:`AuditLog.emit`. With a chain (:func:`build_audit` in the broker),
every event becomes a record in one hash chain shared by all replicas (``seq``, ``prev``,
``hash``; :mod:`broker.audit.chain`) with signed checkpoints (:mod:`broker.audit.signing`),
stored in a Redis stream that feeds the durable sinks (:mod:`broker.audit.sinks`: JSON-lines
file, webhooks), and is handed to the in-process sinks (log, memory, metrics). ``jit audit
verify`` (:mod:`broker.audit.verify`) checks an exported chain; ``jit audit show``
(:mod:`broker.audit.receipt`) tells one credential's story. See docs/audit.md.

An event carries identifiers and facts, never a secret: every field is a plain str/int/bool/list
of str, and :meth:`AuditLog.emit` refuses anything else (a ``Secret`` cannot be encoded). To let
a record be matched against a token without holding it, store :meth:`AuditLog.hmac` of it.
"""

from __future__ import annotations

from broker.audit.build import build_audit, load_audit_keys
from broker.audit.chain import GENESIS, AuditChain, ChainKeys, ChainRecord, read_chain, record_hash
from broker.audit.log import (
    CHECKPOINT,
    AuditEvent,
    AuditLog,
    AuditSink,
    FileSink,
    LoggingSink,
    MemorySink,
)
from broker.audit.signing import CheckpointSigner, HmacKey
from broker.audit.sinks import AuditDelivery, JsonLinesFileSink, SinkError, StreamSink, WebhookSink

__all__ = [
    "CHECKPOINT",
    "GENESIS",
    "AuditChain",
    "AuditDelivery",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "ChainKeys",
    "ChainRecord",
    "CheckpointSigner",
    "FileSink",
    "HmacKey",
    "JsonLinesFileSink",
    "LoggingSink",
    "MemorySink",
    "SinkError",
    "StreamSink",
    "WebhookSink",
    "build_audit",
    "load_audit_keys",
    "read_chain",
    "record_hash",
]
