"""broker.client against a real `jit serve` and the real Redis: every cleanup path ends with
introspection inactive and the lease revoked; one Idempotency-Key makes one lease; approvals
are waited for, denied, expire, time out; errors are typed; the sync facade behaves the same."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.client import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalRequired,
    ApprovalTimeout,
    Client,
    Conflict,
    Credential,
    Denied,
    InvalidRequest,
    NotFound,
    StaticToken,
    SyncClient,
    Unauthenticated,
)
from broker.types import Secret
from tests.clients.support import Provider, Serve, assert_dead, introspect, lease
from tests.e2e.ci_support import verify_credential

pytestmark = pytest.mark.e2e

API = "https://api.internal"


def client(broker: Serve, token: str) -> Client:
    return Client(broker.url, StaticToken(token))


class Boom(Exception):
    pass


# -- cleanup paths -----------------------------------------------------------------------------


async def test_a_task_completes_on_normal_exit_and_its_credential_dies(
    broker: Serve, job: str
) -> None:
    async with client(broker, job) as c:
        async with c.task("deploy-7", purpose="deploy orders", ttl="30m") as task:
            cred = await task.credential(resource=API, actions=["read"], ttl="10m")
            assert isinstance(cred.secret, Secret)
            assert cred.secret.reveal() not in repr(cred)
            claims = verify_credential(broker.url, cred.secret.reveal(), API)
            assert (claims["jti"], claims["task_id"]) == (cred.lease_id, "deploy-7")
            assert introspect(broker, job, cred.secret.reveal())["active"] is True
        assert (await c.get_task("deploy-7")).state == "completed"
    assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)


async def test_an_exception_inside_the_task_completes_it_and_still_propagates(
    broker: Serve, job: str
) -> None:
    seen: list[Credential] = []
    async with client(broker, job) as c:

        async def work() -> None:
            async with c.task() as task:
                seen.append(await task.credential(resource=API, actions="read"))
                raise Boom

        with pytest.raises(Boom):
            await work()
    assert_dead(broker, job, seen[0].secret.reveal(), seen[0].lease_id)
    assert lease(broker, job, seen[0].lease_id)["revoke_trigger"] == "task_completed"


async def test_cancelling_the_coroutine_inside_the_task_still_completes_it(
    broker: Serve, job: str
) -> None:
    got: asyncio.Queue[Credential] = asyncio.Queue()
    async with client(broker, job) as c:

        async def work() -> None:
            async with c.task() as task:
                await got.put(await task.credential(resource=API, actions="read"))
                await asyncio.Event().wait()  # until cancelled

        running = asyncio.create_task(work())
        cred = await got.get()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)


async def test_a_second_cancel_during_the_cleanup_does_not_stop_it(broker: Serve, job: str) -> None:
    got: asyncio.Queue[Credential] = asyncio.Queue()
    async with client(broker, job) as c:

        async def work() -> None:
            async with c.task() as task:
                await got.put(await task.credential(resource=API, actions="read"))
                try:
                    await asyncio.Event().wait()
                finally:
                    asyncio.current_task().cancel()  # type: ignore[union-attr]  # cancelled again

        running = asyncio.create_task(work())
        cred = await got.get()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)


async def test_a_lease_context_revokes_only_its_lease_on_exception(broker: Serve, job: str) -> None:
    async with client(broker, job) as c:
        kept = await c.credential(resource=API, actions="read", task="shared")
        seen: list[Credential] = []

        async def work() -> None:
            async with c.lease(resource=API, actions="write", task="shared") as one:
                assert introspect(broker, job, one.secret.reveal())["active"] is True
                seen.append(one)
                raise Boom

        with pytest.raises(Boom):
            await work()
        cred = seen[0]
        assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)
        assert lease(broker, job, cred.lease_id)["revoke_trigger"] == "explicit"
        assert introspect(broker, job, kept.secret.reveal())["active"] is True
        assert (await c.get_task("shared")).state == "open"
        await c.complete_task("shared")


async def test_a_lease_context_revokes_its_lease_when_cancelled(broker: Serve, job: str) -> None:
    got: asyncio.Queue[Credential] = asyncio.Queue()
    async with client(broker, job) as c:

        async def work() -> None:
            async with c.lease(resource=API, actions="read") as cred:
                await got.put(cred)
                await asyncio.Event().wait()

        running = asyncio.create_task(work())
        cred = await got.get()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)


async def test_keep_revokes_the_leases_taken_here_and_leaves_the_task_open(
    broker: Serve, job: str
) -> None:
    async with client(broker, job) as c:
        async with c.task("kept", keep=True) as task:
            cred = await task.credential(resource=API, actions="read")
        assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)
        assert (await c.get_task("kept")).state == "open"
        later = await c.credential(resource=API, actions="read", task="kept")
        assert introspect(broker, job, later.secret.reveal())["active"] is True
        await c.complete_task("kept")


async def test_a_task_that_never_got_a_credential_exits_quietly(broker: Serve, job: str) -> None:
    async with client(broker, job) as c, c.task("nothing-asked"):
        pass
    async with client(broker, job) as c:
        with pytest.raises(NotFound):
            await c.get_task("nothing-asked")


# -- idempotency -------------------------------------------------------------------------------


async def test_two_concurrent_requests_with_one_key_make_one_lease(broker: Serve, job: str) -> None:
    async with client(broker, job) as c:
        first, second = await asyncio.gather(
            *(
                c.request(resource=API, actions="read", task="idem", idempotency_key="k-1")
                for _ in range(2)
            )
        )
        assert isinstance(first, Credential)
        assert isinstance(second, Credential)
        assert first.lease_id == second.lease_id
        assert first.secret == second.secret
        assert sorted([first.replayed, second.replayed]) == [False, True]
        assert [le.id for le in await c.leases()] == [first.lease_id]
        with pytest.raises(InvalidRequest) as reused:
            await c.request(resource=API, actions="write", task="idem", idempotency_key="k-1")
        assert reused.value.status == 422
        await c.complete_task("idem")
        with pytest.raises(Conflict):  # a replay of a revoked credential
            await c.request(resource=API, actions="read", task="idem", idempotency_key="k-1")


# -- approvals ---------------------------------------------------------------------------------


async def test_waiting_for_an_approval_reports_status_and_returns_the_credential(
    broker: Serve, job: str, alice: str
) -> None:
    seen: list[tuple[str, int]] = []
    asked: asyncio.Queue[str] = asyncio.Queue()

    def on_status(view: Any) -> None:
        seen.append((view.state, view.needed))
        asked.put_nowait(view.approval_id)

    async with client(broker, job) as c, client(broker, alice) as approver:

        async def approve() -> None:
            await approver.approve(await asked.get(), reason="ok")

        decided = asyncio.create_task(approve())
        async with c.task("release-1") as task:
            cred = await task.credential(
                resource="https://prod.internal", actions="deploy", on_status=on_status
            )
            await decided
            assert cred.approval_id is not None
            assert seen[0] == ("pending", 1)
            claims = verify_credential(broker.url, cred.secret.reveal(), "https://prod.internal")
            assert claims["jti"] == cred.lease_id
            view = await c.approval(cred.approval_id)
            assert (view.state, view.lease_id) == ("approved", cred.lease_id)
    assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)


async def test_a_denied_approval_raises_approval_denied_with_the_reason(
    broker: Serve, job: str, alice: str
) -> None:
    async with client(broker, job) as c, client(broker, alice) as approver:
        pending = await c.request(resource="https://prod.internal", actions="deploy")
        assert not isinstance(pending, Credential)
        await approver.deny(pending.approval_id, reason="change freeze")
        with pytest.raises(ApprovalDenied) as denied:
            await c.wait_for_approval(pending.approval_id)
        assert denied.value.approval_id == pending.approval_id
        assert denied.value.reasons == ("alice: change freeze",)
        assert isinstance(denied.value, Denied)


async def test_an_approval_request_that_expires_raises_approval_expired(
    broker: Serve, job: str
) -> None:
    """A real e2e wait: the grant's requests expire after 2 s."""
    async with client(broker, job) as c:
        with pytest.raises(ApprovalExpired) as expired:
            await c.credential(resource="https://flash.internal", actions="deploy")
        assert expired.value.state == "expired"


