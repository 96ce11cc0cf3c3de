"""Start `jit dev` as a subprocess on a free loopback port, as a user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.serve_support import IdP

JIT = str(Path(sys.executable).parent / "jit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevBroker:
    url: str
    env: dict[str, str]
    home: Path
    proc: subprocess.Popen[str]

    def jit(
        self, *args: str, token: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if token is not None:
            env["JIT_TOKEN"] = token
        result = subprocess.run(
            [JIT, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"jit {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def token(self, sub: str, *claims: str) -> str:
        args = ["dev", "token", "--sub", sub]
        for c in claims:
            args += ["--claim", c]
        return self.jit(*args).stdout.strip()


@pytest.fixture
def dev_broker(tmp_path: Path) -> Iterator[DevBroker]:
    port = free_port()
    home = tmp_path / "jit-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env.update({"JIT_HOME": str(home), "JIT_URL": f"http://127.0.0.1:{port}"})
    proc = subprocess.Popen(
        [JIT, "dev", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"jit dev exited early:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            if (
                httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                and (home / "dev.json").exists()
            ):
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("jit dev did not become healthy within 30 s")
        time.sleep(0.1)
    broker = DevBroker(url=url, env=env, home=home, proc=proc)
    yield broker
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def dev_state(home: Path) -> dict[str, str]:
    return json.loads((home / "dev.json").read_text())


@pytest.fixture
def idp() -> Iterator[IdP]:
    """A loopback OIDC issuer that `jit serve` configs written by serve_support trust."""
    from tests.e2e.serve_support import IdP

    p = IdP()
    yield p
    p.server.shutdown()
