"""Every test under this directory runs on each of tests/redisfarm.py's topologies: standalone
(with AOF and an ACL user), Sentinel (master, replica, three sentinels, passwords) and Cluster
(three masters with a replica each, an ACL user). The ``test_redis`` fixture the Redis fixtures
build on (tests/conftest.py) is parametrized here."""

from __future__ import annotations

import pytest

from broker.config import RedisSettings
from tests.redisfarm import Farm

MODES = ["standalone", "sentinel", "cluster"]


@pytest.fixture(params=MODES)
def test_redis(request: pytest.FixtureRequest, redis_farm: Farm) -> RedisSettings:
    return redis_farm.settings(request.param)
