"""The one joserfc JWS registry of the broker and its issuers: an explicit algorithm allow-list.
A contract module: imports nothing from ``broker``.

Everything that signs or verifies a JWS (workload tokens, DPoP proofs, the JWT issuer's access
tokens, Security Event Tokens, audit checkpoints) passes a :class:`JWSAllowList` to joserfc, so
joserfc itself refuses any algorithm the caller did not name. What differs between callers is a
parameter: the algorithms, whether unknown header parameters are refused, and the size limits.

``EdDSA`` is the polymorphic name RFC 9864 deprecates; joserfc warns every time it is looked up.
We sign and verify ``EdDSA`` on purpose because the verifiers our users run do not know
``Ed25519`` yet (ADR 0002), so this registry looks ``EdDSA`` up without the warning — for that
one algorithm only, and only when it is allow-listed — instead of swapping the process-wide
warning filters (``warnings.catch_warnings`` is not thread-safe and would run on every token).
Any other warning joserfc gives stays.
"""

from __future__ import annotations

from collections.abc import Iterable

from joserfc.errors import UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry

__all__ = ["JWSAllowList"]

_QUIET = "EdDSA"  # ADR 0002


class JWSAllowList(JWSRegistry):
    """A joserfc JWS registry that allows exactly ``algorithms``.

    ``strict_header`` refuses header parameters joserfc does not know (for our own formats);
    ``False`` ignores them as RFC 7515 §4 asks of third-party tokens (``crit`` is always
    honoured). The ``max_*`` limits are in bytes of the base64url parts; the defaults are
    joserfc's. An empty allow-list makes a registry that parses (sizes, header syntax) but
    never selects an algorithm. Raises ValueError for ``none`` or a name joserfc does not know.
    """

    def __init__(
        self,
        algorithms: Iterable[str],
        *,
        strict_header: bool = True,
        max_header: int = JWSRegistry.max_header_length,
        max_payload: int = JWSRegistry.max_payload_length,
        max_signature: int = JWSRegistry.max_signature_length,
    ) -> None:
        allowed = tuple(dict.fromkeys(algorithms))
        unknown = sorted(a for a in allowed if a not in JWSRegistry.algorithms)
        if unknown:
            raise ValueError(f"unknown JWS algorithms: {unknown}")
        if "none" in allowed:
            raise ValueError("the JWS algorithm 'none' is never allowed")
        super().__init__(algorithms=list(allowed), strict_check_header=strict_header)
        self.allowed_algorithms: frozenset[str] = frozenset(allowed)
        self.max_header_length = max_header
        self.max_payload_length = max_payload
        self.max_signature_length = max_signature

    def __repr__(self) -> str:
        return f"JWSAllowList({sorted(self.allowed_algorithms)})"

    def get_alg(self, name: str) -> JWSAlgModel:
        # The allow-list first, whatever joserfc's base class would do with an empty one (it
        # falls back to its "recommended" algorithms).
        if name not in self.allowed_algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        if name == _QUIET:
            return self.algorithms[name]
        return super().get_alg(name)
