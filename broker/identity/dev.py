"""The development OIDC issuer that ``jit dev`` runs: mints workload identity tokens locally.

Owns a fresh in-memory Ed25519 signing key (``alg: EdDSA``, see ADR 0002), the issuer's
discovery document and JWKS, and the tokens it issues. The broker verifies these tokens through
the ordinary :class:`~broker.identity.TokenVerifier` path (``static_keys={"dev": keyset()}``),
so ``jit dev`` exercises exactly the code production uses. Never for production: anyone who can
call ``issue`` can be anybody.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from broker.clock import Clock
from broker.config import IdentityIssuerSettings
from broker.identity.algorithms import AllowListRegistry

__all__ = ["DevIdentityIssuer"]

#: Claims the issuer sets itself; ``issue(claims=...)`` may not override them.
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti"})
_ALG = "EdDSA"


class DevIdentityIssuer:
    """An OIDC issuer at ``issuer_url`` whose tokens carry ``aud = audience``."""

    name: str = "dev"

    def __init__(self, issuer_url: str, clock: Clock, audience: str = "jit-broker") -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self.audience = audience
        self._clock = clock
        self._key = OKPKey.generate_key(
            "Ed25519", parameters={"alg": _ALG, "use": "sig"}, auto_kid=True
        )
        public = self._key.as_dict(private=False)
        self._public = OKPKey.import_key(public)
        self._keyset = KeySet([self._public])
        self._registry = AllowListRegistry([_ALG])

    @property
    def kid(self) -> str:
        kid = self._key.kid
        assert kid is not None  # generated with auto_kid
        return kid

    def settings(self) -> IdentityIssuerSettings:
        """The identity-issuer settings that trust this issuer (generic preset)."""
        return IdentityIssuerSettings(
            name=self.name,
            issuer=self.issuer_url,
            audiences=[self.audience],
            preset="generic",
            jwks_uri=f"{self.issuer_url}/jwks",
            algorithms=[_ALG],
        )

    def keyset(self) -> KeySet:
        """The public verification keys, for ``TokenVerifier(static_keys={"dev": ...})``."""
        return self._keyset

    def jwks(self) -> dict[str, Any]:
        """The JWKS document (public keys only), as served at ``<issuer>/jwks``."""
        return {"keys": [dict(self._public.as_dict(private=False))]}

    def discovery(self) -> dict[str, Any]:
        """The ``/.well-known/openid-configuration`` document."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": f"{self.issuer_url}/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [_ALG],
            "claims_supported": sorted(RESERVED_CLAIMS),
        }

    def issue(
        self,
        sub: str,
        claims: Mapping[str, Any] | None = None,
        ttl: timedelta = timedelta(hours=1),
    ) -> str:
        """A signed token for ``sub`` valid for ``ttl`` from now, with extra ``claims``.

        Raises ValueError for an empty subject, a non-positive ttl, or extra claims that try to
        set ``iss``, ``sub``, ``aud``, ``exp``, ``iat``, ``nbf`` or ``jti``."""
        if not sub:
            raise ValueError("sub must not be empty")
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        extra = dict(claims or {})
        reserved = sorted(RESERVED_CLAIMS & set(extra))
        if reserved:
            raise ValueError(f"claims {reserved} are set by the issuer")
        now = int(self._clock.now().timestamp())
        payload: dict[str, Any] = {
            **extra,
            "iss": self.issuer_url,
            "sub": sub,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + max(1, math.ceil(ttl.total_seconds())),
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": _ALG, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, payload, self._key, registry=self._registry)
