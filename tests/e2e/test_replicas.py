"""Two `jit serve` replicas on one (private) Redis, as an operator runs them (issue 13 part 2):
a credential revoked on one replica is inactive at the other's introspection within a second,
whichever way it is revoked; SIGTERM drains a replica (readiness false at once, serving for
`shutdown.drain_delay`, requests in flight finished, approval long-polls answered, exit 0)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.replica_support import RedisServer, Replica, free_port, redis_server
from tests.e2e.serve_support import IdP, write_config

pytestmark = pytest.mark.e2e

POLICY = """
owner: platform
workloads:
  - issuer: ci
    claims:
      sub: {glob: "repo:acme/*"}
permissions: [introspect]
grants:
  - name: deploy-read
    issuer: jwt
    resource: https://orders.internal
    actions: [read]
    max_ttl: 30m
    approval: none
  - name: deploy-admin
    issuer: jwt
    resource: https://orders.internal
    actions: [admin]
    max_ttl: 30m
    approval:
      approvers: [alice]
"""


def setup(tmp_path: Path, idp: IdP, redis: RedisServer, ports: set[int], **over: Any) -> Path:
    port = free_port(ports)
    config = write_config(
        tmp_path,
        idp,
        port,
        f"jit-e2e-replicas-{uuid.uuid4().hex[:8]}",
        redis_url=redis.url,
        approvals={"people": {"alice": {"identities": ["ci:human-alice"]}}},
        **over,
    )
    (tmp_path / "policies" / "platform.yaml").write_text(POLICY)
    return config


@pytest.fixture
def ports() -> set[int]:
    return set()


@pytest.fixture
def state(tmp_path: Path, ports: set[int]) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", free_port(ports)) as server:
        yield server


def mint(url: str, token: str, task: str, action: str = "read") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/credentials",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "task": {"id": task, "purpose": "replicas"},
            "issuer": "jwt",
            "resource": "https://orders.internal",
            "actions": [action],
            "ttl": "5m",
        },
        timeout=10,
    )


def active(url: str, token: str, access: str) -> bool:
    r = httpx.post(
        f"{url}/oauth/introspect",
        data={"token": access},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    return bool(r.json()["active"])


def test_revoked_on_one_replica_is_inactive_at_the_other_within_a_second(
    tmp_path: Path, idp: IdP, state: RedisServer, ports: set[int]
) -> None:
    config = setup(tmp_path, idp, state, ports)
    a = Replica(config, free_port(ports), "a").start()
    b = Replica(config, free_port(ports), "b").start()
    token = idp.token("repo:acme/app")
    auth = {"Authorization": f"Bearer {token}"}

    def by_lease(lease: str, task: str, access: str) -> None:
        assert httpx.delete(f"{b.url}/v1/leases/{lease}", headers=auth).status_code == 200

    def by_task(lease: str, task: str, access: str) -> None:
        r = httpx.post(f"{b.url}/v1/tasks/{task}/complete", headers=auth)
        assert r.status_code == 200, r.text

    def by_oauth(lease: str, task: str, access: str) -> None:
        r = httpx.post(f"{b.url}/oauth/revoke", data={"token": access}, headers=auth)
        assert r.status_code == 200, r.text

    ways: dict[str, Callable[[str, str, str], None]] = {
        "DELETE /v1/leases/{id}": by_lease,
        "task completed": by_task,
        "/oauth/revoke": by_oauth,
    }
    delays: dict[str, float] = {}
    try:
        for name, revoke in ways.items():
            task = f"t-{uuid.uuid4().hex[:8]}"
            r = mint(a.url, token, task)
            assert r.status_code == 201, r.text
            access = r.json()["credential"]["secret"]
            assert active(a.url, token, access)  # A has seen it (and may remember it)
            revoke(r.json()["lease_id"], task, access)
            start = time.monotonic()
            while active(a.url, token, access):
                assert time.monotonic() - start < 1.0, f"{name}: still active at A after 1 s"
                time.sleep(0.01)
            delays[name] = time.monotonic() - start
    finally:
        assert a.stop() == 0, a.tail()
        assert b.stop() == 0, b.tail()
    print(f"revoked at B, inactive at A after: {delays}")


def test_sigterm_drains_a_replica(
    tmp_path: Path, idp: IdP, state: RedisServer, ports: set[int]
) -> None:
    config = setup(tmp_path, idp, state, ports, shutdown={"drain_delay": "2s"})
    a = Replica(config, free_port(ports), "a").start()
    b = Replica(config, free_port(ports), "b").start()
    token = idp.token("repo:acme/app")
    human = {"Authorization": f"Bearer {idp.token('human-alice')}"}
    try:
        asked = mint(a.url, token, "needs-approval", action="admin")
        assert asked.status_code == 202, asked.text
        approval = asked.json()["approval_id"]
        polled: dict[str, Any] = {}

        def long_poll() -> None:
            r = httpx.get(
                f"{a.url}/v1/approvals/{approval}?wait=60",
                headers={"Authorization": f"Bearer {token}"},
                timeout=90,
            )
            polled["status"], polled["body"] = r.status_code, r.json()

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(0.5)  # the long-poll is in flight at A
        a.terminate()
        deadline = time.monotonic() + 5
        while httpx.get(f"{a.url}/readyz").status_code != 503:
            assert time.monotonic() < deadline, "readiness did not go false"
            time.sleep(0.02)
        assert httpx.get(f"{a.url}/readyz").json()["checks"]["shutdown"] == "draining"
        # Still serving during the drain delay (a load balancer may still send requests).
        assert mint(a.url, token, "during-drain").status_code == 201
        assert a.proc is not None
        assert a.proc.wait(timeout=60) == 0, a.tail()
        poller.join(timeout=30)
        # The long-poll in flight was answered (what it had: pending), not cut off.
        assert polled["status"] == 200, polled
        assert polled["body"]["state"] == "pending"
        assert "Cancel" not in a.tail(20000), a.tail()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{a.url}/healthz")
        # The client polls again, at the other replica, which answers the approval.
        r = httpx.post(f"{b.url}/v1/approvals/{approval}/approve", headers=human, json={})
        assert r.status_code == 200, r.text
        again = httpx.get(
            f"{b.url}/v1/approvals/{approval}", headers={"Authorization": f"Bearer {token}"}
        )
        assert again.json()["state"] == "approved", again.text
    finally:
        a.stop()
        assert b.stop() == 0, b.tail()


def test_an_abandoned_long_poll_does_not_hold_the_drain(
    tmp_path: Path, idp: IdP, state: RedisServer, ports: set[int]
) -> None:
    config = setup(tmp_path, idp, state, ports, shutdown={"drain_timeout": "5s"})
    a = Replica(config, free_port(ports), "a").start()
    token = idp.token("repo:acme/app")
    try:
        asked = mint(a.url, token, "abandoned", action="admin")
        assert asked.status_code == 202, asked.text
        approval = asked.json()["approval_id"]
        # A client that sends its long-poll and goes away without reading the answer.
        with socket.create_connection(("127.0.0.1", a.port)) as sock:
            sock.sendall(
                f"GET /v1/approvals/{approval}?wait=60 HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            time.sleep(0.5)
        time.sleep(0.2)
        a.terminate()
        assert a.proc is not None
        assert a.proc.wait(timeout=60) == 0, a.tail()
        # It ended with the drain, not by being cancelled at drain_timeout.
        assert "Cancel" not in a.tail(20000), a.tail()
    finally:
        a.stop()


def test_a_second_sigterm_skips_the_rest_of_the_drain_delay(
    tmp_path: Path, idp: IdP, state: RedisServer, ports: set[int]
) -> None:
    config = setup(tmp_path, idp, state, ports, shutdown={"drain_delay": "10m"})
    a = Replica(config, free_port(ports), "a").start()
    try:
        a.terminate()
        deadline = time.monotonic() + 5
        while httpx.get(f"{a.url}/readyz").status_code != 503:
            assert time.monotonic() < deadline, "readiness did not go false"
            time.sleep(0.02)
        assert httpx.get(f"{a.url}/healthz").status_code == 200  # serving through the delay
        a.terminate()
        assert a.proc is not None
        assert a.proc.wait(timeout=60) == 0, a.tail()  # well before the 10 minutes
    finally:
        a.stop()
