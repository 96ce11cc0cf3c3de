"""The ``redis`` issuer: one Redis ACL user per lease, with a broker-generated password.

Owns the issuer itself: the admin connection (redis-py asyncio), minting (``ACL SETUSER``),
revoking (``CLIENT KILL USER`` + ``ACL DELUSER`` in one MULTI/EXEC), health (``PING``) and the
mapping of Redis failures to :class:`~broker.errors.IssuerUnavailable`. The configuration and
the scope → ACL rules mapping live in :mod:`issuers.redis.config`.

- The user is named ``<user_prefix><lease id>``: revoke finds it from the lease id alone (an
  empty handle after a crashed mint).
- The password is 256 random bits made by the broker. Redis receives only its SHA-256
  (``#<hex>``), so the secret is never on the wire to Redis nor in its memory.
- Redis ACLs have **no expiry**. The user works until it is deleted, which the broker's reaper
  does at ``not_after`` (and the broker retries forever until it succeeds). So expiry depends on
  the reaper running; ``max_ttl`` defaults low (15 minutes) to bound the damage if it does not.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import secrets
from collections.abc import Awaitable
from typing import Any, ClassVar, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker.errors import InvalidRequest, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, Exports, ExportSource, IssuerContext
from broker.types import Credential, Lease, MintRequest, Scope, Secret
from issuers.redis.config import RedisConfig, Settings, acl_rules, load_settings, username_for

__all__ = ["RedisIssuer"]

log = logging.getLogger("jit.issuers.redis")

T = TypeVar("T")

#: redis-py >= 7.1 takes ``driver_info``; older versions ``lib_name``/``lib_version``. Either way
#: we send no CLIENT SETINFO, so a least-privilege admin user does not fill the ACL log.
_NO_CLIENT_INFO: Final[dict[str, Any]] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(aioredis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def _describe(exc: BaseException) -> str:
    """What an error message may say about a failure: its type only. Redis error texts can
    echo the arguments of the command that failed, and an ACL SETUSER carries a password hash."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


