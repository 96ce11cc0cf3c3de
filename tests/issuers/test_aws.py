"""The aws issuer against moto's server on 127.0.0.1: the conformance kit, the exact AssumeRole
request on the wire, minted credentials used by real boto3 clients, error mapping and strict
configuration.

What is real: boto3/botocore on both sides (the issuer's STS client, and the workload's STS and
S3 clients on the minted credentials, also through ``credential_process``), SigV4 signing and
moto's verification of signatures and session tokens, moto's evaluation of the role's own
policies (with their ``Resource``) and of the trust policy (with ``sts:ExternalId``).

What moto's server cannot do (see tests/issuers/aws_support.py): it ignores **session
policies** and never **expires** a session. The support module adds AWS's two rules to moto's
authorization step: the session's inline policy is intersected with the role's (evaluated by
moto's own ``IAMPolicy`` on the policy moto recorded), and keys past their ``Expiration`` are
refused with ``ExpiredToken`` on a clock that moves with the kit's ``FakeClock``. So the
least-privilege tests see real S3 calls refused over the wire; and, independently of that
shim, the exact session ``Policy`` and ``Tags`` sent to STS are asserted byte for byte.

Environment: fake AWS credentials only (``testing``), no config or credentials file of the
host, no instance metadata; every test has its own role and buckets, deleted afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import boto3
import msgspec
import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from broker.clock import SystemClock
from broker.errors import (
    ConfigError,
    InvalidRequest,
    IssuerError,
    IssuerUnavailable,
    ScopeNotSupported,
)
from broker.issuer import Issuer, IssuerContext
from broker.testing import FakeClock, IssuerConformance, lease_for, mint_request
from broker.types import Credential, Principal, Scope
from issuers.aws import AWSIssuer
from issuers.aws.config import MIN_TTL, session_policy
from issuers.aws.issuer import WIRE_LOGGERS
from issuers.aws.session import session_name, tag_value
from tests.issuers.aws_support import REGION, Identity, MotoAWS, Session, World

NAME = "aws"
READ = ["s3:GetObject", "s3:ListBucket"]
WRITE = ["s3:PutObject"]
DELETE = ["s3:DeleteObject"]
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
TAG_VALUE = re.compile(r"^[A-Za-z0-9 _.:/=+\-@]{0,256}$")
DENIED = {"AccessDenied"}
DEAD = {"ExpiredToken", "InvalidClientTokenId", "InvalidToken", "InvalidAccessKeyId"}

_ENV_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_S3",
    "AWS_STS_REGIONAL_ENDPOINTS",
)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoAWS]:
    """moto's server on a free loopback port, with IAM authentication on, for this module."""
    empty = tmp_path_factory.mktemp("aws-home")
    quiet = {name: logging.getLogger(name).level for name in ("moto", "werkzeug")}
    with pytest.MonkeyPatch.context() as mp:
        for var in _ENV_CLEARED:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")  # fake, and refused once auth is on
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        # moto's server runs in this process: keep its request logs (which quote the headers
        # of the workload's requests, session tokens included) out of the captured logs, as
        # AWS's own logs would be.
        for name in quiet:
            logging.getLogger(name).setLevel(logging.WARNING)
        aws = MotoAWS()
        try:
            aws.setup()
        except Exception as exc:
            aws.teardown()
            pytest.fail(f"moto's server could not start on 127.0.0.1: {exc!r}")
        try:
            yield aws
        finally:
            aws.teardown()
            for name, level in quiet.items():
                logging.getLogger(name).setLevel(level)


@pytest.fixture
def world(moto_aws: MotoAWS) -> Iterator[World]:
    """This test's role and buckets."""
    w = moto_aws.create_world()
    yield w
    _reset(moto_aws)
    moto_aws.delete_world(w)


def _reset(aws: MotoAWS) -> None:
    aws.clear_injections()
    aws.clock = None
    if aws.server is None:
        aws.start()


@pytest.fixture
def creds_file(moto_aws: MotoAWS, tmp_path: Path) -> Path:
    assert moto_aws.broker is not None
    return write_credentials(tmp_path / "aws-credentials", moto_aws.broker)


def write_credentials(path: Path, identity: Identity, profile: str = "default") -> Path:
    path.write_text(identity.credentials_file(profile))
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def config_for(aws: MotoAWS, world: World, creds: Path | None, **over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "region": REGION,
        "endpoint_url": aws.url,
        "max_attempts": 1,
        "resources": {
            world.bucket_arn: {
                "role_arn": world.role_arn,
                "actions": {"read": READ, "write": WRITE, "delete": DELETE},
                "resources": [world.bucket_arn, f"{world.bucket_arn}/*"],
            }
        },
    }
    if creds is not None:
        config["credentials_file"] = str(creds)
    config.update(over)
    return config


