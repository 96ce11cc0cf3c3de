"""The ssh issuer: the conformance kit on the real Redis (KRL state), a real sshd that trusts
the broker's CA and reads its KRL, the real ssh and ssh-keygen clients, and strict config,
scope and params validation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import warnings
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from broker.clock import SystemClock
from broker.errors import ConfigError, InvalidRequest, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Issuer, IssuerContext, PublishesDocuments
from broker.testing import FakeClock, IssuerConformance, lease_for, mint_request
from broker.types import Credential, LeaseState, MintRequest, Principal, Scope
from issuers.ssh import SSHIssuer, serial_for
from issuers.ssh.krl import KRL_MAGIC, build_krl
from issuers.ssh.state import RETENTION_GRACE
from tests.issuers.ssh_support import (
    Sshd,
    TcpProxy,
    describe_certificate,
    generate_ca_file,
    krl_revokes,
    login_user,
    new_private_key,
    public_line,
    require_tools,
    ssh_keygen,
    write_private_key,
)

REDIS_URL = os.environ.get("JIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER = "https://broker.test"
HOST = "ssh://127.0.0.1"
SCOPE = Scope.of("ssh", HOST, ["login:backup", "login:deploy"])
RESOURCES: dict[str, Any] = {
    HOST: {"logins": {"deploy": ["deploy"], "backup": ["backup", "backup-ro"]}},
    "ssh://*.prod.test": {"logins": ["deploy"], "source_address": ["10.0.0.0/8"]},
    "ssh://db.prod.test": {
        "logins": ["dba"],
        "force_command": "echo forced-command",
        "extensions": ["permit-pty", "permit-port-forwarding"],
    },
}


def make_issuer(
    clock: Any,
    *,
    ca_key_file: Path | None,
    redis: Any = None,
    state_prefix: str = "",
    dev: bool = False,
    name: str = "ssh",
    **config: Any,
) -> SSHIssuer:
    config.setdefault("resources", RESOURCES)
    if ca_key_file is not None:
        config["ca_key_file"] = str(ca_key_file)
    return SSHIssuer(
        IssuerContext(
            name=name,
            config=config,
            clock=clock,
            broker_url=BROKER,
            dev=dev,
            redis=redis,
            state_prefix=state_prefix,
        )
    )


def with_params(request: MintRequest, **params: str) -> MintRequest:
    return msgspec.structs.replace(request, params=params)


def certificate_of(credential: Credential) -> SSHCertificate:
    cert = load_ssh_public_identity(credential.secret.reveal().encode())
    assert isinstance(cert, SSHCertificate)
    return cert


def redis_through(port: int) -> aioredis.Redis:
    """A client that fails fast: no retries, short timeouts (an outage must surface)."""
    return aioredis.Redis(
        host="127.0.0.1",
        port=port,
        db=int(urlsplit(REDIS_URL).path.lstrip("/") or 0),
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.fixture
def ca_key_file(tmp_path: Path) -> Path:
    return generate_ca_file(tmp_path / "ca", "ed25519")


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    url = urlsplit(REDIS_URL)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.close()


# -- the conformance kit, on the real Redis --------------------------------------------------


class TestSSHIssuerConformance(IssuerConformance[SSHIssuer]):
    """Revocation state lives in the real Redis, reached through a proxy that can cut it.
    ``credential_works`` checks the certificate like sshd does: the CA signature, the
    principals, the validity window at the kit's clock, and the KRL (with ``ssh-keygen -Q``)."""

    @pytest.fixture
    async def issuer(
        self,
        clock: FakeClock,
        real_redis: aioredis.Redis,
        key_prefix: str,
        redis_proxy: TcpProxy,
        ca_key_file: Path,
        tmp_path: Path,
    ) -> AsyncIterator[SSHIssuer]:
        require_tools()
        self.proxy = redis_proxy
        self.tmp = tmp_path
        client = redis_through(redis_proxy.port)
        issuer = make_issuer(
            clock,
            ca_key_file=ca_key_file,
            redis=client,
            state_prefix=f"{key_prefix}:issuer:ssh",
        )
        yield issuer
        await issuer.aclose()
        await client.aclose()

    def request(
        self,
        issuer: SSHIssuer,
        scope: Scope | None = None,
        *,
        ttl: timedelta | None = None,
        lease_id: str | None = None,
    ) -> MintRequest:
        """The kit's request plus the workload's fresh public key (its private half is never
        sent)."""
        request = super().request(issuer, scope, ttl=ttl, lease_id=lease_id)
        return with_params(request, public_key=public_line(new_private_key()))

    def scope(self) -> Scope:
        return SCOPE

    def narrower_scope(self) -> Scope | None:
        return Scope.of("ssh", HOST, ["login:deploy"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of("ssh", HOST, ["login:root"])

    async def credential_works(
        self, issuer: SSHIssuer, credential: Credential, scope: Scope
    ) -> bool:
        cert = certificate_of(credential)
        cert.verify_cert_signature()  # raises if not signed by the key it names
        ca_line = (await issuer.documents())["ca.pub"][1].split()[:2]
        signer = cert.signature_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        if signer.split() != ca_line:
            return False
        principals = {p.decode() for p in cert.valid_principals}
        if not principals or not set(issuer.principals_for(scope)) <= principals:
            return False
        now = self.clock.now().timestamp()
        if not cert.valid_after <= now < cert.valid_before:
            return False
        krl = (await issuer.documents())["revoked.krl"][1]
        return not krl_revokes(krl, credential.secret.reveal(), self.tmp)

    async def credential_allows(
        self, issuer: SSHIssuer, credential: Credential, action: str
    ) -> bool | None:
        principals = {p.decode() for p in certificate_of(credential).valid_principals}
        try:
            wanted = issuer.principals_for(Scope.of("ssh", HOST, [action]))
        except ScopeNotSupported:
            return False
        return set(wanted) <= principals

    def outage(self, issuer: SSHIssuer) -> AbstractAsyncContextManager[object]:
        return self.proxy.outage()


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"resources": RESOURCES, "colour": "blue"}, "colour: unknown key"),
        ({}, "missing required field `resources`"),
        ({"resources": {}}, "resources: at least one"),
        ({"resources": RESOURCES, "max_ttl": "forever"}, "max_ttl: not a duration"),
        ({"resources": RESOURCES, "default_ttl": "2h"}, "default_ttl must not exceed max_ttl"),
        ({"resources": RESOURCES, "clock_skew": "1h"}, "clock_skew: at most"),
        ({"resources": RESOURCES, "min_rsa_bits": 1024}, "min_rsa_bits: must be at least 2048"),
        ({"resources": {"https://x": {"logins": ["a"]}}}, "must be ssh://"),
        ({"resources": {HOST: {"logins": []}}}, "at least one login"),
        ({"resources": {HOST: {"logins": {"deploy": []}}}}, "at least one principal"),
        ({"resources": {HOST: {"logins": {"deploy": ["a,b"]}}}}, "principal 'a,b'"),
        ({"resources": {HOST: {"logins": {"deploy": ["*"]}}}}, "principal '*'"),
        ({"resources": {HOST: {"logins": ["de ploy"]}}}, "'de ploy' must match"),
        ({"resources": {HOST: {"logins": ["a"], "extensions": ["no-pty"]}}}, "unknown ['no-pty']"),
        (
            {"resources": {HOST: {"logins": ["a"], "source_address": ["10.0.0.1/8"]}}},
            "zero host bits",
        ),
        ({"resources": {HOST: {"logins": ["a"], "force_command": "a\nb"}}}, "single line"),
        ({"resources": {HOST: {"logins": ["a"], "typo": 1}}}, "typo: unknown key"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_config_is_refused_naming_the_key(
    ca_key_file: Path, config: dict[str, Any], message: str
) -> None:
    config = {**config, "ca_key_file": str(ca_key_file)}
    with pytest.raises(ConfigError) as raised:
        SSHIssuer(IssuerContext(name="ssh-x", config=config, clock=FakeClock(), broker_url=BROKER))
    assert "ssh issuer 'ssh-x'" in raised.value.message
    assert message in raised.value.message


def test_the_ca_key_file_is_required_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match="ca_key_file: required"):
        make_issuer(FakeClock(), ca_key_file=None)


