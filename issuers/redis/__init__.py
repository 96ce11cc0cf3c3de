"""The ``redis`` issuer type: one Redis ACL user per lease, deleted at revocation.

Registered as the ``redis`` entry point in the ``jit_broker.issuers`` group. See
docs/issuers/redis.md for configuration, the scope model and the expiry limit (Redis ACL users
do not expire: the broker's reaper deletes them at ``not_after``).
"""

from __future__ import annotations

from issuers.redis.config import RedisConfig, ResourceConfig
from issuers.redis.issuer import RedisIssuer

__all__ = ["RedisConfig", "RedisIssuer", "ResourceConfig"]
