"""Routes that exist only under ``jit dev``: the development OIDC issuer.

``POST /dev/token`` mints a workload identity token; it is authenticated with the development
admin key that ``jit dev`` writes (0600) to its state file. Never mounted by ``jit serve``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import JSONBody

from broker.api.auth import bearer_token, broker_of
from broker.errors import InvalidRequest, NotFound

__all__ = ["DevController"]

_RESERVED = {"iss", "aud", "exp", "iat", "nbf", "jti", "sub"}


class DevTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    claims: dict[str, str | int | bool | list[str]] = msgspec.field(default_factory=dict)
    ttl: Annotated[int, msgspec.Meta(ge=1, le=24 * 3600)] = 3600


class DevController(Controller):
    path = "/dev"
    tags = ["dev"]
    include_in_schema = False

    @post("/token", status_code=200)
    async def token(
        self, request: Request[Any, Any, State], data: JSONBody[DevTokenRequest]
    ) -> dict[str, str]:
        broker = broker_of(request)
        broker.callers.check_dev_admin(bearer_token(request))
        reserved = sorted(_RESERVED & set(data.claims))
        if reserved:
            raise InvalidRequest(f"claims {reserved} are set by the issuer")
        dev = broker.dev_identity
        if dev is None:
            raise NotFound("not found")
        token = dev.issue(data.sub, data.claims, ttl=timedelta(seconds=data.ttl))
        return {"token": token}

    @get("/oidc/.well-known/openid-configuration")
    async def discovery(self, request: Request[Any, Any, State]) -> dict[str, Any]:
        dev = broker_of(request).dev_identity
        if dev is None:
            raise NotFound("not found")
        return dev.discovery()

    @get("/oidc/jwks")
    async def jwks(self, request: Request[Any, Any, State]) -> dict[str, Any]:
        dev = broker_of(request).dev_identity
        if dev is None:
            raise NotFound("not found")
        return dev.jwks()
