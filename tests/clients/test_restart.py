"""The SDK retries across a broker restart without a second credential: the broker mints, then
dies (SIGKILL) before its answer reaches the client; the SDK keeps retrying the same request
under the same Idempotency-Key until a new `jit serve` on the same Redis answers with the same
lease and credential.

The lost answer is the one fake here, at the client's transport: the request really reaches the
broker and the broker really mints; only the bytes of the answer are dropped, as a reset
connection drops them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.client import Client, RetryPolicy, StaticToken
from tests.clients.support import Provider, Serve, assert_dead, serve

pytestmark = pytest.mark.e2e

API = "https://api.internal"


@pytest.fixture
def restartable(provider: Provider, tmp_path: Path) -> Iterator[Serve]:
    b = serve(tmp_path / "broker", provider)
    try:
        yield b
    finally:
        b.cleanup()


class LoseTheFirstAnswer(httpx.AsyncBaseTransport):
    """Passes every request to the real transport; for the first credential request, reads
    the broker's real answer, kills the broker (and starts it again in the background), and
    raises the error a reset connection gives."""

    def __init__(self, broker: Serve) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.broker = broker
        self.lost: dict[str, object] | None = None
        self.restarted = threading.Event()
        self.refused = 0  # connections refused while the broker was down

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.ConnectError:
            self.refused += 1
            raise
        if self.lost is None and request.method == "POST" and request.url.path == "/v1/credentials":
            await response.aread()
            self.lost = httpx.Response(response.status_code, content=response.content).json()
            self.broker.kill()

            def restart() -> None:
                self.broker.start()
                self.broker.wait_ready()
                self.restarted.set()

            threading.Thread(target=restart, daemon=True).start()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_mint_whose_answer_was_lost_is_retried_across_a_restart_without_a_second_lease(
    restartable: Serve, provider: Provider
) -> None:
    job = provider.workload_token("job-restart")
    transport = LoseTheFirstAnswer(restartable)
    retry = RetryPolicy(budget=90.0, base=0.2, cap=2.0)
    async with Client(
        restartable.url, StaticToken(job), transport=transport, retry=retry
    ) as client:
        cred = await client.credential(resource=API, actions="read", task="restart-1")
        assert transport.restarted.is_set()  # answered by the new process
        assert transport.refused >= 1  # the SDK kept trying while it was down
        assert transport.lost is not None
        assert cred.lease_id == transport.lost["lease_id"]  # the lease minted before the kill
        assert cred.replayed
        task = await client.get_task("restart-1")
        assert [le.id for le in task.leases] == [cred.lease_id]
        assert [le.id for le in await client.leases()] == [cred.lease_id]
        await client.complete_task("restart-1")
    assert_dead(restartable, job, cred.secret.reveal(), cred.lease_id)
