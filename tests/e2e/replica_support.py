"""Several `jit serve` replicas on one private Redis, driven as an operator drives them: real
processes on loopback, signals sent with kill. Ports come from 7200-7259 (kept apart from the
shared Redis on 6379 and from other suites' servers). Used by tests/e2e/test_replicas.py and the
fault suite (tests/e2e/test_faults.py) and by bench/replicas.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.e2e.conftest import JIT

PORTS = range(7200, 7260)
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port(taken: set[int] | None = None) -> int:
    """A port of 7200-7259 that nothing listens on (and not in ``taken``)."""
    for port in PORTS:
        if taken is not None and port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if taken is not None:
            taken.add(port)
        return port
    raise RuntimeError("no free port in 7200-7259")


class RedisServer:
    """A private redis-server: AOF (appendfsync everysec) when ``aof``, else no persistence;
    with ``acl`` its ACL users are kept in an aclfile (``ACL SAVE`` before a restart)."""

    def __init__(self, workdir: Path, port: int, *, aof: bool = False, acl: bool = False) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.aof = aof
        self.acl = acl
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        if self.acl:
            aclfile = self.dir / "users.acl"
            aclfile.touch()
            args += ["--aclfile", str(aclfile)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                pass
            assert self.proc.poll() is None, (self.dir / "redis.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def users(self, prefix: str) -> list[str]:
        return [u for u in self.client().acl_users() if u.startswith(prefix)]

    def deluser_calls(self) -> int:
        """``ACL DELUSER`` calls since start (MONITOR does not show ACL commands)."""
        stats = self.client().info("commandstats")
        return int(stats.get("cmdstat_acl|deluser", {}).get("calls", 0))


@contextmanager
def redis_server(
    workdir: Path, port: int, *, aof: bool = False, acl: bool = False
) -> Iterator[RedisServer]:
    server = RedisServer(workdir, port, aof=aof, acl=acl).start()
    try:
        yield server
    finally:
        server.stop()


class Replica:
    """One `jit serve` process; the config is shared, the port is its own (JIT_PORT)."""

    def __init__(self, config: Path, port: int, name: str) -> None:
        self.config = config
        self.port = port
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log = config.parent / f"serve-{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, wait: bool = True) -> Replica:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
        env["JIT_PORT"] = str(self.port)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [JIT, "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            assert self.proc.poll() is None, self.tail()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"replica {self.name} never became ready\n{self.tail()}")

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Clean-up: SIGTERM (a drained replica writes its coverage data), -9 if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def stop(self, timeout: float = 90) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.name} did not stop\n{self.tail()}") from None
        return int(self.proc.returncode or 0)


def leases_in_store(server: RedisServer, prefix: str) -> dict[str, str]:
    """Every lease the state Redis holds: lease id → state letter (m a r R F)."""
    raw = redis.Redis(host="127.0.0.1", port=server.port)  # some fields are binary
    out: dict[str, str] = {}
    try:
        for key in raw.scan_iter(match=f"{prefix}:{{t:*", count=1000):
            tkey = key.decode().split("{t:", 1)[1].rstrip("}")
            for field, value in raw.hgetall(key).items():
                if len(field) == 8:
                    out[f"{tkey}.{field.decode()}"] = value.decode()
    finally:
        raw.close()
    return out


def audit_records(config: Path, redis_url: str, prefix: str) -> list[dict[str, Any]]:
    """The audit chain exported with `jit audit export`, checked with `jit audit verify`
    (hashes, order, checkpoint signatures); the records."""
    out = config.parent / "audit-export.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env["JIT_REDIS_URL"] = redis_url
    done = subprocess.run(
        [JIT, "audit", "export", "--prefix", prefix, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    verify = subprocess.run(
        [JIT, "audit", "verify", str(out), "--key", str(config.parent / "audit-jwks.json")],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