def make_issuer(
    aws: MotoAWS, world: World, creds: Path | None, clock: Any, **over: Any
) -> AWSIssuer:
    return AWSIssuer(
        IssuerContext(
            name=NAME,
            config=config_for(aws, world, creds, **over),
            clock=clock,
            broker_url="https://broker.test",
        )
    )


def fake_clock() -> FakeClock:
    """A FakeClock that starts at real time, so the backend's clock and the kit's agree."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


def secret_of(credential: Credential) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(credential.secret.reveal())
    return value


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def perform(aws: MotoAWS, world: World, credential: Credential, action: str) -> None:
    """Do what ``action`` means on ``world``'s bucket, with the minted credential."""
    s3 = Session(aws, secret_of(credential)).client("s3")
    if action == "read":
        assert s3.get_object(Bucket=world.bucket, Key=world.key)["Body"].read() == b"hello"
        s3.list_objects_v2(Bucket=world.bucket)
    elif action == "write":
        s3.put_object(Bucket=world.bucket, Key="written.txt", Body=b"x")
    elif action == "delete":
        s3.delete_object(Bucket=world.bucket, Key="written.txt")
    else:
        raise AssertionError(f"no operation for {action!r}")


def allowed(aws: MotoAWS, world: World, credential: Credential, action: str) -> bool:
    try:
        perform(aws, world, credential, action)
    except ClientError as exc:
        if error_code(exc) in DENIED:
            return False
        raise
    return True


# -- the conformance kit -------------------------------------------------------------------


