"""The x509 issuer: the conformance kit twice (an ECDSA CA with a public key param; an RSA
intermediate under a root with a CSR param) on the real Redis, verified by ``openssl verify``;
a real mTLS server (python ``ssl``, CERT_REQUIRED, CRL checked) that accepts minted certificates
and refuses expired, revoked and foreign ones; the certificate profile as ``openssl`` shows it;
the SPIFFE mapping; params, key strength and strict config."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import ssl
import string
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from broker.api import create_app
from broker.clock import SystemClock
from broker.config import IssuerInstanceSettings, Settings
from broker.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    IssuerUnavailable,
    ScopeNotSupported,
)
from broker.identity import DevIdentityIssuer
from broker.issuer import Issuer, IssuerContext, PublishesDocuments
from broker.registry import load_issuers
from broker.service import build_broker
from broker.testing import FakeClock, IssuerConformance, lease_for, mint_request
from broker.types import Credential, MintRequest, Principal, Scope, Secret
from issuers.x509 import X509Issuer, read_scope
from issuers.x509.profile import (
    CertificateScope,
    decode_scope,
    encode_scope,
    escape_segment,
    spiffe_id,
    unescape_segment,
)
from issuers.x509.state import RedisSerialState
from tests.issuers.x509_support import (
    FixtureCA,
    KeyKind,
    MTLSServer,
    csr_pem,
    ec_ca,
    leaf_of,
    make_cert,
    make_root,
    new_key,
    openssl,
    openssl_verify,
    other_ca,
    public_pem,
    rsa_2048,
    rsa_chain_ca,
    scope_via_openssl,
    spiffe_of,
    split_pem,
)

REDIS_URL = os.environ.get("JIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NAME = "x509-test"
BROKER = "https://jit.test"
TRUST_DOMAIN = "prod.example"
RESOURCES: dict[str, Any] = {"orders": {"actions": ["read", "write"]}, "billing": {}}
PRINCIPAL = Principal(
    id="github:repo:acme/api:ref:refs/heads/main",
    issuer="github",
    subject="repo:acme/api:ref:refs/heads/main",
)
PRINCIPAL_SPIFFE = "spiffe://prod.example/github/repo_3Aacme_2Fapi_3Aref_3Arefs_2Fheads_2Fmain"


def issuer_config(files: tuple[Path, Path] | None, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"trust_domain": TRUST_DOMAIN, "resources": RESOURCES}
    if files is not None:
        config["ca_cert_file"], config["ca_key_file"] = str(files[0]), str(files[1])
    config.update(overrides)
    return config


def make_issuer(
    clock: Any,
    config: dict[str, Any],
    *,
    redis: Any = None,
    prefix: str = "",
    name: str = NAME,
    dev: bool = False,
    broker_url: str = BROKER,
) -> X509Issuer:
    return X509Issuer(
        IssuerContext(
            name=name,
            config=config,
            clock=clock,
            broker_url=broker_url,
            dev=dev,
            redis=redis,
            state_prefix=prefix,
        )
    )


def with_key(request: MintRequest, key: PrivateKeyTypes, param: str = "public_key") -> MintRequest:
    value = public_pem(key) if param == "public_key" else csr_pem(key)
    return msgspec.structs.replace(request, params={param: value})


def same_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


async def redis_client() -> aioredis.Redis:
    """A client of its own (no retries), so a test can cut it off from Redis."""
    client = aioredis.Redis.from_url(
        REDIS_URL, retry=Retry(NoBackoff(), 0), socket_connect_timeout=2, socket_timeout=2
    )
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.fail(f"Redis at {REDIS_URL} is not answering: {exc}")
    return client


@asynccontextmanager
async def cut_off(client: aioredis.Redis) -> AsyncIterator[None]:
    """Point ``client`` at a loopback port that refuses connections, then back."""
    pool = client.connection_pool
    port = pool.connection_kwargs["port"]
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))  # bound but never listening: connections are refused
    pool.connection_kwargs["port"] = blocker.getsockname()[1]
    await pool.disconnect()
    pool.reset()  # forget the old connections: new ones use the refused port
    try:
        yield
    finally:
        pool.connection_kwargs["port"] = port
        await pool.disconnect()
        pool.reset()
        blocker.close()


def openssl_serial(serial_hex: str) -> str:
    """A serial as ``openssl crl -text`` prints it: uppercase hex, even length."""
    text = f"{int(serial_hex, 16):X}"
    return "0" + text if len(text) % 2 else text


def cn_of(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


# -- the conformance kit ---------------------------------------------------------------------


class _X509Kit(IssuerConformance[X509Issuer]):
    """The kit on the real Redis; ``credential_works`` is ``openssl verify`` (chain to the
    root, TLS client purpose, X.509-strict, the issuer's current CRL) at the kit's time, and the
    certificate must certify the key the workload sent."""

    key_kind: ClassVar[KeyKind] = "ec"
    param: ClassVar[str] = "public_key"
    make_ca: ClassVar[Callable[[], FixtureCA]]

    workdir: Path
    keys: dict[str, PrivateKeyTypes]
    redis: aioredis.Redis
    root_pem: bytes

    @pytest.fixture
    async def issuer(
        self, clock: FakeClock, tmp_path: Path, key_prefix: str, real_redis: aioredis.Redis
    ) -> AsyncIterator[X509Issuer]:
        self.workdir = tmp_path
        self.keys = {}
        self.redis = await redis_client()
        ca = type(self).make_ca()
        self.root_pem = ca.root.public_bytes(serialization.Encoding.PEM)
        issuer = make_issuer(
            clock,
            issuer_config(ca.write(tmp_path / "ca")),
            redis=self.redis,
            prefix=f"{key_prefix}:issuer:{NAME}",
        )
        yield issuer
        await issuer.aclose()
        await self.redis.aclose()

    def request(
        self,
        issuer: X509Issuer,
        scope: Scope | None = None,
        *,
        ttl: timedelta | None = None,
        lease_id: str | None = None,
    ) -> MintRequest:
        """The kit's request, plus the workload's public key (or CSR) as the broker passes it."""
        request = super().request(issuer, scope, ttl=ttl, lease_id=lease_id)
        key = new_key(self.key_kind)
        self.keys[request.lease_id] = key
        return with_key(request, key, self.param)

    def scope(self) -> Scope:
        return Scope.of(NAME, "orders", ["read", "write"])

    def narrower_scope(self) -> Scope | None:
        return Scope.of(NAME, "orders", ["read"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of(NAME, "orders", ["admin"])  # not an action configured for orders

    async def credential_works(
        self, issuer: X509Issuer, credential: Credential, scope: Scope
    ) -> bool:
        secret = credential.secret.reveal()
        leaf = leaf_of(secret)
        key = self.keys.get(cn_of(leaf))
        assert key is not None, "not a certificate minted by this test"
        assert same_key(leaf, key), "not a certificate of the workload's key"
        docs = await issuer.documents()
        verdict = await openssl_verify(
            self.workdir,
            secret,
            root_pem=self.root_pem,
            crl_pem=docs["crl.pem"][1],
            at=self.clock.now(),
        )
        if not verdict.ok and not re.search(r"certificate (has expired|revoked)", verdict.output):
            pytest.fail(f"openssl verify failed for an unexpected reason: {verdict.output}")
        return verdict.ok

    async def credential_allows(
        self, issuer: X509Issuer, credential: Credential, action: str
    ) -> bool | None:
        if not await self.credential_works(issuer, credential, self.scope()):
            return False
        seen = await scope_via_openssl(leaf_of(credential.secret.reveal()))
        return seen is not None and seen.resource == "orders" and action in seen.actions

    def outage(self, issuer: X509Issuer) -> Any:
        return cut_off(self.redis)

    # -- more, for both CAs ----------------------------------------------------------------

    async def test_openssl_shows_the_certificate_profile(
        self, issuer: X509Issuer, clock: FakeClock
    ) -> None:
        self._begin(clock)
        request = msgspec.structs.replace(self.request(issuer), principal=PRINCIPAL)
        credential = await issuer.mint(request)
        leaf_pem = split_pem(credential.secret.reveal())[0]
        code, text = await openssl("x509", "-text", "-noout", stdin=leaf_pem)
        assert code == 0, text
        assert f"Subject: CN = {request.lease_id}" in text
        assert re.search(r"X509v3 Basic Constraints: critical\s+CA:FALSE", text)
        assert re.search(r"X509v3 Key Usage: critical\s+Digital Signature\n", text)
        assert re.search(r"X509v3 Extended Key Usage: ?\s+TLS Web Client Authentication\n", text)
        assert re.search(rf"X509v3 Subject Alternative Name: ?\s+URI:{PRINCIPAL_SPIFFE}\n", text)
        assert f"URI:{BROKER}/v1/issuers/{NAME}/crl.der" in text  # CRL distribution point
        assert "2.25.277442576181544816286402157184590962087" in text  # the scope extension
        serial = credential.handle["serial"]
        assert (
            int(serial, 16)
            == int(
                hashlib.sha256(
                    b"jit-broker x509 serial\x00" + request.lease_id.encode()
                ).hexdigest()[:32],
                16,
            )
            >> 1
        ), "the serial is derived from the lease id as documented"
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        assert leaf.serial_number == int(serial, 16)
        assert leaf.not_valid_before_utc == request.issued_at - timedelta(seconds=30)
        assert leaf.not_valid_after_utc == credential.expires_at == request.not_after
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert spiffe_of(leaf) == [PRINCIPAL_SPIFFE]
        seen = await scope_via_openssl(leaf)  # decoded by openssl, not by the issuer's code
        assert seen is not None
        assert (seen.resource, seen.actions) == ("orders", ("read", "write"))
        assert (seen.lease_id, seen.task_id) == (request.lease_id, request.task_id)
        assert read_scope(leaf) == CertificateScope(
            resource="orders",
            actions=("read", "write"),
            lease_id=request.lease_id,
            task_id=request.task_id,
        )
        assert credential.metadata == {
            "serial": serial,
            "spiffe_id": PRINCIPAL_SPIFFE,
            "subject": f"CN={request.lease_id}",
            "not_before": (request.issued_at - timedelta(seconds=30)).isoformat(),
            "not_after": request.not_after.isoformat(),
        }
        assert credential.handle == {"serial": serial}
        assert credential.token_type == "x509-certificate"

    async def test_a_crl_lists_exactly_the_revoked_serials(
        self, issuer: X509Issuer, clock: FakeClock
    ) -> None:
        self._begin(clock)
        request, credential = await self.mint(issuer)
        _, other = await self.mint(issuer)
        await self.revoke(issuer, lease_for(request, credential))
        crl_pem = (await issuer.documents())["crl.pem"][1]
        code, text = await openssl("crl", "-text", "-noout", stdin=crl_pem)
        assert code == 0, text
        assert f"Serial Number: {openssl_serial(credential.handle['serial'])}\n" in text
        assert openssl_serial(other.handle["serial"]) not in text
        crl = x509.load_pem_x509_crl(crl_pem)
        assert crl.is_signature_valid(issuer.ca.public_key())  # type: ignore[arg-type]
        assert crl.next_update_utc == clock.now() + timedelta(minutes=10)


class TestX509ConformanceECPublicKey(_X509Kit):
    """An ECDSA P-256 root signs directly; the workload sends a PEM public key."""

    key_kind = "ec"
    param = "public_key"
    make_ca = staticmethod(ec_ca)


class TestX509ConformanceRSAChainCSR(_X509Kit):
    """An RSA intermediate under an RSA root signs; the workload sends an Ed25519 CSR; the
    client presents the intermediate with its leaf."""

    key_kind = "ed25519"
    param = "csr"
    make_ca = staticmethod(rsa_chain_ca)

    async def test_the_secret_holds_the_leaf_and_the_intermediate_but_not_the_root(
        self, issuer: X509Issuer, clock: FakeClock
    ) -> None:
        self._begin(clock)
        _, credential = await self.mint(issuer)
        certs = [x509.load_pem_x509_certificate(c) for c in split_pem(credential.secret.reveal())]
        ca = rsa_chain_ca()
        assert [c.subject for c in certs[1:]] == [ca.cert.subject]
        assert certs[0].issuer == ca.cert.subject
        docs = await issuer.documents()
        published = [x509.load_pem_x509_certificate(c) for c in split_pem(docs["ca.pem"][1])]
        assert published == [ca.cert, ca.root]


# -- a real mTLS server ----------------------------------------------------------------------


@dataclass
class TLSSetup:
    issuer: X509Issuer
    server: MTLSServer
    files: tuple[Path, Path]
    prefix: str
    redis: aioredis.Redis

    async def mint(
        self,
        key: PrivateKeyTypes,
        *,
        actions: tuple[str, ...] = ("read",),
        resource: str = "orders",
        ttl: timedelta = timedelta(minutes=5),
        param: str = "public_key",
        issuer: X509Issuer | None = None,
    ) -> tuple[MintRequest, Credential]:
        issuer = issuer or self.issuer
        scope = Scope.of(issuer.name, resource, actions)
        issuer.check_scope(scope)
        request = with_key(
            mint_request(scope, now=issuer._clock.now(), ttl=ttl, principal=PRINCIPAL), key, param
        )
        return request, await issuer.mint(request)

    async def reload_crl(self) -> None:
        """What a relying party does: fetch the CRL from the broker, reload the TLS context."""
        self.server.set_crl((await self.issuer.documents())["crl.pem"][1])


@pytest.fixture
async def tls(
    tmp_path: Path, key_prefix: str, real_redis: aioredis.Redis
) -> AsyncIterator[TLSSetup]:
    files = ec_ca().write(tmp_path / "ca")
    prefix = f"{key_prefix}:issuer:{NAME}"
    issuer = make_issuer(SystemClock(), issuer_config(files), redis=real_redis, prefix=prefix)
    ca_pem = (await issuer.documents())["ca.pem"][1]  # what the service operator installs
    server = MTLSServer(tmp_path / "server", ca_pem, resource="orders")
    setup = TLSSetup(issuer=issuer, server=server, files=files, prefix=prefix, redis=real_redis)
    await setup.reload_crl()
    yield setup
    server.close()
    await issuer.aclose()


@pytest.mark.parametrize(
    ("kind", "param"),
    [("ec", "public_key"), ("ed25519", "csr"), ("rsa", "csr"), ("rsa", "public_key")],
)
async def test_a_tls_server_accepts_the_minted_certificate(
    tls: TLSSetup, kind: KeyKind, param: str
) -> None:
    key = new_key(kind)
    request, credential = await tls.mint(key, param=param, actions=("read", "write"))
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "write")
    assert outcome.handshake, outcome.reason
    assert outcome.authorized
    assert outcome.client_answer == "ok"
    assert outcome.spiffe_ids == [PRINCIPAL_SPIFFE]
    assert outcome.scope is not None
    assert outcome.scope.lease_id == request.lease_id


async def test_the_server_refuses_an_action_outside_the_certificates_scope(tls: TLSSetup) -> None:
    key = new_key("ec")
    _, credential = await tls.mint(key, actions=("read",))
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "write")
    assert outcome.handshake  # a valid certificate of the CA ...
    assert not outcome.authorized
    assert outcome.client_answer == "denied"


async def test_a_certificate_for_another_service_is_refused_by_this_one(tls: TLSSetup) -> None:
    key = new_key("ec")
    _, credential = await tls.mint(key, resource="billing", actions=("connect",))
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "connect")
    assert outcome.handshake
    assert outcome.scope is not None
    assert outcome.scope.resource == "billing"
    assert not outcome.authorized
    assert outcome.client_answer == "denied"


async def test_a_certificate_with_someone_elses_key_does_not_connect(tls: TLSSetup) -> None:
    key, stranger = new_key("ec"), new_key("ec")
    _, credential = await tls.mint(key)
    # The client cannot even load a certificate with a key that does not match it.
    with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
        await tls.server.attempt(credential.secret.reveal(), stranger, "read")


async def test_an_expired_certificate_is_refused(tls: TLSSetup) -> None:
    # The same CA, an issuer whose clock is two hours behind: a certificate minted "then" for
    # ten minutes expired long ago in real time.
    past = make_issuer(
        FakeClock(datetime.now(UTC) - timedelta(hours=2)),
        issuer_config(tls.files),
        redis=tls.redis,
        prefix=tls.prefix,
    )
    key = new_key("ec")
    _, credential = await tls.mint(key, ttl=timedelta(minutes=10), issuer=past)
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert not outcome.handshake
    assert outcome.reason == "certificate has expired"
    assert outcome.client_answer is None


async def test_a_certificate_stops_working_when_its_not_after_passes(tls: TLSSetup) -> None:
    key = new_key("ec")
    _, credential = await tls.mint(key, ttl=timedelta(seconds=2))
    first = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert first.handshake, first.reason
    assert first.authorized
    # The one real wait in this module: past not_after (whole seconds) in real time.
    wait = (credential.expires_at - datetime.now(UTC)).total_seconds() + 1.2
    await asyncio.sleep(max(wait, 0))
    await tls.reload_crl()
    later = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert not later.handshake
    assert later.reason == "certificate has expired"


async def test_a_certificate_from_another_ca_is_refused(tls: TLSSetup, tmp_path: Path) -> None:
    stranger = make_issuer(
        SystemClock(), issuer_config(other_ca().write(tmp_path / "other")), name=NAME
    )
    key = new_key("ec")
    _, credential = await tls.mint(key, issuer=stranger)
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert not outcome.handshake
    assert outcome.reason in (
        "unable to get local issuer certificate",
        "unable to verify the first certificate",
    )


async def test_a_dev_mode_ca_is_not_trusted_by_a_server_of_the_configured_ca(
    tls: TLSSetup, fake_redis: aioredis.Redis
) -> None:
    dev = make_issuer(
        SystemClock(), issuer_config(None), dev=True, redis=fake_redis, prefix="jit:issuer:dev"
    )
    key = new_key("ec")
    _, credential = await tls.mint(key, issuer=dev)
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert not outcome.handshake
    # ... but a server that installs the dev CA from documents() accepts it.
    dev_ca = (await dev.documents())["ca.pem"][1]
    dev_server = MTLSServer(tls.server.workdir / "dev", dev_ca, resource="orders")
    try:
        dev_server.set_crl((await dev.documents())["crl.pem"][1])
        accepted = await dev_server.attempt(credential.secret.reveal(), key, "read")
        assert accepted.handshake, accepted.reason
        assert accepted.authorized
    finally:
        dev_server.close()


async def test_a_revoked_certificate_is_refused_once_the_server_reloads_the_crl(
    tls: TLSSetup,
) -> None:
    key, other_key = new_key("ec"), new_key("ec")
    request, credential = await tls.mint(key)
    _, other = await tls.mint(other_key)
    assert (await tls.server.attempt(credential.secret.reveal(), key, "read")).handshake
    await tls.issuer.revoke(lease_for(request, credential))
    await tls.reload_crl()
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert not outcome.handshake
    assert outcome.reason == "certificate revoked"
    still = await tls.server.attempt(other.secret.reveal(), other_key, "read")
    assert still.handshake, "revoking one certificate stopped another"
    assert still.authorized


async def test_revoke_with_an_empty_handle_after_a_crash_revokes_at_the_server(
    tls: TLSSetup,
) -> None:
    key = new_key("ec")
    request, credential = await tls.mint(key)
    await tls.issuer.revoke(lease_for(request, handle={}))  # the broker lost the handle
    await tls.reload_crl()
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert outcome.reason == "certificate revoked"


async def test_a_revocation_on_one_replica_is_in_every_replicas_crl(tls: TLSSetup) -> None:
    replica = make_issuer(
        SystemClock(), issuer_config(tls.files), redis=tls.redis, prefix=tls.prefix
    )
    key = new_key("ec")
    request, credential = await tls.mint(key, issuer=replica)
    await replica.revoke(lease_for(request, credential))
    await tls.reload_crl()  # from the *other* replica
    outcome = await tls.server.attempt(credential.secret.reveal(), key, "read")
    assert outcome.reason == "certificate revoked"
    crl = await tls.issuer.current_crl()
    revoked = crl.get_revoked_certificate_by_serial_number(int(credential.handle["serial"], 16))
    assert revoked is not None


async def test_the_state_keys_are_hash_tagged_and_expire(tls: TLSSetup) -> None:
    key = new_key("ec")
    request, credential = await tls.mint(key, ttl=timedelta(minutes=5))
    await tls.issuer.revoke(lease_for(request, credential))
    keys = sorted(k.decode() for k in await tls.redis.keys(f"{tls.prefix}:*"))
    tag = "{x509:" + NAME + "}"
    assert keys == [f"{tls.prefix}:{tag}:{n}" for n in ("issued", "revoked", "revoked_at")]
    for k in keys:
        ttl_ms = await tls.redis.pttl(k)
        # expires after the certificate plus the 10 minute grace, not before, not never
        assert 5 * 60_000 < ttl_ms <= 15 * 60_000 + 1000, (k, ttl_ms)
    # nothing secret is stored: only serials and times
    stored = await tls.redis.zrange(keys[1], 0, -1, withscores=True)
    assert [(m.decode(), int(score)) for m, score in stored] == [
        (credential.handle["serial"], int(request.not_after.timestamp() * 1000))
    ]


async def test_the_redis_state_prunes_expired_serials_atomically(
    real_redis: aioredis.Redis, key_prefix: str
) -> None:
    state = RedisSerialState(
        real_redis, prefix=f"{key_prefix}:s", tag="x509:t", grace_ms=1000, label="t"
    )
    for i in range(3):
        await state.revoke(f"{i:032x}", 10_000 + i, 5_000)
    await state.revoke("0" * 31 + "1", 10_001, 7_000)  # again: keeps the first revocation time
    assert await state.claim("ab" * 16, 20_000, 5_000) == "ok"
    assert await state.claim("ab" * 16, 20_000, 5_000) == "duplicate"
    assert await state.claim("0" * 32, 20_000, 5_000) == "revoked"
    assert await state.revoked(6_000) == [(f"{i:032x}", 5_000) for i in range(3)]
    assert await state.revoked(11_001) == [(f"{i:032x}", 5_000) for i in (1, 2)]
    await state.revoke("cd" * 16, 1_000, 11_001)  # long expired: not added
    assert await state.revoked(11_001) == [(f"{i:032x}", 5_000) for i in (1, 2)]
    assert await state.revoked(50_000) == []
    assert await real_redis.keys(f"{key_prefix}:s:*") == []  # nothing left behind


async def test_documents_fail_closed_when_redis_is_down(tls: TLSSetup) -> None:
    client = await redis_client()
    try:
        issuer = make_issuer(
            SystemClock(), issuer_config(tls.files), redis=client, prefix=tls.prefix
        )
        async with cut_off(client):
            with pytest.raises(IssuerUnavailable):
                await issuer.documents()  # a CRL without the revoked serials would be a lie
        assert "crl.der" in await issuer.documents()
    finally:
        await client.aclose()


# -- the issuer without Redis, on a FakeClock ------------------------------------------------


@pytest.fixture
def ec_files(tmp_path: Path) -> tuple[Path, Path]:
    return ec_ca().write(tmp_path / "ca")


def memory_issuer(clock: FakeClock, files: tuple[Path, Path], **overrides: Any) -> X509Issuer:
    return make_issuer(clock, issuer_config(files, **overrides))


def ec_request(
    clock: FakeClock, *, ttl: float = 300, scope: Scope | None = None, **params: str
) -> MintRequest:
    request = mint_request(
        scope or Scope.of(NAME, "orders", ["read"]), now=clock.now(), ttl=timedelta(seconds=ttl)
    )
    return msgspec.structs.replace(
        request, params=params or {"public_key": public_pem(new_key("ec"))}
    )


def test_the_entry_point_and_the_registry_build_the_issuer(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    (ep,) = [e for e in entry_points(group="jit_broker.issuers") if e.name == "x509"]
    assert ep.load() is X509Issuer
    issuers = load_issuers(
        {"mtls": IssuerInstanceSettings(type="x509", config=issuer_config(ec_files))},
        clock=clock,
        broker_url=BROKER,
    )
    issuer = issuers["mtls"]
    assert isinstance(issuer, X509Issuer)
    assert isinstance(issuer, Issuer)
    assert isinstance(issuer, PublishesDocuments)
    assert issuer.capabilities.revocable


async def test_a_lease_gets_one_certificate_only(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    issuer = memory_issuer(clock, ec_files)
    request = ec_request(clock)
    await issuer.mint(request)
    with pytest.raises(Conflict, match="already has a certificate"):
        await issuer.mint(request)  # a second certificate would repeat the serial


async def test_a_lease_revoked_before_its_mint_gets_no_certificate(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    issuer = memory_issuer(clock, ec_files)
    request = ec_request(clock)
    await issuer.revoke(lease_for(request))  # the reaper got there first
    with pytest.raises(Conflict, match="revoked before mint"):
        await issuer.mint(request)


async def test_a_certificate_never_outlives_its_ca(clock: FakeClock, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    short = make_cert(
        subject="short-lived CA",
        key=key,
        issuer=None,
        ca=True,
        not_before=clock.now() - timedelta(days=1),
        not_after=clock.now() + timedelta(minutes=2),
    )
    files = FixtureCA(key=key, cert=short).write(tmp_path / "short")
    issuer = memory_issuer(clock, files)
    credential = await issuer.mint(ec_request(clock, ttl=600))
    assert credential.expires_at == short.not_valid_after_utc
    assert leaf_of(credential.secret.reveal()).not_valid_after_utc == short.not_valid_after_utc
    clock.advance(timedelta(minutes=3))
    with pytest.raises(IssuerUnavailable, match="CA certificate is not valid"):
        await issuer.check_health()
    with pytest.raises(IssuerUnavailable):
        await issuer.mint(ec_request(clock))


async def test_not_after_is_rounded_down_to_the_second(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    clock.advance(timedelta(milliseconds=1700))
    issuer = memory_issuer(clock, ec_files)
    request = ec_request(clock, ttl=60)
    credential = await issuer.mint(request)
    assert credential.expires_at == request.not_after.replace(microsecond=0) < request.not_after


async def test_without_a_crl_the_issuer_is_expiry_only(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    issuer = memory_issuer(clock, ec_files, crl=False)
    assert issuer.capabilities.revocable is False
    request = ec_request(clock)
    credential = await issuer.mint(request)
    await issuer.revoke(lease_for(request, credential))  # nothing to do, no error
    assert sorted(await issuer.documents()) == ["ca.pem"]
    assert x509.CRLDistributionPoints not in {
        type(e.value) for e in leaf_of(credential.secret.reveal()).extensions
    }


async def test_revoked_serials_are_pruned_after_expiry(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    issuer = memory_issuer(clock, ec_files)
    request = ec_request(clock, ttl=60)
    credential = await issuer.mint(request)
    await issuer.revoke(lease_for(request, credential))
    assert len(list(await issuer.current_crl())) == 1
    clock.advance(timedelta(seconds=60) + timedelta(minutes=10) - timedelta(seconds=1))
    assert len(list(await issuer.current_crl())) == 1  # still within the grace
    clock.advance(timedelta(seconds=2))
    assert len(list(await issuer.current_crl())) == 0
    await issuer.revoke(lease_for(request, credential))  # long expired: nothing to add
    assert len(list(await issuer.current_crl())) == 0


async def test_the_crl_is_reused_while_nothing_changes(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    issuer = memory_issuer(clock, ec_files)
    first = (await issuer.documents())["crl.der"][1]
    clock.advance(5)
    assert (await issuer.documents())["crl.der"][1] == first
    request = ec_request(clock)
    await issuer.revoke(lease_for(request))
    changed = x509.load_der_x509_crl((await issuer.documents())["crl.der"][1])
    assert len(list(changed)) == 1
    assert changed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > (
        x509.load_der_x509_crl(first)
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
    )
    clock.advance(31)  # past the reuse window: re-signed with a new number, same entries
    resigned = x509.load_der_x509_crl((await issuer.documents())["crl.der"][1])
    assert [(r.serial_number, r.revocation_date_utc) for r in resigned] == [
        (r.serial_number, r.revocation_date_utc) for r in changed
    ]
    assert resigned.last_update_utc > changed.last_update_utc


def test_repr_shows_no_key(clock: FakeClock, ec_files: tuple[Path, Path]) -> None:
    issuer = memory_issuer(clock, ec_files)
    key_pem = ec_files[1].read_text()
    body = "".join(key_pem.splitlines()[1:-1])
    text = repr(issuer) + repr(issuer._ca) + str(vars(issuer))
    for chunk in (body[i : i + 16] for i in range(0, len(body) - 16, 16)):
        assert chunk not in text
    assert "jit test EC CA" in repr(issuer)


# -- params and key strength -------------------------------------------------------------------


def _tampered_csr() -> str:
    pem = csr_pem(ed25519.Ed25519PrivateKey.generate())
    csr = x509.load_pem_x509_csr(pem.encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the Ed25519 signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def _pem(key: Any) -> str:
    return public_pem(key)


BAD_PARAMS: list[tuple[str, Callable[[], dict[str, str]], str]] = [
    ("no key at all", lambda: {}, "exactly one"),
    (
        "both a key and a csr",
        lambda: {"public_key": _pem(new_key("ec")), "csr": csr_pem(new_key("ec"))},
        "exactly one",
    ),
    (
        "an unknown param",
        lambda: {"public_key": _pem(new_key("ec")), "source_address": "10.0.0.1"},
        "unknown params",
    ),
    ("garbage as a key", lambda: {"public_key": "hello"}, "PEM SubjectPublicKeyInfo"),
    (
        "a broken PEM key",
        lambda: {"public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"},
        "not a valid key",
    ),
    (
        "a PKCS#1 RSA key instead of SubjectPublicKeyInfo",
        lambda: {
            "public_key": rsa_2048()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
            .decode()
        },
        "PEM SubjectPublicKeyInfo",
    ),
    ("garbage as a csr", lambda: {"csr": "hello"}, "not a PEM CSR"),
    ("a csr with a bad signature", lambda: {"csr": _tampered_csr()}, "invalid signature"),
    (
        "a 1024-bit RSA key",
        lambda: {"public_key": _pem(rsa.generate_private_key(65537, 1024))},
        "too weak",
    ),
    (
        "a 1024-bit RSA csr",
        lambda: {"csr": csr_pem(rsa.generate_private_key(65537, 1024))},
        "too weak",
    ),
    ("a DSA key", lambda: {"public_key": _pem(dsa.generate_private_key(1024))}, "not accepted"),
    (
        "a secp256k1 key",
        lambda: {"public_key": _pem(ec.generate_private_key(ec.SECP256K1()))},
        "secp256k1 is not accepted",
    ),
    (
        "an X25519 key (cannot sign)",
        lambda: {"public_key": _pem(x25519.X25519PrivateKey.generate())},
        "not accepted",
    ),
    ("an oversized param", lambda: {"public_key": "A" * 20000}, "1-16384"),
]


@pytest.mark.parametrize(
    ("params", "message"),
    [pytest.param(p, m, id=i) for i, p, m in BAD_PARAMS],
)
async def test_bad_params_are_refused(
    clock: FakeClock,
    ec_files: tuple[Path, Path],
    params: Callable[[], dict[str, str]],
    message: str,
) -> None:
    issuer = memory_issuer(clock, ec_files)
    request = msgspec.structs.replace(ec_request(clock), params=params())
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        await issuer.mint(request)
    assert len(list(await issuer.current_crl())) == 0


async def test_a_stricter_min_rsa_bits_refuses_2048(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    issuer = memory_issuer(clock, ec_files, min_rsa_bits=3072)
    with pytest.raises(InvalidRequest, match="at least 3072"):
        await issuer.mint(ec_request(clock, public_key=public_pem(rsa_2048())))


async def test_the_csr_subject_and_extensions_are_ignored(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://evil/admin")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    issuer = memory_issuer(clock, ec_files)
    request = ec_request(clock, csr=csr)
    leaf = leaf_of((await issuer.mint(request)).secret.reveal())
    assert cn_of(leaf) == request.lease_id
    assert spiffe_of(leaf) == ["spiffe://prod.example/conformance/workload-1"]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert same_key(leaf, key)


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (Scope.of(NAME, "payments", ["connect"]), "not a service configured"),
        (Scope.of(NAME, "orders", ["delete"]), "not configured for 'orders'"),
        (Scope.of(NAME, "billing", ["read"]), "not configured for 'billing'"),
        (Scope.of(NAME, "orders", []), "at least one action"),
        (Scope.of("someone-else", "orders", ["read"]), "not 'x509-test'"),
    ],
)
def test_check_scope_refuses_what_is_not_configured(
    clock: FakeClock, ec_files: tuple[Path, Path], scope: Scope, message: str
) -> None:
    issuer = memory_issuer(clock, ec_files)
    with pytest.raises(ScopeNotSupported, match=re.escape(message)):
        issuer.check_scope(scope)


def test_a_plain_list_of_resources_allows_connect(
    clock: FakeClock, ec_files: tuple[Path, Path]
) -> None:
    issuer = memory_issuer(clock, ec_files, resources=["orders", "https://billing.internal:8443"])
    issuer.check_scope(Scope.of(NAME, "https://billing.internal:8443", ["connect"]))
    with pytest.raises(ScopeNotSupported):
        issuer.check_scope(Scope.of(NAME, "orders", ["read"]))


# -- the SPIFFE mapping and the scope extension ------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "subject", "expected"),
    [
        ("dev", "alice", "spiffe://prod.example/dev/alice"),
        ("github", PRINCIPAL.subject, PRINCIPAL_SPIFFE),
        (
            "k8s",
            "system:serviceaccount:ns:sa",
            "spiffe://prod.example/k8s/system_3Aserviceaccount_3Ans_3Asa",
        ),
        ("dev", "a_b", "spiffe://prod.example/dev/a_5Fb"),
        ("dev", "a.b-c", "spiffe://prod.example/dev/a.b-c"),
        ("dev", ".", "spiffe://prod.example/dev/_2E"),
        ("dev", "..", "spiffe://prod.example/dev/_2E_2E"),
        ("dev", "é", "spiffe://prod.example/dev/_C3_A9"),
        ("my_idp", "x y", "spiffe://prod.example/my_5Fidp/x_20y"),
    ],
)
def test_the_spiffe_id_of_a_principal(issuer: str, subject: str, expected: str) -> None:
    assert spiffe_id(TRUST_DOMAIN, issuer, subject) == expected


_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_spiffe_segments_are_valid_and_the_mapping_is_injective(a: str, b: str) -> None:
    for text in (a, b):
        segment = escape_segment(text)
        assert _SPIFFE_SEGMENT.match(segment)
        assert segment not in (".", "..")
        assert unescape_segment(segment) == text
    if a != b:
        assert escape_segment(a) != escape_segment(b)
        assert spiffe_id(TRUST_DOMAIN, a, b) != spiffe_id(TRUST_DOMAIN, b, a)


def test_an_empty_subject_or_an_oversized_id_has_no_spiffe_id() -> None:
    with pytest.raises(ValueError, match="empty"):
        spiffe_id(TRUST_DOMAIN, "dev", "")
    with pytest.raises(ValueError, match="2048"):
        spiffe_id(TRUST_DOMAIN, "dev", "é" * 400)


_LABEL = st.text(alphabet=string.ascii_letters + string.digits + ":/._-é", min_size=1, max_size=300)


@settings(max_examples=100, deadline=None)
@given(_LABEL, st.lists(_LABEL, min_size=1, max_size=5), _LABEL, _LABEL)
def test_the_scope_extension_round_trips(
    resource: str, actions: list[str], lease_id: str, task_id: str
) -> None:
    scope = CertificateScope(
        resource=resource, actions=tuple(actions), lease_id=lease_id, task_id=task_id
    )
    assert decode_scope(encode_scope(scope)) == scope


def test_the_scope_extension_decoder_is_strict() -> None:
    der = encode_scope(CertificateScope(resource="r", actions=("a",), lease_id="l", task_id="t"))
    for bad in (der + b"\x00", der[:-1], b"\x31" + der[1:], der[:2] + b"\x0d" + der[3:]):
        with pytest.raises(ValueError, match=r"DER|trailing|unexpected"):
            decode_scope(bad)


# -- strict configuration ----------------------------------------------------------------------


def _ca_variant(tmp_path: Path, **kwargs: Any) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert(
        subject="variant",
        key=key,
        issuer=None,
        ca=kwargs.pop("ca", True),
        not_before=kwargs.pop("not_before", datetime(2020, 1, 1, tzinfo=UTC)),
        not_after=kwargs.pop("not_after", datetime(2040, 1, 1, tzinfo=UTC)),
        **kwargs,
    )
    return FixtureCA(key=key, cert=cert).write(tmp_path / "variant")


def _no_crl_sign() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_with_key(tmp_path: Path, key: Any, **kwargs: Any) -> tuple[Path, Path]:
    """A CA certificate for ``key`` (any type the CA checks must judge), signed by itself."""
    cert = make_cert(
        subject="keyed",
        key=key,
        issuer=None,
        ca=True,
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime(2040, 1, 1, tzinfo=UTC),
        **kwargs,
    )
    return FixtureCA(key=key, cert=cert).write(tmp_path / "keyed")


def _no_cert_sign() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


CONFIG_ERRORS: list[tuple[str, Callable[[Path, tuple[Path, Path]], dict[str, Any]], str]] = [
    ("an unknown key", lambda t, f: issuer_config(f, ttl="5m"), "ttl: unknown key"),
    (
        "no trust domain",
        lambda t, f: {k: v for k, v in issuer_config(f).items() if k != "trust_domain"},
        "trust_domain",
    ),
    (
        "an uppercase trust domain",
        lambda t, f: issuer_config(f, trust_domain="Prod.Example"),
        "trust_domain: must be",
    ),
    ("no resources", lambda t, f: issuer_config(f, resources={}), "resources: name at least one"),
    (
        "an action with a space",
        lambda t, f: issuer_config(f, resources={"orders": {"actions": ["read all"]}}),
        "without spaces",
    ),
    (
        "an empty action list",
        lambda t, f: issuer_config(f, resources={"orders": {"actions": []}}),
        "actions must not be empty",
    ),
    (
        "an unknown resource key",
        lambda t, f: issuer_config(f, resources={"orders": {"verbs": ["read"]}}),
        "verbs: unknown key",
    ),
    ("a bad duration", lambda t, f: issuer_config(f, max_ttl="forever"), "max_ttl: not a duration"),
    (
        "default_ttl over max_ttl",
        lambda t, f: issuer_config(f, max_ttl="10m", default_ttl="1h"),
        "default_ttl must not exceed max_ttl",
    ),
    ("a huge skew", lambda t, f: issuer_config(f, not_before_skew="2h"), "not_before_skew"),
    ("weak min_rsa_bits", lambda t, f: issuer_config(f, min_rsa_bits=1024), "min_rsa_bits"),
    (
        "no CA files outside dev",
        lambda t, f: issuer_config(None),
        "ca_cert_file and ca_key_file: required",
    ),
    (
        "only the CA certificate",
        lambda t, f: {**issuer_config(None), "ca_cert_file": str(f[0])},
        "ca_key_file: required",
    ),
    (
        "a missing CA file",
        lambda t, f: issuer_config((t / "nope.pem", f[1])),
        "ca_cert_file: cannot read it",
    ),
    ("a CA file that is no cert", lambda t, f: issuer_config((f[1], f[1])), "not a PEM cert"),
    ("a key file that is no key", lambda t, f: issuer_config((f[0], f[0])), "not a PEM private"),
    (
        "a key of another CA",
        lambda t, f: issuer_config((f[0], other_ca().write(t / "o")[1])),
        "does not hold the private key",
    ),
    (
        "a certificate that is not a CA",
        lambda t, f: issuer_config(_ca_variant(t, ca=False)),
        "not a CA",
    ),
    (
        "a CA without BasicConstraints",
        lambda t, f: issuer_config(_ca_variant(t, basic_constraints=False)),
        "no BasicConstraints",
    ),
    (
        "a CA that may not sign CRLs",
        lambda t, f: issuer_config(_ca_variant(t, key_usage=_no_crl_sign())),
        "lacks cRLSign",
    ),
    (
        "an RSA CA key under 2048 bits",
        lambda t, f: issuer_config(_ca_with_key(t, rsa.generate_private_key(65537, 1024))),
        "the CA key is RSA 1024: at least 2048 bits are needed",
    ),
    (
        "a CA key on a curve other than P-256/384/521",
        lambda t, f: issuer_config(_ca_with_key(t, ec.generate_private_key(ec.SECP256K1()))),
        "the CA key's curve secp256k1 is not P-256, P-384 or P-521",
    ),
    (
        "a DSA CA key",
        lambda t, f: issuer_config(_ca_with_key(t, dsa.generate_private_key(2048))),
        "the CA key must be RSA (>= 2048 bits), ECDSA P-256/P-384/P-521 or Ed25519",
    ),
    (
        "a CA that may not sign certificates",
        lambda t, f: issuer_config(_ca_variant(t, key_usage=_no_cert_sign())),
        "KeyUsage lacks keyCertSign",
    ),
    (
        "an expired CA",
        lambda t, f: issuer_config(_ca_variant(t, not_after=datetime(2025, 1, 1, tzinfo=UTC))),
        "not valid now",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [pytest.param(b, m, id=i) for i, b, m in CONFIG_ERRORS]
)
def test_bad_configuration_stops_start_up(
    clock: FakeClock,
    tmp_path: Path,
    ec_files: tuple[Path, Path],
    build: Callable[[Path, tuple[Path, Path]], dict[str, Any]],
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        make_issuer(clock, build(tmp_path, ec_files))
    assert "x509 issuer 'x509-test'" in str(info.value)


def test_an_encrypted_ca_key_is_refused_without_echoing_it(
    clock: FakeClock, tmp_path: Path
) -> None:
    ca = ec_ca()
    cert_file, _ = ca.write(tmp_path / "ca")
    key_file = tmp_path / "ca" / "encrypted.pem"
    key_file.write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"hunter2-passphrase"),
        )
    )
    with pytest.raises(ConfigError, match="encrypted") as info:
        make_issuer(clock, issuer_config((cert_file, key_file)))
    assert "PRIVATE KEY" not in str(info.value)


def test_a_ca_without_crl_sign_is_fine_when_the_crl_is_off(
    clock: FakeClock, tmp_path: Path
) -> None:
    files = _ca_variant(tmp_path, key_usage=_no_crl_sign())
    assert make_issuer(clock, issuer_config(files, crl=False)).capabilities.revocable is False


def test_durations_and_capabilities(clock: FakeClock, ec_files: tuple[Path, Path]) -> None:
    issuer = memory_issuer(clock, ec_files, max_ttl="1d", default_ttl="1h30m", crl_validity=300)
    caps = issuer.capabilities
    assert (caps.max_ttl, caps.default_ttl, caps.min_ttl) == (
        timedelta(days=1),
        timedelta(hours=1, minutes=30),
        timedelta(seconds=1),
    )
    assert caps.revocable
    assert not caps.renewable


async def test_dev_mode_generates_a_ca_in_memory(clock: FakeClock, tmp_path: Path) -> None:
    issuer = make_issuer(clock, issuer_config(None), dev=True)
    ca = x509.load_pem_x509_certificate((await issuer.documents())["ca.pem"][1])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    credential = await issuer.mint(ec_request(clock))
    verdict = await openssl_verify(
        tmp_path,
        credential.secret.reveal(),
        root_pem=ca.public_bytes(serialization.Encoding.PEM),
        crl_pem=(await issuer.documents())["crl.pem"][1],
        at=clock.now(),
    )
    assert verdict.ok, verdict.output


async def test_a_wrong_ca_root_does_not_verify(tmp_path: Path) -> None:
    # Sanity check of the helpers the conformance kit relies on: openssl refuses a foreign root.
    root = make_root("unrelated", ec.generate_private_key(ec.SECP256R1()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert(
        subject="leaf",
        key=leaf_key,
        issuer=root,
        ca=False,
        not_before=datetime.now(UTC) - timedelta(minutes=1),
        not_after=datetime.now(UTC) + timedelta(minutes=5),
        extra=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    )
    verdict = await openssl_verify(
        tmp_path,
        leaf.public_bytes(serialization.Encoding.PEM).decode(),
        root_pem=other_ca().cert.public_bytes(serialization.Encoding.PEM),
        crl_pem=None,
        at=None,
    )
    assert not verdict.ok


# -- through the broker's HTTP API -------------------------------------------------------------

MTLS_POLICY = """\
owner: platform
workloads:
  - issuer: dev
grants:
  - name: orders-mtls
    issuer: mtls
    resource: orders
    actions: [read, write]
    max_ttl: 1h
    default_ttl: 15m
    approval: none
"""


async def test_the_broker_api_mints_publishes_and_revokes_a_certificate(
    tmp_path: Path, key_prefix: str, real_redis: aioredis.Redis
) -> None:
    """A workload asks the broker over HTTP with its public key, connects to a real mTLS
    server with the certificate; after DELETE /v1/leases/<id> the server, having fetched the
    broker's CRL, refuses it."""
    base = "http://broker.test"
    clock = SystemClock()
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "mtls.yaml").write_text(MTLS_POLICY)
    settings = Settings(
        public_url=base,
        key_prefix=key_prefix,
        policy_dir=str(tmp_path / "policy"),
        issuers={
            "mtls": IssuerInstanceSettings(
                type="x509", config=issuer_config(ec_ca().write(tmp_path / "ca"))
            )
        },
    )
    dev = DevIdentityIssuer(f"{base}/dev/oidc", clock)
    broker = await build_broker(
        settings,
        clock=clock,
        redis=aioredis.Redis.from_url(REDIS_URL),
        dev=True,
        dev_identity=dev,
        dev_admin_key=Secret("a" * 43),
    )
    auth = {"Authorization": f"Bearer {dev.issue('ci-1')}"}
    transport = httpx.ASGITransport(app=create_app(broker, manage_lifecycle=False))
    server: MTLSServer | None = None
    try:
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            ca = await client.get("/v1/issuers/mtls/ca.pem")
            assert ca.status_code == 200
            assert ca.headers["content-type"].startswith("application/x-pem-file")
            server = MTLSServer(tmp_path / "server", ca.content, resource="orders")
            server.set_crl((await client.get("/v1/issuers/mtls/crl.pem")).content)
            key = new_key("ec")
            r = await client.post(
                "/v1/credentials",
                json={
                    "issuer": "mtls",
                    "resource": "orders",
                    "actions": ["write"],
                    "ttl": "10m",
                    "params": {"public_key": public_pem(key)},
                },
                headers=auth,
            )
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["credential"]["token_type"] == "x509-certificate"
            assert body["credential"]["metadata"]["spiffe_id"] == ("spiffe://prod.example/dev/ci-1")
            cert_pem = body["credential"]["secret"]
            ok = await server.attempt(cert_pem, key, "write")
            assert ok.authorized, ok.reason
            assert ok.spiffe_ids == ["spiffe://prod.example/dev/ci-1"]

            bad = await client.post(
                "/v1/credentials",
                json={
                    "issuer": "mtls",
                    "resource": "orders",
                    "actions": ["read"],
                    "params": {"public_key": "not a key"},
                },
                headers=auth,
            )
            assert bad.status_code == 400, bad.text

            gone = await client.delete(f"/v1/leases/{body['lease_id']}", headers=auth)
            assert gone.status_code == 200, gone.text
            crl = await client.get("/v1/issuers/mtls/crl.der")
            assert crl.headers["content-type"].startswith("application/pkix-crl")
            serial = int(body["credential"]["metadata"]["serial"], 16)
            assert x509.load_der_x509_crl(crl.content).get_revoked_certificate_by_serial_number(
                serial
            )
            server.set_crl((await client.get("/v1/issuers/mtls/crl.pem")).content)
            refused = await server.attempt(cert_pem, key, "write")
            assert refused.reason == "certificate revoked"
    finally:
        if server is not None:
            server.close()
        await broker.aclose()
