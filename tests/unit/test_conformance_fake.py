"""FakeIssuer passes the conformance kit, behaves as scripted, and the kit catches broken
issuers (each broken variant below fails the test that guards against its bug)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

from broker.errors import ConfigError, InvalidRequest, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, Issuer, IssuerContext
from broker.testing import (
    FakeCall,
    FakeClock,
    FakeIssuer,
    IssuerConformance,
    lease_for,
    mint_request,
    new_lease_id,
)
from broker.types import Credential, Lease, LeaseState, MintRequest, Scope, Secret
from tests.leakscan import LEAKS

SCOPE = Scope.of("fake", "db://orders", ["read", "write"])


class TestFakeIssuer(IssuerConformance[FakeIssuer]):
    @pytest.fixture
    async def issuer(self, clock: FakeClock) -> AsyncIterator[FakeIssuer]:
        issuer = FakeIssuer("fake", clock=clock)
        yield issuer
        await issuer.aclose()

    def scope(self) -> Scope:
        return SCOPE

    def narrower_scope(self) -> Scope | None:
        return Scope.of("fake", "db://orders", ["read"])

    def unsupported_scope(self) -> Scope | None:
        return Scope.of("fake", "db://orders", [])

    async def credential_works(
        self, issuer: FakeIssuer, credential: Credential, scope: Scope
    ) -> bool:
        return issuer.is_valid(credential.secret)

    async def credential_allows(
        self, issuer: FakeIssuer, credential: Credential, action: str
    ) -> bool | None:
        return issuer.allows(credential.secret, action)

    @asynccontextmanager
    async def outage(self, issuer: FakeIssuer) -> AsyncIterator[None]:
        issuer.outage = True
        try:
            yield
        finally:
            issuer.outage = False


class TestExpiryOnlyFakeIssuer(TestFakeIssuer):
    """An expiry-only backend (revocable=False) passes too: the revoke tests skip."""

    @pytest.fixture
    async def issuer(self, clock: FakeClock) -> AsyncIterator[FakeIssuer]:
        caps = Capabilities(
            max_ttl=timedelta(hours=1), default_ttl=timedelta(minutes=5), revocable=False
        )
        issuer = FakeIssuer("fake", clock=clock, capabilities=caps)
        yield issuer
        await issuer.aclose()


class NeedsAPublicKey(FakeIssuer):
    """Like a certificate issuer: every mint needs the workload's public key, and the
    credential names its key id (public by design) inside the secret."""

    accepted_params = frozenset({"public_key"})

    async def mint(self, request: MintRequest) -> Credential:
        key = request.params.get("public_key")
        if not key or set(request.params) != {"public_key"}:
            raise InvalidRequest("params.public_key is required (and nothing else)")
        cred = await super().mint(request)
        key_id = f"key-{request.lease_id[-8:]}"
        secret = Secret(f"{key_id}:{cred.secret.reveal()}")
        self.credentials[self.credential_name(request.lease_id)].secret = secret
        return Credential(
            secret=secret,
            expires_at=cred.expires_at,
            handle=cred.handle,
            metadata={"key_id": key_id},
        )


class TestAnIssuerThatNeedsParams(TestFakeIssuer):
    """The params() and public_parts() hooks let such an issuer pass the kit unchanged."""

    @pytest.fixture
    async def issuer(self, clock: FakeClock) -> AsyncIterator[FakeIssuer]:
        issuer = NeedsAPublicKey("fake", clock=clock)
        yield issuer
        await issuer.aclose()

    def params(self, lease_id: str) -> dict[str, str]:
        return {"public_key": f"ssh-ed25519 AAAA{lease_id[:8]}"}

    def public_parts(self, credential: Credential) -> set[str]:
        return {credential.metadata["key_id"]}


# -- the fake's own behaviour -------------------------------------------------------------


@pytest.fixture
def fake(clock: FakeClock) -> FakeIssuer:
    return FakeIssuer("fake", clock=clock)


def request_for(clock: FakeClock, ttl: float = 60, scope: Scope = SCOPE) -> MintRequest:
    return mint_request(scope, now=clock.now(), ttl=timedelta(seconds=ttl))


async def test_the_fake_names_credentials_after_lease_ids_and_records_calls(
    fake: FakeIssuer, clock: FakeClock
) -> None:
    req = request_for(clock)
    cred = await fake.mint(req)
    assert cred.handle == {"name": f"fake_{req.lease_id}"}
    assert list(fake.credentials) == [f"fake_{req.lease_id}"]
    await fake.revoke(lease_for(req, cred))
    await fake.check_health()
    assert fake.calls == [
        FakeCall("mint", req.lease_id),
        FakeCall("revoke", req.lease_id),
        FakeCall("check_health"),
    ]
    assert fake.calls_to("revoke") == [FakeCall("revoke", req.lease_id)]
    assert fake.credentials[f"fake_{req.lease_id}"].revoked_at == clock.now()


async def test_fail_next_mint_fails_exactly_n_mints(fake: FakeIssuer, clock: FakeClock) -> None:
    fake.fail_next_mint(2)
    for _ in range(2):
        with pytest.raises(IssuerUnavailable):
            await fake.mint(request_for(clock))
    assert fake.credentials == {}
    cred = await fake.mint(request_for(clock))
    assert fake.is_valid(cred.secret)


async def test_a_mint_that_fails_after_creating_leaves_a_credential_revoke_can_find(
    fake: FakeIssuer, clock: FakeClock
) -> None:
    fake.fail_next_mint(after_create=True)
    req = request_for(clock)
    with pytest.raises(IssuerUnavailable):
        await fake.mint(req)
    assert len(fake.live()) == 1
    await fake.revoke(lease_for(req))  # empty handle: the reaper's clean-up after a crash
    assert fake.live() == []


async def test_fail_next_revoke_fails_n_revokes_and_keeps_the_credential(
    fake: FakeIssuer, clock: FakeClock
) -> None:
    req = request_for(clock)
    cred = await fake.mint(req)
    fake.fail_next_revoke(1)
    with pytest.raises(IssuerUnavailable):
        await fake.revoke(lease_for(req, cred))
    assert fake.is_valid(cred.secret)
    await fake.revoke(lease_for(req, cred))
    assert not fake.is_valid(cred.secret)


async def test_an_outage_fails_mint_revoke_and_health(fake: FakeIssuer, clock: FakeClock) -> None:
    req = request_for(clock)
    cred = await fake.mint(req)
    fake.outage = True
    with pytest.raises(IssuerUnavailable):
        await fake.mint(request_for(clock))
    with pytest.raises(IssuerUnavailable):
        await fake.revoke(lease_for(req, cred))
    with pytest.raises(IssuerUnavailable):
        await fake.check_health()
    assert fake.is_valid(cred.secret)


async def test_a_closed_fake_refuses_to_mint(fake: FakeIssuer, clock: FakeClock) -> None:
    await fake.aclose()
    assert fake.closed
    with pytest.raises(IssuerUnavailable):
        await fake.mint(request_for(clock))


async def test_credentials_expire_at_not_after_on_the_fakes_clock(
    fake: FakeIssuer, clock: FakeClock
) -> None:
    cred = await fake.mint(request_for(clock, ttl=10))
    assert cred.expires_at == clock.now() + timedelta(seconds=10)
    clock.advance(9.999)
    assert fake.is_valid(cred.secret)
    clock.advance(0.001)
    assert not fake.is_valid(cred.secret)
    assert fake.live() == []


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        pytest.param(Scope.of("other", "db://x", ["read"]), "for 'other'", id="another issuer"),
        pytest.param(Scope.of("fake", "", ["read"]), "resource", id="no resource"),
        pytest.param(Scope.of("fake", "db://x", []), "action", id="no actions"),
        pytest.param(Scope.of("fake", "db://x", ["drop"]), "drop", id="an unsupported action"),
    ],
)
def test_check_scope_refuses_what_the_fake_cannot_express(
    clock: FakeClock, scope: Scope, reason: str
) -> None:
    fake = FakeIssuer("fake", clock=clock, actions=["read", "write"])
    with pytest.raises(ScopeNotSupported, match=reason):
        fake.check_scope(scope)


def test_from_context_reads_capabilities_and_refuses_unknown_keys(clock: FakeClock) -> None:
    ctx = IssuerContext(
        name="f1",
        config={"max_ttl": 60, "default_ttl": 30, "revocable": False, "actions": ["read"]},
        clock=clock,
        broker_url="https://broker.test",
    )
    fake = FakeIssuer.from_context(ctx)
    assert isinstance(fake, Issuer)
    assert fake.name == "f1"
    assert fake.capabilities == Capabilities(
        max_ttl=timedelta(seconds=60), default_ttl=timedelta(seconds=30), revocable=False
    )
    assert fake.supported_actions == frozenset({"read"})
    bad = IssuerContext(
        name="f2", config={"max_tll": 60}, clock=clock, broker_url="https://broker.test"
    )
    with pytest.raises(ConfigError, match="max_tll"):
        FakeIssuer.from_context(bad)


def test_kit_helpers_build_requests_and_leases_as_the_broker_does(clock: FakeClock) -> None:
    lease_id = new_lease_id()
    task_key, _, rand = lease_id.partition(".")
    assert len(task_key) == 16
    assert len(rand) == 32
    assert new_lease_id() != lease_id
    req = mint_request(SCOPE, now=clock.now(), ttl=timedelta(minutes=5), lease_id=lease_id)
    assert req.not_after - req.issued_at == timedelta(minutes=5)
    crashed = lease_for(req)
    assert crashed.state is LeaseState.MINTING
    assert crashed.handle == {}
    cred = Credential(secret=Secret("s"), expires_at=req.not_after, handle={"name": "n"})
    active = lease_for(req, cred)
    assert active.state is LeaseState.ACTIVE
    assert active.handle == {"name": "n"}
    assert (active.id, active.owner, active.not_after) == (
        lease_id,
        req.principal.id,
        req.not_after,
    )


# -- the kit catches broken issuers --------------------------------------------------------


class LeaksSecretInHandle(FakeIssuer):
    async def mint(self, request: MintRequest) -> Credential:
        cred = await super().mint(request)
        return Credential(
            secret=cred.secret,
            expires_at=cred.expires_at,
            handle={**cred.handle, "password": cred.secret.reveal()},
        )


class LogsTheSecret(FakeIssuer):
    async def mint(self, request: MintRequest) -> Credential:
        cred = await super().mint(request)
        LEAKS.allow(cred.secret.reveal())  # leaked on purpose: the kit must catch it
        logging.getLogger("leaky").debug("minted %s", cred.secret.reveal())
        return cred


class IgnoresNotAfter(FakeIssuer):
    async def mint(self, request: MintRequest) -> Credential:
        cred = await super().mint(request)
        expires = request.issued_at + self.capabilities.max_ttl
        self.credentials[self.credential_name(request.lease_id)].expires_at = expires
        return Credential(secret=cred.secret, expires_at=expires, handle=cred.handle)


class RevokeDoesNothing(FakeIssuer):
    async def revoke(self, lease: Lease) -> None:
        return None


class RevokeNeedsTheHandle(FakeIssuer):
    async def revoke(self, lease: Lease) -> None:
        if "name" not in lease.handle:
            return None  # "can't find it": the credential stays alive
        await super().revoke(lease)


class RevokeIsNotIdempotent(FakeIssuer):
    async def revoke(self, lease: Lease) -> None:
        name = lease.handle.get("name") or self.credential_name(lease.id)
        cred = self.credentials.get(name)
        if cred is None or cred.revoked_at is not None:
            raise KeyError(name)
        await super().revoke(lease)


class RevokeRemovesEverything(FakeIssuer):
    async def revoke(self, lease: Lease) -> None:
        for cred in self.credentials.values():
            cred.revoked_at = self.clock.now()


class GrantsEverything(FakeIssuer):
    def allows(self, secret: Secret | str, action: str) -> bool:
        return self.is_valid(secret)


class OutageIsAnUntypedError(FakeIssuer):
    def _check_up(self) -> None:
        if self.outage:
            raise ConnectionRefusedError("backend down")


class RevokeSwallowsOutages(FakeIssuer):
    async def revoke(self, lease: Lease) -> None:
        if self.outage:
            return None  # "success" while nothing was revoked
        await super().revoke(lease)


BROKEN = [
    pytest.param(LeaksSecretInHandle, "test_the_handle_holds_no_secret", id="secret in handle"),
    pytest.param(LogsTheSecret, "test_the_secret_never_reaches_a_repr_or_a_log", id="logs it"),
    pytest.param(
        IgnoresNotAfter, "test_expires_at_honours_not_after_for_every_ttl", id="ignores not_after"
    ),
    pytest.param(
        IgnoresNotAfter, "test_credential_stops_working_after_not_after", id="outlives not_after"
    ),
    pytest.param(RevokeDoesNothing, "test_revoke_stops_the_credential", id="revoke does nothing"),
    pytest.param(
        RevokeNeedsTheHandle,
        "test_revoke_after_a_crashed_mint_finds_the_credential_by_lease_id",
        id="revoke needs the handle",
    ),
    pytest.param(RevokeIsNotIdempotent, "test_revoke_is_idempotent", id="not idempotent"),
    pytest.param(
        RevokeRemovesEverything, "test_revoke_stops_only_that_credential", id="revokes too much"
    ),
    pytest.param(
        GrantsEverything,
        "test_grants_every_action_of_the_scope_and_nothing_else",
        id="grants too much",
    ),
    pytest.param(
        GrantsEverything, "test_a_narrower_scope_grants_only_its_actions", id="ignores narrowing"
    ),
    pytest.param(
        OutageIsAnUntypedError,
        "test_an_outage_makes_mint_raise_issuer_unavailable",
        id="untyped outage",
    ),
    pytest.param(
        OutageIsAnUntypedError, "test_check_health_reports_an_outage", id="untyped health error"
    ),
    pytest.param(
        RevokeSwallowsOutages,
        "test_revoke_during_an_outage_raises_instead_of_pretending",
        id="revoke swallows an outage",
    ),
]


@pytest.mark.parametrize(("broken", "test_name"), BROKEN)
async def test_the_kit_fails_a_broken_issuer(
    broken: type[FakeIssuer], test_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    kit = TestFakeIssuer()
    clock = FakeClock()
    issuer = broken("fake", clock=clock)
    test = getattr(kit, test_name)
    args: list[object] = [issuer, clock]
    if "caplog" in test.__code__.co_varnames:
        args.append(caplog)
    with pytest.raises((AssertionError, pytest.fail.Exception, ConnectionRefusedError, KeyError)):
        await test(*args)
    # the same kit test passes for the correct fake, so it is the bug that failed it
    good_clock = FakeClock()
    good_args: list[object] = [FakeIssuer("fake", clock=good_clock), good_clock]
    if "caplog" in test.__code__.co_varnames:
        caplog.clear()
        good_args.append(caplog)
    await getattr(TestFakeIssuer(), test_name)(*good_args)
