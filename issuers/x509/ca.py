"""The certificate authority of an ``x509`` issuer instance: loaded from PEM files, or generated
in memory under ``jit dev``.

Owns the checks a CA must pass before the issuer signs anything with it (a CA certificate whose
key matches, usable for signing certificates and CRLs, of an accepted key type) and the choice
of signature hash. The private key never appears in a repr, a log line or an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

__all__ = ["CAError", "CertificateAuthority", "generate_ca", "load_ca"]

CAKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class CAError(ValueError):
    """The CA files are unusable. The message names the problem, never key material."""


@dataclass(frozen=True, repr=False)
class CertificateAuthority:
    """The issuing CA: its certificate, its private key, and the certificates above it."""

    certificate: x509.Certificate
    key: CAKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()  # above ``certificate``, towards the root

    def __repr__(self) -> str:
        return f"CertificateAuthority(subject={self.certificate.subject.rfc4514_string()!r})"

    @property
    def hash_algorithm(self) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
        """The signature hash for this key (None for Ed25519/Ed448, which hash internally)."""
        return _hash_for(self.key)

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def pem(self) -> bytes:
        """The CA certificate followed by its chain, as PEM (what ``ca.pem`` publishes)."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain)
        )

    def presented_chain(self) -> bytes:
        """The certificates a client sends after its leaf: the issuing CA and every
        intermediate above it, but no self-signed root (the relying party has that)."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM)
            for c in (self.certificate, *self.chain)
            if not _self_signed(c)
        )

    def key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The AuthorityKeyIdentifier for certificates and CRLs this CA signs."""
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _hash_for(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = key.curve.key_size
        if size > 384:
            return hashes.SHA512()
        if size > 256:
            return hashes.SHA384()
        return hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    return None


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _spki(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_key(key: object) -> CAKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise CAError(f"the CA key is RSA {key.key_size}: at least 2048 bits are needed")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise CAError(f"the CA key's curve {key.curve.name} is not P-256, P-384 or P-521")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key
    raise CAError("the CA key must be RSA (>= 2048 bits), ECDSA P-256/P-384/P-521 or Ed25519")


def _check_ca_certificate(cert: x509.Certificate, *, crl: bool) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CAError("the CA certificate has no BasicConstraints extension") from None
    if not bc.ca:
        raise CAError("the CA certificate is not a CA (BasicConstraints CA:FALSE)")
    if bc.path_length is not None and bc.path_length < 0:
        raise CAError("the CA certificate has a negative path length")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return  # no KeyUsage: every use is allowed (RFC 5280 §4.2.1.3)
    if not ku.key_cert_sign:
        raise CAError("the CA certificate's KeyUsage lacks keyCertSign")
    if crl and not ku.crl_sign:
        raise CAError(
            "the CA certificate's KeyUsage lacks cRLSign (needed for the CRL; or set crl: false)"
        )


def load_ca(cert_file: Path, key_file: Path, *, crl: bool) -> CertificateAuthority:
    """Load and check a CA. ``cert_file``: PEM, the issuing CA certificate first, then any
    certificates above it. ``key_file``: the CA's unencrypted PEM private key (PKCS#8,
    traditional OpenSSL or SEC1). Raises CAError."""
    try:
        cert_pem = cert_file.read_bytes()
    except OSError as exc:
        raise CAError(f"ca_cert_file: cannot read it ({exc.strerror})") from None
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CAError("ca_cert_file: not a PEM certificate (or chain)") from None
    try:
        key_pem = key_file.read_bytes()
    except OSError as exc:
        raise CAError(f"ca_key_file: cannot read it ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CAError("ca_key_file: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CAError("ca_key_file: not a PEM private key") from None
    ca_key = _check_key(key)
    cert, chain = certs[0], tuple(certs[1:])
    if _spki(cert.public_key()) != _spki(ca_key.public_key()):
        raise CAError("ca_key_file does not hold the private key of the first ca_cert_file cert")
    _check_ca_certificate(cert, crl=crl)
    for upper in chain:
        _check_ca_certificate(upper, crl=False)
    return CertificateAuthority(certificate=cert, key=ca_key, chain=chain)


def generate_ca(common_name: str, now: datetime, lifetime: timedelta) -> CertificateAuthority:
    """A self-signed ECDSA P-256 CA held in memory (``jit dev``): valid from an hour before
    ``now`` for ``lifetime``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "jit-broker (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=cert, key=key)
