"""`jit serve` through backend and state faults, as an operator meets them (issue 9, faults
7 and 12): a replica starts and serves while one issuer's backend is down; after Redis lost its
data the replica refuses to serve, `jit reconcile` removes the backend credential no lease
owns, and `jit state accept` lets it serve again."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.conftest import JIT, free_port
from tests.e2e.serve_support import IdP, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

REDIS_POLICY = """
owner: platform
workloads:
  - issuer: ci
    claims:
      sub: {glob: "repo:acme/*"}
grants:
  - name: deploy-read
    issuer: jwt
    resource: https://orders.internal
    actions: [read]
    max_ttl: 30m
    approval: none
  - name: cache-read
    issuer: cache
    resource: "redis://127.0.0.1:6379/0#orders"
    actions: [read]
    max_ttl: 10m
    approval: none
"""


def redis_issuer(port: int, user_prefix: str) -> dict[str, Any]:
    return {
        "type": "redis",
        "config": {
            "url": f"redis://127.0.0.1:{port}/0",
            "user_prefix": user_prefix,
            "resources": {
                "redis://127.0.0.1:6379/0#orders": {
                    "keys": ["orders:*"],
                    "actions": {"read": ["+@read", "+ping"]},
                }
            },
        },
    }


@contextmanager
def serving(config: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [JIT, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    url = json.loads(config.read_text())["public_url"]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.stdout.read() if proc.stdout else "did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def mint(url: str, token: str, issuer: str, resource: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/credentials",
        json={"issuer": issuer, "resource": resource, "actions": ["read"]},
        headers={"Authorization": f"Bearer {token}"},
    )


def setup(tmp_path: Path, idp: IdP, redis_port: int) -> tuple[Path, str, str]:
    port = free_port()
    prefix = f"jittest-faults-{uuid.uuid4().hex[:8]}"
    user_prefix = f"jitt{uuid.uuid4().hex[:6]}_"
    config = write_config(
        tmp_path,
        idp,
        port,
        prefix,
        issuers={
            "jwt": {"type": "jwt", "config": {"keys_dir": str(tmp_path / "keys")}},
            "cache": redis_issuer(redis_port, user_prefix),
        },
        reaper={"state_check_interval": "200ms", "health_retry_interval": "500ms"},
    )
    (tmp_path / "policies" / "platform.yaml").write_text(REDIS_POLICY)
    return config, prefix, user_prefix


def test_a_replica_starts_and_serves_while_one_issuers_backend_is_down(
    tmp_path: Path, idp: IdP
) -> None:
    config, _, _ = setup(tmp_path, idp, redis_port=free_port())  # nothing listens there
    with serving(config) as url:
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["issuer:cache"].startswith("degraded")
        assert ready.json()["checks"]["issuer:jwt"] == "ok"
        token = idp.token("repo:acme/app")
        down = mint(url, token, "cache", "redis://127.0.0.1:6379/0#orders")
        assert down.status_code == 503
        assert down.headers["retry-after"]
        assert down.json()["type"].endswith("issuer-unavailable")
        ok = mint(url, token, "jwt", "https://orders.internal")
        assert ok.status_code == 201, ok.text


def test_after_redis_lost_the_state_reconcile_and_accept_bring_the_broker_back(
    tmp_path: Path, idp: IdP
) -> None:
    config, prefix, user_prefix = setup(tmp_path, idp, redis_port=6379)
    admin = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    try:
        with serving(config) as url:
            token = idp.token("repo:acme/app")
            r = mint(url, token, "cache", "redis://127.0.0.1:6379/0#orders")
            assert r.status_code == 201, r.text
            user = r.json()["credential"]["metadata"]["username"]
            assert user in admin.acl_users()
            # Redis loses the broker's data (the ACL user, in the backend, survives).
            keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
            admin.delete(*keys)
            deadline = time.monotonic() + 20
            while httpx.get(f"{url}/readyz").status_code != 503:
                assert time.monotonic() < deadline, "the replica did not notice the loss"
                time.sleep(0.1)
            refused = httpx.get(f"{url}/v1/leases", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 503
            assert refused.json()["type"].endswith("state-lost")
            out = subprocess.run(
                [JIT, "reconcile", "--config", str(config)],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert out.returncode == 0, out.stderr
            report = json.loads(out.stdout)
            assert report["revoked"] == {"cache": 1}
            assert user not in admin.acl_users()  # the orphan is gone
            accepted = subprocess.run(
                [JIT, "state", "accept", "--config", str(config)],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert accepted.returncode == 0, accepted.stderr
            deadline = time.monotonic() + 20
            while httpx.get(f"{url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the replica did not serve again"
                time.sleep(0.1)
            assert mint(url, token, "jwt", "https://orders.internal").status_code == 201
    finally:
        for u in admin.acl_users():
            if u.startswith(user_prefix):
                admin.acl_deluser(u)
        for k in admin.scan_iter(match=f"{prefix}:*", count=1000):
            admin.delete(k)
        admin.close()
