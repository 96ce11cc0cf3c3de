"""The certificate profile of the ``x509`` issuer, as pure functions: what goes into a leaf.

Owns:

- :func:`spiffe_id`: the SPIFFE ID (the leaf's only URI SAN) of a principal, an injective
  mapping ``spiffe://<trust domain>/<escaped principal issuer>/<escaped subject>``;
- :func:`serial_for`: the certificate serial number, derived from the lease id so that
  ``revoke()`` finds it from the lease id alone (after a crashed mint);
- :class:`CertificateScope` and its DER encoding, the non-critical extension
  :data:`SCOPE_OID` that records the lease's scope for the relying service to enforce;
- :func:`check_workload_key`: the key types and sizes a workload may certify.

Nothing here reads time, configuration or the network.
"""

from __future__ import annotations

import hashlib
import re
import string
from typing import Final

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

__all__ = [
    "MAX_RSA_BITS",
    "SCOPE_OID",
    "SPIFFE_ID_MAX_LENGTH",
    "CertificateScope",
    "check_trust_domain",
    "check_workload_key",
    "decode_scope",
    "encode_scope",
    "escape_segment",
    "read_scope",
    "serial_for",
    "serial_hex",
    "spiffe_id",
    "unescape_segment",
]

#: The jit-broker scope extension. An OID under the UUID arc ``2.25`` (ITU-T X.667), which
#: needs no registration: ``2.25.<the decimal value of a random UUID>``.
SCOPE_OID: Final = x509.ObjectIdentifier("2.25.277442576181544816286402157184590962087")

#: SPIFFE IDs are at most 2048 bytes (SPIFFE-ID §2.3).
SPIFFE_ID_MAX_LENGTH: Final = 2048
#: Larger RSA keys only cost the relying party time; nobody needs them for a short-lived cert.
MAX_RSA_BITS: Final = 8192

_SAFE: Final = frozenset(string.ascii_letters + string.digits + ".-")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
_ESCAPED = re.compile(r"_([0-9A-F]{2})")
_SERIAL_LABEL: Final = b"jit-broker x509 serial\x00"
_CURVES: Final = {"secp256r1", "secp384r1", "secp521r1"}


# -- SPIFFE ID -------------------------------------------------------------------------------


def check_trust_domain(trust_domain: str) -> None:
    """Raise ValueError unless ``trust_domain`` is a valid SPIFFE trust domain name
    (lowercase letters, digits, ``.``, ``-``, ``_``; at most 255 characters)."""
    if not _TRUST_DOMAIN.match(trust_domain) or trust_domain.strip(".") == "":
        raise ValueError(
            "must be 1-255 characters of lowercase letters, digits, '.', '-' and '_' "
            "(a SPIFFE trust domain such as prod.example.com)"
        )


def escape_segment(text: str) -> str:
    """One SPIFFE path segment for ``text``: ASCII letters, digits, ``.`` and ``-`` stay as
    they are; every other byte of its UTF-8 form (``_`` included) becomes ``_XX`` (two
    uppercase hex digits). A segment of dots only is escaped entirely (``.`` and ``..`` are
    not valid segments). Injective: :func:`unescape_segment` inverts it. Raises ValueError
    for an empty string (SPIFFE forbids empty segments)."""
    if not text:
        raise ValueError("an empty identifier has no SPIFFE path segment")
    if set(text) == {"."}:
        return "_2E" * len(text)
    return "".join(
        chr(b) if chr(b) in _SAFE else f"_{b:02X}" for b in text.encode("utf-8", "surrogatepass")
    )


def unescape_segment(segment: str) -> str:
    """The identifier a segment made by :func:`escape_segment` stands for."""
    raw = bytearray()
    pos = 0
    while pos < len(segment):
        if segment[pos] == "_":
            m = _ESCAPED.match(segment, pos)
            if m is None:
                raise ValueError("malformed escape in SPIFFE path segment")
            raw.append(int(m.group(1), 16))
            pos = m.end()
        else:
            raw.extend(segment[pos].encode("ascii"))
            pos += 1
    return raw.decode("utf-8", "surrogatepass")


def spiffe_id(trust_domain: str, principal_issuer: str, subject: str) -> str:
    """``spiffe://<trust_domain>/<escape(principal_issuer)>/<escape(subject)>``.

    Two different principals never get the same id (the escaping is injective and the
    principal's identity issuer is its own segment). Raises ValueError for an empty part or an
    id longer than 2048 bytes."""
    uri = f"spiffe://{trust_domain}/{escape_segment(principal_issuer)}/{escape_segment(subject)}"
    if len(uri) > SPIFFE_ID_MAX_LENGTH:
        raise ValueError(f"the SPIFFE ID would be longer than {SPIFFE_ID_MAX_LENGTH} bytes")
    return uri


# -- serial ----------------------------------------------------------------------------------