async def test_dev_mode_generates_an_in_memory_ca_and_runs_on_the_in_process_store(
    caplog: pytest.LogCaptureFixture, fake_redis: Any, tmp_path: Path
) -> None:
    """``jit dev``: no ca_key_file, and fakeredis as the store (its sorted sets must do)."""
    require_tools()
    caplog.set_level(logging.WARNING)
    clock = FakeClock()
    issuer = make_issuer(
        clock, ca_key_file=None, dev=True, redis=fake_redis, state_prefix="jit:issuer:ssh"
    )
    assert "in-memory CA key" in caplog.text
    assert issuer.ca_fingerprint in caplog.text
    assert (await issuer.documents())["ca.pub"][1].startswith(b"ssh-ed25519 ")
    request = with_params(
        mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5)), public_key=_key("ed25519")
    )
    credential = await issuer.mint(request)
    await issuer.revoke(lease_for(request, credential))
    await issuer.revoke(lease_for(request, credential))
    krl = (await issuer.documents())["revoked.krl"][1]
    assert krl_revokes(krl, credential.secret.reveal(), tmp_path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "No such file"),
        ("garbage", "not an unencrypted OpenSSH private key"),
        ("encrypted", "encrypted keys are not supported"),
        ("dsa", "unsupported key type"),
        ("pem-rsa", "not an unencrypted OpenSSH private key"),
    ],
)
def test_an_unusable_ca_key_file_is_a_config_error(
    tmp_path: Path, setup: str, message: str
) -> None:
    path = tmp_path / "ca"
    if setup == "garbage":
        path.write_text("not a key\n")
    elif setup == "encrypted":
        generate_ca_file(path, "ed25519", passphrase="correct horse battery")
    elif setup == "dsa":
        with warnings.catch_warnings():  # cryptography deprecates SSH DSA keys (so do we)
            warnings.simplefilter("ignore")
            path.write_bytes(
                dsa.generate_private_key(1024).private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                )
            )
    elif setup == "pem-rsa":
        key_rsa = new_private_key("rsa2048")
        path.write_bytes(
            key_rsa.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with pytest.raises(ConfigError) as raised:
        make_issuer(FakeClock(), ca_key_file=path)
    assert raised.value.message.startswith("ssh issuer 'ssh': ca_key_file: ")
    assert message in raised.value.message


def test_the_issuer_is_registered_as_the_ssh_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group="jit_broker.issuers") if ep.name == "ssh"]
    assert ep.load() is SSHIssuer


