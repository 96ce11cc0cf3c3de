"""`jit serve --workers N` (broker/cli/workers.py): N broker processes on one port, driven as an
operator drives them: real processes, real Redis on 127.0.0.1:6379, signals sent with kill."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import JIT, free_port
from tests.e2e.serve_support import IdP, write_config

pytestmark = pytest.mark.e2e

METRICS_TOKEN = "metrics-" + "7" * 32


def _config(tmp_path: Path, idp: IdP, port: int) -> Path:
    (tmp_path / "metrics-token").write_text(METRICS_TOKEN)
    prefix = "jit-e2e-workers-" + secrets.token_hex(4)
    return write_config(
        tmp_path, idp, port, prefix, metrics={"token_file": str(tmp_path / "metrics-token")}
    )


def _workers(parent: int) -> set[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True, check=False
    )
    return {int(p) for p in out.stdout.split()}


def _ready(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("jit serve --workers never became ready")


@contextmanager
def serving(config: Path, port: int, workers: int) -> Iterator[subprocess.Popen[str]]:
    log = config.parent / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [JIT, "serve", "--config", str(config), "--workers", str(workers)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _ready(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 20
        while len(_workers(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in _workers(proc.pid):
                    os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait()
                raise AssertionError(log.read_text()[-3000:]) from None


def _mint(url: str, token: str, task: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/credentials",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "task": {"id": task, "purpose": "workers"},
            "issuer": "jwt",
            "resource": "https://orders.internal",
            "actions": ["read"],
            "ttl": "5m",
        },
        timeout=10,
    )


def _counter(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_share_the_port_the_work_and_the_metrics(tmp_path: Path, idp: IdP) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = _config(tmp_path, idp, port)
    token = idp.token("repo:acme/api")
    with serving(config, port, 2) as proc:
        workers = _workers(proc.pid)
        assert len(workers) == 2
        # Each mint on a new connection: the kernel hands connections to either worker.
        leases = []
        for i in range(40):
            r = _mint(url, token, f"build-{i}")
            assert r.status_code == 201, r.text
            leases.append(r.json()["lease_id"])
        r = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        )
        assert r.status_code == 200
        # A scrape of one worker counts the credentials both issued.
        assert _counter(r.text, "jit_credentials_issued_total") == 40, r.text[:2000]
        # SIGHUP reaches every worker (each reloads its policies) and none exits.
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert _workers(proc.pid) == workers
        # A worker that dies is replaced; the port keeps answering meanwhile.
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = _workers(proc.pid)
            if len(now) == 2 and victim not in now:
                break
            assert _mint(url, token, f"during-{time.monotonic_ns()}").status_code == 201
            time.sleep(0.2)
        assert len(_workers(proc.pid)) == 2
        assert victim not in _workers(proc.pid)
        assert _mint(url, token, "after-restart").status_code == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (config.parent / "serve.log").read_text()[-3000:]
        remaining = _workers(proc.pid)
    assert remaining == set()
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_port_in_use_is_one_clear_error(tmp_path: Path, idp: IdP) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        config = _config(tmp_path, idp, port)
        done = subprocess.run(
            [JIT, "serve", "--config", str(config), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        busy.close()
    assert done.returncode != 0
    assert f"could not listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_workers_that_cannot_start_stop_the_server(tmp_path: Path, idp: IdP) -> None:
    port = free_port()
    missing = tmp_path / "no-such-keys"
    config = write_config(
        tmp_path,
        idp,
        port,
        "jit-e2e-workers-bad",
        issuers={"jwt": {"type": "jwt", "config": {"keys_dir": str(missing)}}},
    )
    done = subprocess.run(
        [JIT, "serve", "--config", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "could not start" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("value", ["0", "-1", "two", "257"])
def test_a_bad_worker_count_is_refused_before_anything_starts(value: str) -> None:
    done = subprocess.run(
        [JIT, "serve", "--config", "/nonexistent.yaml", "--workers", value],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert re.search(r"--workers", done.stderr)


APPROVAL_POLICY = """
owner: platform
workloads:
  - issuer: ci
    claims:
      sub: {glob: "repo:acme/*"}
grants:
  - name: deploy-admin
    issuer: jwt
    resource: https://orders.internal
    actions: [admin]
    max_ttl: 30m
    approval:
      approvers: [alice]
"""


def test_sigterm_drains_every_worker(tmp_path: Path, idp: IdP) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path,
        idp,
        port,
        "jit-e2e-workers-" + secrets.token_hex(4),
        approvals={"people": {"alice": {"identities": ["ci:human-alice"]}}},
        shutdown={"drain_delay": "1s"},
    )
    (tmp_path / "policies" / "platform.yaml").write_text(APPROVAL_POLICY)
    token = idp.token("repo:acme/api")
    with serving(config, port, 2) as proc:
        asked = httpx.post(
            f"{url}/v1/credentials",
            headers={"Authorization": f"Bearer {token}"},
            json={"issuer": "jwt", "resource": "https://orders.internal", "actions": ["admin"]},
            timeout=10,
        )
        assert asked.status_code == 202, asked.text
        approval = asked.json()["approval_id"]
        polled: dict[str, httpx.Response] = {}

        def long_poll() -> None:
            polled["r"] = httpx.get(
                f"{url}/v1/approvals/{approval}?wait=60",
                headers={"Authorization": f"Bearer {token}"},
                timeout=90,
            )

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(0.5)  # the long-poll is in flight at one of the workers
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "readiness did not go false"
            time.sleep(0.02)
        assert proc.wait(timeout=60) == 0, (config.parent / "serve.log").read_text()[-3000:]
        poller.join(timeout=30)
    # The long-poll was answered with what it had, not cut off by the stop.
    assert polled["r"].status_code == 200, polled["r"].text
    assert polled["r"].json()["state"] == "pending"
    assert "Cancel" not in (config.parent / "serve.log").read_text()