class TestAWSIssuerConformance(IssuerConformance[AWSIssuer]):
    """The kit, against moto. ``credential_works`` calls STS GetCallerIdentity and one S3
    operation of the scope with the minted keys; ``credential_allows`` performs the S3
    operations of an action (read: GetObject + ListObjectsV2, write: PutObject, delete:
    DeleteObject). ``delete`` is configured on the resource but outside the kit's scope, so
    the least-privilege tests rest on the session policy alone (the role may do ``s3:*``)."""

    aws: MotoAWS
    world: World

    @pytest.fixture(name="clock")
    def _clock_fixture(self) -> FakeClock:
        return fake_clock()

    @pytest.fixture
    async def issuer(
        self, clock: FakeClock, moto_aws: MotoAWS, world: World, creds_file: Path
    ) -> AsyncIterator[AWSIssuer]:
        self.aws, self.world = moto_aws, world
        moto_aws.clock = clock.now  # the backend runs on the kit's clock
        issuer = make_issuer(moto_aws, world, creds_file, clock)
        yield issuer
        await issuer.aclose()

    def scope(self) -> Scope:
        return Scope.of(NAME, self.world.bucket_arn, ["read", "write"])

    def narrower_scope(self) -> Scope | None:
        return Scope.of(NAME, self.world.bucket_arn, ["read"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of(NAME, self.world.bucket_arn, ["admin"])

    def action_outside_scope(self) -> str:
        return "delete"

    async def credential_works(
        self, issuer: AWSIssuer, credential: Credential, scope: Scope
    ) -> bool:
        session = Session(self.aws, secret_of(credential))
        try:
            arn = session.client("sts").get_caller_identity()["Arn"]
            expected = f"assumed-role/{self.world.role_name}/{credential.handle['session']}"
            assert arn.endswith(expected), arn
            perform(self.aws, self.world, credential, scope.actions[0])
        except ClientError as exc:
            if error_code(exc) in DEAD | DENIED:
                return False
            raise
        return True

    async def credential_allows(
        self, issuer: AWSIssuer, credential: Credential, action: str
    ) -> bool | None:
        return allowed(self.aws, self.world, credential, action)

    @asynccontextmanager
    async def outage(self, issuer: AWSIssuer) -> AsyncIterator[None]:
        self.aws.stop()  # connections are refused on its port
        try:
            yield
        finally:
            self.aws.start()  # the same port; moto's state lives on in this process

    async def test_the_handle_holds_no_secret(self, issuer: AWSIssuer, clock: FakeClock) -> None:
        """Replaces the kit's version: the secret is the credential_process JSON, which holds
        the access key id and expiration by design; both are public (they appear in CloudTrail)
        and belong in the handle and metadata. Everything else the kit checks is checked, and
        the two secret fields are checked on their own."""
        self._begin(clock)
        request, credential = await self.mint(issuer)
        secret = credential.secret.reveal()
        fields = secret_of(credential)
        public = {fields["AccessKeyId"], fields["Expiration"]}
        hidden = [fields["SecretAccessKey"], fields["SessionToken"]]
        for where, mapping in (("handle", credential.handle), ("metadata", credential.metadata)):
            for key, value in mapping.items():
                assert isinstance(value, str), f"{where}[{key!r}] must be a str"
                for part in (key, value):
                    if part and part not in public:
                        assert part not in secret, f"{where} {part!r} is part of the secret"
                    for h in hidden:
                        assert h not in part, f"{where}[{key!r}] holds a secret field"
                        assert not (part and part in h), f"{where}[{key!r}] is part of a secret"
        stored = msgspec.json.encode(lease_for(request, credential))  # what Redis would hold
        for h in hidden:
            assert h.encode() not in stored


# -- the request on the wire ----------------------------------------------------------------


async def test_the_exact_policy_tags_session_name_and_duration_reach_sts(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    scope = Scope.of(NAME, world.bucket_arn, ["write", "read"])
    principal = Principal(id="github:repo:acme/api", issuer="github", subject="repo:acme/api")
    request = mint_request(
        scope, now=clock.now(), ttl=timedelta(minutes=20), task_id="deploy-42", principal=principal
    )
    before = len(moto_aws.sts_calls())
    credential = await issuer.mint(request)
    calls = moto_aws.sts_calls()[before:]
    assert len(calls) == 1
    call = calls[0]
    expected_policy = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
        '"Action":["s3:GetObject","s3:ListBucket","s3:PutObject"],'
        f'"Resource":["{world.bucket_arn}","{world.bucket_arn}/*"]}}]}}'
    )
    assert call.params["Policy"] == expected_policy
    assert call.params["RoleArn"] == world.role_arn
    assert call.params["RoleSessionName"] == f"jit-{request.lease_id}"
    assert call.params["DurationSeconds"] == str(20 * 60 - 1)  # latency_margin 1s, rounded down
    assert call.tags() == {
        "jit:lease": request.lease_id,
        "jit:task": "deploy-42",
        "jit:principal": "github:repo:acme/api",
    }
    assert "ExternalId" not in call.params
    assert call.access_key_id == moto_aws.broker.access_key_id  # type: ignore[union-attr]
    # moto keeps the same policy for the session
    fields = secret_of(credential)
    assert moto_aws.session_for(fields["AccessKeyId"]).policy == expected_policy

    assert set(fields) == {
        "Version",
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    }
    assert fields["Version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["Expiration"])
    assert credential.expires_at == request.not_after - timedelta(seconds=1)
    assert credential.token_type == "aws-sts"
    session = f"jit-{request.lease_id}"
    assert credential.handle == {
        "access_key_id": fields["AccessKeyId"],
        "session": session,
        "role_arn": world.role_arn,
    }
    assert credential.metadata == {
        "access_key_id": fields["AccessKeyId"],
        "expiration": fields["Expiration"],
        "role_arn": world.role_arn,
        "session": session,
        "region": REGION,
        "assumed_role_arn": f"arn:aws:sts::123456789012:assumed-role/{world.role_name}/{session}",
    }
    await issuer.aclose()


async def test_a_narrower_scope_sends_only_its_actions_and_the_rest_is_refused(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    request = mint_request(
        Scope.of(NAME, world.bucket_arn, ["read"]), now=clock.now(), ttl=timedelta(minutes=16)
    )
    credential = await issuer.mint(request)
    sent = json.loads(moto_aws.sts_calls()[-1].params["Policy"])
    assert sent["Statement"] == [
        {
            "Effect": "Allow",
            "Action": READ,
            "Resource": [world.bucket_arn, f"{world.bucket_arn}/*"],
        }
    ]
    assert allowed(moto_aws, world, credential, "read")
    assert not allowed(moto_aws, world, credential, "write")  # refused by the session policy
    assert not allowed(moto_aws, world, credential, "delete")
    s3 = Session(moto_aws, secret_of(credential)).client("s3")
    with pytest.raises(ClientError) as info:  # refused by the role's own policy (moto itself)
        s3.get_object(Bucket=world.other_bucket, Key=world.key)
    assert error_code(info.value) == "AccessDenied"
    await issuer.aclose()


async def test_credentials_never_outlive_the_lease_on_a_real_clock(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    """With the system clock on both sides: the Expiration STS states, and expires_at, are
    within not_after, and the session asked for is no longer than the lease. (A generous
    latency_margin keeps a loaded test machine from failing closed here.)"""
    clock = SystemClock()
    issuer = make_issuer(moto_aws, world, creds_file, clock, latency_margin="10s")
    for ttl in (MIN_TTL, timedelta(hours=1)):
        request = mint_request(Scope.of(NAME, world.bucket_arn, ["read"]), now=clock.now(), ttl=ttl)
        credential = await issuer.mint(request)
        stated = datetime.fromisoformat(secret_of(credential)["Expiration"].replace("Z", "+00:00"))
        assert stated <= request.not_after
        assert credential.expires_at <= request.not_after
        assert credential.expires_at > request.issued_at
        assert int(moto_aws.sts_calls()[-1].params["DurationSeconds"]) <= ttl.total_seconds() - 10
        assert credential.metadata["expiration"] == secret_of(credential)["Expiration"]
    await issuer.aclose()


async def test_tags_and_session_names_follow_aws_rules_on_the_wire(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    principal_id = "oidc:https://idp.example/#" + "é" * 300
    principal = Principal(id=principal_id, issuer="oidc", subject="x")
    request = mint_request(
        Scope.of(NAME, world.bucket_arn, ["read"]),
        now=clock.now(),
        ttl=timedelta(minutes=16),
        task_id="task with spaces & symbols!",
        principal=principal,
        lease_id="odd/lease*id" + "x" * 80,
    )
    credential = await issuer.mint(request)
    call = moto_aws.sts_calls()[-1]
    tags = call.tags()
    assert tags["jit:task"] == tag_value("task with spaces & symbols!")
    assert tags["jit:task"].startswith("task with spaces _ symbols_+")
    assert tags["jit:principal"] == tag_value(principal_id)
    assert len(tags["jit:principal"]) == 256
    assert all(TAG_VALUE.match(v) for v in tags.values())
    name = call.params["RoleSessionName"]
    assert name == session_name(request.lease_id) == credential.handle["session"]
    assert SESSION_NAME.match(name)
    assert name.startswith("jit-odd-lease-id")
    await issuer.aclose()


@given(st.text(max_size=400))
def test_a_session_name_is_always_valid_and_a_clean_lease_id_is_kept(lease_id: str) -> None:
    name = session_name(lease_id)
    assert SESSION_NAME.match(name), name
    if re.fullmatch(r"[\w=,.@-]{0,60}", lease_id, flags=re.ASCII):
        assert name == f"jit-{lease_id}"
    else:
        assert "+" in name


@given(st.text(max_size=400), st.text(max_size=400))
def test_tag_values_are_always_valid_and_different_values_never_collide(a: str, b: str) -> None:
    ta, tb = tag_value(a), tag_value(b)
    assert TAG_VALUE.match(ta)
    assert TAG_VALUE.match(tb)
    if a != b:
        assert ta != tb
        assert tag_value(ta) != tb  # a value chosen to read as another's changed tag


def test_a_principal_cannot_choose_an_id_that_reads_as_another_principals_tag() -> None:
    victim = "oidc:user#1"
    forged = tag_value(victim)  # what the victim's id becomes: "oidc:user_1+<digest>"
    assert forged.startswith("oidc:user_1+")
    assert tag_value(forged) != forged  # a kept value never holds "+"
    assert tag_value("github:repo:acme/api") == "github:repo:acme/api"
    changed = session_name("a/b")  # "jit-a-b+<digest>"
    assert session_name(changed.removeprefix("jit-")) != changed


def test_the_session_policy_is_deterministic_and_deduplicated(
    moto_aws: MotoAWS, world: World
) -> None:
    issuer = make_issuer(moto_aws, world, None, fake_clock())
    target = issuer.settings.targets[world.bucket_arn]
    one = session_policy(target, ("read", "write"))
    assert one == session_policy(target, ("write", "read"))
    doc = json.loads(one)
    assert doc["Statement"][0]["Action"] == ["s3:GetObject", "s3:ListBucket", "s3:PutObject"]


# -- identities, trust and external ids ---------------------------------------------------


async def test_the_external_id_is_sent_and_the_trust_policy_checks_it(
    moto_aws: MotoAWS, creds_file: Path
) -> None:
    """(moto checks a wrong ExternalId against the trust policy's condition, but lets a
    missing one through, unlike AWS; so the refusal is shown with a wrong id.)"""
    world = moto_aws.create_world(external_id="acme-orders-7")
    try:
        clock = fake_clock()
        scope = Scope.of(NAME, world.bucket_arn, ["read"])
        wrong = make_issuer(moto_aws, world, creds_file, clock, external_id="someone-else")
        with pytest.raises(IssuerError) as info:
            await wrong.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
        assert not isinstance(info.value, IssuerUnavailable)
        assert "AccessDenied" in str(info.value)
        assert world.role_arn in str(info.value)
        assert "external_id" in str(info.value)
        assert moto_aws.sts_calls()[-1].params["ExternalId"] == "someone-else"

        with_id = make_issuer(moto_aws, world, creds_file, clock, external_id="acme-orders-7")
        credential = await with_id.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
        assert moto_aws.sts_calls()[-1].params["ExternalId"] == "acme-orders-7"
        assert allowed(moto_aws, world, credential, "read")
        await wrong.aclose()
        await with_id.aclose()
    finally:
        _reset(moto_aws)
        moto_aws.delete_world(world)


async def test_a_role_that_does_not_trust_the_broker_is_a_clear_issuer_error(
    moto_aws: MotoAWS, creds_file: Path
) -> None:
    world = moto_aws.create_world(trust_broker=False)
    try:
        clock = fake_clock()
        issuer = make_issuer(moto_aws, world, creds_file, clock)
        scope = Scope.of(NAME, world.bucket_arn, ["read"])
        with pytest.raises(IssuerError) as info:
            await issuer.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
        assert type(info.value) is IssuerError
        message = str(info.value)
        assert message.startswith(
            f"aws issuer 'aws': STS AssumeRole on {world.role_arn} refused: AccessDenied (HTTP 403)"
        )
        assert "trust policy" in message
        await issuer.check_health()  # the broker's identity itself is fine
        await issuer.aclose()
    finally:
        _reset(moto_aws)
        moto_aws.delete_world(world)


async def test_refused_broker_credentials_are_an_issuer_error_without_the_secret(
    moto_aws: MotoAWS, world: World, tmp_path: Path
) -> None:
    unknown = Identity(
        "arn:aws:iam::123456789012:user/ghost", "AKIAGHOSTGHOSTGHOST1", "ghost-secret-value/42"
    )
    creds = write_credentials(tmp_path / "creds", unknown)
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds, clock)
    scope = Scope.of(NAME, world.bucket_arn, ["read"])
    for call in (
        issuer.check_health(),
        issuer.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL)),
    ):
        with pytest.raises(IssuerError) as info:
            await call
        assert type(info.value) is IssuerError
        assert "InvalidClientTokenId" in str(info.value)
        assert "broker's own AWS credentials" in str(info.value)
        assert "ghost-secret-value" not in str(info.value)
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__
    assert "ghost-secret-value" not in repr(issuer)
    await issuer.aclose()


async def test_boto3s_default_chain_is_used_without_a_credentials_file(
    moto_aws: MotoAWS, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = moto_aws.broker
    assert broker is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", broker.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", broker.secret_access_key)
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, None, clock)
    await issuer.check_health()
    credential = await issuer.mint(
        mint_request(Scope.of(NAME, world.bucket_arn, ["read"]), now=clock.now(), ttl=MIN_TTL)
    )
    assert moto_aws.sts_calls()[-1].access_key_id == broker.access_key_id
    assert allowed(moto_aws, world, credential, "read")
    await issuer.aclose()


async def test_a_rotated_credentials_file_is_picked_up_and_profiles_are_honoured(
    moto_aws: MotoAWS, world: World, tmp_path: Path
) -> None:
    assert moto_aws.broker is not None
    assert moto_aws.broker2 is not None
    path = write_credentials(tmp_path / "creds", moto_aws.broker, profile="jit")
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, path, clock, profile="jit")
    scope = Scope.of(NAME, world.bucket_arn, ["read"])
    await issuer.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
    assert moto_aws.sts_calls()[-1].access_key_id == moto_aws.broker.access_key_id

    write_credentials(path, moto_aws.broker2, profile="jit")
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))
    credential = await issuer.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
    assert moto_aws.sts_calls()[-1].access_key_id == moto_aws.broker2.access_key_id
    assert allowed(moto_aws, world, credential, "read")

    path.unlink()
    with pytest.raises(IssuerUnavailable, match="credentials_file is not readable"):
        await issuer.check_health()
    await issuer.aclose()


