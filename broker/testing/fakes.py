"""In-memory fakes for tests: :class:`FakeIssuer`, an issuer whose "backend" is a dict.

The fake behaves like a well-written real issuer (it passes ``IssuerConformance``): it names
each credential after its lease id (``fake_<lease_id>``), so a revoke with an empty handle still
finds it; it honours ``not_after`` against its clock; it refuses scopes it cannot express. It
also lets a test script failures — :meth:`FakeIssuer.fail_next_mint`,
:meth:`FakeIssuer.fail_next_revoke`, the :attr:`FakeIssuer.outage` flag — and records every
call in :attr:`FakeIssuer.calls`, so the broker's lease manager and reaper can be tested without
any real backend.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from broker.clock import Clock, SystemClock
from broker.errors import ConfigError, InvalidRequest, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, IssuerContext
from broker.types import Credential, Lease, MintRequest, Scope, Secret

__all__ = ["FakeCall", "FakeCredential", "FakeIssuer"]

log = logging.getLogger("jit.testing.fake_issuer")


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One recorded call: ``method`` is mint, revoke, check_health or aclose."""

    method: str
    lease_id: str | None = None


@dataclass(slots=True)
class FakeCredential:
    """What the fake backend holds for one minted credential."""

    name: str
    lease_id: str
    scope: Scope
    secret: Secret
    expires_at: datetime
    revoked_at: datetime | None = None


class _FakeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_ttl: float = 3600
    default_ttl: float = 900
    revocable: bool = True
    actions: list[str] | None = None


