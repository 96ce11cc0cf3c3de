"""OpenID Shared Signals (docs/ssf.md): the transmitter's metadata and the keys that verify
its Security Event Tokens. Public by design."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from broker.api.auth import broker_of
from broker.api.errors import problems
from broker.errors import NotFound

__all__ = ["ssf_configuration", "ssf_jwks"]


@get(
    "/.well-known/ssf-configuration",
    tags=["ssf"],
    summary="OpenID Shared Signals transmitter metadata",
    responses=problems(404),
)
async def ssf_configuration(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    ssf = broker_of(request).ssf
    if ssf is None:
        raise NotFound("Shared Signals is not configured")
    return Response(ssf.configuration(), headers={"Cache-Control": "public, max-age=300"})


@get(
    "/ssf/jwks.json",
    tags=["ssf"],
    summary="Keys that verify the broker's Security Event Tokens",
    responses=problems(404),
)
async def ssf_jwks(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    ssf = broker_of(request).ssf
    if ssf is None:
        raise NotFound("Shared Signals is not configured")
    return Response(ssf.jwks(), headers={"Cache-Control": "public, max-age=60"})