def serial_for(lease_id: str) -> int:
    """The certificate serial of a lease: the first 127 bits of ``sha256(label || lease_id)``.

    Positive, non-zero and at most 16 octets once DER-encoded (RFC 5280 §4.1.2.2 allows 20).
    The lease id carries 128 random bits (ADR 0001), so serials are unpredictable before the
    lease exists and unique per lease; the issuer also refuses a second certificate for a lease.
    """
    digest = hashlib.sha256(_SERIAL_LABEL + lease_id.encode("utf-8")).digest()
    return (int.from_bytes(digest[:16], "big") >> 1) or 1


def serial_hex(serial: int) -> str:
    """32 lowercase hex digits, as shown in ``Credential.metadata`` and the handle."""
    return f"{serial:032x}"


# -- the scope extension ---------------------------------------------------------------------


class CertificateScope(msgspec.Struct, frozen=True, kw_only=True):
    """What the scope extension of a leaf says. DER (see docs/issuers/x509.md)::

    JitBrokerScope ::= SEQUENCE {
        resource  UTF8String,              -- the scope's resource (a configured service)
        actions   SEQUENCE OF UTF8String,  -- the granted actions, sorted
        leaseId   UTF8String,
        taskId    UTF8String }
    """

    resource: str
    actions: tuple[str, ...]
    lease_id: str
    task_id: str


_SEQUENCE: Final = 0x30
_UTF8STRING: Final = 0x0C


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + content


def _utf8(text: str) -> bytes:
    return _tlv(_UTF8STRING, text.encode("utf-8"))


def encode_scope(scope: CertificateScope) -> bytes:
    """The DER encoding of ``scope`` (the extension's value)."""
    actions = _tlv(_SEQUENCE, b"".join(_utf8(a) for a in scope.actions))
    body = _utf8(scope.resource) + actions + _utf8(scope.lease_id) + _utf8(scope.task_id)
    return _tlv(_SEQUENCE, body)


def _read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """One DER TLV of ``tag`` at ``pos``: (content, position after it). Strict: definite,
    minimal lengths only."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise ValueError("unexpected DER element")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("non-minimal DER length")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return data[pos:end], end


def _read_utf8(data: bytes, pos: int) -> tuple[str, int]:
    content, pos = _read(data, pos, _UTF8STRING)
    return content.decode("utf-8"), pos


def decode_scope(der: bytes) -> CertificateScope:
    """Parse the extension's value. Raises ValueError for anything but exactly one
    ``JitBrokerScope``."""
    body, end = _read(der, 0, _SEQUENCE)
    if end != len(der):
        raise ValueError("trailing data after the scope")
    resource, pos = _read_utf8(body, 0)
    actions_der, pos = _read(body, pos, _SEQUENCE)
    lease_id, pos = _read_utf8(body, pos)
    task_id, pos = _read_utf8(body, pos)
    if pos != len(body):
        raise ValueError("unexpected elements in the scope")
    actions: list[str] = []
    apos = 0
    while apos < len(actions_der):
        action, apos = _read_utf8(actions_der, apos)
        actions.append(action)
    return CertificateScope(
        resource=resource, actions=tuple(actions), lease_id=lease_id, task_id=task_id
    )


def read_scope(certificate: x509.Certificate) -> CertificateScope | None:
    """The scope a leaf of this issuer carries, or None if it has no scope extension. For
    relying services written in Python (after the TLS stack verified the chain)."""
    try:
        ext = certificate.extensions.get_extension_for_oid(SCOPE_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ValueError("unexpected scope extension type")
    return decode_scope(value.value)


# -- workload keys ---------------------------------------------------------------------------


def check_workload_key(key: CertificatePublicKeyTypes, *, min_rsa_bits: int) -> str:
    """A short description of ``key`` (``"EC secp256r1"``) if a workload may have it
    certified; raise ValueError if it is weak or of an unsuitable type.

    Accepted: RSA of ``min_rsa_bits``..8192 bits with public exponent >= 65537 (and odd),
    ECDSA on P-256, P-384 or P-521, Ed25519 and Ed448. Refused: everything else (DSA, short
    RSA, small exponents, other curves, X25519/X448 which cannot sign)."""
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        e = key.public_numbers().e
        if bits < min_rsa_bits:
            raise ValueError(f"RSA key of {bits} bits is too weak (at least {min_rsa_bits})")
        if bits > MAX_RSA_BITS:
            raise ValueError(f"RSA key of {bits} bits is too large (at most {MAX_RSA_BITS})")
        if e < 65537 or e % 2 == 0:
            raise ValueError("RSA public exponent must be odd and at least 65537")
        return f"RSA {bits}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise ValueError(f"EC curve {key.curve.name} is not accepted (P-256, P-384, P-521)")
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    raise ValueError(
        f"{type(key).__name__.removeprefix('_')} keys are not accepted "
        "(use ECDSA P-256/P-384/P-521, Ed25519, Ed448 or RSA)"
    )
