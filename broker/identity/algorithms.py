"""Which JWS algorithms may verify a workload token, and the joserfc registries that enforce it.

Owns the algorithm allow-list rules shared by the verifier and the development issuer:

- only asymmetric algorithms ever verify a third-party token: ``none`` and every ``HS*`` are
  refused whatever the configuration says (no HS/RS key confusion: an attacker who signs an HS256
  token with the issuer's RSA *public* key as the HMAC secret gets nowhere);
- each identity issuer gets one :class:`JWSRegistry` built once from its ``algorithms`` list, so
  joserfc itself also refuses any other algorithm;
- ``EdDSA`` is the polymorphic name that RFC 9864 deprecates; joserfc warns every time it is
  looked up. We sign and verify ``EdDSA`` on purpose (ADR 0002), so these registries skip that
  warning, for that one algorithm only, without touching the process-wide warning filters.
"""

from __future__ import annotations

from collections.abc import Iterable

from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry

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


class _Registry(JWSRegistry):
    """A JWS registry that accepts any non-critical header parameter (RFC 7515 §4: parameters
    that are not understood are ignored unless listed in ``crit``) and has size limits fitted to
    identity tokens."""

    def __init__(self, algorithms: Iterable[str] | None) -> None:
        super().__init__(
            algorithms=None if algorithms is None else list(algorithms),
            strict_check_header=False,
        )
        self.max_header_length = _MAX_HEADER
        self.max_payload_length = _MAX_PAYLOAD
        self.max_signature_length = _MAX_SIGNATURE

    def get_alg(self, name: str) -> JWSAlgModel:
        if name == "EdDSA" and self.allowed is not None and name in self.allowed:
            # ADR 0002: EdDSA on purpose. joserfc's get_alg would warn (RFC 9864) on every
            # token; the checks it makes are the two above, so look the algorithm up directly
            # rather than swapping the process-wide warning filters on the hot path.
            return self.algorithms[name]
        return super().get_alg(name)


class ParseRegistry(_Registry):
    """Used only to split a compact JWS into its parts (sizes and header syntax); never to pick
    an algorithm or verify a signature."""

    def __init__(self) -> None:
        super().__init__(None)

    def get_alg(self, name: str) -> JWSAlgModel:
        raise AssertionError("the parse registry never selects an algorithm")


class AllowListRegistry(_Registry):
    """The registry for one identity issuer: exactly its usable allow-listed algorithms.

    Raises ValueError when nothing usable is left, so a configuration that could only ever fail
    is caught at start-up rather than on the first request."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        allowed = usable_algorithms(algorithms)
        if not allowed:
            raise ValueError("no usable asymmetric signature algorithm is configured")
        super().__init__(allowed)
        self.allowed_algorithms: frozenset[str] = frozenset(allowed)