async def test_the_wait_times_out_and_leaves_the_request_pending(broker: Serve, job: str) -> None:
    async with client(broker, job) as c:
        with pytest.raises(ApprovalTimeout) as timeout:
            await c.credential(
                resource="https://prod.internal", actions="deploy", approval_timeout=1
            )
        view = await c.approval(timeout.value.approval_id)
        assert view.state == "pending"
        assert (await c.cancel_approval(view.approval_id)).state == "cancelled"


async def test_no_wait_raises_approval_required_with_the_approval_id(
    broker: Serve, job: str
) -> None:
    async with client(broker, job) as c:
        with pytest.raises(ApprovalRequired) as needed:
            await c.credential(resource="https://prod.internal", actions="deploy", wait=False)
        assert needed.value.grant == "platform/prod"
        assert needed.value.approval_id
        await c.cancel_approval(needed.value.approval_id)


async def test_cancelling_a_wait_cancels_the_approval_request(broker: Serve, job: str) -> None:
    statuses: asyncio.Queue[str] = asyncio.Queue()
    async with client(broker, job) as c:
        running = asyncio.create_task(
            c.credential(
                resource="https://prod.internal",
                actions="deploy",
                on_status=lambda v: statuses.put_nowait(v.approval_id),
            )
        )
        aid = await statuses.get()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert (await c.approval(aid)).state == "cancelled"


