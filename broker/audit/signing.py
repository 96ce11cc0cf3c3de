"""The audit trail's keys: the Ed25519 key that signs chain checkpoints, the HMAC key for keyed
digests of sensitive values, and the public keys a verifier checks checkpoints with.

- :class:`CheckpointSigner` holds the private key (from ``audit.signing_key_file``: an
  unencrypted PKCS#8 PEM Ed25519 key; in dev mode generated in memory) and signs a checkpoint
  as a compact JWS over the canonical JSON ``{"head": <hex>, "seq": <int>}`` with
  ``alg: EdDSA`` (ADR 0002), ``kid`` (the RFC 7638 thumbprint) and
  ``typ: jit-audit-checkpoint``. :meth:`CheckpointSigner.jwks` is the public JWK set.
- :func:`verify_checkpoint` checks one such JWS with an explicit allow-list: ``EdDSA`` only, an
  Ed25519 key selected by ``kid`` from the verifier's key set, the exact ``typ``.
- :func:`load_verification_keys` reads a JWKS document, a single JWK, or a PEM key (public or
  private; only the public half is kept).
- :class:`HmacKey` (from ``audit.hmac_key_file``, at least 32 bytes; dev: generated) turns a
  sensitive value into ``hmac-sha256:<hex>`` so a record can be matched against a known token
  without containing it.

No key material ever reaches a repr, a log line or an exception message.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, OKPKey

from broker.errors import ConfigError
from broker.jws import JWSAllowList

__all__ = [
    "ALGORITHM",
    "CHECKPOINT_TYP",
    "CheckpointError",
    "CheckpointSigner",
    "HmacKey",
    "load_verification_keys",
    "parse_verification_keys",
    "verify_checkpoint",
]

log = logging.getLogger("jit.audit")

#: The one JWS algorithm a checkpoint is signed and verified with (Ed25519; ADR 0002).
ALGORITHM: Final = "EdDSA"
#: The JWS ``typ`` of a checkpoint signature: a checkpoint JWS is never mistaken for a token.
CHECKPOINT_TYP: Final = "jit-audit-checkpoint"
#: Shortest accepted HMAC key, in bytes.
MIN_HMAC_KEY: Final = 32

_canonical = msgspec.json.Encoder(order="sorted")


#: ``EdDSA`` and nothing else, with a strict header check and small size limits.
_REGISTRY = JWSAllowList([ALGORITHM], max_header=512, max_payload=512, max_signature=256)


class CheckpointError(ValueError):
    """A checkpoint signature that does not verify; the message says why (never a key)."""


def _warn_if_readable(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s is readable by group or others (chmod 600 it)", what, path)


def _read_key_file(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what}: file not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {p}: {exc.strerror}") from None
    _warn_if_readable(p, what)
    return data


class CheckpointSigner:
    """The private key that signs checkpoints. ``repr`` shows only the ``kid``."""

    __slots__ = ("_private", "kid", "public_jwk")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key = OKPKey.import_key(pem, parameters={"alg": ALGORITHM, "use": "sig"})
        self._private: OKPKey = key
        self.kid: str = key.thumbprint()
        public: dict[str, Any] = dict(key.as_dict(private=False))
        public.pop("d", None)
        public.update(kid=self.kid, alg=ALGORITHM, use="sig")
        self.public_jwk: dict[str, Any] = public

    @classmethod
    def generate(cls) -> CheckpointSigner:
        """A fresh in-memory key (dev mode: checkpoints verify only against this run's JWKS)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes, *, where: str = "audit.signing_key_file") -> CheckpointSigner:
        try:
            raw = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(
                f"{where}: not an unencrypted PEM private key ({exc.__class__.__name__})"
            ) from None
        if not isinstance(raw, Ed25519PrivateKey):
            raise ConfigError(f"{where}: the audit signing key must be an Ed25519 key")
        return cls(raw)

    @classmethod
    def from_file(cls, path: str | Path) -> CheckpointSigner:
        where = f"audit.signing_key_file {path}"
        return cls.from_pem(_read_key_file(path, "audit.signing_key_file"), where=where)

    def sign(self, seq: int, head: str) -> str:
        """A compact JWS over ``{"head": head, "seq": seq}`` (canonical JSON)."""
        payload = _canonical.encode({"head": head, "seq": seq})
        protected = {"alg": ALGORITHM, "kid": self.kid, "typ": CHECKPOINT_TYP}
        return jws.serialize_compact(protected, payload, self._private, registry=_REGISTRY)

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK set (``{"keys": [...]}``)."""
        return {"keys": [dict(self.public_jwk)]}

    def __repr__(self) -> str:
        return f"CheckpointSigner(kid={self.kid!r})"


def _public_okp(jwk: Mapping[str, Any], where: str) -> OKPKey:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ConfigError(f"{where}: only Ed25519 (OKP) keys verify audit checkpoints")
    if jwk.get("alg") not in (None, ALGORITHM):
        raise ConfigError(f"{where}: key {jwk.get('kid')!r} is for alg {jwk.get('alg')!r}")
    public = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "kid", "use")}
    try:
        key = OKPKey.import_key(public)
    except (JoseError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not a usable JWK ({exc.__class__.__name__})") from None
    return key


def parse_verification_keys(data: bytes, *, where: str = "key") -> dict[str, OKPKey]:
    """Public checkpoint keys by ``kid`` from a JWKS, a single JWK or a PEM key."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            if b"PRIVATE KEY" in text:
                raw_private = serialization.load_pem_private_key(text, password=None)
                if not isinstance(raw_private, Ed25519PrivateKey):
                    raise ConfigError(f"{where}: not an Ed25519 key")
                raw_public = raw_private.public_key()
            else:
                loaded = serialization.load_pem_public_key(text)
                if not isinstance(loaded, Ed25519PublicKey):
                    raise ConfigError(f"{where}: not an Ed25519 key")
                raw_public = loaded
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"{where}: not a PEM key ({exc.__class__.__name__})") from None
        raw = raw_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        key = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": x})
        return {key.thumbprint(): key}
    try:
        doc = msgspec.json.decode(text)
    except msgspec.DecodeError:
        raise ConfigError(f"{where}: neither a JWK set (JSON) nor a PEM key") from None
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        entries = doc["keys"]
    elif isinstance(doc, dict) and "kty" in doc:
        entries = [doc]
    else:
        raise ConfigError(f"{where}: a JWK set needs a 'keys' list")
    keys: dict[str, OKPKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: every JWK must be an object")
        key = _public_okp(entry, where)
        thumb = key.thumbprint()
        kid = entry.get("kid", thumb)
        if not isinstance(kid, str) or kid != thumb:
            # The signer's kid IS the thumbprint; a different kid means a mislabelled key.
            raise ConfigError(f"{where}: key id {kid!r} is not the key's RFC 7638 thumbprint")
        keys[kid] = key
    if not keys:
        raise ConfigError(f"{where}: no keys")
    return keys


def load_verification_keys(path: str | Path) -> dict[str, OKPKey]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {p}: {exc.strerror}") from None
    return parse_verification_keys(data, where=str(p))


def verify_checkpoint(token: str, keys: Mapping[str, OKPKey]) -> tuple[int, str]:
    """The ``(seq, head)`` a checkpoint JWS signs. Raises :class:`CheckpointError`."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise CheckpointError("not a compact JWS")

    def resolve(obj: GuestProtocol) -> OKPKey:
        headers = obj.headers()
        kid = headers.get("kid")
        if headers.get("typ") != CHECKPOINT_TYP:
            raise CheckpointError(f"wrong JWS typ {headers.get('typ')!r}")
        if not isinstance(kid, str) or kid not in keys:
            raise CheckpointError(f"signed by an unknown key (kid {kid!r})")
        return keys[kid]

    try:
        obj = jws.deserialize_compact(token, resolve, algorithms=[ALGORITHM], registry=_REGISTRY)
    except CheckpointError:
        raise
    except JoseError as exc:
        raise CheckpointError(f"the signature does not verify ({exc.__class__.__name__})") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"not a valid JWS ({exc.__class__.__name__})") from None
    try:
        payload = msgspec.json.decode(obj.payload)
    except msgspec.DecodeError:
        raise CheckpointError("the signed payload is not JSON") from None
    if not isinstance(payload, dict) or set(payload) != {"head", "seq"}:
        raise CheckpointError("the signed payload is not {seq, head}")
    seq, head = payload["seq"], payload["head"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(head, str):
        raise CheckpointError("the signed payload is not {seq: int, head: str}")
    return seq, head


class HmacKey:
    """The key of the keyed digests in audit records. ``repr`` never shows it."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_HMAC_KEY:
            raise ConfigError(f"audit.hmac_key_file: the key must be at least {MIN_HMAC_KEY} bytes")
        self._key: Final = key

    @classmethod
    def generate(cls) -> HmacKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_file(cls, path: str | Path) -> HmacKey:
        """The file's bytes (surrounding whitespace stripped) are the key: e.g. the output of
        ``openssl rand -hex 32``."""
        return cls(_read_key_file(path, "audit.hmac_key_file").strip())

    def digest(self, value: str) -> str:
        mac = hmac.digest(self._key, value.encode(), "sha256").hex()  # OpenSSL's one-shot
        return f"hmac-sha256:{mac}"

    def matches(self, value: str, digest: str) -> bool:
        """Constant-time: does ``digest`` (``hmac-sha256:<hex>``) belong to ``value``?"""
        return hmac.compare_digest(self.digest(value).encode(), digest.encode())

    def derive(self, purpose: bytes, length: int = 32) -> bytes:
        """A key for another purpose, derived with HKDF-SHA256 (``info`` = ``purpose``), so
        the broker's one configured secret yields independent keys (docs/adr/0009)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(
            self._key
        )

    def __repr__(self) -> str:
        return "HmacKey('**********')"


def write_private_key(path: str | Path) -> str:
    """Generate an Ed25519 signing key into ``path`` (mode 0600, refuses to overwrite).
    Returns its kid."""
    p = Path(path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return CheckpointSigner(private).kid