def test_the_issuer_satisfies_the_contract_and_publishes_documents(ca_key_file: Path) -> None:
    issuer = make_issuer(FakeClock(), ca_key_file=ca_key_file)
    assert isinstance(issuer, Issuer)
    assert isinstance(issuer, PublishesDocuments)
    assert issuer.capabilities.max_ttl == timedelta(hours=1)
    assert issuer.capabilities.default_ttl == timedelta(minutes=15)
    assert issuer.capabilities.revocable
    assert not make_issuer(
        FakeClock(), ca_key_file=ca_key_file, revocable=False
    ).capabilities.revocable
    assert "PRIVATE" not in repr(issuer)
    assert issuer.ca_fingerprint in repr(issuer)


# -- scope -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "actions", "principals"),
    [
        (HOST, ["login:deploy"], ("deploy",)),
        (HOST, ["login:backup"], ("backup", "backup-ro")),
        (HOST, ["login:deploy", "login:backup"], ("backup", "backup-ro", "deploy")),
        ("ssh://web1.prod.test", ["login:deploy"], ("deploy",)),
        ("ssh://*.prod.test", ["login:deploy"], ("deploy",)),
        ("ssh://db.prod.test", ["login:dba"], ("dba",)),
    ],
)
def test_a_scope_maps_to_the_configured_principals(
    ca_key_file: Path, resource: str, actions: list[str], principals: tuple[str, ...]
) -> None:
    issuer = make_issuer(FakeClock(), ca_key_file=ca_key_file)
    scope = Scope.of("ssh", resource, actions)
    issuer.check_scope(scope)
    assert issuer.principals_for(scope) == principals


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        (Scope.of("other", HOST, ["login:deploy"]), "not 'ssh'"),
        (Scope.of("ssh", "ssh://10.0.0.1", ["login:deploy"]), "not configured"),
        (Scope.of("ssh", "https://127.0.0.1", ["login:deploy"]), "must be ssh://"),
        (Scope.of("ssh", "ssh://a/b.prod.test", ["login:deploy"]), "must be ssh://"),
        (Scope.of("ssh", "ssh://*", ["login:deploy"]), "must be ssh://"),
        (Scope.of("ssh", "ssh://web.prod.test.evil", ["login:deploy"]), "not configured"),
        (Scope.of("ssh", HOST, []), "at least one action"),
        (Scope.of("ssh", HOST, ["deploy"]), "is not one of"),
        (Scope.of("ssh", HOST, ["login:root"]), "is not one of"),
        (Scope.of("ssh", HOST, ["login:deploy", "login:root"]), "is not one of"),
        (Scope.of("ssh", "ssh://db.prod.test", ["login:deploy"]), "is not one of"),
    ],
)
def test_check_scope_refuses_what_the_configuration_does_not_grant(
    ca_key_file: Path, scope: Scope, reason: str
) -> None:
    issuer = make_issuer(FakeClock(), ca_key_file=ca_key_file)
    with pytest.raises(ScopeNotSupported, match=re.escape(reason)):
        issuer.check_scope(scope)


def test_a_host_matching_two_patterns_is_refused_as_ambiguous(ca_key_file: Path) -> None:
    resources = {
        "ssh://*.prod.test": {"logins": ["deploy"]},
        "ssh://web*": {"logins": ["deploy"]},
    }
    issuer = make_issuer(FakeClock(), ca_key_file=ca_key_file, resources=resources)
    with pytest.raises(ScopeNotSupported, match="several configured patterns"):
        issuer.check_scope(Scope.of("ssh", "ssh://web.prod.test", ["login:deploy"]))
    issuer.check_scope(Scope.of("ssh", "ssh://db.prod.test", ["login:deploy"]))


