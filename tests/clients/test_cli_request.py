"""`jit request` waiting for an approval in a CI log (stderr is not a terminal): it says once
which approval request it waits for, where it is and who must approve it, then prints progress
lines while it waits; approved, it prints the credential."""

from __future__ import annotations

import queue
import re
import subprocess
import threading

import httpx
import pytest

from tests.clients.support import Serve, assert_dead, jit_env
from tests.e2e.ci_support import verify_credential
from tests.e2e.conftest import JIT

pytestmark = pytest.mark.e2e


def test_waiting_without_a_terminal_prints_the_request_then_progress_lines(
    broker: Serve, job: str, alice: str
) -> None:
    proc = subprocess.Popen(
        [JIT, "request", "--resource", "https://prod.internal", "--action", "deploy",
         "--task", "ci-wait-1"],
        env=jit_env(broker, job, JIT_PROGRESS_INTERVAL="0.5"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)  # EOF

    threading.Thread(target=read_stderr, daemon=True).start()
    try:

        def next_line() -> str:
            line = lines.get(timeout=60)
            assert line is not None, "jit request ended early"
            return line

        first = next_line()
        m = re.match(r"waiting for approval ([0-9a-f]{32}) \(grant platform/prod\): (.*)$", first)
        assert m, first
        aid = m.group(1)
        assert "1 of alice, bob must approve" in m.group(2)
        assert f"(an approver runs: jit approve {aid})" in m.group(2)
        assert f"{broker.url}/v1/approvals/{aid}" in m.group(2)
        progress = next_line()  # nothing happens: a progress line comes anyway
        assert progress.startswith(f"still waiting for approval {aid}: 1 more of alice, bob")
        r = httpx.post(
            f"{broker.url}/v1/approvals/{aid}/approve",
            headers={"Authorization": f"Bearer {alice}"},
            json={"reason": "go"},
        )
        assert r.status_code == 200, r.text
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=60)
        rest: list[str] = []
        while (line := lines.get(timeout=60)) is not None:
            rest.append(line)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert any(line.startswith("approved by alice") for line in rest), rest
    token = out.strip()
    lease_id = verify_credential(broker.url, token, "https://prod.internal")["jti"]
    subprocess.run(
        [JIT, "task", "complete", "ci-wait-1"],
        env=jit_env(broker, job),
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    assert_dead(broker, job, token, lease_id)
