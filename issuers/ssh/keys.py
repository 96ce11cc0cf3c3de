"""Keys of the ``ssh`` issuer: the CA private key it signs with, and the workloads' public keys.

Owns which key types are acceptable and how they are read:

- the CA key: an unencrypted OpenSSH-format private key file (``ssh-keygen -t ed25519 -N ''``);
  Ed25519, ECDSA (P-256/384/521) or RSA of at least ``min_rsa_bits``;
- a workload's public key (``MintRequest.params["public_key"]``): one OpenSSH line
  (``ssh-ed25519 AAAA... comment``) of the same types. DSA, short RSA keys, certificates and
  anything else are refused with ``InvalidRequest``.

Error messages name the problem, never key material.
"""

from __future__ import annotations

import base64
import hashlib
import warnings
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from broker.errors import InvalidRequest

__all__ = [
    "MAX_PUBLIC_KEY_LENGTH",
    "CAKey",
    "PublicKey",
    "fingerprint",
    "load_ca_key",
    "parse_public_key",
    "public_blob",
]

#: A public key line longer than this is refused before any parsing (RSA 16384 is ~2.8 KB).
MAX_PUBLIC_KEY_LENGTH: Final = 8192

CAKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: Plain (not certificate) public key types a workload may send, by their OpenSSH name.
_PUBLIC_KEY_TYPES: Final = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
    }
)
_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def public_blob(key: PublicKey) -> bytes:
    """The SSH wire encoding of a public key (what a KRL and a fingerprint are made of)."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def fingerprint(key: PublicKey) -> str:
    """``SHA256:<base64>``, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(public_blob(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _key_problem(key: object, min_rsa_bits: int) -> str | None:
    """Why ``key`` is not acceptable, or None."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return None if isinstance(key.curve, _CURVES) else "unsupported ECDSA curve"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < min_rsa_bits:
            return f"RSA keys must have at least {min_rsa_bits} bits"
        return None
    return "unsupported key type (use Ed25519, ECDSA or RSA)"


def load_ca_key(data: bytes, *, min_rsa_bits: int) -> CAKey:
    """Parse the CA private key. Raises ValueError with a message free of key material."""
    with warnings.catch_warnings():  # a DSA key warns on load; it is refused just below
        warnings.simplefilter("ignore")
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # cryptography says "Key is password-protected." for encrypted keys: safe to show.
            hint = "encrypted keys are not supported" if "password" in str(exc) else ""
            raise ValueError(
                "not an unencrypted OpenSSH private key"
                + (f" ({hint})" if hint else f" ({exc.__class__.__name__})")
            ) from None
    problem = _key_problem(key, min_rsa_bits)
    if problem is not None:
        raise ValueError(problem)
    if not isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise ValueError("unsupported key type")  # unreachable: _key_problem refused it
    return key


def parse_public_key(text: str, *, min_rsa_bits: int) -> PublicKey:
    """A workload's OpenSSH public key line. Raises InvalidRequest."""
    where = "params.public_key"
    if not text or len(text) > MAX_PUBLIC_KEY_LENGTH:
        raise InvalidRequest(f"{where}: must be one OpenSSH public key line")
    line = text.strip()
    if not line.isprintable() or "\n" in line or "\r" in line:
        raise InvalidRequest(f"{where}: must be one OpenSSH public key line")
    key_type = line.split(" ", 1)[0]
    if key_type == "ssh-dss":
        raise InvalidRequest(f"{where}: DSA keys are refused (use Ed25519)")
    if key_type not in _PUBLIC_KEY_TYPES:
        raise InvalidRequest(
            f"{where}: key type must be one of {sorted(_PUBLIC_KEY_TYPES)} (certificates and "
            "security-key types are not accepted)"
        )
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidRequest(f"{where}: not a valid OpenSSH public key") from None
    problem = _key_problem(key, min_rsa_bits)
    if problem is not None:
        raise InvalidRequest(f"{where}: {problem}")
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidRequest(f"{where}: unsupported key type")  # unreachable, see above
    if public_blob(key) != base64.b64decode(line.split()[1]):
        # e.g. a certificate line relabelled as a plain key type: refuse what we did not parse
        raise InvalidRequest(f"{where}: not a valid OpenSSH public key")
    return key
