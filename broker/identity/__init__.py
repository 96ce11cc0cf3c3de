"""Workload identity: verify OIDC tokens and normalise their claims into a Principal.

Modules, one owner each:

- :mod:`~broker.identity.verifier` — :class:`TokenVerifier`, the checks and their order;
- :mod:`~broker.identity.jwks` — the per-issuer signing-key cache (fetch, discovery, refresh
  rate limit, coalescing);
- :mod:`~broker.identity.algorithms` — the algorithm allow-list (never ``none`` or ``HS*``);
- :mod:`~broker.identity.dpop` — DPoP proofs (RFC 9449): :class:`DPoPVerifier`, the key
  thumbprint and the replay caches that make each proof single-use;
- :mod:`~broker.identity.messages` — how values from an unverified token appear in messages;
- :mod:`~broker.identity.presets` — claim mappings for generic OIDC, GitHub Actions, GitLab CI
  and Kubernetes service accounts;
- :mod:`~broker.identity.dev` — :class:`DevIdentityIssuer`, the local issuer of ``jit dev``.

No litestar here: the API layer maps ``AuthenticationError`` to a 401.
"""

from __future__ import annotations

from broker.identity.dev import DevIdentityIssuer
from broker.identity.jwks import JWKSCache
from broker.identity.presets import PRESETS, known_claims, principal_from_claims
from broker.identity.verifier import MAX_TOKEN_BYTES, TokenVerifier

__all__ = [
    "MAX_TOKEN_BYTES",
    "PRESETS",
    "DevIdentityIssuer",
    "JWKSCache",
    "TokenVerifier",
    "known_claims",
    "principal_from_claims",
]