# -- using the credential like a workload ----------------------------------------------------


async def test_the_secret_works_as_credential_process_output(
    moto_aws: MotoAWS, world: World, creds_file: Path, tmp_path: Path
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    credential = await issuer.mint(
        mint_request(Scope.of(NAME, world.bucket_arn, ["read"]), now=clock.now(), ttl=MIN_TTL)
    )
    secret_path = tmp_path / "credential.json"
    secret_path.write_text(credential.secret.reveal())
    secret_path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    config = tmp_path / "config"
    config.write_text(f"[profile jit]\ncredential_process = /bin/cat {secret_path}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_CONFIG_FILE", str(config))
        session = boto3.session.Session(profile_name="jit", region_name=REGION)
        sts = session.client("sts", endpoint_url=moto_aws.url)
        arn = sts.get_caller_identity()["Arn"]
    assert arn.endswith(f"assumed-role/{world.role_name}/{credential.handle['session']}")
    await issuer.aclose()


async def test_revoke_calls_nothing_and_the_session_lives_until_expiry(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    """Expiry-only, documented: revoke succeeds and STS is not called; the keys keep working
    until their expiry (the broker caps the TTL to the task for that reason)."""
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    assert issuer.capabilities.revocable is False
    request = mint_request(Scope.of(NAME, world.bucket_arn, ["read"]), now=clock.now(), ttl=MIN_TTL)
    credential = await issuer.mint(request)
    before = len(moto_aws.recorder.calls)
    await issuer.revoke(lease_for(request, credential))
    await issuer.revoke(lease_for(request))
    assert len(moto_aws.recorder.calls) == before
    assert allowed(moto_aws, world, credential, "read")
    await issuer.aclose()


async def test_no_secret_reaches_a_log_a_repr_or_an_error(
    moto_aws: MotoAWS, world: World, creds_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """botocore logs response bodies (the minted keys) and signed headers at DEBUG; the issuer
    silences exactly those records. Checked field by field, with the broker's own secret."""
    caplog.set_level(logging.DEBUG)
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    scope = Scope.of(NAME, world.bucket_arn, ["read"])
    request = mint_request(scope, now=clock.now(), ttl=MIN_TTL)
    credential = await issuer.mint(request)
    assert allowed(moto_aws, world, credential, "read")
    await issuer.check_health()
    moto_aws.inject("AssumeRole", status=403, code="AccessDenied")
    with pytest.raises(IssuerError) as info:
        await issuer.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
    fields = secret_of(credential)
    assert moto_aws.broker is not None
    secrets_ = [
        fields["SecretAccessKey"],
        fields["SessionToken"],
        moto_aws.broker.secret_access_key,
    ]
    assert any(r.name.startswith("botocore") for r in caplog.records), "botocore logged nothing"
    for name in WIRE_LOGGERS:  # exactly these drop their DEBUG records
        assert not any(r.name == name and r.levelno == logging.DEBUG for r in caplog.records)
    shown = [
        caplog.text,
        *(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
        repr(issuer),
        repr(credential),
        repr(credential.secret),
        repr(issuer.settings),
        str(info.value),
    ]
    for text in shown:
        for secret in secrets_:
            assert secret not in text
    await issuer.aclose()


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "unavailable", "says"),
    [
        (400, "Throttling", True, "retry later"),
        (400, "RequestLimitExceeded", True, "retry later"),
        (503, "ServiceUnavailable", True, "retry later"),
        (500, "SomethingNew", True, "retry later"),
        (403, "AccessDenied", False, "trust policy"),
        (400, "ValidationError", False, "MaxSessionDuration"),
        (400, "PackedPolicyTooLarge", False, "session policy or tags"),
        (400, "MalformedPolicyDocument", False, "session policy or tags"),
        (403, "ExpiredToken", False, "broker's own AWS credentials"),
        (403, "RegionDisabledException", False, "not activated"),
        (400, "SomethingElse", False, "SomethingElse (HTTP 400)"),
    ],
)
async def test_sts_error_answers_map_to_typed_errors(
    moto_aws: MotoAWS,
    world: World,
    creds_file: Path,
    status: int,
    code: str,
    unavailable: bool,
    says: str,
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    moto_aws.inject("AssumeRole", status=status, code=code)
    scope = Scope.of(NAME, world.bucket_arn, ["read"])
    with pytest.raises(IssuerError) as info:
        await issuer.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
    assert isinstance(info.value, IssuerUnavailable) is unavailable
    assert code in str(info.value)
    assert says in str(info.value)
    assert "injected by the test" not in str(info.value)  # AWS's message is never quoted
    await issuer.aclose()


async def test_a_throttled_call_is_retried_when_max_attempts_allows(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock, max_attempts=2)
    moto_aws.inject("AssumeRole", status=400, code="Throttling")
    before = len(moto_aws.sts_calls())
    scope = Scope.of(NAME, world.bucket_arn, ["read"])
    credential = await issuer.mint(mint_request(scope, now=clock.now(), ttl=MIN_TTL))
    assert len(moto_aws.sts_calls()) - before == 2
    assert allowed(moto_aws, world, credential, "read")
    await issuer.aclose()


async def test_an_sts_that_does_not_answer_is_unavailable_after_the_timeout(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock, timeout="1s")
    moto_aws.inject("GetCallerIdentity", delay=3)
    with pytest.raises(IssuerUnavailable) as info:
        await issuer.check_health()
    assert "GetCallerIdentity" in str(info.value)
    await issuer.aclose()


class SteppingClock(FakeClock):
    """Each reading is ``step`` later than the last: STS seems to take ``step`` to answer."""

    def __init__(self, step: timedelta) -> None:
        super().__init__(datetime.now(UTC))
        self.step = step

    def now(self) -> datetime:
        self.advance(self.step)
        return super().now()


async def test_an_answer_slower_than_latency_margin_is_discarded(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    """STS counts the session from when it received the call; if the answer took longer than
    latency_margin the session could end after not_after: fail closed."""
    clock = SteppingClock(timedelta(seconds=2))
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    scope = Scope.of(NAME, world.bucket_arn, ["read"])
    request = mint_request(scope, now=clock.now(), ttl=MIN_TTL)
    with pytest.raises(IssuerUnavailable, match="discarded"):
        await issuer.mint(request)
    await issuer.aclose()


async def test_ttls_sts_cannot_honour_are_refused_before_calling_it(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    scope = Scope.of(NAME, world.bucket_arn, ["read"])
    before = len(moto_aws.sts_calls())
    with pytest.raises(InvalidRequest, match="too short"):
        await issuer.mint(mint_request(scope, now=clock.now(), ttl=timedelta(minutes=15)))
    late = mint_request(scope, now=clock.now(), ttl=MIN_TTL)
    clock.advance(timedelta(minutes=2))  # the broker was slow: 14 minutes left
    with pytest.raises(IssuerError, match="minimum session"):
        await issuer.mint(late)
    assert len(moto_aws.sts_calls()) == before
    await issuer.aclose()


async def test_params_are_refused(moto_aws: MotoAWS, world: World, creds_file: Path) -> None:
    clock = fake_clock()
    issuer = make_issuer(moto_aws, world, creds_file, clock)
    request = mint_request(Scope.of(NAME, world.bucket_arn, ["read"]), now=clock.now(), ttl=MIN_TTL)
    with pytest.raises(InvalidRequest, match="takes no params"):
        await issuer.mint(msgspec.structs.replace(request, params={"public_key": "x"}))
    await issuer.aclose()


async def test_a_closed_issuer_is_unavailable(
    moto_aws: MotoAWS, world: World, creds_file: Path
) -> None:
    issuer = make_issuer(moto_aws, world, creds_file, fake_clock())
    await issuer.check_health()
    await issuer.aclose()
    with pytest.raises(IssuerUnavailable, match="closed"):
        await issuer.check_health()


@pytest.mark.parametrize(
    ("scope", "says"),
    [
        (lambda w: Scope.of("other", w.bucket_arn, ["read"]), "not 'aws'"),
        (lambda w: Scope.of(NAME, "arn:aws:s3:::elsewhere", ["read"]), "has no resource"),
        (lambda w: Scope.of(NAME, w.bucket_arn, ["read", "admin"]), "no action 'admin'"),
        (lambda w: Scope.of(NAME, w.bucket_arn, []), "at least one action"),
    ],
)
def test_check_scope_refuses_what_is_not_configured(
    moto_aws: MotoAWS, world: World, scope: Any, says: str
) -> None:
    issuer = make_issuer(moto_aws, world, None, fake_clock())
    with pytest.raises(ScopeNotSupported, match=re.escape(says)):
        issuer.check_scope(scope(world))


# -- construction and configuration -----------------------------------------------------


def test_the_entry_point_builds_an_issuer(moto_aws: MotoAWS, world: World) -> None:
    (ep,) = [e for e in entry_points(group="jit_broker.issuers") if e.name == "aws"]
    factory = ep.load()
    assert factory is AWSIssuer
    issuer = factory(
        IssuerContext(
            name="aws-prod",
            config=config_for(moto_aws, world, None),
            clock=SystemClock(),
            broker_url="https://broker.test",
        )
    )
    assert isinstance(issuer, Issuer)
    caps = issuer.capabilities
    assert (caps.min_ttl, caps.default_ttl, caps.max_ttl) == (
        timedelta(minutes=16),
        timedelta(minutes=30),
        timedelta(hours=1),
    )
    assert caps.revocable is False
    assert caps.renewable is False


def _bad(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "region": REGION,
        "resources": {
            "orders": {
                "role_arn": "arn:aws:iam::123456789012:role/orders",
                "actions": {"read": READ},
                "resources": ["arn:aws:s3:::orders", "arn:aws:s3:::orders/*"],
            }
        },
    }
    base.update(over)
    return base


def _resource(**over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = dict(_bad()["resources"]["orders"])
    entry.update(over)
    return {"orders": entry}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"resources": _bad()["resources"]}, "region"),
        (_bad(region="Europe"), "region: not an AWS region"),
        (_bad(aws_secret_access_key="inline"), "aws_secret_access_key"),
        (_bad(endpoint_url="http://sts.example.com"), "endpoint_url: must use https"),
        (
            _bad(endpoint_url="https://user:pw@sts.example.com"),
            "endpoint_url: must not carry credentials",
        ),
        (_bad(endpoint_url="ftp://sts.example.com"), "endpoint_url: must be an absolute https"),
        (_bad(profile="jit"), "profile: only used with credentials_file"),
        (_bad(credentials_file="/nonexistent/creds"), "credentials_file: '/nonexistent/creds'"),
        (_bad(max_ttl="13h"), "max_ttl: must be between 16m and 12h"),
        (_bad(max_ttl="15m"), "max_ttl: must be between 16m and 12h"),
        (_bad(max_ttl="forever"), "max_ttl: not a duration"),
        (_bad(max_ttl="20m", default_ttl="30m"), "default_ttl must not exceed max_ttl"),
        (_bad(timeout=0), "timeout: must be between 1s and 1m"),
        (_bad(max_attempts=0), "max_attempts: must be between 1 and 10"),
        (_bad(latency_margin="31s"), "latency_margin: must be between"),
        (_bad(external_id="x"), "external_id: 2 to 1224"),
        (_bad(resources={}), "resources: at least one resource"),
        (_bad(resources=_resource(role_arn="arn:aws:iam::1:user/x")), ".role_arn: not an IAM"),
        (_bad(resources=_resource(actions={})), ".actions: at least one action"),
        (_bad(resources=_resource(actions={"read": []})), ".actions.read: list at least one"),
        (_bad(resources=_resource(actions={"read": ["GetObject"]})), "not an IAM action"),
        (_bad(resources=_resource(actions={"re ad": READ})), "not an action name"),
        (_bad(resources=_resource(resources=[])), ".resources: list at least one"),
        (_bad(resources=_resource(resources=["orders"])), ".resources: not an ARN"),
        (_bad(resources=_resource(role="x")), "role"),
        (
            _bad(
                resources=_resource(resources=[f"arn:aws:s3:::orders-{i:03}/*" for i in range(100)])
            ),
            "over AWS's limit of 2048",
        ),
    ],
)
def test_bad_configuration_is_a_config_error_naming_the_key(config: Any, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        AWSIssuer(
            IssuerContext(name="aws-prod", config=config, clock=SystemClock(), broker_url="x")
        )
    assert str(info.value).startswith("aws issuer 'aws-prod': ")
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("not an ini file", "is not an INI credentials file"),
        ("[other]\naws_access_key_id = AKIAAAAAAAAAAAAAAAAA\n", "has no [default] section"),
        ("[default]\naws_access_key_id = AKIAAAAAAAAAAAAAAAAA\n", "needs aws_access_key_id and"),
        (
            "[default]\naws_access_key_id = AKIAAAAAAAAAAAAAAAAA\n"
            "aws_secret_access_key = very-secret-value\nregion = us-east-1\n",
            "unexpected keys: region",
        ),
        (
            "[default]\naws_access_key_id = very-secret-value\n"
            "aws_secret_access_key = very-secret-value\n",
            "is not an access key id",
        ),
    ],
)
def test_a_bad_credentials_file_is_a_config_error_that_quotes_nothing_from_it(
    tmp_path: Path, content: str, says: str
) -> None:
    path = tmp_path / "creds"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        AWSIssuer(
            IssuerContext(
                name="aws-prod",
                config=_bad(credentials_file=str(path)),
                clock=SystemClock(),
                broker_url="x",
            )
        )
    assert says in str(info.value)
    assert "very-secret-value" not in str(info.value)


def test_loopback_http_endpoints_are_allowed() -> None:
    for url in ("http://127.0.0.1:5000", "http://localhost:4566", "http://[::1]:9"):
        issuer = AWSIssuer(
            IssuerContext(
                name="aws", config=_bad(endpoint_url=url), clock=SystemClock(), broker_url="x"
            )
        )
        assert issuer.settings.endpoint_url == url
