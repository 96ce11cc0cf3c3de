"""TEMPORARY: :class:`~broker.mcp.port.BrokerPort` over the broker's HTTP API with httpx.

To be replaced by an adapter over the workload SDK (``broker.client``: ``Client``,
``client.task(...)``, ``task.credential(...)``) once it is on main; keep this module tiny and
add nothing here that the SDK would not do. It speaks the documented /v1 API (docs/api.md)
with the workload's identity token as the bearer, sends an Idempotency-Key on every mint, and
turns problem+json answers into the contract's errors.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from broker.errors import (
    AuthenticationError,
    BrokerError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from broker.mcp.port import BrokerUnavailable, Explanation, Granted, LeaseInfo, Pending
from broker.types import Secret

__all__ = ["HttpBroker"]


class HttpBroker:
    """``token`` is called for every request, so a rotated identity token file is re-read."""

    def __init__(
        self,
        url: str,
        token: Callable[[], str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._token = token
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=30, transport=transport)

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token()}", **kw.pop("headers", {})}
        try:
            resp = await self._http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"the broker did not answer ({type(exc).__name__})") from None
        if resp.status_code < 400:
            return resp
        try:
            body = resp.json()
        except ValueError:
            body = {}
        detail = str(body.get("detail") or body.get("title") or resp.reason_phrase)
        reasons = [str(r) for r in body.get("reasons") or []]
        error: BrokerError
        if resp.status_code == 403:
            error = PermissionDenied(detail, reasons)
        elif resp.status_code == 404:
            error = NotFound(detail)
        elif resp.status_code == 409:
            error = Conflict(detail)
        elif resp.status_code == 401:
            error = AuthenticationError(detail)
        elif resp.status_code >= 500 or resp.status_code == 429:
            error = BrokerUnavailable(detail)
        else:
            error = InvalidRequest(detail)
        raise error

    async def request(
        self,
        *,
        task_id: str,
        purpose: str,
        issuer: str,
        resource: str,
        actions: list[str],
        ttl: int | None,
        task_ttl: int | None,
        delivery: str,
        idempotency_key: str,
    ) -> Granted | Pending:
        task: dict[str, Any] = {"id": task_id, "purpose": purpose}
        if task_ttl is not None:
            task["ttl"] = task_ttl
        body: dict[str, Any] = {
            "task": task,
            "issuer": issuer,
            "resource": resource,
            "actions": actions,
            "delivery": delivery,
        }
        if ttl is not None:
            body["ttl"] = ttl
        resp = await self._call(
            "POST", "/v1/credentials", json=body, headers={"Idempotency-Key": idempotency_key}
        )
        return _granted(resp.json()) if resp.status_code == 201 else _pending(resp.json())

    async def approval(self, approval_id: str, *, wait: int = 0) -> Granted | Pending:
        resp = await self._call("GET", f"/v1/approvals/{approval_id}", params={"wait": wait})
        body = resp.json()
        if body.get("credential"):
            return _granted(body["credential"])
        if body["state"] == "denied":
            reasons = [r.get("reason", "") for r in body.get("reviews", []) if r.get("reason")]
            raise PermissionDenied(f"approval request {approval_id} was denied", reasons)
        if body["state"] in ("expired", "cancelled"):
            raise Conflict(f"approval request {approval_id} is {body['state']}")
        if body["state"] == "approved" and body.get("lease_id"):
            raise Conflict(f"approval request {approval_id} was already collected")
        return _pending(body)

    async def leases(self, task_id: str) -> list[LeaseInfo]:
        try:
            resp = await self._call("GET", f"/v1/tasks/{task_id}")
        except NotFound:
            return []
        return [_lease(le) for le in resp.json()["leases"]]

    async def revoke(self, lease_id: str) -> LeaseInfo:
        return _lease((await self._call("DELETE", f"/v1/leases/{lease_id}")).json())

    async def explain(
        self, *, issuer: str, resource: str, actions: list[str], ttl: int | None
    ) -> Explanation:
        body: dict[str, Any] = {"issuer": issuer, "resource": resource, "actions": actions}
        if ttl is not None:
            body["ttl"] = ttl
        out = (await self._call("POST", "/v1/explain", json=body)).json()
        return Explanation(
            decision=out["decision"],
            reasons=list(out["reasons"]),
            grant=out.get("grant"),
            ttl=out.get("ttl"),
            reveal_to_model=bool(out.get("reveal_to_model")),
        )

    async def complete(self, task_id: str) -> int:
        try:
            resp = await self._call("POST", f"/v1/tasks/{task_id}/complete")
        except NotFound:
            return 0
        return len(resp.json()["leases"])

    async def aclose(self) -> None:
        await self._http.aclose()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _granted(body: dict[str, Any]) -> Granted:
    cred = body["credential"]
    return Granted(
        lease_id=body["lease_id"],
        task_id=body["task_id"],
        issuer=body["issuer"],
        resource=body["resource"],
        actions=list(body["actions"]),
        expires_at=_time(body["expires_at"]),
        token_type=cred["token_type"],
        secret=Secret(cred.pop("secret")),
        grant=body["grant"],
        metadata=dict(cred.get("metadata") or {}),
    )


def _pending(body: dict[str, Any]) -> Pending:
    return Pending(
        approval_id=body["approval_id"],
        state=body["state"],
        grant=body["grant"],
        needed=int(body["needed"]),
        expires_at=_time(body["expires_at"]),
        link=body["link"],
    )


def _lease(body: dict[str, Any]) -> LeaseInfo:
    return LeaseInfo(
        id=body["id"],
        state=body["state"],
        issuer=body["issuer"],
        resource=body["resource"],
        actions=list(body["actions"]),
        not_after=_time(body["not_after"]),
    )