# -- params ------------------------------------------------------------------------------------


def _key(kind: str) -> str:
    """A fresh public key line of ``kind`` (``ed25519``, ``ecdsa``, ``rsa2048``, ``dsa``...)."""
    if kind == "dsa":
        with warnings.catch_warnings():  # cryptography deprecates SSH DSA keys (so do we)
            warnings.simplefilter("ignore")
            return (
                dsa.generate_private_key(1024)
                .public_key()
                .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
                .decode()
            )
    return public_line(new_private_key(kind))


def _fill(value: str) -> str:
    """``<kind>`` in a table entry becomes a fresh key of that kind (built in the test, not at
    collection)."""
    return re.sub(r"<(\w+)>", lambda m: _key(m.group(1)), value)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({}, "params.public_key: required"),
        ({"public_key": ""}, "one OpenSSH public key line"),
        ({"public_key": "hello"}, "key type must be one of"),
        ({"public_key": "ssh-ed25519 AAAAnotbase64!!"}, "not a valid OpenSSH public key"),
        ({"public_key": "ssh-ed25519 " + "A" * 9000}, "one OpenSSH public key line"),
        ({"public_key": "<ed25519>\nssh-ed25519 AAAA"}, "one OpenSSH public key line"),
        ({"public_key": "<dsa>"}, "DSA keys are refused"),
        ({"public_key": "<rsa1024>"}, "at least 2048 bits"),
        ({"public_key": "sk-ssh-ed25519@openssh.com AAAA x"}, "key type must be one of"),
        ({"public_key": "<ed25519>", "shell": "bash"}, "unknown params ['shell']"),
        ({"public_key": "<ed25519>", "source_address": "nowhere"}, "params.source_address"),
        ({"public_key": "<ed25519>", "source_address": "10.0.0.1/8"}, "zero host bits"),
        ({"public_key": "<ed25519>", "source_address": "10.0.0.0/8,"}, "comma-separated"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_bad_params_are_an_invalid_request(
    ca_key_file: Path, params: dict[str, str], reason: str
) -> None:
    clock = FakeClock()
    issuer = make_issuer(clock, ca_key_file=ca_key_file)
    params = {name: _fill(value) for name, value in params.items()}
    request = with_params(mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5)), **params)
    with pytest.raises(InvalidRequest) as raised:
        await issuer.mint(request)
    assert reason in raised.value.message
    if params.get("public_key", "").startswith("ssh-"):
        assert params["public_key"].split()[1][:40] not in raised.value.message


async def test_a_certificate_presented_as_the_public_key_is_refused(ca_key_file: Path) -> None:
    clock = FakeClock()
    issuer = make_issuer(clock, ca_key_file=ca_key_file)
    request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
    cert = (await issuer.mint(with_params(request, public_key=_key("ed25519")))).secret.reveal()
    for line in (cert, "ssh-ed25519 " + cert.split()[1]):
        with pytest.raises(InvalidRequest, match=r"params\.public_key"):
            await issuer.mint(with_params(request, public_key=line))


async def test_the_ca_key_itself_is_never_certified(ca_key_file: Path) -> None:
    clock = FakeClock()
    issuer = make_issuer(clock, ca_key_file=ca_key_file)
    ca_line = (await issuer.documents())["ca.pub"][1].decode()
    request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
    with pytest.raises(InvalidRequest, match="CA's own key"):
        await issuer.mint(with_params(request, public_key=ca_line))


@pytest.mark.parametrize(
    ("resource", "requested", "expected"),
    [
        (HOST, None, None),
        (HOST, "192.0.2.7", "192.0.2.7/32"),
        (HOST, " 10.1.0.0/16 , 2001:db8::/32", "10.1.0.0/16,2001:db8::/32"),
        ("ssh://web1.prod.test", None, "10.0.0.0/8"),
        ("ssh://web1.prod.test", "10.2.3.0/24", "10.2.3.0/24"),
        ("ssh://web1.prod.test", "192.0.2.0/24", InvalidRequest),
        ("ssh://web1.prod.test", "10.2.3.0/24,::1", InvalidRequest),
    ],
)
async def test_source_address_is_the_requested_networks_within_the_configured_ones(
    ca_key_file: Path, resource: str, requested: str | None, expected: Any
) -> None:
    clock = FakeClock()
    issuer = make_issuer(clock, ca_key_file=ca_key_file)
    scope = Scope.of("ssh", resource, ["login:deploy"])
    params = {"public_key": _key("ed25519")}
    if requested is not None:
        params["source_address"] = requested
    request = with_params(mint_request(scope, now=clock.now(), ttl=timedelta(minutes=5)), **params)
    if expected is InvalidRequest:
        with pytest.raises(InvalidRequest, match="outside the networks"):
            await issuer.mint(request)
        return
    credential = await issuer.mint(request)
    options = certificate_of(credential).critical_options
    if expected is None:
        assert b"source-address" not in options
        assert "source_address" not in credential.metadata
    else:
        assert options[b"source-address"] == expected.encode()
        assert credential.metadata["source_address"] == expected