class RedisIssuer:
    """Mints a Redis ACL user per lease. Implements ``Issuer``.

    Raises ConfigError at construction for an invalid config or an unreadable
    ``password_file``. Does not connect until first used."""

    #: The ``config:`` of an instance, checked by the broker before construction.
    config_type: ClassVar[type[RedisConfig]] = RedisConfig

    def __init__(self, context: IssuerContext) -> None:
        self.name: str = context.name
        self._clock = context.clock
        self._settings: Settings = load_settings(self.name, context.config)
        s = self._settings
        self.capabilities: Capabilities = Capabilities(
            max_ttl=s.max_ttl,
            default_ttl=s.default_ttl,
            revocable=True,  # ACL DELUSER; but see the module docstring: there is no expiry
            renewable=False,
        )
        timeout = s.timeout.total_seconds()
        self._timeout = timeout
        options: dict[str, Any] = dict(_NO_CLIENT_INFO)
        if s.ca_file is not None:
            options["ssl_ca_certs"] = s.ca_file
        self._admin: aioredis.Redis = aioredis.Redis.from_url(
            s.url,
            username=s.username,
            password=s.password.reveal() if s.password is not None else None,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry covers a pooled connection that went stale; everything
            # this issuer sends is idempotent. The broker does the patient retrying.
            retry=Retry(NoBackoff(), 1),
            **options,
        )
        # Names the issuer must never create or delete, whatever a lease id looks like.
        self._protected = frozenset({"default", s.username or "default"})

    def __repr__(self) -> str:
        return (
            f"RedisIssuer(name={self.name!r}, url={self._settings.url!r}, "
            f"username={self._settings.username!r}, user_prefix={self._settings.user_prefix!r})"
        )

    def username(self, lease_id: str) -> str:
        """The ACL user this issuer creates for ``lease_id``."""
        return username_for(self._settings.user_prefix, lease_id)

    # -- Issuer ----------------------------------------------------------------------------

    def check_scope(self, requested: Scope) -> None:
        """The resource must be a configured resource and every action one of its actions."""
        if requested.issuer != self.name:
            raise ScopeNotSupported(f"scope is for issuer {requested.issuer!r}, not {self.name!r}")
        resource = self._settings.resources.get(requested.resource)
        if resource is None:
            raise ScopeNotSupported(
                f"redis issuer {self.name!r} has no resource {requested.resource!r}"
            )
        if not requested.actions:
            raise ScopeNotSupported("at least one action is required")
        unknown = sorted(set(requested.actions) - set(resource.actions))
        if unknown:
            raise ScopeNotSupported(
                f"redis issuer {self.name!r}: resource {requested.resource!r} has no action "
                f"{', '.join(repr(a) for a in unknown)} (it has {sorted(resource.actions)})"
            )

    async def mint(self, request: MintRequest) -> Credential:
        """Create the lease's ACL user with exactly the scope's rules and a fresh password.

        The user works until revoke() deletes it: Redis cannot expire it at ``not_after``."""
        self.check_scope(request.scope)
        if request.params:
            raise InvalidRequest(
                f"redis issuer {self.name!r} takes no params (got {sorted(request.params)})"
            )
        if request.not_after <= request.issued_at:
            raise InvalidRequest("not_after must be after issued_at")
        user = self._user(request.lease_id)
        resource = self._settings.resources[request.scope.resource]
        password = secrets.token_hex(32)  # 256 bits; hex, so never part of a handle or name
        digest = hashlib.sha256(password.encode()).hexdigest()
        rules = acl_rules(resource, request.scope.actions, digest)
        # redis.asyncio.Redis.execute_command carries no annotations.
        setuser = self._admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", user, *rules
        )
        await self._call("mint", setuser)
        log.info(
            "redis issuer %r: created ACL user %s for lease %s", self.name, user, request.lease_id
        )
        return Credential(
            secret=Secret(password),
            expires_at=request.not_after,
            token_type="password",  # noqa: S106 (a token type, not a password)
            handle={"user": user},
            metadata={"username": user},
        )

    async def revoke(self, lease: Lease) -> None:
        """Kill the user's connections and delete it, atomically (MULTI/EXEC), so no new
        connection can authenticate in between. Idempotent: an unknown user is success.

        The user is found from the lease id; a handle naming a different user under this
        instance's ``user_prefix`` is deleted as well. A handle naming anything else is
        ignored: this issuer deletes only users it could have created."""
        users = [self._user(lease.id)]
        named = lease.handle.get("user", "")
        if (
            named
            and named not in users
            and named.startswith(self._settings.user_prefix)
            and named not in self._protected
        ):
            users.append(named)
        for user in users:
            await self._delete(user)

    async def inventory(self) -> list[str]:
        """The lease ids of the ACL users under this instance's ``user_prefix`` (those it
        made; a hashed name — from a lease id that is not a plain token — cannot be mapped
        back and is left alone)."""
        users = await self._call("inventory", self._admin.acl_users())
        prefix = self._settings.user_prefix
        found: list[str] = []
        for raw in users:
            user = raw.decode() if isinstance(raw, bytes) else str(raw)
            if not user.startswith(prefix) or user in self._protected:
                continue
            lease_id = user[len(prefix) :]
            if username_for(prefix, lease_id) == user:
                found.append(lease_id)
        return found

    def exports(self, credential: Credential, request: MintRequest) -> Exports:
        """``REDISCLI_AUTH`` (redis-cli reads the password there) and the ACL user, for
        ``redis-cli --user "$JIT_REDIS_USER"``."""
        return Exports(
            env={
                "REDISCLI_AUTH": ExportSource(secret=True),
                "JIT_REDIS_USER": ExportSource(metadata="username"),
            }
        )

    async def check_health(self) -> None:
        """PING over the admin connection (authenticating first if configured)."""
        pong = await self._call("health check", self._admin.ping())
        if pong is not True:
            raise IssuerUnavailable(f"redis issuer {self.name!r}: unexpected reply to PING")

    async def aclose(self) -> None:
        await self._admin.aclose()

    # -- internals -------------------------------------------------------------------------

    def _user(self, lease_id: str) -> str:
        user = self.username(lease_id)
        if user in self._protected:  # only a hostile lease id and a tiny prefix get here
            raise InvalidRequest(f"lease id maps to a protected Redis user ({user!r})")
        return user

    async def _delete(self, user: str) -> None:
        async def transaction() -> list[Any]:
            async with self._admin.pipeline(transaction=True) as pipe:
                pipe.execute_command("CLIENT", "KILL", "USER", user)
                pipe.execute_command("ACL", "DELUSER", user)
                result: list[Any] = await pipe.execute(raise_on_error=False)
                return result

        killed, deleted = await self._call("revoke", transaction())
        if isinstance(deleted, Exception) or not isinstance(deleted, int):
            raise IssuerUnavailable(
                f"redis issuer {self.name!r}: revoke: ACL DELUSER failed ({_describe(deleted)})"
            )
        if deleted == 0:
            # Already gone (revoked before, never minted, or lost with a Redis restart). CLIENT
            # KILL USER fails for a user that does not exist; that is expected here.
            log.debug("redis issuer %r: ACL user %s already gone", self.name, user)
            return
        if isinstance(killed, Exception):
            # The user existed and is deleted now (ACL DELUSER also disconnects its clients),
            # but say so: CLIENT KILL should not fail for an existing user.
            log.warning(
                "redis issuer %r: CLIENT KILL USER %s failed (%s); the user is deleted",
                self.name,
                user,
                _describe(killed),
            )
        log.info("redis issuer %r: deleted ACL user %s", self.name, user)

    async def _call(self, operation: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout * 3):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise IssuerUnavailable(
                f"redis issuer {self.name!r}: {operation} failed ({_describe(exc)})"
            ) from None
