"""The ``jwt`` issuer type: broker-signed short-lived JWT access tokens (the reference issuer).

Registered as the ``jwt`` entry point in the ``jit_broker.issuers`` group. See
docs/issuers/jwt.md for configuration, key rotation and the revocation model.
"""

from __future__ import annotations

from issuers.jwt.issuer import JWTConfig, JWTIssuer

__all__ = ["JWTConfig", "JWTIssuer"]