# -- the certificate -------------------------------------------------------------------------


async def test_the_certificate_carries_exactly_what_the_lease_says(
    ca_key_file: Path, tmp_path: Path
) -> None:
    require_tools()
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, 0, 750000, tzinfo=UTC))
    issuer = make_issuer(clock, ca_key_file=ca_key_file, clock_skew="45s")
    key = new_private_key("ed25519")
    scope = Scope.of("ssh", "ssh://db.prod.test", ["login:dba"])
    request = with_params(
        mint_request(scope, now=clock.now(), ttl=timedelta(minutes=10, milliseconds=900)),
        public_key=public_line(key) + " laptop",
        source_address="127.0.0.1",
    )
    credential = await issuer.mint(request)
    serial = serial_for(request.lease_id)
    assert serial == int.from_bytes(hashlib.sha256(request.lease_id.encode()).digest()[:8], "big")
    key_id = f"jit lease={request.lease_id} task={request.task_id} principal={request.principal.id}"
    valid_before = datetime(2030, 1, 1, 12, 10, 1, tzinfo=UTC)  # 12:10:01.65 rounded down
    assert credential.expires_at == valid_before <= request.not_after
    assert credential.token_type == "ssh-certificate"
    assert credential.handle == {
        "serial": str(serial),
        "valid_before": str(int(valid_before.timestamp())),
    }
    assert credential.metadata["serial"] == str(serial)
    assert credential.metadata["key_id"] == key_id
    assert credential.metadata["principals"] == "dba"
    assert credential.metadata["valid_before"] == valid_before.isoformat()
    assert credential.metadata["ca_fingerprint"] == issuer.ca_fingerprint

    cert = certificate_of(credential)
    assert (
        cert.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        == public_line(key).encode()
    )
    assert cert.valid_after == int(datetime(2030, 1, 1, 11, 59, 15, tzinfo=UTC).timestamp())

    # ssh-keygen, an independent reader, agrees.
    shown = describe_certificate(credential.secret.reveal(), tmp_path)
    assert "user certificate" in shown
    assert f'Key ID: "{key_id}"' in shown
    assert f"Serial: {serial}" in shown
    assert "Valid: from 2030-01-01T11:59:15 to 2030-01-01T12:10:01" in shown  # TZ=UTC
    assert re.search(r"Principals: \n\s+dba\n\s+Critical Options:", shown)
    assert re.search(r"force-command echo forced-command\n\s+source-address 127.0.0.1/32", shown)
    assert re.search(r"Extensions: \n\s+permit-port-forwarding\n\s+permit-pty\n?$", shown)
    ca_fp = issuer.ca_fingerprint
    assert f"Signing CA: ED25519 {ca_fp}" in shown


async def test_the_key_id_stays_one_parseable_line_whatever_the_ids_hold(
    ca_key_file: Path,
) -> None:
    clock = FakeClock()
    issuer = make_issuer(clock, ca_key_file=ca_key_file)
    principal = Principal(id="oidc:build bot\u00e9\n", issuer="oidc", subject="x")
    request = with_params(
        mint_request(
            SCOPE, now=clock.now(), ttl=timedelta(minutes=5), principal=principal, task_id="t 1"
        ),
        public_key=_key("ed25519"),
    )
    key_id = certificate_of(await issuer.mint(request)).key_id.decode()
    assert key_id == f"jit lease={request.lease_id} task=t_1 principal=oidc:build_bot__"


async def test_only_permit_pty_is_granted_by_default(ca_key_file: Path) -> None:
    clock = FakeClock()
    issuer = make_issuer(clock, ca_key_file=ca_key_file)
    request = with_params(
        mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5)), public_key=_key("ecdsa")
    )
    cert = certificate_of(await issuer.mint(request))
    assert cert.extensions == {b"permit-pty": b""}
    assert cert.critical_options == {}
    assert sorted(cert.valid_principals) == [b"backup", b"backup-ro", b"deploy"]


# -- the KRL -----------------------------------------------------------------------------------


