"""``IssuerConformance``: the tests every issuer passes, as a pytest mixin, plus helpers.

An issuer's test module subclasses the mixin, provides an ``issuer`` fixture and a few hooks,
and inherits every test (the model is keyring's ``BackendBasicTests`` and fsspec's abstract
tests)::

    class TestMyIssuer(IssuerConformance[MyIssuer]):
        @pytest.fixture
        async def issuer(self, clock: FakeClock) -> AsyncIterator[MyIssuer]:
            issuer = MyIssuer(IssuerContext(name="mine", config={...}, clock=clock,
                                            broker_url="https://broker.test"))
            yield issuer
            await issuer.aclose()

        def scope(self) -> Scope:
            return Scope.of("mine", "db://orders", ["read"])

        async def credential_works(self, issuer, credential, scope) -> bool:
            ...  # use the credential like a real client would

What the kit checks: the issuer satisfies the protocol and its capabilities are consistent;
mint returns a credential that works; ``expires_at <= not_after`` and the credential stops
working after ``not_after``; it grants no more than the scope; revoke stops it (revocable
issuers), and only it; revoke is idempotent, a no-op for unknown or expired leases, and works
with an empty handle after a crashed mint; the handle holds no secret; the optional
``exports()`` (``ExportsEnvironment``) names only what the credential carries and copies no
secret; no repr, str or log record shows the secret; an outage raises ``IssuerUnavailable``
from mint (and revoke and check_health, where the issuer can tell) and the issuer recovers
afterwards.

Hooks a subclass may override (defaults in brackets): :meth:`narrower_scope` [None: skip],
:meth:`unsupported_scope` [None: skip], :meth:`credential_allows` [None: skip the least-privilege
tests], :meth:`outage` [skip the outage tests], :meth:`let_expire` [advance the FakeClock past
``not_after``], :attr:`health_detects_outage` [True], :meth:`params` [none: the workload
inputs each mint needs, e.g. a public key], :meth:`public_parts` [none: substrings of the secret
that are public by design].

The kit plays the broker: :meth:`revoke` calls ``issuer.revoke()`` and then records the lease as
revoked, as the broker's lease state would. Issuers whose revocation the broker enforces (the
JWT issuer: introspection answers from the lease state, ADR 0003) consult
:meth:`revoked_by_broker` in ``credential_works``, exactly as their resource servers would
consult introspection.

Async tests carry the ``asyncio`` mark (pytest-asyncio). In strict mode, decorate the
``issuer`` fixture with ``pytest_asyncio.fixture``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import ClassVar, Generic, TypeVar

import msgspec
import pytest

from broker.errors import InvalidRequest, IssuerError, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, ExportsEnvironment, Inventoried, Issuer
from broker.testing.clock import FakeClock
from broker.types import Credential, Lease, LeaseState, MintRequest, Principal, Scope, Secret

__all__ = [
    "DEFAULT_PRINCIPAL",
    "IssuerConformance",
    "lease_for",
    "mint_request",
    "new_lease_id",
]

IssuerT = TypeVar("IssuerT", bound=Issuer)

#: The principal that the kit's requests are minted for.
DEFAULT_PRINCIPAL = Principal(
    id="conformance:workload-1",
    issuer="conformance",
    subject="workload-1",
    claims={"repository_id": "1"},
)


def new_lease_id() -> str:
    """A fresh lease id shaped like the broker's: ``<task key>.<128 random bits>`` (ADR 0001)."""
    return f"{secrets.token_hex(8)}.{secrets.token_hex(16)}"


def mint_request(
    scope: Scope,
    *,
    now: datetime,
    ttl: timedelta,
    lease_id: str | None = None,
    task_id: str = "conformance-task",
    principal: Principal = DEFAULT_PRINCIPAL,
) -> MintRequest:
    """A request as the broker sends it: issued ``now``, ``not_after = now + ttl``."""
    return MintRequest(
        lease_id=lease_id or new_lease_id(),
        task_id=task_id,
        principal=principal,
        scope=scope,
        issued_at=now,
        not_after=now + ttl,
    )