class FakeIssuer:
    """An issuer with an in-memory backend.

    ``actions`` limits the actions it can express (others raise ScopeNotSupported); None
    accepts any. With ``capabilities.revocable`` False it behaves like an expiry-only backend:
    ``revoke()`` succeeds and changes nothing. ``accepted_params`` names the workload inputs it
    takes (a subclass sets it); any other param is an InvalidRequest, as for a real issuer."""

    accepted_params: frozenset[str] = frozenset()

    def __init__(
        self,
        name: str = "fake",
        *,
        clock: Clock | None = None,
        capabilities: Capabilities | None = None,
        actions: Iterable[str] | None = None,
    ) -> None:
        self.name: str = name
        self.capabilities: Capabilities = capabilities or Capabilities(
            max_ttl=timedelta(hours=1), default_ttl=timedelta(minutes=15)
        )
        self.clock: Clock = clock or SystemClock()
        self.supported_actions: frozenset[str] | None = (
            frozenset(actions) if actions is not None else None
        )
        #: While True, mint, revoke and check_health raise IssuerUnavailable.
        self.outage: bool = False
        #: Every call, in order.
        self.calls: list[FakeCall] = []
        #: The backend: every credential ever minted, by name (revoked ones stay, marked).
        self.credentials: dict[str, FakeCredential] = {}
        self.closed: bool = False
        self._fail_mints = 0
        self._fail_mints_after_create = False
        self._fail_revokes = 0
        self._thawed: asyncio.Event | None = None

    @classmethod
    def from_context(cls, context: IssuerContext) -> FakeIssuer:
        """An entry-point factory: config keys ``max_ttl``/``default_ttl`` (seconds),
        ``revocable`` and ``actions``; unknown keys raise ConfigError."""
        try:
            cfg = msgspec.convert(context.config, _FakeConfig, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"fake issuer {context.name!r}: {exc}") from None
        caps = Capabilities(
            max_ttl=timedelta(seconds=cfg.max_ttl),
            default_ttl=timedelta(seconds=cfg.default_ttl),
            revocable=cfg.revocable,
        )
        return cls(context.name, clock=context.clock, capabilities=caps, actions=cfg.actions)

    def __repr__(self) -> str:
        return f"FakeIssuer(name={self.name!r}, credentials={len(self.credentials)})"

    # -- scripting failures ----------------------------------------------------------------

    def fail_next_mint(self, n: int = 1, *, after_create: bool = False) -> None:
        """Make the next ``n`` mints raise IssuerUnavailable. With ``after_create`` the
        credential is created first (a mint whose response was lost): only a revoke by the
        lease-id-derived name removes it."""
        self._fail_mints = n
        self._fail_mints_after_create = after_create

    def freeze(self) -> None:
        """A hung backend: from now on mint, revoke and check_health wait (without failing)
        until :meth:`thaw` — the broker's own timeouts decide what happens."""
        self._thawed = asyncio.Event()

    def thaw(self) -> None:
        if self._thawed is not None:
            self._thawed.set()
        self._thawed = None

    async def _wait_if_frozen(self) -> None:
        thawed = self._thawed
        if thawed is not None:
            await thawed.wait()

    def fail_next_revoke(self, n: int = 1) -> None:
        """Make the next ``n`` revokes raise IssuerUnavailable (the credential stays)."""
        self._fail_revokes = n

    # -- inspecting the backend ------------------------------------------------------------

    @staticmethod
    def credential_name(lease_id: str) -> str:
        """The backend name of the credential minted for ``lease_id``."""
        return f"fake_{lease_id}"

    def find(self, secret: Secret | str) -> FakeCredential | None:
        """The credential whose secret this is (compared in constant time)."""
        value = (secret.reveal() if isinstance(secret, Secret) else secret).encode()
        for cred in self.credentials.values():
            if hmac.compare_digest(cred.secret.reveal().encode(), value):
                return cred
        return None

    def is_valid(self, secret: Secret | str) -> bool:
        """What the backend would say when a client presents ``secret`` now."""
        cred = self.find(secret)
        return cred is not None and cred.revoked_at is None and self.clock.now() < cred.expires_at

    def allows(self, secret: Secret | str, action: str) -> bool:
        """True if ``secret`` is valid now and its scope includes ``action``."""
        cred = self.find(secret)
        return cred is not None and self.is_valid(secret) and action in cred.scope.actions

    def live(self) -> list[FakeCredential]:
        """Credentials that still work now."""
        now = self.clock.now()
        return [c for c in self.credentials.values() if c.revoked_at is None and now < c.expires_at]

    def calls_to(self, method: str) -> list[FakeCall]:
        return [c for c in self.calls if c.method == method]

    # -- Issuer ----------------------------------------------------------------------------

    def check_scope(self, requested: Scope) -> None:
        if requested.issuer != self.name:
            raise ScopeNotSupported(f"scope is for {requested.issuer!r}, not {self.name!r}")
        if not requested.resource:
            raise ScopeNotSupported("a resource is required")
        if not requested.actions:
            raise ScopeNotSupported("at least one action is required")
        if self.supported_actions is not None:
            unknown = sorted(set(requested.actions) - self.supported_actions)
            if unknown:
                raise ScopeNotSupported(f"unsupported actions {unknown}")

    async def mint(self, request: MintRequest) -> Credential:
        self.calls.append(FakeCall("mint", request.lease_id))
        await self._wait_if_frozen()
        self._check_up()
        self.check_scope(request.scope)
        unknown = sorted(set(request.params) - self.accepted_params)
        if unknown:
            raise InvalidRequest(f"the fake issuer takes no params {unknown}")
        fail = self._fail_mints > 0
        if fail:
            self._fail_mints -= 1
            if not self._fail_mints_after_create:
                raise IssuerUnavailable("fake issuer: scripted mint failure")
        name = self.credential_name(request.lease_id)
        secret = Secret(secrets.token_urlsafe(24))
        self.credentials[name] = FakeCredential(
            name=name,
            lease_id=request.lease_id,
            scope=request.scope,
            secret=secret,
            expires_at=request.not_after,
        )
        log.debug("fake issuer %s: created %s", self.name, name)
        if fail:
            raise IssuerUnavailable("fake issuer: scripted failure after creating the credential")
        return Credential(
            secret=secret,
            expires_at=request.not_after,
            handle={"name": name},
            metadata={"name": name},
        )

    async def revoke(self, lease: Lease) -> None:
        self.calls.append(FakeCall("revoke", lease.id))
        await self._wait_if_frozen()
        self._check_up()
        if self._fail_revokes > 0:
            self._fail_revokes -= 1
            raise IssuerUnavailable("fake issuer: scripted revoke failure")
        if not self.capabilities.revocable:
            return  # expiry-only backend: nothing to call
        name = lease.handle.get("name") or self.credential_name(lease.id)
        cred = self.credentials.get(name)
        if cred is not None and cred.revoked_at is None:
            cred.revoked_at = self.clock.now()
            log.debug("fake issuer %s: revoked %s", self.name, name)

    async def inventory(self) -> list[str]:
        """The lease ids of the credentials the backend still holds (revoked ones are gone;
        an expired one still exists, as at a real backend that does not clean up)."""
        self.calls.append(FakeCall("inventory"))
        await self._wait_if_frozen()
        self._check_up()
        return [c.lease_id for c in self.credentials.values() if c.revoked_at is None]

    async def check_health(self) -> None:
        self.calls.append(FakeCall("check_health"))
        await self._wait_if_frozen()
        self._check_up()

    async def aclose(self) -> None:
        self.calls.append(FakeCall("aclose"))
        self.closed = True

    def _check_up(self) -> None:
        if self.outage:
            raise IssuerUnavailable(f"fake issuer {self.name!r} is unavailable (scripted outage)")
        if self.closed:
            raise IssuerUnavailable(f"fake issuer {self.name!r} is closed")