async def test_the_krl_revokes_exactly_the_revoked_serials_of_this_ca(
    ca_key_file: Path, tmp_path: Path
) -> None:
    require_tools()
    clock = FakeClock()
    issuer = make_issuer(clock, ca_key_file=ca_key_file)  # in-memory revoked set
    other_ca = make_issuer(clock, ca_key_file=generate_ca_file(tmp_path / "other", "ed25519"))
    request = with_params(
        mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5)), public_key=_key("ed25519")
    )
    mine = await issuer.mint(request)
    theirs = await other_ca.mint(request)  # same lease id: the same serial, another CA
    assert mine.handle["serial"] == theirs.handle["serial"]
    empty = (await issuer.documents())["revoked.krl"]
    assert empty[0] == "application/octet-stream"
    assert empty[1][:8] == KRL_MAGIC.to_bytes(8, "big")
    assert not krl_revokes(empty[1], mine.secret.reveal(), tmp_path)

    await issuer.revoke(lease_for(request, mine))
    krl = (await issuer.documents())["revoked.krl"][1]
    assert krl_revokes(krl, mine.secret.reveal(), tmp_path)
    assert not krl_revokes(krl, theirs.secret.reveal(), tmp_path)
    listing = _krl_listing(krl, tmp_path)
    assert f"serial: {mine.handle['serial']}" in listing
    assert issuer.ca_fingerprint in listing


def _krl_listing(krl: bytes, directory: Path) -> str:
    path = directory / "listing.krl"
    path.write_bytes(krl)
    result = ssh_keygen("-Q", "-l", "-f", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_build_krl_matches_what_ssh_keygen_lists(tmp_path: Path, ca_key_file: Path) -> None:
    require_tools()
    issuer = make_issuer(FakeClock(), ca_key_file=ca_key_file)
    ca_line = (await issuer.documents())["ca.pub"][1]
    blob = base64.b64decode(ca_line.split()[1])
    serials = [2**64 - 1, 1, 77, 77, 1234567890123]
    krl = build_krl(blob, serials, version=42, generated=1_900_000_000, comment="test")
    listing = _krl_listing(krl, tmp_path)
    assert "# KRL version 42" in listing
    assert "# Comment: test" in listing
    assert re.findall(r"serial: (\d+)", listing) == ["1", "77", "1234567890123", str(2**64 - 1)]
    with pytest.raises(ValueError, match="serials"):
        build_krl(blob, [0], version=1, generated=1)
    with pytest.raises(ValueError, match="CA key blob"):
        build_krl(b"", [1], version=1, generated=1)


async def test_the_krl_is_shared_by_every_replica_through_redis(
    ca_key_file: Path,
    real_redis: aioredis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    require_tools()
    clock = FakeClock()
    prefix = f"{key_prefix}:issuer:ssh"
    a = make_issuer(clock, ca_key_file=ca_key_file, redis=real_redis, state_prefix=prefix)
    b = make_issuer(clock, ca_key_file=ca_key_file, redis=real_redis, state_prefix=prefix)
    request = with_params(
        mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5)), public_key=_key("ed25519")
    )
    credential = await a.mint(request)
    await a.revoke(lease_for(request, credential))
    assert krl_revokes(
        (await b.documents())["revoked.krl"][1], credential.secret.reveal(), tmp_path
    )
    # What Redis holds: the serial and its expiry, never the certificate.
    key = f"{prefix}:{{krl}}:revoked"
    assert await real_redis.zrange(key, 0, -1, withscores=True) == [
        (credential.handle["serial"].encode(), float(credential.handle["valid_before"]))
    ]
    assert (
        credential.secret.reveal().split()[1].encode()
        not in str(await real_redis.dump(key)).encode()
    )


async def test_revoked_serials_are_pruned_once_long_expired(
    ca_key_file: Path, real_redis: aioredis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    require_tools()
    clock = FakeClock()
    prefix = f"{key_prefix}:issuer:ssh"
    issuer = make_issuer(clock, ca_key_file=ca_key_file, redis=real_redis, state_prefix=prefix)
    request = with_params(
        mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5)), public_key=_key("ed25519")
    )
    credential = await issuer.mint(request)
    await issuer.revoke(lease_for(request, handle={}, state=LeaseState.MINTING))
    key = f"{prefix}:{{krl}}:revoked"
    assert await real_redis.zcard(key) == 1
    # Expired, but within the grace: still listed (hosts whose clocks run behind).
    clock.set(request.not_after + RETENTION_GRACE - timedelta(seconds=1))
    assert krl_revokes(
        (await issuer.documents())["revoked.krl"][1], credential.secret.reveal(), tmp_path
    )
    clock.advance(timedelta(seconds=2))
    assert not krl_revokes(
        (await issuer.documents())["revoked.krl"][1], credential.secret.reveal(), tmp_path
    )
    await issuer.check_health()
    later = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
    await issuer.mint(with_params(later, public_key=_key("ed25519")))  # mint prunes
    assert await real_redis.zcard(key) == 0
    # Revoking it now is a no-op that touches nothing.
    await issuer.revoke(lease_for(request, credential))
    assert await real_redis.zcard(key) == 0


