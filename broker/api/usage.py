"""/v1/usage: a resource server reports one use of a credential (session governance,
docs/governance.md). The report counts only for a credential the reporter presents or serves."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.params import JSONBody

from broker.api.auth import authenticate_caller, broker_of
from broker.api.oauth import use_params
from broker.api.openapi import CLIENT, operation, problems
from broker.errors import InvalidRequest, PermissionDenied

__all__ = ["UsageController", "UsageIn", "UsageOut"]


class UsageIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A use of a credential, reported by the resource server that saw it."""

    token: str | None = None
    lease_id: str | None = None
    resource: str | None = None
    action: str | None = None
    client_address: str | None = None


class UsageOut(msgspec.Struct, frozen=True):
    lease_id: str
    active: bool
    violations: list[str]  # the governance rules the use broke (it was revoked if any)


class UsageController(Controller):
    path = "/v1/usage"
    tags = ["governance"]

    @post(
        "/",
        status_code=200,
        summary="Report a use of a credential (resource servers)",
        operation_id="reportUsage",
        operation_class=operation(),
        security=CLIENT,
        responses=problems(400, 401, 403, 404, body=True),
    )
    async def report(self, request: Request[Any, Any, State], data: JSONBody[UsageIn]) -> UsageOut:
        broker = broker_of(request)
        principal, client = await authenticate_caller(request, {})
        allowed, caller = broker.tokens.resource_server(principal, client, {"report", "introspect"})
        if not allowed:
            raise PermissionDenied("caller may not report uses")
        if not data.token and not data.lease_id:
            raise InvalidRequest("token or lease_id is required")
        use = use_params(
            {
                "resource": data.resource or "",
                "action": data.action or "",
                "client_address": data.client_address or "",
            }
        )
        answer = await broker.tokens.report_use(
            caller=caller,
            token=data.token,
            lease_id=data.lease_id,
            serves=client.resources if client is not None else frozenset(),
            **use,
        )
        return msgspec.convert(answer, UsageOut)
