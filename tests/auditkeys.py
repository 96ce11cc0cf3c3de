"""Audit key files for brokers built outside dev mode in tests (production requires them)."""

from __future__ import annotations

import secrets
from pathlib import Path

from broker.audit.signing import write_private_key
from broker.config import AuditSettings


def audit_settings(directory: Path) -> AuditSettings:
    """Fresh checkpoint-signing and HMAC keys in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    signing, hmac_key = directory / "audit-signing.pem", directory / "audit-hmac.key"
    if not signing.exists():
        write_private_key(signing)
        hmac_key.write_text(secrets.token_hex(32))
        hmac_key.chmod(0o600)
    return AuditSettings(signing_key_file=str(signing), hmac_key_file=str(hmac_key))