async def test_without_redis_documents_and_health_report_the_outage(
    ca_key_file: Path, redis_proxy: TcpProxy, key_prefix: str
) -> None:
    clock = FakeClock()
    client = redis_through(redis_proxy.port)
    issuer = make_issuer(
        clock, ca_key_file=ca_key_file, redis=client, state_prefix=f"{key_prefix}:issuer:ssh"
    )
    try:
        async with redis_proxy.outage():
            with pytest.raises(IssuerUnavailable, match="could not read the revoked serials"):
                await issuer.documents()
            with pytest.raises(IssuerUnavailable, match="could not reach Redis"):
                await issuer.check_health()
        await issuer.check_health()
        assert b"SSHKRL" in (await issuer.documents())["revoked.krl"][1]
    finally:
        await client.aclose()


# -- a real sshd -------------------------------------------------------------------------------


class TestAgainstARealSshd:
    """sshd trusts ``ca.pub`` from the broker's documents, reads ``revoked.krl`` from them on
    every authentication, and lets the login user in with the principal ``deploy`` only."""

    @pytest.fixture
    async def issuer(
        self, real_redis: aioredis.Redis, key_prefix: str, ca_key_file: Path
    ) -> AsyncIterator[SSHIssuer]:
        issuer = make_issuer(
            SystemClock(),
            ca_key_file=ca_key_file,
            redis=real_redis,
            state_prefix=f"{key_prefix}:issuer:ssh",
            clock_skew="5s",
        )
        yield issuer
        await issuer.aclose()

    @pytest.fixture
    async def sshd(self, issuer: SSHIssuer, tmp_path: Path) -> AsyncIterator[Sshd]:
        server = Sshd(tmp_path / "sshd")
        docs = await issuer.documents()
        server.set_ca(docs["ca.pub"][1])
        server.set_krl(docs["revoked.krl"][1])
        server.set_principals(login_user(), ["deploy"])
        server.start()
        yield server
        server.stop()

    async def mint(
        self,
        issuer: SSHIssuer,
        directory: Path,
        actions: tuple[str, ...] = ("login:deploy",),
        *,
        ttl: timedelta = timedelta(minutes=5),
        key_kind: str = "ed25519",
        **params: str,
    ) -> tuple[MintRequest, Credential, Path, Path]:
        """Mint as the broker does; write the key and certificate as the workload would."""
        key = new_private_key(key_kind)
        request = with_params(
            mint_request(Scope.of(issuer.name, HOST, actions), now=SystemClock().now(), ttl=ttl),
            public_key=public_line(key),
            **params,
        )
        issuer.check_scope(request.scope)
        credential = await issuer.mint(request)
        name = request.lease_id.replace(".", "-")
        key_path = write_private_key(directory / f"id-{name}", key)
        cert_path = directory / f"id-{name}-cert.pub"
        cert_path.write_text(credential.secret.reveal() + "\n")
        return request, credential, key_path, cert_path

    @staticmethod
    async def publish_krl(issuer: SSHIssuer, sshd: Sshd) -> None:
        sshd.set_krl((await issuer.documents())["revoked.krl"][1])

    @staticmethod
    def assert_in(result: Any, sshd: Sshd) -> None:
        assert result.returncode == 0, f"ssh failed: {result.stderr}\nsshd log:\n{sshd.log_text()}"

    @staticmethod
    def assert_refused(result: Any) -> None:
        assert result.returncode == 255, f"ssh was not refused: {result.stdout} {result.stderr}"
        assert "Permission denied" in result.stderr

    async def test_a_minted_certificate_logs_in(
        self, issuer: SSHIssuer, sshd: Sshd, tmp_path: Path
    ) -> None:
        request, _, key, cert = await self.mint(issuer, tmp_path)
        result = sshd.ssh(key, cert, login_user(), "id", "-un")
        self.assert_in(result, sshd)
        assert result.stdout.strip() == login_user()
        assert f"ID jit lease={request.lease_id} task=" in sshd.log_text()

    async def test_the_key_alone_without_the_certificate_is_refused(
        self, issuer: SSHIssuer, sshd: Sshd, tmp_path: Path
    ) -> None:
        _, _, key, _ = await self.mint(issuer, tmp_path)
        self.assert_refused(sshd.ssh(key, tmp_path / "no-such-cert.pub", login_user()))

    async def test_a_certificate_for_another_principal_is_refused(
        self, issuer: SSHIssuer, sshd: Sshd, tmp_path: Path
    ) -> None:
        _, credential, key, cert = await self.mint(issuer, tmp_path, ("login:backup",))
        assert credential.metadata["principals"] == "backup,backup-ro"
        self.assert_refused(sshd.ssh(key, cert, login_user()))
        assert "Certificate does not contain an authorized principal" in sshd.log_text()

    @pytest.mark.parametrize("handle", ["recorded", "empty after a crashed mint"])
    async def test_a_revoked_certificate_is_refused_and_only_it(
        self, issuer: SSHIssuer, sshd: Sshd, tmp_path: Path, handle: str
    ) -> None:
        request, credential, key, cert = await self.mint(issuer, tmp_path)
        _, _, other_key, other_cert = await self.mint(issuer, tmp_path)
        self.assert_in(sshd.ssh(key, cert, login_user()), sshd)

        lease = (
            lease_for(request, credential)
            if handle == "recorded"
            else lease_for(request, handle={}, state=LeaseState.MINTING)
        )
        await issuer.revoke(lease)
        self.assert_in(sshd.ssh(key, cert, login_user()), sshd)  # the host has the old KRL
        await self.publish_krl(issuer, sshd)  # sshd re-reads it: no restart

        self.assert_refused(sshd.ssh(key, cert, login_user()))
        assert f"revoked by file {sshd.krl}" in sshd.log_text()
        self.assert_in(sshd.ssh(other_key, other_cert, login_user()), sshd)

    async def test_an_expired_certificate_is_refused(
        self, issuer: SSHIssuer, sshd: Sshd, tmp_path: Path
    ) -> None:
        _, credential, key, cert = await self.mint(issuer, tmp_path, ttl=timedelta(seconds=4))
        self.assert_in(sshd.ssh(key, cert, login_user()), sshd)
        # The one real wait of this module: until just past valid_before.
        await asyncio.sleep(
            max(0.0, (credential.expires_at - datetime.now(UTC)).total_seconds()) + 1.1
        )
        self.assert_refused(sshd.ssh(key, cert, login_user()))
        assert "Certificate invalid: expired" in sshd.log_text()

    async def test_source_address_binds_the_certificate_to_the_client_network(
        self, issuer: SSHIssuer, sshd: Sshd, tmp_path: Path
    ) -> None:
        _, _, key, cert = await self.mint(issuer, tmp_path, source_address="192.0.2.0/24")
        self.assert_refused(sshd.ssh(key, cert, login_user()))
        assert "not from a permitted source address (127.0.0.1)" in sshd.log_text()
        _, _, key, cert = await self.mint(issuer, tmp_path, source_address="127.0.0.0/8")
        self.assert_in(sshd.ssh(key, cert, login_user()), sshd)

    async def test_force_command_replaces_the_requested_command(
        self, ca_key_file: Path, real_redis: aioredis.Redis, key_prefix: str, tmp_path: Path
    ) -> None:
        resources = {HOST: {"logins": ["deploy"], "force_command": "echo forced-command"}}
        issuer = make_issuer(
            SystemClock(),
            ca_key_file=ca_key_file,
            redis=real_redis,
            state_prefix=f"{key_prefix}:issuer:ssh",
            resources=resources,
        )
        server = Sshd(tmp_path / "sshd")
        docs = await issuer.documents()
        server.set_ca(docs["ca.pub"][1])
        server.set_krl(docs["revoked.krl"][1])
        server.set_principals(login_user(), ["deploy"])
        server.start()
        try:
            _, _, key, cert = await self.mint(issuer, tmp_path)
            result = server.ssh(key, cert, login_user(), "echo", "chosen-command")
            self.assert_in(result, server)
            assert result.stdout.strip() == "forced-command"
        finally:
            server.stop()

    @pytest.mark.parametrize(
        ("ca_kind", "key_kind"),
        [("ecdsa", "rsa3072"), ("rsa", "ecdsa"), ("ed25519", "rsa2048")],
    )
    async def test_every_supported_key_type_logs_in(
        self,
        real_redis: aioredis.Redis,
        key_prefix: str,
        tmp_path: Path,
        ca_kind: str,
        key_kind: str,
    ) -> None:
        issuer = make_issuer(
            SystemClock(),
            ca_key_file=generate_ca_file(tmp_path / f"ca-{ca_kind}", ca_kind),
            redis=real_redis,
            state_prefix=f"{key_prefix}:issuer:ssh",
        )
        server = Sshd(tmp_path / "sshd")
        docs = await issuer.documents()
        server.set_ca(docs["ca.pub"][1])
        server.set_krl(docs["revoked.krl"][1])
        server.set_principals(login_user(), ["deploy"])
        server.start()
        try:
            request, credential, key, cert = await self.mint(issuer, tmp_path, key_kind=key_kind)
            self.assert_in(server.ssh(key, cert, login_user()), server)
            await issuer.revoke(lease_for(request, credential))
            await self.publish_krl(issuer, server)
            self.assert_refused(server.ssh(key, cert, login_user()))
        finally:
            server.stop()
