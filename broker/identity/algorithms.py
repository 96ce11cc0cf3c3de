"""Which JWS algorithms may verify a workload token, and the registries that enforce it.

Owns the algorithm allow-list rules shared by the verifier, DPoP and the development issuer:

- only asymmetric algorithms ever verify a third-party token: ``none`` and every ``HS*`` are
  refused whatever the configuration says (no HS/RS key confusion: an attacker who signs an HS256
  token with the issuer's RSA *public* key as the HMAC secret gets nowhere);
- each identity issuer gets one :class:`AllowListRegistry` built once from its ``algorithms``
  list, so joserfc itself also refuses any other algorithm;
- both registries here are :class:`broker.jws.JWSAllowList` (which also handles ``EdDSA``, ADR
  0002) with the settings of third-party tokens: unknown non-critical header parameters are
  ignored, and size limits fit identity tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

from joserfc.jws import JWSRegistry

from broker.jws import JWSAllowList

__all__ = ["AllowListRegistry", "ParseRegistry", "is_forbidden", "usable_algorithms"]

#: Room for an RSA-8192 signature (1366 base64url bytes) and an ``x5c`` chain in the header; the
#: verifier's own 16 KiB cap on the whole token is the real limit.
_MAX_HEADER = 8 * 1024
_MAX_PAYLOAD = 16 * 1024
_MAX_SIGNATURE = 2 * 1024


def is_forbidden(alg: str) -> bool:
    """True for algorithms that must never verify a third-party token: ``none`` and HMAC."""
    upper = alg.upper()
    return upper == "NONE" or upper.startswith("HS")


def usable_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    """The configured algorithms minus the forbidden ones and the ones joserfc does not know."""
    known = JWSRegistry.algorithms
    return tuple(a for a in algorithms if not is_forbidden(a) and a in known)


class _IdentityRegistry(JWSAllowList):
    """Accepts any non-critical header parameter (RFC 7515 §4: parameters that are not
    understood are ignored unless listed in ``crit``), with size limits fitted to identity
    tokens."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        super().__init__(
            algorithms,
            strict_header=False,
            max_header=_MAX_HEADER,
            max_payload=_MAX_PAYLOAD,
            max_signature=_MAX_SIGNATURE,
        )


class ParseRegistry(_IdentityRegistry):
    """Used only to split a compact JWS into its parts (sizes and header syntax); allows no
    algorithm, so it never selects one or verifies a signature."""

    def __init__(self) -> None:
        super().__init__(())


class AllowListRegistry(_IdentityRegistry):
    """The registry for one identity issuer: exactly its usable allow-listed algorithms.

    Raises ValueError when nothing usable is left, so a configuration that could only ever fail
    is caught at start-up rather than on the first request."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        allowed = usable_algorithms(algorithms)
        if not allowed:
            raise ValueError("no usable asymmetric signature algorithm is configured")
        super().__init__(allowed)
