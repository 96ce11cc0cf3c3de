"""The key that signs Security Event Tokens, and its public JWK set.

Owns loading ``ssf.signing_key_file`` (an unencrypted PEM private key: Ed25519, signed as
``alg: EdDSA`` per ADR 0002, or P-256, signed as ``ES256``), generating an in-memory Ed25519 key
in dev mode, signing, and the JWKS receivers verify with. ``kid`` is the key's RFC 7638
thumbprint. Key material never appears in a log line, repr or exception message.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

from broker.errors import ConfigError
from broker.jws import JWSAllowList
from broker.ssf.set import SET_TYP

__all__ = ["ALGORITHMS", "SetSigner"]

log = logging.getLogger("jit.ssf")

#: The JWS algorithms a SET may be signed with (an explicit allow-list).
ALGORITHMS: Final = ("EdDSA", "ES256")


def _parse(pem: bytes, where: str) -> tuple[str, OKPKey | ECKey]:
    try:
        raw = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{where}: not an unencrypted PEM private key ({exc.__class__.__name__})"
        ) from None
    if isinstance(raw, Ed25519PrivateKey):
        return "EdDSA", OKPKey.import_key(raw, parameters={"alg": "EdDSA", "use": "sig"})
    if isinstance(raw, ec.EllipticCurvePrivateKey) and isinstance(raw.curve, ec.SECP256R1):
        return "ES256", ECKey.import_key(pem, parameters={"alg": "ES256", "use": "sig"})
    raise ConfigError(f"{where}: unsupported key type (use Ed25519 for EdDSA or P-256 for ES256)")


class SetSigner:
    """Signs SETs with one key. ``repr`` shows the kid and algorithm only."""

    __slots__ = ("_key", "_public_jwk", "_registry", "algorithm", "kid")

    def __init__(self, pem: bytes, *, where: str) -> None:
        algorithm, key = _parse(pem, where)
        self.algorithm: str = algorithm
        self._key: OKPKey | ECKey = key
        self.kid: str = key.thumbprint()
        public: dict[str, Any] = dict(key.as_dict(private=False))
        public.pop("d", None)  # never there with private=False; belt and braces
        public.update(kid=self.kid, alg=algorithm, use="sig")
        self._public_jwk = public
        self._registry = JWSAllowList([algorithm])

    @classmethod
    def from_settings(cls, key_file: str | None, *, dev: bool) -> SetSigner:
        """The key in ``key_file``; without one, a fresh in-memory Ed25519 key in dev mode and
        a ConfigError otherwise (fail closed)."""
        if key_file is None:
            if not dev:
                raise ConfigError(
                    "ssf.signing_key_file is required: the PEM private key (Ed25519 or P-256) "
                    "that signs Security Event Tokens"
                )
            log.warning(
                "ssf: signing Security Event Tokens with a key generated in memory (dev mode); "
                "receivers must fetch the JWKS again after every restart"
            )
            return cls.generate()
        path = Path(key_file)
        try:
            st = path.stat()
            pem = path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise ConfigError(f"ssf.signing_key_file {path}: cannot read ({reason})") from None
        if st.st_mode & 0o077:
            log.warning(
                "ssf.signing_key_file %s is accessible to group or others (mode %o); "
                "it should be 0600",
                path,
                st.st_mode & 0o777,
            )
        return cls(pem, where=f"ssf.signing_key_file {path}")

    @classmethod
    def generate(cls, algorithm: str = "EdDSA") -> SetSigner:
        if algorithm == "EdDSA":
            private: Ed25519PrivateKey | ec.EllipticCurvePrivateKey = Ed25519PrivateKey.generate()
        elif algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported algorithm {algorithm!r} (choose from {ALGORITHMS})")
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(pem, where="generated key")

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS: header ``{"alg", "kid", "typ": "secevent+jwt"}`` over ``claims``."""
        header = {"alg": self.algorithm, "kid": self.kid, "typ": SET_TYP}
        return jwt.encode(header, claims, self._key, registry=self._registry)

    def jwks(self) -> dict[str, Any]:
        """The public JWK set (one key; never private material)."""
        return {"keys": [dict(self._public_jwk)]}

    def __repr__(self) -> str:
        return f"SetSigner(kid={self.kid!r}, algorithm={self.algorithm!r})"
