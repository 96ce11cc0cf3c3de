"""Test helpers for the x509 issuer: CAs, workload keys, ``openssl`` as an independent verifier,
and a real mTLS server on 127.0.0.1 (python ``ssl`` in a thread) that requires client
certificates from the broker's CA and checks the CRL.

Nothing here imports the issuer's own parsing code: the scope extension is decoded with
``openssl asn1parse`` and chains are verified with ``openssl verify``, so the tests check the
issuer against independent implementations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SCOPE_OID = "2.25.277442576181544816286402157184590962087"

KeyKind = Literal["ec", "ed25519", "rsa"]


# -- keys and CAs ----------------------------------------------------------------------------


def new_key(kind: KeyKind) -> PrivateKeyTypes:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa_2048()


_RSA_POOL: list[rsa.RSAPrivateKey] = []


def rsa_2048() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key (pre-generated in a small pool: generating them is slow)."""
    if not _RSA_POOL:
        _RSA_POOL.extend(rsa.generate_private_key(65537, 2048) for _ in range(4))
    return _RSA_POOL.pop()


def public_pem(key: PrivateKeyTypes) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def csr_pem(key: PrivateKeyTypes, common_name: str = "workload") -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        builder.sign(key, algorithm)  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def _ku(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class FixtureCA:
    """A CA for the tests: ``cert`` signs, ``chain`` is above it (towards ``root``)."""

    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def root(self) -> x509.Certificate:
        return self.chain[-1] if self.chain else self.cert

    def cert_file_bytes(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain)
        )

    def write(self, directory: Path, stem: str = "ca") -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_file = directory / f"{stem}.pem"
        key_file = directory / f"{stem}-key.pem"
        cert_file.write_bytes(self.cert_file_bytes())
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem(self.key))
        return cert_file, key_file


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def make_cert(
    *,
    subject: str,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: FixtureCA | None,
    ca: bool,
    not_before: datetime,
    not_after: datetime,
    key_usage: x509.KeyUsage | None = None,
    basic_constraints: bool = True,
    extra: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """A certificate for ``key`` signed by ``issuer`` (self-signed when None)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else name
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        if issuer
        else x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
        .add_extension(key_usage or _ku(ca=ca), critical=True)
    )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
    for ext in extra:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signer_key, _hash_for(signer_key))


#: Valid from a day before the real now until 2040: covers the FakeClock (2030) and real time.
VALID_FROM = datetime.now(UTC) - timedelta(days=1)
VALID_UNTIL = datetime(2040, 1, 1, tzinfo=UTC)


def make_root(subject: str, key: CertificateIssuerPrivateKeyTypes) -> FixtureCA:
    cert = make_cert(
        subject=subject,
        key=key,
        issuer=None,
        ca=True,
        not_before=VALID_FROM,
        not_after=VALID_UNTIL,
    )
    return FixtureCA(key=key, cert=cert)


@cache
def ec_ca() -> FixtureCA:
    """An ECDSA P-256 root that issues leaves directly."""
    return make_root("jit test EC CA", ec.generate_private_key(ec.SECP256R1()))


@cache
def rsa_chain_ca() -> FixtureCA:
    """An RSA-2048 intermediate under an RSA-2048 root: leaves come with a chain."""
    root = make_root("jit test RSA root", rsa.generate_private_key(65537, 2048))
    key = rsa.generate_private_key(65537, 2048)
    cert = make_cert(
        subject="jit test RSA intermediate",
        key=key,
        issuer=root,
        ca=True,
        not_before=VALID_FROM,
        not_after=VALID_UNTIL,
    )
    return FixtureCA(key=key, cert=cert, chain=(root.cert,))


@cache
def other_ca() -> FixtureCA:
    """A CA the test servers do not trust."""
    return make_root("some other CA", ec.generate_private_key(ec.SECP256R1()))


@cache
def server_identity() -> tuple[FixtureCA, bytes, bytes]:
    """(server CA, server certificate PEM for IP 127.0.0.1, server key PEM)."""
    server_ca = make_root("jit test server CA", ec.generate_private_key(ec.SECP256R1()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(
        subject="127.0.0.1",
        key=key,
        issuer=server_ca,
        ca=False,
        not_before=VALID_FROM,
        not_after=VALID_UNTIL,
        extra=[
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        ],
    )
    return server_ca, cert.public_bytes(serialization.Encoding.PEM), private_pem(key)


# -- PEM bundles -----------------------------------------------------------------------------

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def split_pem(bundle: str | bytes) -> list[bytes]:
    data = bundle.encode() if isinstance(bundle, str) else bundle
    return _PEM_CERT.findall(data)


def leaf_of(secret: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(split_pem(secret)[0])


# -- openssl as the independent verifier -----------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    output: str


async def openssl(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await proc.communicate(stdin)
    return proc.returncode or 0, out.decode(errors="replace")


async def openssl_verify(
    workdir: Path,
    secret: str,
    *,
    root_pem: bytes,
    crl_pem: bytes | None,
    at: datetime | None,
) -> Verdict:
    """``openssl verify`` of the leaf in ``secret`` (intermediates from the rest of it) against
    ``root_pem``, for TLS client use, X.509-strict, with the CRL when given, at time ``at``."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp)
        certs = split_pem(secret)
        (d / "leaf.pem").write_bytes(certs[0])
        (d / "root.pem").write_bytes(root_pem)
        args = ["verify", "-purpose", "sslclient", "-x509_strict", "-CAfile", str(d / "root.pem")]
        if len(certs) > 1:
            (d / "chain.pem").write_bytes(b"".join(certs[1:]))
            args += ["-untrusted", str(d / "chain.pem")]
        if crl_pem is not None:
            (d / "crl.pem").write_bytes(crl_pem)
            args += ["-CRLfile", str(d / "crl.pem"), "-crl_check"]
        if at is not None:
            args += ["-attime", str(int(at.timestamp()))]
        code, out = await openssl(*args, str(d / "leaf.pem"))
    return Verdict(ok=code == 0 and out.strip().endswith(": OK"), output=out)


@dataclass(frozen=True)
class ScopeSeen:
    resource: str
    actions: tuple[str, ...]
    lease_id: str
    task_id: str


def _scope_der(cert: x509.Certificate) -> bytes | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == SCOPE_OID:
            assert not ext.critical
            value = ext.value
            assert isinstance(value, x509.UnrecognizedExtension)
            return value.value
    return None


def parse_asn1(text: str) -> ScopeSeen:
    """The scope from ``openssl asn1parse`` output of the extension value."""
    strings: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = re.match(
            r"\s*\d+:d=(\d+)\s+hl=\d+\s+l=\s*\d+\s+(prim|cons):\s*(\S+)\s*(?::(.*))?$", line
        )
        assert m, f"unexpected asn1parse line {line!r}"
        depth, _, kind, value = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if kind == "UTF8STRING":
            strings.append((depth, value or ""))
        else:
            assert kind == "SEQUENCE", kind
    top = [v for d, v in strings if d == 1]
    actions = tuple(v for d, v in strings if d == 2)
    assert len(top) == 3, text
    return ScopeSeen(resource=top[0], actions=actions, lease_id=top[1], task_id=top[2])


async def scope_via_openssl(cert: x509.Certificate) -> ScopeSeen | None:
    der = _scope_der(cert)
    if der is None:
        return None
    code, out = await openssl("asn1parse", "-inform", "DER", stdin=der)
    assert code == 0, out
    return parse_asn1(out)


def scope_via_openssl_sync(cert: x509.Certificate) -> ScopeSeen | None:
    der = _scope_der(cert)
    if der is None:
        return None
    out = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER"],
        input=der,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return parse_asn1(out)


def spiffe_of(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


# -- a real mTLS server ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the server saw of one connection."""

    handshake: bool  # the TLS handshake (and so the client certificate) was accepted
    reason: str = ""  # why not (OpenSSL's verify message), or the app's answer
    authorized: bool = False  # the certificate's scope allows the asked action here
    spiffe_ids: list[str] = field(default_factory=list)
    scope: ScopeSeen | None = None
    client_answer: str | None = None  # what the client read back


class MTLSServer:
    """A TLS server on 127.0.0.1 that requires a client certificate from ``client_ca_pem``
    (``ssl.CERT_REQUIRED``, X.509-strict) and, once a CRL is set, checks the leaf against it
    (``VERIFY_CRL_CHECK_LEAF``). The SSLContext is re-created for every connection, so a new
    CRL applies at once. After the handshake it reads one line (an action) and answers "ok" if
    the certificate's scope extension names this server's ``resource`` and the action, else
    "denied"."""

    def __init__(self, workdir: Path, client_ca_pem: bytes, *, resource: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        server_ca, cert_pem, key_pem = server_identity()
        self.server_ca_file = workdir / "server-ca.pem"
        self.server_ca_file.write_bytes(server_ca.cert.public_bytes(serialization.Encoding.PEM))
        self._cert = workdir / "server.pem"
        self._cert.write_bytes(cert_pem)
        self._key = workdir / "server-key.pem"
        self._key.write_bytes(key_pem)
        self._client_ca = workdir / "client-ca.pem"
        self._client_ca.write_bytes(client_ca_pem)
        self._crl = workdir / "client-crl.pem"
        self._crl_set = False
        self.resource = resource
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)  # so the accept loop notices close()
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mtls-server", daemon=True)
        self._thread.start()

    def set_crl(self, crl_pem: bytes) -> None:
        tmp = self._crl.with_suffix(".tmp")
        tmp.write_bytes(crl_pem)
        os.replace(tmp, self._crl)
        self._crl_set = True

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._cert, self._key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=self._client_ca)
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        if self._crl_set:
            ctx.load_verify_locations(cafile=self._crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return ctx

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self.outcomes.put(self._handle(conn))

    def _handle(self, conn: socket.socket) -> Outcome:
        try:
            ctx = self.context()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                cert = x509.load_der_x509_certificate(der)
                action = tls.recv(1024).decode().strip()
                scope = scope_via_openssl_sync(cert)
                authorized = (
                    scope is not None
                    and scope.resource == self.resource
                    and action in scope.actions
                )
                tls.sendall(b"ok\n" if authorized else b"denied\n")
                return Outcome(
                    handshake=True,
                    reason="ok" if authorized else "denied",
                    authorized=authorized,
                    spiffe_ids=spiffe_of(cert),
                    scope=scope,
                )
        except ssl.SSLCertVerificationError as exc:
            return Outcome(handshake=False, reason=exc.verify_message or str(exc))
        except (ssl.SSLError, OSError) as exc:
            return Outcome(handshake=False, reason=f"{type(exc).__name__}: {exc}")

    def _connect(self, cert_pem: str, key_pem: bytes, action: str) -> str | None:
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            certfile, keyfile = Path(tmp) / "client.pem", Path(tmp) / "client-key.pem"
            certfile.write_text(cert_pem)
            keyfile.write_bytes(key_pem)
            ctx = ssl.create_default_context(cafile=self.server_ca_file)
            ctx.load_cert_chain(certfile, keyfile)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(action.encode() + b"\n")
                answer = tls.recv(1024).decode().strip()
                return answer or None
        except (ssl.SSLError, OSError):
            return None  # refused during or right after the handshake

    async def attempt(self, cert_pem: str, key: PrivateKeyTypes, action: str) -> Outcome:
        """Connect as a TLS client with ``cert_pem`` (leaf + chain) and ``key``, ask for
        ``action``; the server's view of the connection, with what the client read."""
        answer = await asyncio.to_thread(self._connect, cert_pem, private_pem(key), action)
        outcome = await asyncio.to_thread(self.outcomes.get, True, 10)
        outcome.client_answer = answer
        return outcome

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() at once
        self._sock.close()
        self._thread.join(timeout=5)
