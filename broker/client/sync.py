"""``SyncClient``: the same surface as :class:`broker.client.Client`, for scripts.

It runs one event loop in a background thread (an anyio blocking portal) and calls the async
client there. Context managers keep their guarantees: leaving ``with client.task(...)`` by an
exception or Ctrl-C (KeyboardInterrupt) still completes the task. ``on_status`` callbacks run
in the portal's thread.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from broker.client.client import Client, LeaseContext, Task
from broker.client.identity import IdentitySource
from broker.client.models import Approval, Credential, Explanation, LeaseInfo, TaskInfo
from broker.types import Secret

__all__ = ["SyncClient", "SyncTask"]

P = ParamSpec("P")
T = TypeVar("T")


class SyncClient:
    """A blocking :class:`Client`. Close it (``with SyncClient() as client:`` or
    :meth:`close`): that stops its event loop thread."""

    def __init__(
        self, url: str | None = None, identity: IdentitySource | None = None, **options: Any
    ) -> None:
        self._portal_cm = start_blocking_portal()
        self._portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            self._client: Client = self._portal.call(_make, url, identity, options)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self.url = self._client.url

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    @property
    def client(self) -> Client:
        """The async client underneath (its methods must run in the portal's loop)."""
        return self._client

    def task(
        self,
        task_id: str | None = None,
        *,
        purpose: str = "",
        ttl: str | int | None = None,
        keep: bool = False,
    ) -> SyncTask:
        return SyncTask(
            self._portal, self._client.task(task_id, purpose=purpose, ttl=ttl, keep=keep)
        )

    def lease(self, **options: Any) -> AbstractContextManager[Credential]:
        """``with client.lease(...) as cred:`` — revoked on exit."""
        return self._portal.wrap_async_context_manager(LeaseContext(self._client, options))

    def credential(self, **options: Any) -> Credential:
        return self._call(self._client.credential, **options)

    def request(self, **options: Any) -> Credential | Approval:
        return self._call(self._client.request, **options)

    def wait_for_approval(self, approval: Approval | str, **options: Any) -> Credential:
        return self._call(self._client.wait_for_approval, approval, **options)

    def exchange(self, **options: Any) -> Credential:
        return self._call(self._client.exchange, **options)

    def explain(
        self,
        *,
        resource: str,
        actions: Sequence[str] | str,
        issuer: str = "jwt",
        ttl: str | int | None = None,
    ) -> Explanation:
        return self._call(
            self._client.explain, resource=resource, actions=actions, issuer=issuer, ttl=ttl
        )

    def leases(self, *, include_inactive: bool = False) -> list[LeaseInfo]:
        return self._call(self._client.leases, include_inactive=include_inactive)

    def lease_info(self, lease_id: str) -> LeaseInfo:
        return self._call(self._client.lease_info, lease_id)

    def revoke(self, lease_id: str) -> LeaseInfo:
        return self._call(self._client.revoke, lease_id)

    def revoke_all(self) -> int:
        return self._call(self._client.revoke_all)

    def revoke_token(self, token: str | Secret) -> None:
        self._call(self._client.revoke_token, token)

    def get_task(self, task_id: str) -> TaskInfo:
        return self._call(self._client.get_task, task_id)

    def complete_task(self, task_id: str) -> TaskInfo:
        return self._call(self._client.complete_task, task_id)

    def document(self, issuer: str, name: str) -> bytes:
        return self._call(self._client.document, issuer, name)

    def environment(
        self, credential: Credential, directory: str, *, prefix: str = ""
    ) -> dict[str, str]:
        return self._call(self._client.environment, credential, directory, prefix=prefix)

    def approvals(self) -> list[Approval]:
        return self._call(self._client.approvals)

    def approval(self, approval_id: str, *, wait: int = 0) -> Approval:
        return self._call(self._client.approval, approval_id, wait=wait)

    def approve(
        self,
        approval_id: str,
        *,
        ttl: str | int | None = None,
        actions: Sequence[str] | None = None,
        reason: str = "",
    ) -> Approval:
        return self._call(
            self._client.approve, approval_id, ttl=ttl, actions=actions, reason=reason
        )

    def deny(self, approval_id: str, *, reason: str) -> Approval:
        return self._call(self._client.deny, approval_id, reason=reason)

    def cancel_approval(self, approval_id: str) -> Approval:
        return self._call(self._client.cancel_approval, approval_id)

    def dev_token(
        self, sub: str, claims: Mapping[str, Any] | None = None, *, ttl: int = 3600
    ) -> str:
        return self._call(self._client.dev_token, sub, claims, ttl=ttl)

    def _call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._portal.call(functools.partial(fn, *args, **kwargs))


class SyncTask:
    """A blocking :class:`broker.client.Task`; ``with`` it to complete it on exit."""

    def __init__(self, portal: BlockingPortal, task: Task) -> None:
        self._portal = portal
        self._task = task
        self._cm: AbstractContextManager[Task] | None = None
        self.id = task.id

    def __repr__(self) -> str:
        return f"SyncTask({self.id!r})"

    def __enter__(self) -> SyncTask:
        self._cm = self._portal.wrap_async_context_manager(self._task)
        self._cm.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._cm is not None
        return self._cm.__exit__(et, exc, tb)

    @property
    def lease_ids(self) -> list[str]:
        return list(self._task.lease_ids)

    def credential(self, **options: Any) -> Credential:
        return self._portal.call(functools.partial(self._task.credential, **options))

    def request(self, **options: Any) -> Credential | Approval:
        return self._portal.call(functools.partial(self._task.request, **options))

    def lease(self, **options: Any) -> AbstractContextManager[Credential]:
        return self._portal.wrap_async_context_manager(self._task.lease(**options))

    def complete(self) -> TaskInfo | None:
        return self._portal.call(self._task.complete)


async def _make(
    url: str | None, identity: IdentitySource | None, options: dict[str, Any]
) -> Client:
    return Client(url, identity, **options)  # built in the portal's loop, where it will run
