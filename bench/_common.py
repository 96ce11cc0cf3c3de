"""Shared by the benchmarks: a private, empty redis-server on loopback that the bench starts and
stops itself (never the shared 6379), a stand-in issuer whose handle is shaped like the JWT
issuer's, and percentiles.

Not a test helper: nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

from broker.testing import FakeIssuer
from broker.types import Credential, MintRequest, Secret

__all__ = ["JwtShapedIssuer", "pct", "private_redis", "used_memory"]


@contextlib.contextmanager
def private_redis(port: int, *extra: str) -> Iterator[str]:
    """Start ``redis-server`` on 127.0.0.1:``port`` (no persistence), yield its URL, stop it."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="jit-bench-redis-"))
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--protected-mode", "yes",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    raise SystemExit(f"redis-server on port {port} did not start") from None
                time.sleep(0.025)
        if client.dbsize():
            raise SystemExit(f"the redis-server on port {port} is not empty: another one runs?")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


class JwtShapedIssuer(FakeIssuer):
    """The in-memory fake issuer, returning what the JWT issuer returns (an empty handle, the
    signing key's RFC 7638 thumbprint as metadata) so the stored lease has its real size.
    It keeps nothing per credential (the fake's credential table would cost the bench's own
    memory, not Redis')."""

    KID = secrets.token_urlsafe(32)[:43]

    async def mint(self, request: MintRequest) -> Credential:
        return Credential(
            secret=Secret(secrets.token_urlsafe(24)),
            expires_at=request.not_after,
            handle={},
            metadata={"kid": self.KID},
        )


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (inclusive method); the single value for one sample."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]
