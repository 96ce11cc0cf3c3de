"""Key pairs made where the workload runs, for issuers that certify a public key (ssh, x509):
the public half goes to the broker as ``params["public_key"]``, the private half never leaves
this process (it is returned as ``Credential.private_key``, a :class:`Secret`).

- ``ssh``: Ed25519; the public key as an OpenSSH line, the private key in OpenSSH format.
- ``pem``: ECDSA P-256 (what every TLS stack accepts for a client certificate); the public key
  as PEM SubjectPublicKeyInfo, the private key as unencrypted PKCS#8 PEM.
"""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from broker.types import Secret

__all__ = ["KeyKind", "generate"]

KeyKind = Literal["ssh", "pem"]


def generate(kind: KeyKind) -> tuple[str, Secret]:
    """A fresh key pair: (the public key for ``params["public_key"]``, the private key)."""
    if kind == "ssh":
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        return public.decode() + " jit-broker", Secret(private.decode())
    if kind == "pem":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        public = ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        private = ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return public.decode(), Secret(private.decode())
    raise ValueError(f"unknown key kind {kind!r} (ssh or pem)")
