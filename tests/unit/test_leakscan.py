"""The secret scan itself finds what it must (so a clean run means something)."""

from __future__ import annotations

import logging

import fakeredis
import pytest

from tests.leakscan import CaptureHandler, LeakScan, redis_values


async def test_the_scan_finds_a_secret_in_each_place_and_ignores_short_values() -> None:
    scan = LeakScan()
    for value in ("tok-in-audit-0123456789", "tok-in-logs-0123456789", "tok-in-redis-012345678"):
        scan.add_secret(value)
    scan.add_secret("short")
    scan.audit.append(b'{"type":"x","detail":{"t":"tok-in-audit-0123456789"}}')
    logger = logging.getLogger("jit.test.leakscan")
    handler = CaptureHandler(scan)
    logger.addHandler(handler)
    try:
        logger.warning("oops %s", "tok-in-logs-0123456789")
    finally:
        logger.removeHandler(handler)
    client = fakeredis.FakeAsyncRedis()
    await client.hset("k:h", mapping={"f": "prefix tok-in-redis-012345678 suffix"})
    await client.xadd("k:s", {"v": "clean"})
    scan.redis.extend(await redis_values(client, "k:*"))
    await client.aclose()
    found = scan.find()
    assert sorted(found) == [
        ("tok-in…", "Redis values"),
        ("tok-in…", "audit records"),
        ("tok-in…", "log lines"),
    ]
    assert "short" not in scan.secrets


@pytest.mark.parametrize("place", ["audit", "logs", "redis"])
def test_a_clean_run_reports_nothing(place: str) -> None:
    scan = LeakScan()
    scan.add_secret("s3cr3t-value-0123456789")
    getattr(scan, place).append(b"nothing here" if place != "logs" else "nothing here")
    assert scan.find() == []
