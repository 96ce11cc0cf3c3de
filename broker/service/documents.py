"""What the broker publishes for relying parties: the JWKS of its signing issuers, issuers'
public documents (CA certificates, revocation lists), and the record of key rotations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from broker.audit import AuditLog
from broker.errors import NotFound
from broker.issuer import Issuer, PublishesDocuments, PublishesKeys

__all__ = ["Documents", "KeyRotationWatcher"]

log = logging.getLogger("jit.broker")


class Documents:
    def __init__(self, issuers: Mapping[str, Issuer]) -> None:
        self.issuers = issuers

    def jwks(self) -> dict[str, Any]:
        """Every public key that verifies a credential the broker's issuers sign."""
        keys: list[Any] = []
        for issuer in self.issuers.values():
            if isinstance(issuer, PublishesKeys):
                keys.extend(issuer.jwks().get("keys", []))
        return {"keys": keys}

    def signing_kids(self) -> frozenset[str]:
        return frozenset(str(k.get("kid")) for k in self.jwks()["keys"])

    async def issuer_document(self, issuer_name: str, document: str) -> tuple[str, bytes]:
        """A public document of an issuer (CA certificate, KRL, ...): (content type, body)."""
        issuer: object = self.issuers.get(issuer_name)
        if not isinstance(issuer, PublishesDocuments):
            raise NotFound("no such issuer document")
        docs = await issuer.documents()
        if document not in docs:
            raise NotFound("no such issuer document")
        return docs[document]


class KeyRotationWatcher:
    """Notices when the published signing keys change (a rotation on disk, picked up by an
    issuer's key ring) and records it as ``keys.rotated`` with the kids added and removed."""

    def __init__(
        self, documents: Documents, audit: AuditLog, interval: timedelta = timedelta(seconds=1)
    ) -> None:
        self.documents = documents
        self.audit = audit
        self.interval = interval
        self._kids: frozenset[str] | None = None

    async def check(self) -> None:
        kids = self.documents.signing_kids()
        if self._kids is not None and kids != self._kids:
            await self.audit.emit(
                "keys.rotated",
                detail={
                    "added": sorted(kids - self._kids),
                    "removed": sorted(self._kids - kids),
                },
            )
        self._kids = kids

    async def run(self, stop: asyncio.Event) -> None:
        self._kids = self.documents.signing_kids()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval.total_seconds())
            if stop.is_set():
                return
            try:
                await self.check()
            except Exception:
                log.exception("key rotation check failed")
