"""OpenID Shared Signals (docs/ssf.md): the transmitter's metadata and the keys that verify
its Security Event Tokens. Public by design."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from broker.api.auth import broker_of
from broker.api.openapi import operation, problems
from broker.api.schemas import JsonWebKeySet
from broker.errors import NotFound

__all__ = ["SsfConfiguration", "ssf_configuration", "ssf_jwks"]


class SsfConfiguration(msgspec.Struct, frozen=True):
    """The transmitter metadata the broker publishes (SSF 1.0 §7.1)."""

    spec_version: str
    issuer: str
    jwks_uri: str
    delivery_methods_supported: list[str]
    default_subjects: str
    events_supported: list[str]


@get(
    "/.well-known/ssf-configuration",
    tags=["ssf"],
    summary="OpenID Shared Signals transmitter metadata",
    operation_id="getSsfConfiguration",
    operation_class=operation(),
    responses={
        200: ResponseSpec(SsfConfiguration, description="SSF 1.0 §7.1", generate_examples=False),
        **problems(404),
    },
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
    operation_id="getSsfJwks",
    operation_class=operation(),
    responses={
        200: ResponseSpec(JsonWebKeySet, description="A JWK set", generate_examples=False),
        **problems(404),
    },
)
async def ssf_jwks(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    ssf = broker_of(request).ssf
    if ssf is None:
        raise NotFound("Shared Signals is not configured")
    return Response(ssf.jwks(), headers={"Cache-Control": "public, max-age=60"})
