"""The ``redis`` issuer against the real Redis on 127.0.0.1:6379.

- The conformance kit, with the issuer's admin link running through a TCP relay that an outage
  cuts (the minted credentials are used directly against Redis, as a client would).
- Real clients: ``redis-cli`` (password in ``REDISCLI_AUTH``, never argv) and a raw RESP socket
  authenticate as the minted user, reach the granted keys only, are refused elsewhere, and are
  shut out by revoke — the open connection is killed.
- Expiry: Redis cannot expire an ACL user. One test shows that limit; another shows the broker's
  own reaper (LeaseManager + Reaper on the real Redis) deleting the user at ``not_after``.
- TLS: a private redis-server with a throwaway CA; the issuer verifies it with ``ca_file``.
- Strict config, check_scope, params, the dangerous-command guard, fail-closed revoke.

Isolation: this Redis is shared with the broker's own tests. Every test makes its own ACL users
(``jittest_<hex>_*``, an admin ``jitadm_<hex>``) and keys (``jittest-<hex>:*``) and deletes
them afterwards; the default user is only read, never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError

from broker.audit import AuditLog, MemorySink
from broker.config import ReaperSettings
from broker.errors import ConfigError, InvalidRequest, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Issuer, IssuerContext
from broker.leases import LeaseManager, LeaseStore, Reaper
from broker.testing import FakeClock, IssuerConformance, lease_for, mint_request
from broker.types import Credential, LeaseState, MintRequest, Principal, Scope, Task
from issuers.redis import RedisIssuer
from issuers.redis.config import parse_duration

REDIS_URL = os.environ.get("JIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_URL = urlsplit(REDIS_URL)
HOST = _URL.hostname or "127.0.0.1"
PORT = _URL.port or 6379

INSTANCE = "redis-orders"
RESOURCE = "redis://127.0.0.1:6379/0#orders"
SCOPE = Scope.of(INSTANCE, RESOURCE, ["read", "write"])

#: The least an admin user needs (docs/issuers/redis.md); every test's issuer runs as one.
ADMIN_RULES = (
    "-@all",
    "+ping",
    "+multi",
    "+exec",
    "+discard",
    "+acl|setuser",
    "+acl|deluser",
    "+acl|users",
    "+client|kill",
)


# -- a TCP relay that an outage can cut ----------------------------------------------------


class Relay:
    """Relays 127.0.0.1:<port> to Redis. ``cut()`` drops every open link and closes every new
    connection at once (a partition); ``mend()`` lets traffic through again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.down = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.down:
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers |= {writer, up_writer}
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                self._writers -= {writer, up_writer}
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    def cut(self) -> None:
        self.down = True
        for w in list(self._writers):
            w.close()

    def mend(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


# -- the per-test environment ----------------------------------------------------------------


@dataclass
class RedisEnv:
    """One test's names on the shared Redis, and an inspection connection (default user)."""

    tag: str
    inspect: aioredis.Redis
    relay: Relay
    password_file: Path
    admin_user: str = field(init=False)
    user_prefix: str = field(init=False)
    key_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.admin_user = f"jitadm_{self.tag}"
        self.user_prefix = f"jittest_{self.tag}_"
        self.key_prefix = f"jittest-{self.tag}"

    def key(self, name: str) -> str:
        return f"{self.key_prefix}:orders:{name}"

    @property
    def channel(self) -> str:
        return f"{self.key_prefix}.events"

    def config(self, *, via_relay: bool = False, **overrides: Any) -> dict[str, Any]:
        port = self.relay.port if via_relay else PORT
        host = "127.0.0.1" if via_relay else HOST
        config: dict[str, Any] = {
            "url": f"redis://{host}:{port}/0",
            "username": self.admin_user,
            "password_file": str(self.password_file),
            "user_prefix": self.user_prefix,
            "resources": {
                RESOURCE: {
                    "keys": [f"{self.key_prefix}:orders:*"],
                    "channels": [self.channel],
                    "actions": {
                        "read": ["+@read"],
                        "write": ["+@write"],
                        "publish": ["+publish"],
                    },
                }
            },
        }
        config.update(overrides)
        return config

    def issuer(self, clock: FakeClock, **config: Any) -> RedisIssuer:
        return RedisIssuer(
            IssuerContext(
                name=INSTANCE,
                config=self.config(**config),
                clock=clock,
                broker_url="https://jit.test",
            )
        )

    async def acl_line(self, user: str) -> str | None:
        """The user's rules as ``ACL LIST`` shows them, or None if there is no such user."""
        lines: list[str] = await self.inspect.execute_command("ACL", "LIST")
        return next((ln for ln in lines if ln.startswith(f"user {user} ")), None)

    async def users(self) -> list[str]:
        names: list[str] = await self.inspect.execute_command("ACL", "USERS")
        return [n for n in names if n.startswith((self.user_prefix, self.admin_user))]


@pytest.fixture
async def redis_env(tmp_path: Path) -> AsyncIterator[RedisEnv]:
    inspect = aioredis.Redis.from_url(REDIS_URL, decode_responses=True, driver_info=None)
    try:
        await inspect.ping()
    except Exception as exc:
        await inspect.aclose()
        pytest.fail(f"Redis at {REDIS_URL} is not answering ({type(exc).__name__}: {exc})")
    tag = uuid.uuid4().hex[:12]
    password_file = tmp_path / "redis-admin-password"
    password_file.write_text(f"adm-{uuid.uuid4().hex}\n")
    relay = Relay(HOST, PORT)
    await relay.start()
    env = RedisEnv(tag=tag, inspect=inspect, relay=relay, password_file=password_file)
    admin_password = password_file.read_text().strip()
    await inspect.execute_command(
        "ACL", "SETUSER", env.admin_user, "reset", "on", f">{admin_password}", *ADMIN_RULES
    )
    try:
        yield env
    finally:
        await relay.close()
        for user in await env.users():
            await inspect.execute_command("ACL", "DELUSER", user)
        async for key in inspect.scan_iter(match=f"{env.key_prefix}*", count=1000):
            await inspect.unlink(key)
        await inspect.aclose()


# -- using a credential like a client ------------------------------------------------------


@asynccontextmanager
async def login(credential: Credential) -> AsyncIterator[aioredis.Redis]:
    """A redis-py client authenticated as the minted user, straight to Redis (no relay)."""
    client = aioredis.Redis(
        host=HOST,
        port=PORT,
        username=credential.metadata["username"],
        password=credential.secret.reveal(),
        decode_responses=True,
        driver_info=None,
        single_connection_client=True,
        retry=Retry(NoBackoff(), 0),  # a refused AUTH is an answer, not a hiccup to retry
    )
    try:
        yield client
    finally:
        await client.aclose()


async def probe(env: RedisEnv, credential: Credential, action: str) -> bool:
    """True if Redis lets the credential do ``action`` on the resource's keys; False if AUTH
    fails or the command is refused by the ACL."""
    try:
        async with login(credential) as client:
            if action == "read":
                await client.get(env.key("probe"))
            elif action == "write":
                await client.set(env.key("probe"), "written")
            elif action == "publish":
                await client.publish(env.channel, "hello")
            else:
                raise AssertionError(f"no probe for action {action!r}")
    except (AuthenticationError, NoPermissionError):
        return False
    return True


# -- the conformance kit ---------------------------------------------------------------------


class TestRedisIssuerConformance(IssuerConformance[RedisIssuer]):
    env: RedisEnv

    @pytest.fixture
    async def issuer(self, clock: FakeClock, redis_env: RedisEnv) -> AsyncIterator[RedisIssuer]:
        self.env = redis_env
        issuer = redis_env.issuer(clock, via_relay=True)
        yield issuer
        await issuer.aclose()

    def scope(self) -> Scope:
        return SCOPE

    def narrower_scope(self) -> Scope | None:
        return Scope.of(INSTANCE, RESOURCE, ["read"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of(INSTANCE, RESOURCE, ["admin"])  # no such action in the config

    def action_outside_scope(self) -> str:
        return "publish"  # configured for the resource, but not in scope()

    async def credential_works(
        self, issuer: RedisIssuer, credential: Credential, scope: Scope
    ) -> bool:
        return all([await probe(self.env, credential, a) for a in scope.actions])

    async def credential_allows(
        self, issuer: RedisIssuer, credential: Credential, action: str
    ) -> bool | None:
        return await probe(self.env, credential, action)

    def outage(self, issuer: RedisIssuer) -> contextlib.AbstractAsyncContextManager[object]:
        @asynccontextmanager
        async def cut() -> AsyncIterator[None]:
            self.env.relay.cut()
            try:
                yield
            finally:
                self.env.relay.mend()

        return cut()

    async def let_expire(self, issuer: RedisIssuer, request: MintRequest) -> None:
        """Redis has no expiry for ACL users: what ends the credential at ``not_after`` is the
        broker's reaper revoking the lease. The kit plays the broker, so here it plays the
        reaper too — advance the clock past ``not_after``, then revoke as the reaper does (the
        lease as stored: active, with its handle).
        test_the_brokers_reaper_deletes_the_user_at_not_after runs the real reaper instead, and
        test_redis_alone_never_expires_the_user shows what happens without it."""
        await super().let_expire(issuer, request)
        handle = {"user": issuer.username(request.lease_id)}
        await self.revoke(issuer, lease_for(request, handle=handle, state=LeaseState.ACTIVE))


# -- real clients ------------------------------------------------------------------------------


async def redis_cli(user: str, password: str, *command: str) -> str:
    """Run redis-cli as ``user``. The password goes in REDISCLI_AUTH, never on the command
    line (where ps and /proc/<pid>/cmdline would show it)."""
    argv = ["redis-cli", "-h", HOST, "-p", str(PORT), "--user", user, "--no-auth-warning"]
    argv += command
    assert all(password not in arg for arg in argv)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, "REDISCLI_AUTH": password},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    return out.decode().strip()


class RawConnection:
    """A bare RESP2 connection: no client library, no reconnects, nothing hidden."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls) -> RawConnection:
        return cls(*await asyncio.open_connection(HOST, PORT))

    async def call(self, *args: str) -> str | None:
        """Send one command; the reply as text (``+OK``, ``-NOPERM ...``, a bulk string or
        None for a nil). Raises ConnectionError at EOF."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        self.writer.write(payload.encode())
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), timeout=10)
        if not line:
            raise ConnectionError("closed by the server")
        if line.startswith(b"$"):
            n = int(line[1:])
            if n < 0:
                return None
            data = await self.reader.readexactly(n + 2)
            return data[:-2].decode()
        return line.decode().rstrip("\r\n")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def test_redis_cli_reaches_the_granted_keys_only_and_is_shut_out_by_revoke(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    env = redis_env
    issuer = env.issuer(clock)
    try:
        request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
        credential = await issuer.mint(request)
        user, password = credential.metadata["username"], credential.secret.reveal()
        await env.inspect.set(f"{env.key_prefix}:elsewhere", "not yours")

        assert await redis_cli(user, password, "SET", env.key("a"), "42") == "OK"
        assert await redis_cli(user, password, "GET", env.key("a")) == "42"
        assert await redis_cli(user, password, "DEL", env.key("a")) == "1"
        for command in (
            ["GET", f"{env.key_prefix}:elsewhere"],  # a key outside the pattern
            ["SET", f"{env.key_prefix}:elsewhere", "mine now"],
        ):
            assert "NOPERM" in await redis_cli(user, password, *command), command
        for command in (
            ["FLUSHDB"],  # @write but @dangerous: taken out by the guard
            ["KEYS", "*"],  # @read but @dangerous
            ["SCAN", "0"],  # @read, but lists every key: in the default deny
            ["FUNCTION", "FLUSH"],  # @write, server-wide: in the default deny
            ["CONFIG", "GET", "maxmemory"],
            ["ACL", "LIST"],
            ["PUBLISH", env.channel, "hi"],  # an action of the resource, not in this scope
            ["PING"],  # nothing that was not granted
        ):
            out = await redis_cli(user, password, *command)
            assert "NOPERM" in out, (command, out)
            assert "permissions to run" in out, (command, out)
        assert await env.inspect.get(f"{env.key_prefix}:elsewhere") == "not yours"

        await issuer.revoke(lease_for(request, credential))
        out = await redis_cli(user, password, "GET", env.key("a"))
        assert "WRONGPASS" in out, out
    finally:
        await issuer.aclose()


async def test_revoke_kills_a_connection_that_is_already_open(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    env = redis_env
    issuer = env.issuer(clock)
    conn = await RawConnection.open()
    try:
        request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
        credential = await issuer.mint(request)
        user, password = credential.metadata["username"], credential.secret.reveal()
        assert await conn.call("AUTH", user, password) == "+OK"
        assert await conn.call("SET", env.key("open"), "1") == "+OK"
        assert await conn.call("GET", env.key("open")) == "1"

        await issuer.revoke(lease_for(request, credential))

        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await conn.call("GET", env.key("open"))
        fresh = await RawConnection.open()
        try:
            reply = await fresh.call("AUTH", user, password)
            assert reply is not None
            assert reply.startswith("-WRONGPASS"), reply
        finally:
            await fresh.close()
        assert await env.acl_line(user) is None
    finally:
        await conn.close()
        await issuer.aclose()


async def test_the_acl_user_holds_exactly_the_granted_rules(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    env = redis_env
    default_before = await env.acl_line("default")
    issuer = env.issuer(
        clock,
        resources={
            RESOURCE: {
                "keys": [f"{env.key_prefix}:orders:*", f"{env.key_prefix}:audit:*"],
                "channels": [env.channel],
                "actions": {"read": ["+get", "+mget"], "write": ["+set", "+del"]},
                "deny": [],
            }
        },
    )
    try:
        request = mint_request(
            Scope.of(INSTANCE, RESOURCE, ["read"]), now=clock.now(), ttl=timedelta(minutes=1)
        )
        credential = await issuer.mint(request)
        user = credential.handle["user"]
        assert user == f"{env.user_prefix}{request.lease_id}"
        assert credential.metadata == {"username": user}
        line = await env.acl_line(user)
        assert line is not None
        # Redis stores the password's SHA-256: the password itself was never sent.
        words = line.split(" ")
        [password_hash] = [w for w in words if w.startswith("#")]
        assert len(password_hash) == 1 + 64
        assert credential.secret.reveal() not in line
        head, _, commands = " ".join(w for w in words if w != password_hash).partition(" -@all ")
        assert head == (
            f"user {user} on sanitize-payload ~{env.key_prefix}:orders:* "
            f"~{env.key_prefix}:audit:* resetchannels &{env.channel}"
        )
        assert sorted(commands.split(" ")) == ["+get", "+mget"]  # Redis orders them its way
        assert await env.acl_line("default") == default_before
    finally:
        await issuer.aclose()


async def test_the_guard_takes_dangerous_commands_out_unless_the_resource_allows_them(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    env = redis_env

    def resources(allow: bool) -> dict[str, Any]:
        return {
            RESOURCE: {
                "keys": [f"{env.key_prefix}:orders:*"],
                "actions": {"inspect": ["+config|get"]},
                "allow_dangerous": allow,
            }
        }

    scope = Scope.of(INSTANCE, RESOURCE, ["inspect"])
    for allow, expected in ((False, False), (True, True)):
        issuer = env.issuer(clock, resources=resources(allow))
        try:
            credential = await issuer.mint(
                mint_request(scope, now=clock.now(), ttl=timedelta(minutes=1))
            )
            async with login(credential) as client:
                try:
                    await client.config_get("maxmemory")
                    allowed = True
                except NoPermissionError:
                    allowed = False
            assert allowed is expected, f"allow_dangerous={allow}"
        finally:
            await issuer.aclose()


# -- expiry: Redis has none; the broker's reaper provides it ------------------------------


async def test_redis_alone_never_expires_the_user(redis_env: RedisEnv, clock: FakeClock) -> None:
    """The limit, stated as a test: past ``not_after`` with no reaper, the user still works.
    Redis ACL users have no expiry; only revoke ends them."""
    issuer = redis_env.issuer(clock)
    try:
        request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=1))
        credential = await issuer.mint(request)
        assert credential.expires_at == request.not_after
        clock.advance(timedelta(hours=1))  # the broker's clock; Redis does not care
        assert await probe(redis_env, credential, "read")
    finally:
        await issuer.revoke(lease_for(request, credential))
        await issuer.aclose()


async def test_the_brokers_reaper_deletes_the_user_at_not_after(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    """The broker's own lease manager and reaper, on the real Redis as their store, with this
    issuer: the user works until ``not_after`` and is deleted by the reaper's round after it."""
    env = redis_env
    issuer = env.issuer(clock)
    store_client = aioredis.Redis.from_url(REDIS_URL, decode_responses=False, driver_info=None)
    settings = ReaperSettings()
    sink = MemorySink()
    manager = LeaseManager(
        LeaseStore(store_client, f"{env.key_prefix}:broker"),
        {INSTANCE: issuer},
        AuditLog(clock, [sink]),
        clock,
        settings,
        replica_id="redis-issuer-test",
    )
    reaper = Reaper(manager, settings, clock)
    principal = Principal(id="test:workload", issuer="test", subject="workload")
    try:
        lease, credential = await manager.issue(
            principal, Task(f"task-{env.tag}"), SCOPE, timedelta(minutes=5)
        )
        assert lease.state is LeaseState.ACTIVE
        assert lease.handle == {"user": issuer.username(lease.id)}
        assert await probe(env, credential, "write")

        clock.set(lease.not_after - timedelta(seconds=1))
        assert await reaper.run_once() == 0
        assert await probe(env, credential, "write")

        clock.set(lease.not_after)
        assert await reaper.run_once() == 1
        assert not await probe(env, credential, "read")
        assert await env.acl_line(credential.handle["user"]) is None
        done = await manager.get(lease.id)
        assert done.state is LeaseState.REVOKED
        assert done.revoke_trigger == "ttl"
    finally:
        await store_client.aclose()
        await issuer.aclose()


# -- revoke fails closed and deletes only its own users -------------------------------------


async def test_revoke_without_permission_to_kill_clients_raises_and_deletes_nothing(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    env = redis_env
    issuer = env.issuer(clock)
    try:
        request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
        credential = await issuer.mint(request)
        await env.inspect.execute_command("ACL", "SETUSER", env.admin_user, "-client|kill")
        with pytest.raises(IssuerUnavailable) as caught:
            await issuer.revoke(lease_for(request, credential))
        assert "revoke" in str(caught.value)
        assert await probe(env, credential, "read"), "the transaction must not half-run"
        await env.inspect.execute_command("ACL", "SETUSER", env.admin_user, "+client|kill")
        await issuer.revoke(lease_for(request, credential))  # the broker's retry
        assert not await probe(env, credential, "read")
    finally:
        await issuer.aclose()


async def test_revoke_ignores_a_handle_naming_a_user_it_did_not_create(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    env = redis_env
    bystander = f"jitother_{env.tag}"
    await env.inspect.execute_command("ACL", "SETUSER", bystander, "reset", "on", "nopass", "+get")
    issuer = env.issuer(clock)
    try:
        request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5))
        credential = await issuer.mint(request)
        default_before = await env.acl_line("default")
        for handle in ({"user": bystander}, {"user": "default"}, {"user": env.admin_user}):
            await issuer.revoke(lease_for(request, handle=handle))
        assert await env.acl_line(bystander) is not None
        assert await env.acl_line(env.admin_user) is not None
        assert await env.acl_line("default") == default_before
        # ... while the lease's own user was found from the lease id and is gone.
        assert not await probe(env, credential, "read")
    finally:
        await env.inspect.execute_command("ACL", "DELUSER", bystander)
        await issuer.aclose()


# -- health ------------------------------------------------------------------------------------


async def test_a_wrong_admin_password_is_unavailable_and_not_echoed(
    redis_env: RedisEnv, clock: FakeClock, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-admin-password-1f2e3d")
    issuer = redis_env.issuer(clock, password_file=str(wrong))
    try:
        with pytest.raises(IssuerUnavailable) as caught:
            await issuer.check_health()
        assert "not-the-admin-password" not in str(caught.value)
        assert "not-the-admin-password" not in repr(issuer)
        with pytest.raises(IssuerUnavailable):
            await issuer.mint(mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=1)))
    finally:
        await issuer.aclose()


async def test_nothing_listening_is_unavailable(redis_env: RedisEnv, clock: FakeClock) -> None:
    relay = Relay(HOST, PORT)
    await relay.start()
    port = relay.port
    await relay.close()  # the port is free again: connections are refused
    issuer = redis_env.issuer(clock, url=f"redis://127.0.0.1:{port}/0", timeout="2s")
    try:
        with pytest.raises(IssuerUnavailable) as caught:
            await issuer.check_health()
        assert "health check failed" in str(caught.value)
    finally:
        await issuer.aclose()


# -- TLS -------------------------------------------------------------------------------------


def _tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("jit test CA"))
        .issuer_name(name("jit test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A private redis-server with TLS only, on a free loopback port: (port, CA file)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (needed for the TLS test)")
    ca_file, cert_file, key_file = _tls_material(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        server,
        "--port", "0",
        "--bind", "127.0.0.1",
        "--tls-port", str(port),
        "--tls-cert-file", str(cert_file),
        "--tls-key-file", str(key_file),
        "--tls-ca-cert-file", str(ca_file),
        "--tls-auth-clients", "no",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):  # readiness, not a TTL: until the port accepts connections
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            break
        else:
            pytest.fail("the TLS redis-server did not start")
        yield port, ca_file
    finally:
        proc.terminate()
        await proc.wait()


async def test_rediss_verifies_the_server_against_ca_file(
    tls_redis: tuple[int, Path], clock: FakeClock
) -> None:
    port, ca_file = tls_redis
    config: dict[str, Any] = {
        "url": f"rediss://127.0.0.1:{port}/0",
        "ca_file": str(ca_file),
        "timeout": "2s",
        "resources": {RESOURCE: {"keys": ["orders:*"], "actions": {"read": ["+get"]}}},
    }
    context = IssuerContext(name=INSTANCE, config=config, clock=clock, broker_url="x")
    issuer = RedisIssuer(context)
    untrusting = RedisIssuer(msgspec.structs.replace(context, config={**config, "ca_file": None}))
    try:
        await issuer.check_health()
        request = mint_request(
            Scope.of(INSTANCE, RESOURCE, ["read"]), now=clock.now(), ttl=timedelta(minutes=1)
        )
        credential = await issuer.mint(request)
        client = aioredis.Redis(
            host="127.0.0.1",
            port=port,
            ssl=True,
            ssl_ca_certs=str(ca_file),
            username=credential.metadata["username"],
            password=credential.secret.reveal(),
            driver_info=None,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            assert await client.get("orders:1") is None
            with pytest.raises(NoPermissionError):
                await client.get("payments:1")
        finally:
            await client.aclose()
        await issuer.revoke(lease_for(request, credential))
        # The system trust store does not know this CA: the handshake fails, closed.
        with pytest.raises(IssuerUnavailable):
            await untrusting.check_health()
    finally:
        await issuer.aclose()
        await untrusting.aclose()


# -- scope and params ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (Scope.of("other-instance", RESOURCE, ["read"]), "not 'redis-orders'"),
        (Scope.of(INSTANCE, "redis://127.0.0.1:6379/0#payments", ["read"]), "no resource"),
        (Scope.of(INSTANCE, RESOURCE, ["read", "flush"]), "no action 'flush'"),
        (Scope.of(INSTANCE, RESOURCE, []), "at least one action"),
    ],
    ids=[
        "a scope for another instance is refused",
        "an unconfigured resource is refused",
        "an action the resource does not define is refused",
        "an empty action list is refused",
    ],
)
async def test_check_scope_refuses(
    redis_env: RedisEnv, clock: FakeClock, scope: Scope, message: str
) -> None:
    issuer = redis_env.issuer(clock)
    try:
        with pytest.raises(ScopeNotSupported, match=message):
            issuer.check_scope(scope)
        with pytest.raises(ScopeNotSupported):  # mint checks too
            await issuer.mint(mint_request(scope, now=clock.now(), ttl=timedelta(minutes=1)))
        assert await redis_env.users() == [redis_env.admin_user]
    finally:
        await issuer.aclose()


async def test_params_are_refused_and_nothing_is_created(
    redis_env: RedisEnv, clock: FakeClock
) -> None:
    issuer = redis_env.issuer(clock)
    try:
        request = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=1))
        with pytest.raises(InvalidRequest, match="takes no params"):
            await issuer.mint(msgspec.structs.replace(request, params={"db": "3"}))
        assert await redis_env.users() == [redis_env.admin_user]
    finally:
        await issuer.aclose()


