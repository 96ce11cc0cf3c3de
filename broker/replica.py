"""Who this process is among the broker's replicas: one id, made once at start-up.

Every claim a replica makes in Redis (a revocation lock, a reaper claim, an approval mint, an
audit sink's delivery lock) carries this id, so a lock can be told apart from another replica's
and a dead replica's claims expire instead of blocking the others.
"""

from __future__ import annotations

import os
import secrets
import socket

__all__ = ["new_replica_id"]


def new_replica_id() -> str:
    """``<host>-<pid>-<6 random hex>``: readable in logs, unique even across PID reuse."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
