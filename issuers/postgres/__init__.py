"""The ``postgres`` issuer type: one short-lived PostgreSQL login role per lease.

Registered as the ``postgres`` entry point in the ``jit_broker.issuers`` group (needs the
``jit-broker[postgres]`` extra: psycopg 3). See docs/issuers/postgres.md for configuration, the
scope model (actions map to NOLOGIN group roles), what revoke does, and the limits.
"""

from __future__ import annotations

from issuers.postgres.config import PostgresConfig, ResourceConfig
from issuers.postgres.issuer import PostgresIssuer, role_name

__all__ = ["PostgresConfig", "PostgresIssuer", "ResourceConfig", "role_name"]