async def test_a_wait_that_does_not_cancel_leaves_the_request_pending_when_cancelled(
    broker: Serve, job: str
) -> None:
    """``cancel_if_cancelled=False`` (jit mcp's wait): the caller may wait again later."""
    statuses: asyncio.Queue[str] = asyncio.Queue()
    async with client(broker, job) as c:
        pending = await c.request(resource="https://prod.internal", actions="deploy")
        assert not isinstance(pending, Credential)
        running = asyncio.create_task(
            c.wait_for_approval(
                pending,
                on_status=lambda v: statuses.put_nowait(v.approval_id),
                cancel_if_cancelled=False,
            )
        )
        aid = await statuses.get()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert (await c.approval(aid)).state == "pending"
        await c.cancel_approval(aid)


async def test_the_delivery_is_declared_to_the_broker(broker: Serve, job: str) -> None:
    """A grant without ``delivery.reveal_to_model`` refuses ``delivery="model"``, so the SDK
    sends what it is given."""
    async with client(broker, job) as c:
        cred = await c.credential(resource=API, actions="read", delivery="file")
        await c.revoke(cred.lease_id)
        with pytest.raises(Denied) as refused:
            await c.credential(resource=API, actions="read", delivery="model")
        assert "reveal_to_model" in refused.value.message


async def test_explain_answers_for_the_callers_own_access_without_minting(
    broker: Serve, job: str
) -> None:
    async with client(broker, job) as c:
        allow = await c.explain(resource=API, actions="read", ttl="5m")
        assert (allow.decision, allow.ttl) == ("allow", 300)
        assert allow.grant
        needs = await c.explain(resource="https://prod.internal", actions=["deploy"])
        assert needs.decision == "approval_required"
        deny = await c.explain(resource=API, actions="delete")
        assert deny.decision == "deny"
        assert deny.reasons
        assert deny.grant is None
    with SyncClient(broker.url, StaticToken(job)) as sync:
        assert sync.explain(resource=API, actions="read").decision == "allow"


# -- errors ------------------------------------------------------------------------------------


async def test_a_denial_carries_every_reason(broker: Serve, job: str) -> None:
    async with client(broker, job) as c:
        with pytest.raises(Denied) as denied:
            await c.credential(resource=API, actions="delete")
    assert denied.value.status == 403
    assert denied.value.code == "denied"
    assert "platform/api: actions not allowed: delete" in denied.value.reasons


