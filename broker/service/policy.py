"""The running policy: loaded at start, replaced on reload (SIGHUP), read by every use case.

A reload that does not load (a broken document) keeps the running policy: fail closed, and
both outcomes are audited (``policy.reloaded`` / ``policy.reload_failed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Set
from pathlib import Path

from broker.audit import AuditLog
from broker.errors import PolicyError
from broker.policy import PolicySet, load_policy_dir

__all__ = ["LivePolicy"]

log = logging.getLogger("jit.broker")


class LivePolicy:
    """The current :class:`PolicySet` and how to load the next one. ``load_rules`` returns
    what a policy may name (claims, issuers, approvers), read at reload time."""

    def __init__(
        self,
        current: PolicySet,
        directory: str | Path,
        audit: AuditLog,
        *,
        known_claims: Callable[[], dict[str, set[str] | None]],
        issuers: Set[str],
        approvers: Set[str],
        has_default_approvers: bool,
    ) -> None:
        self.current = current
        self.directory = directory
        self.audit = audit
        self._known_claims = known_claims
        self._issuers = set(issuers)
        self._approvers = set(approvers)
        self._has_default_approvers = has_default_approvers

    def __call__(self) -> PolicySet:
        return self.current

    async def reload(self) -> bool:
        """Load the directory again. Returns False (and keeps the running policy) when it
        does not load."""
        old = self.current.version
        try:
            policy = load_policy_dir(
                self.directory,
                known_claims=self._known_claims(),
                issuers=self._issuers,
                approvers=self._approvers,
                has_default_approvers=self._has_default_approvers,
            )
        except PolicyError as exc:
            log.error("policy reload failed, keeping version %s: %s", old, exc.message)
            await self.audit.emit(
                "policy.reload_failed",
                outcome="error",
                reasons=[exc.message],
                detail={"policy_version": old},
            )
            return False
        self.current = policy
        await self.audit.emit(
            "policy.reloaded", detail={"old_version": old, "policy_version": policy.version}
        )
        log.info("policy reloaded: %s -> %s", old, policy.version)
        return True