# -- configuration -------------------------------------------------------------------------


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        del config[key]

    return change


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config[key] = value

    return change


def _resource(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["resources"][RESOURCE][key] = value

    return change


def _action(name: str, rules: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["resources"][RESOURCE]["actions"][name] = rules

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("passwd", "x"), "passwd: unknown key"),
        (_without("url"), "missing required field `url`"),
        (_without("resources"), "missing required field `resources`"),
        (_set("url", "redis://:hunter2secret@127.0.0.1:6379/0"), "url: must not contain"),
        (_set("url", "redis://admin:hunter2secret@127.0.0.1/0"), "url: must not contain"),
        (_set("url", "redis://127.0.0.1/0?password=hunter2secret"), "url: must not contain"),
        (_set("url", "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none"), "only query parameter"),
        (_set("url", "http://127.0.0.1:6379"), "url: the scheme"),
        (_set("ca_file", "/etc/hostname"), "ca_file: only for a rediss:// url"),
        (_set("url", "redis:///0"), "url: a host is required"),
        (_set("resources", {}), "at least one resource"),
        (_set("user_prefix", ""), "user_prefix"),
        (_set("user_prefix", "jit user "), "user_prefix"),
        (_set("username", "jittest_x_admin"), "must not start with user_prefix"),
        (_set("password_file", "/nonexistent/redis-password"), "password_file: cannot read"),
        (_set("max_ttl", "forever"), "max_ttl: not a duration"),
        (_set("max_ttl", True), "max_ttl"),
        (_set("default_ttl", "2h"), "default_ttl must not exceed max_ttl"),
        (_set("timeout", 0), "timeout: must be at least 1s"),
        (_resource("key", ["orders:*"]), "key: unknown key"),
        (_resource("keys", ["orders *"]), "whitespace"),
        (_resource("keys", [""]), "a pattern must be"),
        (_resource("actions", {}), "at least one action"),
        (_resource("deny", ["+get"]), "deny"),
        (_action("read", []), "at least one rule"),
        (_action("read", ["+@read ~*"]), "is not a rule"),
        (_action("read", ["allkeys"]), "is not a rule"),
        (_action("read", [">password"]), "is not a rule"),
        (_action("read", ["~*"]), "is not a rule"),
        (_action("read", ["-@write"]), "is not a rule"),
        (_action("read", ["+@admin"]), "allow_dangerous"),
        (_action("read", ["+@dangerous"]), "allow_dangerous"),
        (_action("read", ["+@ALL"]), "allow_dangerous"),
        (_action("bad action", ["+get"]), "is not an action name"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_config_stops_start_up_naming_the_key(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("admin-password\n")
    config: dict[str, Any] = {
        "url": "redis://127.0.0.1:6379/0",
        "username": "jitadmin",
        "password_file": str(password_file),
        "user_prefix": "jittest_x_",
        "resources": {
            RESOURCE: {"keys": ["orders:*"], "actions": {"read": ["+@read"], "write": ["+@write"]}}
        },
    }
    change(config)
    with pytest.raises(ConfigError) as caught:
        RedisIssuer(
            IssuerContext(name="r", config=config, clock=FakeClock(), broker_url="https://x")
        )
    text = str(caught.value)
    assert text.startswith("redis issuer 'r': ")
    assert message in text
    assert "hunter2secret" not in text


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    config = {
        "url": "redis://127.0.0.1:6379/0",
        "password_file": str(tmp_path / "pw"),
        "resources": {RESOURCE: {"actions": {"read": ["+get"]}}},
    }
    with pytest.raises(ConfigError, match="password_file: the file is empty"):
        RedisIssuer(IssuerContext(name="r", config=config, clock=FakeClock(), broker_url="x"))


def test_dangerous_categories_are_accepted_when_the_resource_allows_them() -> None:
    config = {
        "url": "unix:///run/redis/redis.sock?db=2",
        "max_ttl": "1h",
        "default_ttl": 600,
        "resources": {
            "ops": {"actions": {"admin": ["+@admin", "+@DANGEROUS"]}, "allow_dangerous": True}
        },
    }
    issuer = RedisIssuer(IssuerContext(name="r", config=config, clock=FakeClock(), broker_url="x"))
    assert isinstance(issuer, Issuer)
    assert issuer.capabilities.max_ttl == timedelta(hours=1)
    assert issuer.capabilities.default_ttl == timedelta(minutes=10)
    assert issuer.capabilities.revocable is True
    issuer.check_scope(Scope.of("r", "ops", ["admin"]))


def test_a_ca_file_must_exist(tmp_path: Path) -> None:
    config = {
        "url": "rediss://127.0.0.1:6380/0",
        "ca_file": str(tmp_path / "missing.pem"),
        "resources": {"r": {"actions": {"a": ["+get"]}}},
    }
    with pytest.raises(ConfigError, match="ca_file: not a readable file"):
        RedisIssuer(IssuerContext(name="r", config=config, clock=FakeClock(), broker_url="x"))


def test_the_defaults_keep_ttls_short() -> None:
    config = {"url": "redis://127.0.0.1:6379/0", "resources": {"r": {"actions": {"a": ["+get"]}}}}
    caps = RedisIssuer(
        IssuerContext(name="r", config=config, clock=FakeClock(), broker_url="x")
    ).capabilities
    assert (caps.max_ttl, caps.default_ttl) == (timedelta(minutes=15), timedelta(minutes=5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("45", timedelta(seconds=45)),
        (45, timedelta(seconds=45)),
    ],
)
def test_durations(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "m", "1w", "-5", -5, "1.5h", "15 m", "200us"])
def test_not_durations(text: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_entry_point_loads_this_class() -> None:
    (ep,) = entry_points(group="jit_broker.issuers", name="redis")
    assert ep.load() is RedisIssuer