@pytest.mark.parametrize(
    ("case", "kwargs", "error"),
    [
        ("an unknown issuer", {"issuer": "nope", "resource": API, "actions": "read"}, Denied),
        ("a malformed ttl", {"resource": API, "actions": "read", "ttl": "soon"}, InvalidRequest),
        ("a bad task id", {"resource": API, "actions": "read", "task": "a b"}, InvalidRequest),
    ],
)
async def test_a_bad_request_is_a_typed_error(
    broker: Serve, job: str, case: str, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    async with client(broker, job) as c:
        with pytest.raises(error):
            await c.credential(**kwargs)


async def test_a_forged_identity_is_unauthenticated_and_an_unknown_lease_not_found(
    broker: Serve, job: str
) -> None:
    head, payload, sig = job.split(".")
    async with client(broker, f"{head}.{payload}.{sig[:-4]}AAAA") as forged:
        with pytest.raises(Unauthenticated):
            await forged.leases()
    async with client(broker, job) as c:
        with pytest.raises(NotFound):
            await c.revoke("0123456789abcdef.0123456789abcdef0123456789abcdef")


# -- token exchange (RFC 8693) -----------------------------------------------------------------


async def test_token_exchange_gives_a_credential_that_verifies_and_can_be_revoked(
    broker: Serve, job: str
) -> None:
    async with client(broker, job) as c:
        cred = await c.exchange(resource=API, actions=["read", "write"], task="x-1", ttl="5m")
        claims = verify_credential(broker.url, cred.secret.reveal(), API)
        assert (claims["jti"], claims["scope"]) == (cred.lease_id, "read write")
        assert (cred.issuer, cred.resource, cred.actions) == ("jwt", API, ("read", "write"))
        assert 0 < cred.ttl <= 300
        await c.revoke_token(cred.secret)
    assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)


async def test_token_exchange_waits_for_an_approval_too(
    broker: Serve, job: str, alice: str
) -> None:
    async with client(broker, job) as c, client(broker, alice) as approver:
        first: asyncio.Queue[str] = asyncio.Queue()
        running = asyncio.create_task(
            c.exchange(
                resource="https://prod.internal",
                actions="deploy",
                on_status=lambda v: first.put_nowait(v.approval_id),
            )
        )
        await approver.approve(await first.get())
        cred = await running
        verify_credential(broker.url, cred.secret.reveal(), "https://prod.internal")
        await c.revoke(cred.lease_id)


async def test_token_exchange_denied_by_policy_raises_denied_with_reasons(
    broker: Serve, job: str
) -> None:
    async with client(broker, job) as c:
        with pytest.raises(Denied) as denied:
            await c.exchange(resource=API, actions="delete")
    assert denied.value.reasons


# -- the sync facade ---------------------------------------------------------------------------


def test_the_sync_client_has_the_same_cleanup(broker: Serve, job: str) -> None:
    with SyncClient(broker.url, StaticToken(job)) as c:
        with c.task("sync-1") as task:
            cred = task.credential(resource=API, actions="read")
            assert introspect(broker, job, cred.secret.reveal())["active"] is True
        assert c.get_task("sync-1").state == "completed"
        assert_dead(broker, job, cred.secret.reveal(), cred.lease_id)

        leased: list[Credential] = []

        def in_a_lease() -> None:
            with c.lease(resource=API, actions="write") as one:
                leased.append(one)
                raise Boom

        def in_a_task() -> None:
            with c.task("sync-2") as task:
                leased.append(task.credential(resource=API, actions="read"))
                raise Boom

        with pytest.raises(Boom):
            in_a_lease()
        assert_dead(broker, job, leased[0].secret.reveal(), leased[0].lease_id)
        with pytest.raises(Boom):
            in_a_task()
        assert_dead(broker, job, leased[1].secret.reveal(), leased[1].lease_id)
        assert [le.id for le in c.leases()] == []


def test_the_sync_client_waits_for_approvals_and_raises_typed_errors(
    broker: Serve, job: str, alice: str, provider: Provider
) -> None:
    with (
        SyncClient(broker.url, StaticToken(job)) as c,
        SyncClient(broker.url, StaticToken(alice)) as approver,
    ):
        with pytest.raises(Denied):
            c.credential(resource=API, actions="delete")
        pending = c.request(resource="https://prod.internal", actions="deploy")
        assert not isinstance(pending, Credential)
        approver.approve(pending.approval_id)
        cred = c.wait_for_approval(pending)
        verify_credential(broker.url, cred.secret.reveal(), "https://prod.internal")
        c.revoke(cred.lease_id)
