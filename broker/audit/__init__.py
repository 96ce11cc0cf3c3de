"""Audit events: the single seam every decision, mint, revocation and failure goes through.

Callers only ever call :meth:`AuditLog.emit`. The log fans each event out to its sinks (a
JSON-lines file, the Redis stream, the Python log, memory for tests). The tamper-evident hash
chain will be added behind this seam without touching callers.

An event carries identifiers and facts, never a secret: every field is a plain str/int/bool/list
of str, and :meth:`AuditLog.emit` refuses anything else (a ``Secret`` cannot be encoded).
"""

from __future__ import annotations

from broker.audit.log import AuditEvent, AuditLog, AuditSink, FileSink, LoggingSink, MemorySink

__all__ = ["AuditEvent", "AuditLog", "AuditSink", "FileSink", "LoggingSink", "MemorySink"]
