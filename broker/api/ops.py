"""Operations: liveness, readiness, Prometheus metrics and the audit chain's public keys."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from broker.api.auth import bearer_token, broker_of
from broker.api.openapi import operation, problems
from broker.api.schemas import JsonWebKeySet
from broker.errors import AuthenticationError, NotFound

__all__ = ["Health", "Readiness", "audit_jwks", "healthz", "metrics", "readyz"]


class Health(msgspec.Struct, frozen=True):
    status: str  # "ok"


class Readiness(msgspec.Struct, frozen=True):
    status: str  # "ready" or "not ready"
    checks: dict[str, str]  # redis, state and each issuer: "ok" or why not


@get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, State]) -> Response[bytes]:
    """Aggregates only (no ids, no names). Needs the bearer token from metrics.token_file;
    open under `jit dev`; off under `jit serve` when no token is configured."""
    broker = broker_of(request)
    if broker.metrics_token is None:
        if broker.dev_identity is None:
            raise NotFound("metrics are off: set metrics.token_file in the config")
    else:
        presented = bearer_token(request)
        if not hmac.compare_digest(presented.encode(), broker.metrics_token.reveal().encode()):
            raise AuthenticationError("invalid metrics token")
    body, content_type = await broker.metrics.render(request.headers.get("accept"))
    # Set as a header: litestar would append a second charset to a text/* media_type.
    return Response(content=body, headers={"Content-Type": content_type})


@get(
    "/healthz",
    tags=["ops"],
    summary="Liveness: the process answers",
    operation_id="getHealth",
    operation_class=operation(),
    responses=problems(unavailable=False),
)
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    tags=["ops"],
    summary="Readiness: Redis answers (issuers' health is reported, not required)",
    operation_id="getReadiness",
    operation_class=operation(retry_after=False),
    responses={
        200: ResponseSpec(Readiness, description="Ready", generate_examples=False),
        **problems(unavailable=False),
        503: ResponseSpec(
            Readiness, description="Not ready: the checks say why", generate_examples=False
        ),
    },
)
async def readyz(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    ok, checks = await broker_of(request).ready()
    return Response(
        {"status": "ready" if ok else "not ready", "checks": checks},
        status_code=200 if ok else 503,
    )


@get(
    "/.well-known/audit-jwks.json",
    tags=["discovery"],
    summary="Public keys that sign the audit chain's checkpoints",
    operation_id="getAuditJwks",
    operation_class=operation(),
    responses={
        200: ResponseSpec(JsonWebKeySet, description="A JWK set", generate_examples=False),
        **problems(),
    },
)
async def audit_jwks(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    return Response(
        broker_of(request).audit.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )
