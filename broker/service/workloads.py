"""A workload's own leases and tasks: list, read, revoke, complete. Never anyone else's.

Every call is made for the calling principal: another workload's lease or task is NotFound,
exactly like one that does not exist (no existence oracle).
"""

from __future__ import annotations

from broker.leases import LeaseManager, TaskView
from broker.types import Lease, Principal

__all__ = ["Workloads"]


class Workloads:
    def __init__(self, manager: LeaseManager) -> None:
        self.manager = manager

    async def leases(self, caller: Principal, *, include_inactive: bool = False) -> list[Lease]:
        return await self.manager.list(caller.id, include_inactive=include_inactive)

    async def lease(self, caller: Principal, lease_id: str) -> Lease:
        """The caller's lease, or one delegated to it (or through it): ADR 0040."""
        return await self.manager.get_visible(lease_id, caller.id)

    async def revoke(self, caller: Principal, lease_id: str) -> Lease:
        """The owner, and every actor of a delegated lease's chain, may revoke it (and so
        everything delegated from it)."""
        await self.manager.get_visible(lease_id, caller.id)
        return await self.manager.revoke(lease_id, "explicit")

    async def revoke_all(self, caller: Principal) -> int:
        return await self.manager.revoke_workload(caller.id, "workload")

    async def task(self, caller: Principal, task_id: str) -> TaskView:
        return await self.manager.get_task(caller.id, task_id)

    async def complete(self, caller: Principal, task_id: str) -> TaskView:
        """Close the task to new credentials and revoke every lease of it (idempotent)."""
        return await self.manager.complete_task(caller.id, task_id)