def lease_for(
    request: MintRequest,
    credential: Credential | None = None,
    *,
    handle: Mapping[str, str] | None = None,
    state: LeaseState | None = None,
) -> Lease:
    """The lease the broker would hold for ``request``.

    The handle is ``handle`` if given, else the credential's; the state defaults to ACTIVE with
    a credential and MINTING without one (a crash between mint and recording the handle)."""
    if handle is None:
        handle = credential.handle if credential is not None else {}
    if state is None:
        state = LeaseState.ACTIVE if credential is not None else LeaseState.MINTING
    return Lease(
        id=request.lease_id,
        task_id=request.task_id,
        owner=request.principal.id,
        principal=request.principal,
        scope=request.scope,
        issued_at=request.issued_at,
        not_after=request.not_after,
        state=state,
        handle=dict(handle),
    )


def _default_ttl(caps: Capabilities) -> timedelta:
    return max(caps.min_ttl, min(caps.default_ttl, caps.max_ttl))


class IssuerConformance(Generic[IssuerT]):
    """The issuer conformance tests. Subclass it in a ``Test*`` class; see the module doc."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    #: False if the issuer cannot tell in ``check_health()`` that its backend is down.
    health_detects_outage: ClassVar[bool] = True

    #: The test's clock (the ``clock`` fixture), for hooks: ``self.clock.now()``.
    clock: FakeClock

    # -- fixtures --------------------------------------------------------------------------

    @pytest.fixture(name="clock")
    def _clock_fixture(self) -> FakeClock:
        """``clock``: the time the issuer and the kit share. The ``issuer`` fixture uses it."""
        return FakeClock()

    # -- hooks: override these -------------------------------------------------------------

    def scope(self) -> Scope:
        """A scope this issuer can mint (required)."""
        raise NotImplementedError(f"{type(self).__name__} must define scope()")

    def narrower_scope(self) -> Scope | None:
        """A scope covered by :meth:`scope` with fewer actions, or None."""
        return None

    def unsupported_scope(self) -> Scope | None:
        """A scope this issuer cannot express (check_scope must raise ScopeNotSupported), or
        None."""
        return None

    def params(self, lease_id: str) -> dict[str, str]:
        """The workload inputs each mint needs (``MintRequest.params``), e.g. a fresh public
        key for a certificate issuer. Default: none."""
        return {}

    def public_parts(self, credential: Credential) -> set[str]:
        """Substrings of the secret that are public by design (e.g. an AWS access key id
        inside credential_process JSON): the handle/metadata check allows them."""
        return set()

    def action_outside_scope(self) -> str:
        """An action that :meth:`scope` does not grant, for the least-privilege test."""
        return "jit-conformance-action-never-granted"

    async def credential_works(self, issuer: IssuerT, credential: Credential, scope: Scope) -> bool:
        """Use ``credential`` like a real client (connect, call, verify...) at
        ``self.clock.now()``: True if the backend accepts it (required)."""
        raise NotImplementedError(f"{type(self).__name__} must define credential_works()")

    async def credential_allows(
        self, issuer: IssuerT, credential: Credential, action: str
    ) -> bool | None:
        """True if ``credential`` may perform ``action`` now; None if this cannot be checked
        (the least-privilege tests are then skipped)."""
        return None

    def outage(self, issuer: IssuerT) -> AbstractAsyncContextManager[object]:
        """An async context manager during which the backend is unavailable (stop the
        server, point the client at a closed port...). Default: skip the outage tests."""
        pytest.skip(f"{type(self).__name__} does not simulate an outage (override outage())")

    async def let_expire(self, issuer: IssuerT, request: MintRequest) -> None:
        """Make time pass beyond ``request.not_after`` for the backend. Default: advance the
        FakeClock. A backend that keeps its own time may sleep here or skip."""
        self.clock.set(max(self.clock.now(), request.not_after + timedelta(seconds=1)))

    # -- helpers ---------------------------------------------------------------------------

    def revoked_by_broker(self, lease_id: str) -> bool:
        """True once the kit revoked ``lease_id`` the way the broker does (its lease state
        says revoked). For issuers whose revocation is enforced at introspection."""
        return lease_id in self._revoked()

    async def revoke(self, issuer: IssuerT, lease: Lease) -> None:
        """Revoke as the broker does: call the issuer, then record the lease as revoked."""
        await issuer.revoke(lease)
        self._revoked().add(lease.id)

    def request(
        self,
        issuer: IssuerT,
        scope: Scope | None = None,
        *,
        ttl: timedelta | None = None,
        lease_id: str | None = None,
    ) -> MintRequest:
        """A request for ``scope`` (default :meth:`scope`) issued now, for ``ttl`` (default:
        the issuer's default TTL)."""
        request = mint_request(
            scope if scope is not None else self.scope(),
            now=self.clock.now(),
            ttl=ttl if ttl is not None else _default_ttl(issuer.capabilities),
            lease_id=lease_id,
        )
        params = self.params(request.lease_id)
        return msgspec.structs.replace(request, params=params) if params else request

    async def mint(
        self, issuer: IssuerT, scope: Scope | None = None, *, ttl: timedelta | None = None
    ) -> tuple[MintRequest, Credential]:
        """check_scope and mint, as the broker does."""
        request = self.request(issuer, scope, ttl=ttl)
        issuer.check_scope(request.scope)
        return request, await issuer.mint(request)

    def _revoked(self) -> set[str]:
        revoked: set[str] = self.__dict__.setdefault("_kit_revoked", set())
        return revoked

    def _begin(self, clock: FakeClock) -> None:
        self.clock = clock

    def _require_revocable(self, issuer: IssuerT) -> None:
        if not issuer.capabilities.revocable:
            pytest.skip("expiry-only issuer (capabilities.revocable is False)")

    # -- the tests -------------------------------------------------------------------------

    async def test_issuer_satisfies_the_protocol(self, issuer: IssuerT, clock: FakeClock) -> None:
        self._begin(clock)
        assert isinstance(issuer, Issuer)
        assert isinstance(issuer.name, str)
        assert issuer.name
        caps = issuer.capabilities
        assert isinstance(caps, Capabilities)
        assert timedelta(0) < caps.min_ttl <= caps.default_ttl <= caps.max_ttl

    async def test_check_scope_accepts_the_scopes_it_mints(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        issuer.check_scope(self.scope())
        narrower = self.narrower_scope()
        if narrower is not None:
            assert self.scope().covers(narrower), "narrower_scope() must be covered by scope()"
            assert narrower != self.scope()
            issuer.check_scope(narrower)

    async def test_check_scope_refuses_what_the_backend_cannot_express(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        unsupported = self.unsupported_scope()
        if unsupported is None:
            pytest.skip("no unsupported_scope() given")
        with pytest.raises(ScopeNotSupported):
            issuer.check_scope(unsupported)

    async def test_mint_returns_a_credential_that_works(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        _, credential = await self.mint(issuer)
        assert isinstance(credential, Credential)
        assert isinstance(credential.secret, Secret)
        assert credential.secret.reveal(), "the secret is empty"
        assert await self.credential_works(issuer, credential, self.scope())

    async def test_an_unknown_param_is_refused_before_anything_is_made(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        # Workload inputs are validated strictly: a misspelt or foreign param is an error the
        # workload sees (400), never silently ignored.
        self._begin(clock)
        request = self.request(issuer)
        bad = msgspec.structs.replace(
            request, params={**request.params, "jit_conformance_unknown": "x"}
        )
        issuer.check_scope(bad.scope)
        with pytest.raises(InvalidRequest):
            await issuer.mint(bad)

    async def test_two_mints_give_two_different_credentials(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        _, first = await self.mint(issuer)
        _, second = await self.mint(issuer)
        assert first.secret.reveal() != second.secret.reveal()
        assert await self.credential_works(issuer, first, self.scope())
        assert await self.credential_works(issuer, second, self.scope())

    async def test_expires_at_honours_not_after_for_every_ttl(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        caps = issuer.capabilities
        for ttl in sorted({caps.min_ttl, _default_ttl(caps), caps.max_ttl}):
            request, credential = await self.mint(issuer, ttl=ttl)
            assert credential.expires_at.tzinfo is not None, "expires_at must be timezone-aware"
            assert credential.expires_at <= request.not_after, (
                f"ttl {ttl}: expires_at {credential.expires_at} is after not_after "
                f"{request.not_after}"
            )
            assert credential.expires_at > request.issued_at, f"ttl {ttl}: born expired"

    async def test_credential_still_works_just_before_not_after(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        request, credential = await self.mint(issuer)
        if request.not_after - request.issued_at < timedelta(seconds=3):
            pytest.skip("default TTL too short to look inside it")
        self.clock.set(request.not_after - timedelta(seconds=2))
        assert await self.credential_works(issuer, credential, self.scope())

    async def test_credential_stops_working_after_not_after(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        request, credential = await self.mint(issuer)
        assert await self.credential_works(issuer, credential, self.scope())
        await self.let_expire(issuer, request)
        assert not await self.credential_works(issuer, credential, self.scope()), (
            "the credential still works after not_after"
        )

    async def test_grants_every_action_of_the_scope_and_nothing_else(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        scope = self.scope()
        _, credential = await self.mint(issuer, scope)
        outside = self.action_outside_scope()
        assert outside not in scope.actions
        verdict = await self.credential_allows(issuer, credential, outside)
        if verdict is None:
            pytest.skip("credential_allows() not given: least privilege not checked")
        assert verdict is False, f"the credential allows {outside!r}, outside its scope"
        for action in scope.actions:
            assert await self.credential_allows(issuer, credential, action) is True, action

    async def test_a_narrower_scope_grants_only_its_actions(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        narrower = self.narrower_scope()
        if narrower is None:
            pytest.skip("no narrower_scope() given")
        _, credential = await self.mint(issuer, narrower)
        assert await self.credential_works(issuer, credential, narrower)
        for action in self.scope().actions:
            verdict = await self.credential_allows(issuer, credential, action)
            if verdict is None:
                pytest.skip("credential_allows() not given: least privilege not checked")
            assert verdict is (action in narrower.actions), (
                f"action {action!r}: allowed={verdict} with scope {narrower.actions}"
            )

    async def test_revoke_stops_the_credential(self, issuer: IssuerT, clock: FakeClock) -> None:
        self._begin(clock)
        self._require_revocable(issuer)
        request, credential = await self.mint(issuer)
        assert await self.credential_works(issuer, credential, self.scope())
        await self.revoke(issuer, lease_for(request, credential))
        assert not await self.credential_works(issuer, credential, self.scope()), (
            "the credential still works after revoke"
        )

    async def test_revoke_stops_only_that_credential(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        self._require_revocable(issuer)
        request, credential = await self.mint(issuer)
        _, other = await self.mint(issuer)
        await self.revoke(issuer, lease_for(request, credential))
        assert not await self.credential_works(issuer, credential, self.scope())
        assert await self.credential_works(issuer, other, self.scope()), (
            "revoking one lease stopped another lease's credential"
        )

    async def test_revoke_is_idempotent(self, issuer: IssuerT, clock: FakeClock) -> None:
        self._begin(clock)
        request, credential = await self.mint(issuer)
        lease = lease_for(request, credential)
        await self.revoke(issuer, lease)
        await self.revoke(issuer, lease)
        await self.revoke(issuer, lease_for(request, credential, state=LeaseState.REVOKING))
        if issuer.capabilities.revocable:
            assert not await self.credential_works(issuer, credential, self.scope())

    async def test_revoke_of_an_unknown_lease_is_a_noop(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        _, bystander = await self.mint(issuer)
        never_minted = self.request(issuer)
        await issuer.revoke(lease_for(never_minted))  # fresh lease id, empty handle
        await issuer.revoke(lease_for(never_minted, state=LeaseState.ACTIVE))
        assert await self.credential_works(issuer, bystander, self.scope()), (
            "revoking an unknown lease stopped another lease's credential"
        )

    async def test_revoke_after_a_crashed_mint_finds_the_credential_by_lease_id(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        request, credential = await self.mint(issuer)
        # The broker crashed before it recorded the handle: only the lease id is known.
        await self.revoke(issuer, lease_for(request, handle={}, state=LeaseState.MINTING))
        if issuer.capabilities.revocable:
            assert not await self.credential_works(issuer, credential, self.scope()), (
                "revoke with an empty handle did not find the credential named after the lease"
            )

    async def test_revoke_after_expiry_is_a_noop(self, issuer: IssuerT, clock: FakeClock) -> None:
        self._begin(clock)
        request, credential = await self.mint(issuer)
        await self.let_expire(issuer, request)
        await self.revoke(issuer, lease_for(request, credential))
        assert not await self.credential_works(issuer, credential, self.scope())

    async def test_the_handle_holds_no_secret(self, issuer: IssuerT, clock: FakeClock) -> None:
        self._begin(clock)
        request, credential = await self.mint(issuer)
        secret = credential.secret.reveal()
        public = self.public_parts(credential)
        for where, mapping in (("handle", credential.handle), ("metadata", credential.metadata)):
            for key, value in mapping.items():
                assert isinstance(key, str)
                assert isinstance(value, str), f"{where}[{key!r}] must be a str"
                for part in (key, value):
                    if part and part not in public:
                        assert part not in secret, f"{where} {part!r} is part of the secret"
                    assert secret not in part, f"{where}[{key!r}] holds the secret"
        stored = msgspec.json.encode(lease_for(request, credential))  # what Redis would hold
        assert secret.encode() not in stored

    async def test_exports_name_only_what_the_credential_carries(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        """``exports()`` (optional) refers to the secret, its metadata, a generated key or a
        public document, and every reference resolves; the encoded exports hold no secret."""
        exporter: object = issuer  # (mypy cannot intersect a TypeVar with a Protocol)
        if not isinstance(exporter, ExportsEnvironment):
            pytest.skip("the issuer does not implement exports()")
        self._begin(clock)
        request, credential = await self.mint(issuer)
        exports = exporter.exports(credential, request)
        exports.check(credential)
        assert exports.env or exports.files, "exports() that exports nothing"
        assert credential.secret.reveal().encode() not in msgspec.json.encode(exports)

    async def test_the_secret_never_reaches_a_repr_or_a_log(
        self, issuer: IssuerT, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        self._begin(clock)
        caplog.set_level(logging.DEBUG)
        request, credential = await self.mint(issuer)
        lease = lease_for(request, credential)
        await self.credential_works(issuer, credential, self.scope())
        await self.revoke(issuer, lease)
        await self.revoke(issuer, lease_for(request, handle={}))
        await issuer.check_health()
        secret = credential.secret.reveal()
        shown: dict[str, str] = {
            "repr(credential)": repr(credential),
            "str(credential)": str(credential),
            "repr(secret)": repr(credential.secret),
            "str(secret)": str(credential.secret),
            "repr(handle)": repr(credential.handle),
            "repr(metadata)": repr(credential.metadata),
            "repr(lease)": repr(lease),
            "repr(issuer)": repr(issuer),
            "log": caplog.text,
        }
        for record in caplog.records:
            shown[f"log record {record.name}"] = f"{record.getMessage()} {record.exc_text or ''}"
        for where, text in shown.items():
            assert secret not in text, f"the secret appears in {where}"

    async def test_an_outage_makes_mint_raise_issuer_unavailable(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        async with self.outage(issuer):
            with pytest.raises(IssuerUnavailable):
                await self.mint(issuer)
        _, credential = await self.mint(issuer)  # and it recovers
        assert await self.credential_works(issuer, credential, self.scope())

    async def test_revoke_during_an_outage_raises_instead_of_pretending(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        self._begin(clock)
        self._require_revocable(issuer)
        request, credential = await self.mint(issuer)
        async with self.outage(issuer):
            with pytest.raises(IssuerError):
                await issuer.revoke(lease_for(request, credential))
        await self.revoke(issuer, lease_for(request, credential))  # the broker's retry
        assert not await self.credential_works(issuer, credential, self.scope())

    async def test_inventory_lists_what_it_minted_and_forgets_what_it_revoked(
        self, issuer: IssuerT, clock: FakeClock
    ) -> None:
        # Reconciliation after state loss trusts this list: a minted credential must be on it
        # (by its lease id) until revoked, and never after.
        listing: object = issuer
        if not isinstance(listing, Inventoried):
            pytest.skip("the issuer does not list its credentials (not Inventoried)")
        self._require_revocable(issuer)
        self._begin(clock)
        request, credential = await self.mint(issuer)
        assert request.lease_id in await listing.inventory()
        await self.revoke(issuer, lease_for(request, credential))
        assert request.lease_id not in await listing.inventory()

    async def test_check_health_passes_normally(self, issuer: IssuerT, clock: FakeClock) -> None:
        self._begin(clock)
        await issuer.check_health()

    async def test_check_health_reports_an_outage(self, issuer: IssuerT, clock: FakeClock) -> None:
        self._begin(clock)
        if not self.health_detects_outage:
            pytest.skip("health_detects_outage is False")
        async with self.outage(issuer):
            with pytest.raises(IssuerUnavailable):
                await issuer.check_health()
        await issuer.check_health()
