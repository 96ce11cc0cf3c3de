"""The ``github`` issuer against a fake GitHub served over real HTTP on 127.0.0.1, with the real
Redis on 127.0.0.1:6379 as the token store: the conformance kit, exactly what GitHub receives,
the App JWT as GitHub verifies it, revocation driven by the broker's own lease manager and
reaper, the encrypted token store, failures, and strict configuration."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from broker.audit import AuditLog, MemorySink
from broker.clock import SystemClock
from broker.config import ReaperSettings
from broker.errors import (
    ConfigError,
    InvalidRequest,
    IssuerError,
    IssuerUnavailable,
    ScopeNotSupported,
)
from broker.issuer import Issuer, IssuerContext
from broker.leases import LeaseManager, LeaseStore, Reaper
from broker.testing import FakeClock, IssuerConformance, lease_for, mint_request
from broker.types import Credential, LeaseState, MintRequest, Principal, Scope, Task
from issuers.github import GitHubIssuer
from issuers.github.scope import REPOSITORY_PERMISSIONS
from tests.issuers.github_support import ACTION_REQUESTS, FakeGitHub

pytestmark = pytest.mark.integration  # the real Redis on 127.0.0.1:6379 holds the token store

APP_ID = 424242
INSTALLATION = 48151623
OTHER_INSTALLATION = 90817263
RESOURCE = "https://github.com/acme/api"
SCOPE = Scope.of("github", RESOURCE, ["contents:read", "issues:write", "pull_requests:read"])
GRANTED = {"contents": "write", "issues": "write", "pull_requests": "write", "metadata": "read"}
WORKLOAD = Principal(id="dev:ci", issuer="dev", subject="ci")
REAPER = ReaperSettings(
    visibility_timeout=timedelta(seconds=30),
    mint_grace=timedelta(seconds=60),
    backoff_base=timedelta(seconds=1),
    backoff_cap=timedelta(seconds=60),
    overdue_after_attempts=3,
    issuer_timeout=timedelta(seconds=5),
)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    """The GitHub App's key pair (GitHub hands out PKCS#1 PEM private keys)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_secret_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


def pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class Files:
    def __init__(self, tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
        self.dir = tmp_path
        self.private_key = write_secret_file(tmp_path / "app.pem", pkcs1_pem(key))
        self.state_key = self.new_state_key("state.key")

    def new_state_key(self, name: str) -> str:
        return write_secret_file(self.dir / name, base64.b64encode(os.urandom(32)) + b"\n")


@pytest.fixture
def files(tmp_path: Path, app_key: rsa.RSAPrivateKey) -> Files:
    return Files(tmp_path, app_key)


def start_fake(clock: Any, key: rsa.RSAPrivateKey, **kwargs: Any) -> FakeGitHub:
    fake = FakeGitHub(clock, key.public_key(), app_id=APP_ID, **kwargs)
    fake.install(INSTALLATION, "acme", {"api": 1001, "web": 1002}, GRANTED)
    fake.install(OTHER_INSTALLATION, "umbrella", {"labs": 2001}, {"contents": "read"})
    fake.start()
    return fake


@pytest.fixture
def github(clock: FakeClock, app_key: rsa.RSAPrivateKey) -> Iterator[FakeGitHub]:
    fake = start_fake(clock, app_key)
    yield fake
    fake.stop()


def config_for(fake: FakeGitHub, files: Files, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "app_id": APP_ID,
        "private_key_file": files.private_key,
        "installations": {"acme": INSTALLATION},
        "base_url": fake.url,
        "web_url": "https://github.com",  # the fake serves github.com's repositories
        "state_key_file": files.state_key,
        "timeout": "2s",
        "connect_timeout": "1s",
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def make_issuer(
    clock: Any,
    fake: FakeGitHub,
    files: Files,
    *,
    redis: Any,
    prefix: str,
    name: str = "github",
    dev: bool = False,
    **overrides: Any,
) -> GitHubIssuer:
    return GitHubIssuer(
        IssuerContext(
            name=name,
            config=config_for(fake, files, **overrides),
            clock=clock,
            broker_url="https://broker.test",
            dev=dev,
            redis=redis,
            state_prefix=f"{prefix}:issuer:{name}",
        )
    )


@pytest.fixture
async def issuer(
    clock: FakeClock, github: FakeGitHub, files: Files, real_redis: aioredis.Redis, key_prefix: str
) -> AsyncIterator[GitHubIssuer]:
    issuer = make_issuer(clock, github, files, redis=real_redis, prefix=key_prefix)
    yield issuer
    await issuer.aclose()


def request(clock: Any, scope: Scope = SCOPE, ttl: float = 900) -> MintRequest:
    return mint_request(scope, now=clock.now(), ttl=timedelta(seconds=ttl))


async def call(fake: FakeGitHub, token: str, action: str, repo: str = "acme/api") -> int:
    """Use ``token`` like a GitHub client would for ``action``; the HTTP status."""
    method, rest = ACTION_REQUESTS[action]
    body = {"title": "x"} if method in ("POST", "PUT") else None
    async with httpx.AsyncClient(base_url=fake.url, timeout=5) as client:
        resp = await client.request(
            method,
            f"/repos/{repo}{rest}",
            json=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "User-Agent": "test-client",
            },
        )
    return resp.status_code


async def works(fake: FakeGitHub, credential: Credential, action: str = "contents:read") -> bool:
    return await call(fake, credential.secret.reveal(), action) in (200, 201)


# -- the conformance kit -----------------------------------------------------------------------


class TestGitHubIssuerConformance(IssuerConformance[GitHubIssuer]):
    """The kit, against the fake GitHub over HTTP and the real Redis.

    ``let_expire`` plays the broker's reaper: GitHub tokens live an hour whatever the lease
    says, so a lease shorter than that ends because the broker revokes it at ``not_after``
    (docs/issuers/github.md). GitHub's own expiry is tested on its own below."""

    @pytest.fixture
    async def issuer(
        self,
        clock: FakeClock,
        app_key: rsa.RSAPrivateKey,
        files: Files,
        real_redis: aioredis.Redis,
        key_prefix: str,
    ) -> AsyncIterator[GitHubIssuer]:
        self.github = start_fake(clock, app_key)
        issuer = make_issuer(clock, self.github, files, redis=real_redis, prefix=key_prefix)
        yield issuer
        await issuer.aclose()
        self.github.stop()

    def scope(self) -> Scope:
        return SCOPE

    def narrower_scope(self) -> Scope | None:
        return Scope.of("github", RESOURCE, ["contents:read"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of("github", RESOURCE, ["members:read"])  # an organization permission

    def action_outside_scope(self) -> str:
        return "contents:write"

    async def credential_works(
        self, issuer: GitHubIssuer, credential: Credential, scope: Scope
    ) -> bool:
        return await works(self.github, credential)

    async def credential_allows(
        self, issuer: GitHubIssuer, credential: Credential, action: str
    ) -> bool | None:
        return await works(self.github, credential, action)

    @asynccontextmanager
    async def outage(self, issuer: GitHubIssuer) -> AsyncIterator[None]:
        self.github.stop()  # connections to its port are refused
        try:
            yield
        finally:
            self.github.start()

    async def let_expire(self, issuer: GitHubIssuer, request: MintRequest) -> None:
        await super().let_expire(issuer, request)
        await self.revoke(issuer, lease_for(request, state=LeaseState.ACTIVE))  # the reaper


# -- what GitHub receives ----------------------------------------------------------------------


async def test_mint_asks_github_for_exactly_the_repository_and_permissions(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    req = request(clock)
    credential = await issuer.mint(req)
    [post] = github.calls("POST", f"/app/installations/{INSTALLATION}/access_tokens")
    assert post.body == {
        "repositories": ["api"],
        "permissions": {"contents": "read", "issues": "write", "pull_requests": "read"},
    }
    assert post.auth == "jwt"
    assert post.api_version == "2022-11-28"
    assert post.user_agent.startswith("jit-broker")
    record = github.record(credential.secret.reveal())
    assert record is not None
    assert record.repositories == {"acme/api"}
    assert record.installation_id == INSTALLATION
    assert credential.expires_at == req.not_after  # shorter than GitHub's hour
    assert credential.handle == {
        "installation_id": str(INSTALLATION),
        "repository": "acme/api",
        "github_expires_at": "2030-01-01T01:00:00Z",
    }
    assert credential.metadata["permissions"] == "contents:read issues:write pull_requests:read"
    assert credential.secret.reveal().startswith("ghs_")
    # exactly the scope, seen from a client: the other repository is out of reach
    assert await works(github, credential, "contents:read")
    assert await call(github, credential.secret.reveal(), "contents:read", "acme/web") == 404
    assert not await works(github, credential, "pull_requests:write")


async def test_the_app_jwt_is_what_github_documents(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    clock.advance(timedelta(microseconds=400_000))
    await issuer.mint(request(clock))
    [post] = github.calls("POST", "/access_tokens")
    now = int(clock.now().timestamp())
    assert post.jwt_header == {"alg": "RS256", "typ": "JWT"}
    assert post.jwt_claims == {"iat": now - 60, "exp": now - 60 + 600, "iss": APP_ID}


async def test_the_app_jwt_is_reused_then_renewed_before_it_expires(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    await issuer.check_health()
    clock.advance(timedelta(minutes=7))
    await issuer.check_health()  # 1 min of a 10 min JWT left: re-signed
    clock.advance(timedelta(seconds=30))
    await issuer.check_health()
    iats = [r.jwt_claims["iat"] for r in github.calls("GET", "/app")]
    assert iats[1] == iats[2] != iats[0]


async def test_a_client_id_is_sent_as_iss(
    clock: FakeClock, github: FakeGitHub, files: Files, real_redis: aioredis.Redis, key_prefix: str
) -> None:
    issuer = make_issuer(
        clock, github, files, redis=real_redis, prefix=key_prefix, app_id=github.client_id
    )
    await issuer.check_health()
    assert github.calls("GET", "/app")[0].jwt_claims["iss"] == github.client_id
    await issuer.aclose()


async def test_a_jwt_signed_with_another_key_is_refused_by_github(
    clock: FakeClock,
    github: FakeGitHub,
    tmp_path: Path,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer = make_issuer(
        clock, github, Files(tmp_path, stranger), redis=real_redis, prefix=key_prefix
    )
    with pytest.raises(IssuerUnavailable, match=r"answered 401 \(A JSON web token could not"):
        await issuer.check_health()
    with pytest.raises(IssuerUnavailable, match="401"):
        await issuer.mint(request(clock))
    assert github.tokens == {}
    await issuer.aclose()


async def test_check_health_notices_a_key_for_another_app(
    issuer: GitHubIssuer, github: FakeGitHub
) -> None:
    await issuer.check_health()
    github.answer_app_id = 7
    with pytest.raises(IssuerUnavailable, match="another App"):
        await issuer.check_health()


# -- revocation, as the broker drives it -------------------------------------------------------


def lease_manager(
    issuer: GitHubIssuer, real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock
) -> tuple[LeaseManager, Reaper, MemorySink]:
    sink = MemorySink()
    manager = LeaseManager(
        LeaseStore(real_redis, key_prefix),
        {"github": issuer},
        AuditLog(clock, [sink]),
        clock,
        REAPER,
        replica_id="r1",
    )
    return manager, Reaper(manager, REAPER, clock), sink


async def test_completing_the_task_revokes_the_token_at_github(
    issuer: GitHubIssuer,
    github: FakeGitHub,
    clock: FakeClock,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    manager, _, _ = lease_manager(issuer, real_redis, key_prefix, clock)
    lease, credential = await manager.issue(
        WORKLOAD, Task("deploy-7"), SCOPE, timedelta(minutes=10)
    )
    assert lease.handle["repository"] == "acme/api"
    assert await works(github, credential)
    assert github.revocations() == []

    clock.advance(timedelta(minutes=3))
    await manager.complete_task(WORKLOAD.id, "deploy-7")

    assert github.revocations() == [credential.secret.reveal()]  # DELETE /installation/token
    assert not await works(github, credential)
    record = github.record(credential.secret.reveal())
    assert record is not None
    assert record.revoked_at == clock.now()
    assert (await manager.get(lease.id)).state is LeaseState.REVOKED
    assert await real_redis.keys(f"{key_prefix}:issuer:github:*") == []


async def test_the_reaper_revokes_the_token_at_not_after(
    issuer: GitHubIssuer,
    github: FakeGitHub,
    clock: FakeClock,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    manager, reaper, _ = lease_manager(issuer, real_redis, key_prefix, clock)
    lease, credential = await manager.issue(WORKLOAD, Task("t"), SCOPE, timedelta(minutes=5))
    clock.set(lease.not_after - timedelta(seconds=1))
    assert await reaper.run_once() == 0
    assert await works(github, credential)
    clock.set(lease.not_after)
    assert await reaper.run_once() == 1
    assert github.revocations() == [credential.secret.reveal()]
    assert not await works(github, credential)
    got = await manager.get(lease.id)
    assert got.state is LeaseState.REVOKED
    assert got.revoke_trigger == "ttl"


async def test_a_crash_mid_mint_is_revoked_by_the_reaper_from_the_lease_id_alone(
    issuer: GitHubIssuer,
    github: FakeGitHub,
    clock: FakeClock,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    manager, _, _ = lease_manager(issuer, real_redis, key_prefix, clock)
    gate = asyncio.Event()
    minted: list[Credential] = []
    original = issuer.mint

    async def dies_after_minting(req: MintRequest) -> Credential:
        minted.append(await original(req))
        await gate.wait()  # the process dies before the lease records the handle
        raise AssertionError("unreachable")

    issuer.mint = dies_after_minting  # type: ignore[method-assign,assignment]
    issuing = asyncio.create_task(manager.issue(WORKLOAD, Task("t"), SCOPE, timedelta(minutes=30)))
    while not minted:
        await asyncio.sleep(0.001)
    issuing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await issuing
    [credential] = minted
    assert await works(github, credential)

    other = LeaseManager(  # another replica, with its own issuer instance on the same Redis
        LeaseStore(real_redis, key_prefix),
        {"github": issuer},
        AuditLog(clock, [MemorySink()]),
        clock,
        REAPER,
        replica_id="r2",
    )
    clock.advance(REAPER.mint_grace)
    assert await Reaper(other, REAPER, clock).run_once() == 1
    assert github.revocations() == [credential.secret.reveal()]
    assert not await works(github, credential)


async def test_another_replica_revokes_what_this_one_minted(
    issuer: GitHubIssuer,
    github: FakeGitHub,
    files: Files,
    clock: FakeClock,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    req = request(clock)
    credential = await issuer.mint(req)
    replica = make_issuer(clock, github, files, redis=real_redis, prefix=key_prefix)
    await replica.revoke(lease_for(req))  # empty handle: found by lease id
    assert not await works(github, credential)
    await replica.aclose()


async def test_a_mint_the_broker_gave_up_on_is_still_found_and_revoked(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    github.delay = 0.3  # GitHub answers slowly; the broker's issuer_timeout fires first
    req = request(clock)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(issuer.mint(req), 0.05)
    # the manager then revokes the lease (trigger mint_failed) with an empty handle
    await issuer.revoke(lease_for(req))
    [token] = github.tokens
    assert github.revocations() == [token]
    record = github.record(token)
    assert record is not None
    assert record.revoked_at is not None


async def test_revoke_after_github_expired_the_token_is_a_noop(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    req = request(clock, ttl=3600)
    credential = await issuer.mint(req)
    clock.advance(timedelta(hours=1))
    assert not await works(github, credential)  # GitHub's own expiry
    await issuer.revoke(lease_for(req, credential))  # GitHub answers 401: already invalid
    await issuer.revoke(lease_for(req, credential))  # and nothing is stored any more
    assert github.revocations() == [credential.secret.reveal()]


async def test_without_the_reapers_revoke_a_short_lease_lives_until_githubs_hour(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    """The documented limit: GitHub cannot shorten a token. If the broker never revokes (all
    replicas down), a 5-minute lease's token works until GitHub's expiry, an hour after it
    was minted, and no longer."""
    req = request(clock, ttl=300)
    credential = await issuer.mint(req)
    assert credential.expires_at == req.not_after
    clock.set(req.not_after + timedelta(minutes=1))
    assert await works(github, credential)
    clock.set(req.issued_at + timedelta(hours=1))
    assert not await works(github, credential)


# -- the token store ---------------------------------------------------------------------------


async def test_the_stored_token_is_encrypted_and_expires_with_github(
    issuer: GitHubIssuer, clock: FakeClock, real_redis: aioredis.Redis, key_prefix: str
) -> None:
    req = request(clock)
    credential = await issuer.mint(req)
    token = credential.secret.reveal()
    keys = await real_redis.keys(f"{key_prefix}:*")
    assert keys == [f"{key_prefix}:issuer:github:token:{{{req.lease_id}}}".encode()]
    value = await real_redis.get(keys[0])
    assert value is not None
    assert token.encode() not in value
    assert token.encode() not in base64.b64decode(value)
    ttl = await real_redis.pttl(keys[0])
    assert timedelta(hours=1) < timedelta(milliseconds=ttl) <= timedelta(hours=1, minutes=5)


async def test_a_stored_copy_moved_to_another_lease_does_not_decrypt(
    issuer: GitHubIssuer,
    github: FakeGitHub,
    clock: FakeClock,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    victim_req = request(clock)
    victim = await issuer.mint(victim_req)
    attacker_req = request(clock)
    prefix = f"{key_prefix}:issuer:github:token"
    blob = await real_redis.get(f"{prefix}:{{{victim_req.lease_id}}}")
    assert isinstance(blob, bytes)
    await real_redis.set(f"{prefix}:{{{attacker_req.lease_id}}}", blob)
    with pytest.raises(IssuerError, match="does not verify"):
        await issuer.revoke(lease_for(attacker_req))
    assert await works(github, victim)  # nothing was revoked on a forged copy
    await real_redis.set(f"{prefix}:{{{attacker_req.lease_id}}}", b"not base64!")
    with pytest.raises(IssuerError, match="malformed"):
        await issuer.revoke(lease_for(attacker_req))


async def test_state_key_rotation_keeps_older_tokens_revocable(
    issuer: GitHubIssuer,
    github: FakeGitHub,
    files: Files,
    clock: FakeClock,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    old_req = request(clock)
    old = await issuer.mint(old_req)
    new_key = files.new_state_key("state-2.key")
    forgetful = make_issuer(
        clock, github, files, redis=real_redis, prefix=key_prefix, state_key_file=new_key
    )
    with pytest.raises(IssuerError, match="previous_state_key_files"):
        await forgetful.revoke(lease_for(old_req))  # fails closed: the token still works
    assert await works(github, old)
    rotated = make_issuer(
        clock,
        github,
        files,
        redis=real_redis,
        prefix=key_prefix,
        state_key_file=new_key,
        previous_state_key_files=[files.state_key],
    )
    new_req = request(clock)
    new = await rotated.mint(new_req)
    await rotated.revoke(lease_for(old_req))
    await rotated.revoke(lease_for(new_req))
    assert not await works(github, old)
    assert not await works(github, new)
    await forgetful.aclose()
    await rotated.aclose()


async def test_redis_down_at_mint_revokes_the_new_token_at_once(
    clock: FakeClock, github: FakeGitHub, files: Files, key_prefix: str
) -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    issuer = make_issuer(clock, github, files, redis=dead, prefix=key_prefix)
    with pytest.raises(IssuerUnavailable, match="token store"):
        await issuer.mint(request(clock))
    [token] = github.tokens
    assert github.revocations() == [token]
    record = github.record(token)
    assert record is not None
    assert record.revoked_at is not None
    with pytest.raises(IssuerUnavailable, match="token store"):
        await issuer.revoke(lease_for(request(clock)))  # cannot tell: never pretend
    with pytest.raises(IssuerUnavailable, match="token store"):
        await issuer.check_health()
    await issuer.aclose()
    await dead.aclose()


async def test_dev_mode_without_redis_keeps_tokens_in_memory(
    clock: FakeClock, github: FakeGitHub, files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = make_issuer(clock, github, files, redis=None, prefix="", dev=True, state_key_file=None)
    assert "in-memory key" in caplog.text
    req = request(clock)
    credential = await issuer.mint(req)
    await issuer.revoke(lease_for(req))
    assert not await works(github, credential)
    await issuer.aclose()


# -- GitHub refusing, failing, or granting too much ---------------------------------------------


async def test_permissions_the_installation_lacks_are_refused_by_github(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    scope = Scope.of("github", RESOURCE, ["workflows:write"])
    issuer.check_scope(scope)  # a valid GitHub permission; this installation lacks it
    with pytest.raises(IssuerError, match=r"422 \(The permissions requested are not granted") as e:
        await issuer.mint(request(clock, scope))
    assert not isinstance(e.value, IssuerUnavailable)
    with pytest.raises(IssuerError, match="422"):
        await issuer.mint(
            request(clock, Scope.of("github", "https://github.com/acme/nope", ["contents:read"]))
        )
    assert github.tokens == {}


@pytest.mark.parametrize(
    ("misbehaviour", "problem"),
    [
        pytest.param(
            {"grant_extra": {"administration": "write"}}, "administration:write", id="extra"
        ),
        pytest.param({"all_repositories": True}, "exactly the requested repository", id="repos"),
        pytest.param(
            {"echo_metadata": False, "grant_extra": {"metadata": "write"}},
            "metadata:write",
            id="meta",
        ),
    ],
)
async def test_a_token_broader_than_asked_is_revoked_and_refused(
    issuer: GitHubIssuer,
    github: FakeGitHub,
    clock: FakeClock,
    real_redis: aioredis.Redis,
    key_prefix: str,
    misbehaviour: dict[str, Any],
    problem: str,
) -> None:
    for attr, value in misbehaviour.items():
        setattr(github, attr, value)
    with pytest.raises(IssuerError, match=problem):
        await issuer.mint(request(clock))
    [token] = github.tokens
    assert github.revocations() == [token]
    assert await real_redis.keys(f"{key_prefix}:*") == []


@pytest.mark.parametrize("status", [500, 502, 503, 429, 403])
async def test_github_failing_is_issuer_unavailable_and_revoke_is_retried(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock, status: int
) -> None:
    github.fail_next = [status]
    with pytest.raises(IssuerUnavailable, match=f"answered {status}"):
        await issuer.mint(request(clock))
    req = request(clock)
    credential = await issuer.mint(req)
    github.fail_next = [status]
    with pytest.raises(IssuerUnavailable, match=f"revoke the token of lease .* {status}"):
        await issuer.revoke(lease_for(req, credential))
    assert await works(github, credential)
    await issuer.revoke(lease_for(req, credential))  # the broker's retry
    assert not await works(github, credential)


async def test_a_github_that_does_not_answer_in_time_is_unavailable(
    clock: FakeClock, github: FakeGitHub, files: Files, real_redis: aioredis.Redis, key_prefix: str
) -> None:
    issuer = make_issuer(clock, github, files, redis=real_redis, prefix=key_prefix, timeout="200ms")
    github.delay = 0.5
    with pytest.raises(IssuerUnavailable, match="did not answer in time"):
        await issuer.mint(request(clock))
    await issuer.aclose()


# -- installations -----------------------------------------------------------------------------


async def test_installations_are_discovered_per_owner_and_cached(
    clock: FakeClock, github: FakeGitHub, files: Files, real_redis: aioredis.Redis, key_prefix: str
) -> None:
    issuer = make_issuer(
        clock,
        github,
        files,
        redis=real_redis,
        prefix=key_prefix,
        installations={},
        discover_installations=True,
        installation_cache_ttl="10m",
    )
    labs = Scope.of("github", "https://github.com/umbrella/labs", ["contents:read"])
    credential = await issuer.mint(request(clock, labs))
    assert await call(github, credential.secret.reveal(), "contents:read", "umbrella/labs") == 200
    await issuer.mint(request(clock, labs))
    await issuer.mint(request(clock, Scope.of("github", RESOURCE, ["contents:read"])))
    lookups = [r.path for r in github.calls("GET", "/installation")]
    assert lookups == ["/repos/umbrella/labs/installation", "/repos/acme/api/installation"]
    assert github.calls("POST", f"/app/installations/{OTHER_INSTALLATION}/access_tokens")
    clock.advance(timedelta(minutes=10))
    await issuer.mint(request(clock, labs))
    assert len(github.calls("GET", "/installation")) == 3  # the cache entry expired
    with pytest.raises(IssuerError, match="not installed on nobody/repo"):
        await issuer.mint(
            request(clock, Scope.of("github", "https://github.com/nobody/repo", ["contents:read"]))
        )
    await issuer.aclose()


async def test_github_enterprise_server_paths_and_resource_host(
    clock: FakeClock,
    app_key: rsa.RSAPrivateKey,
    files: Files,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    ghes = start_fake(clock, app_key, prefix="/api/v3")
    try:
        issuer = make_issuer(
            clock,
            ghes,
            files,
            redis=real_redis,
            prefix=key_prefix,
            web_url="https://ghe.example.com",
        )
        with pytest.raises(ScopeNotSupported):
            issuer.check_scope(SCOPE)  # github.com is not this server
        scope = Scope.of("github", "https://ghe.example.com/acme/api", ["contents:read"])
        req = request(clock, scope)
        credential = await issuer.mint(req)
        assert await works(ghes, credential)
        await issuer.revoke(lease_for(req))
        assert not await works(ghes, credential)
        assert {r.path.split("/")[1:3] == ["api", "v3"] for r in ghes.requests} == {True}
        await issuer.aclose()
    finally:
        ghes.stop()


async def test_https_with_a_private_ca_file(
    clock: FakeClock,
    app_key: rsa.RSAPrivateKey,
    files: Files,
    tmp_path: Path,
    real_redis: aioredis.Redis,
    key_prefix: str,
) -> None:
    """A GitHub Enterprise Server behind a private CA: trusted through ca_file, refused
    without it."""
    cert, key = tmp_path / "ghes.crt", tmp_path / "ghes.key"
    openssl = [
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
        *("-addext", "subjectAltName=IP:127.0.0.1"),
    ]
    subprocess.run(
        openssl,
        check=True,
        capture_output=True,
    )
    ghes = start_fake(clock, app_key, prefix="/api/v3", tls=(str(cert), str(key)))
    try:
        trusting = make_issuer(
            clock, ghes, files, redis=real_redis, prefix=key_prefix, ca_file=str(cert)
        )
        await trusting.check_health()
        req = request(clock)
        credential = await trusting.mint(req)
        await trusting.revoke(lease_for(req))
        assert ghes.revocations() == [credential.secret.reveal()]
        await trusting.aclose()
        untrusting = make_issuer(clock, ghes, files, redis=real_redis, prefix=key_prefix)
        with pytest.raises(IssuerUnavailable, match="cannot reach GitHub"):
            await untrusting.check_health()
        await untrusting.aclose()
    finally:
        ghes.stop()


# -- the issuer on real time ---------------------------------------------------------------------


async def test_on_the_real_clock_github_accepts_the_jwt_and_the_token_works(
    app_key: rsa.RSAPrivateKey, files: Files, real_redis: aioredis.Redis, key_prefix: str
) -> None:
    clock = SystemClock()
    fake = start_fake(clock, app_key)
    try:
        issuer = make_issuer(clock, fake, files, redis=real_redis, prefix=key_prefix)
        await issuer.check_health()
        req = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
        credential = await issuer.mint(req)
        assert credential.expires_at <= req.not_after
        assert await works(fake, credential)
        await issuer.revoke(lease_for(req, credential))
        assert not await works(fake, credential)
        await issuer.aclose()
    finally:
        fake.stop()


# -- scope ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        Scope.of("github", RESOURCE, ["contents:read"]),
        Scope.of("github", RESOURCE, ["metadata:read"]),
        Scope.of("github", RESOURCE, ["workflows:write", "contents:write"]),
        Scope.of("github", RESOURCE, ["repository_projects:admin"]),
        Scope.of("github", "https://github.com/acme/my.repo_name-2", ["issues:read"]),
        Scope.of("github", "https://github.com/ACME/API", ["issues:read"]),
    ],
    ids=lambda s: f"{s.resource} {','.join(s.actions)}",
)
def test_check_scope_accepts_repository_permissions_on_one_repository(
    issuer: GitHubIssuer, scope: Scope
) -> None:
    issuer.check_scope(scope)


def refused(
    resource: str, actions: list[str], reason: str, why: str, issuer: str = "github"
) -> Any:
    return pytest.param(Scope.of(issuer, resource, actions), reason, id=why)


GH = "https://github.com"
READ = ["contents:read"]


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        refused(f"{GH}/acme", READ, "repository URL", "an owner without a repository"),
        refused(f"{GH}/acme/api/", READ, "repository URL", "a trailing slash"),
        refused(f"{GH}/acme/api/tree/main", READ, "repository URL", "a sub-path"),
        refused(f"{GH}/acme/*", READ, "repository URL", "a glob"),
        refused(f"{GH}/acme/api?x=1", READ, "repository URL", "a query"),
        refused(f"{GH}/acme/api.git", READ, ".git", "a clone URL"),
        refused(f"{GH}/acme/..", READ, ".git", "a dot-dot repository"),
        refused("http://github.com/acme/api", READ, "repository URL", "plain http"),
        refused("https://gitlab.com/acme/api", READ, "repository URL", "another host"),
        refused("acme/api", READ, "repository URL", "a bare owner/repo"),
        refused(f"{GH}/-acme/api", READ, "repository URL", "an invalid owner"),
        refused(RESOURCE, [], "at least one action", "no actions"),
        refused(RESOURCE, ["contents"], "<permission>:<level>", "no level"),
        refused(RESOURCE, ["read"], "<permission>:<level>", "a bare level"),
        refused(RESOURCE, ["contents:admin"], "read, write only", "a level GitHub lacks"),
        refused(RESOURCE, ["workflows:read"], "write only", "workflows can only be written"),
        refused(RESOURCE, ["pull-requests:read"], "unknown", "a misspelt permission"),
        refused(RESOURCE, ["members:read"], "not a repository", "an organization permission"),
        refused(RESOURCE, ["organization_secrets:read"], "not a repository", "org secrets"),
        refused(RESOURCE, ["starring:read"], "not a repository", "a user permission"),
        refused(f"{GH}/umbrella/labs", READ, "no GitHub App installation", "an unknown owner"),
        refused(RESOURCE, READ, "not 'github'", "another issuer instance", issuer="gh-other"),
    ],
)
async def test_check_scope_and_mint_refuse_what_a_token_cannot_express(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock, scope: Scope, reason: str
) -> None:
    with pytest.raises(ScopeNotSupported, match=reason):
        issuer.check_scope(scope)
    with pytest.raises(ScopeNotSupported):
        await issuer.mint(request(clock, scope))
    assert github.requests == []


async def test_two_levels_of_one_permission_ask_for_the_higher(
    issuer: GitHubIssuer, github: FakeGitHub, clock: FakeClock
) -> None:
    scope = Scope.of("github", RESOURCE, ["contents:read", "contents:write", "metadata:read"])
    credential = await issuer.mint(request(clock, scope))
    [post] = github.calls("POST", "/access_tokens")
    assert post.body["permissions"] == {"contents": "write", "metadata": "read"}
    assert await works(github, credential, "contents:write")


def test_the_permission_table_is_githubs_repository_permissions() -> None:
    assert REPOSITORY_PERMISSIONS["contents"] == ("read", "write")
    assert REPOSITORY_PERMISSIONS["workflows"] == ("write",)
    assert REPOSITORY_PERMISSIONS["repository_projects"] == ("read", "write", "admin")
    assert not any(name.startswith("organization_") for name in REPOSITORY_PERMISSIONS)


async def test_params_are_refused(issuer: GitHubIssuer, clock: FakeClock) -> None:
    req = msgspec.structs.replace(request(clock), params={"public_key": "ssh-ed25519 AAAA"})
    with pytest.raises(InvalidRequest, match="takes no params"):
        await issuer.mint(req)


# -- configuration -----------------------------------------------------------------------------


def test_the_issuer_is_registered_and_implements_the_contract(issuer: GitHubIssuer) -> None:
    (ep,) = [e for e in entry_points(group="jit_broker.issuers") if e.name == "github"]
    assert ep.load() is GitHubIssuer
    assert isinstance(issuer, Issuer)
    caps = issuer.capabilities
    assert (caps.max_ttl, caps.default_ttl, caps.revocable) == (
        timedelta(hours=1),
        timedelta(minutes=15),
        True,
    )


def test_no_repr_shows_key_material(
    issuer: GitHubIssuer, app_key: rsa.RSAPrivateKey, files: Files
) -> None:
    pem = pkcs1_pem(app_key).decode()
    body = "".join(pem.splitlines()[1:-1])
    state = Path(files.state_key).read_text().strip()
    texts = [repr(issuer), str(issuer), repr(issuer._settings), repr(issuer._store)]
    for text in texts:
        assert body[:40] not in text
        assert state not in text


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        pytest.param({"colour": "blue"}, "colour", id="an unknown key"),
        pytest.param({"app_id": None}, "app_id", id="no app_id"),
        pytest.param({"app_id": 0}, "app_id", id="app_id zero"),
        pytest.param({"app_id": "my-app"}, "app_id", id="app_id a slug"),
        pytest.param({"app_id": True}, "app_id", id="app_id a boolean"),
        pytest.param({"private_key_file": "/nonexistent/app.pem"}, "private_key_file", id="no key"),
        pytest.param({"installations": {}}, "installations", id="no installations"),
        pytest.param({"installations": {"acme": -1}}, "installations", id="bad id"),
        pytest.param({"installations": {"ac me": 1}}, "installations", id="bad owner"),
        pytest.param({"installations": {"acme": 1, "ACME": 2}}, "twice", id="dup owner"),
        pytest.param({"base_url": "http://github.example.com"}, "base_url", id="plain http"),
        pytest.param({"base_url": "https://u:p@github.example.com"}, "base_url", id="credentials"),
        pytest.param({"base_url": "not a url"}, "base_url", id="garbage url"),
        pytest.param({"web_url": "https://ghe.example.com/acme"}, "web_url", id="web path"),
        pytest.param({"state_key_file": None}, "state_key_file: required", id="no state key"),
        pytest.param({"max_ttl": "2h"}, "max_ttl", id="max_ttl past GitHub's hour"),
        pytest.param({"max_ttl": "forever"}, "max_ttl", id="bad duration"),
        pytest.param({"default_ttl": "0s"}, "default_ttl", id="zero ttl"),
        pytest.param({"max_ttl": "5m", "default_ttl": "15m"}, "default_ttl", id="default > max"),
        pytest.param({"timeout": "1ms"}, "timeout", id="tiny timeout"),
        pytest.param({"ca_file": "/nonexistent/ca.pem"}, "ca_file", id="no ca file"),
        pytest.param({"ca_file": __file__}, "ca_file: .* not a usable PEM", id="not a CA file"),
        pytest.param({"discover_installations": "yes"}, "discover_installations", id="not a bool"),
    ],
)
def test_invalid_config_is_a_config_error_naming_the_key(
    clock: FakeClock,
    github: FakeGitHub,
    files: Files,
    real_redis: aioredis.Redis,
    overrides: dict[str, Any],
    names: str,
) -> None:
    config = config_for(github, files)
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    context = IssuerContext(
        name="gh-prod", config=config, clock=clock, broker_url="https://b.test", redis=real_redis
    )
    with pytest.raises(ConfigError, match=names) as err:
        GitHubIssuer(context)
    assert "'gh-prod'" in err.value.message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"not a key", "not an unencrypted PEM private key", id="garbage"),
        pytest.param("ec", "not an RSA key", id="an EC key"),
        pytest.param("rsa1024", "at least 2048 bits", id="a short RSA key"),
    ],
)
def test_a_bad_private_key_is_a_config_error_without_its_content(
    clock: FakeClock,
    github: FakeGitHub,
    files: Files,
    real_redis: aioredis.Redis,
    content: bytes | str,
    problem: str,
) -> None:
    if content == "ec":
        data = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif content == "rsa1024":
        data = pkcs1_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    else:
        assert isinstance(content, bytes)
        data = content
    path = write_secret_file(files.dir / "bad.pem", data)
    with pytest.raises(ConfigError, match=problem) as err:
        make_issuer(clock, github, files, redis=real_redis, prefix="x", private_key_file=path)
    if len(data) > 80:
        assert data.decode(errors="replace")[40:80] not in err.value.message


@pytest.mark.parametrize(
    "content",
    [
        b"short",
        base64.b64encode(os.urandom(16)),
        b"z" * 64,
        b"",
        base64.b64encode(bytes(range(200, 232))).replace(b"/", b"_"),
    ],
    ids=["garbage", "16 bytes", "not hex", "empty", "mixed base64 alphabets"],
)
def test_a_bad_state_key_is_a_config_error(
    clock: FakeClock, github: FakeGitHub, files: Files, real_redis: aioredis.Redis, content: bytes
) -> None:
    path = write_secret_file(files.dir / "bad.key", content)
    with pytest.raises(ConfigError, match=r"state_key_file: .* must hold 32 random bytes"):
        make_issuer(clock, github, files, redis=real_redis, prefix="x", state_key_file=path)


def test_state_keys_may_be_hex_or_base64(
    clock: FakeClock, github: FakeGitHub, files: Files, real_redis: aioredis.Redis
) -> None:
    raw = bytes(range(200, 232))  # encodes with +, / (standard) and -, _ (URL-safe) alike
    encodings = [
        raw.hex().encode(),
        raw.hex().upper().encode() + b"\n",
        base64.b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        base64.b64encode(os.urandom(32)) + b"\n",
    ]
    for i, text in enumerate(encodings):
        path = write_secret_file(files.dir / f"k{i}", text)
        issuer = make_issuer(
            clock, github, files, redis=real_redis, prefix="x", state_key_file=path
        )
        if i < len(encodings) - 1:
            assert issuer._settings.state_keys == (raw,)


def test_outside_dev_the_issuer_needs_the_brokers_redis(
    clock: FakeClock, github: FakeGitHub, files: Files
) -> None:
    with pytest.raises(ConfigError, match="needs the broker's Redis"):
        make_issuer(clock, github, files, redis=None, prefix="x")


def test_durations_and_github_hosts_come_from_config(
    clock: FakeClock, github: FakeGitHub, files: Files, real_redis: aioredis.Redis
) -> None:
    issuer = make_issuer(
        clock, github, files, redis=real_redis, prefix="x", max_ttl="30m", default_ttl=120
    )
    assert (issuer.capabilities.max_ttl, issuer.capabilities.default_ttl) == (
        timedelta(minutes=30),
        timedelta(minutes=2),
    )
    for base_url, host in [
        ("https://api.github.com", "github.com"),
        ("https://api.octocorp.ghe.com", "octocorp.ghe.com"),
        ("https://github.example.com/api/v3", "github.example.com"),
    ]:
        issuer = make_issuer(
            clock, github, files, redis=real_redis, prefix="x", base_url=base_url, web_url=None
        )
        issuer.check_scope(Scope.of("github", f"https://{host}/acme/api", ["contents:read"]))


async def test_the_github_expiry_in_the_handle_is_utc(
    issuer: GitHubIssuer, clock: FakeClock
) -> None:
    credential = await issuer.mint(request(clock))
    expiry = datetime.strptime(credential.handle["github_expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert expiry.replace(tzinfo=UTC) == clock.now() + timedelta(hours=1)
