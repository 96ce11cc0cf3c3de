"""Operations: liveness, readiness, Prometheus metrics and the audit chain's public keys."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from broker.api.auth import bearer_token, broker_of
from broker.api.errors import problems
from broker.errors import AuthenticationError, NotFound

__all__ = ["audit_jwks", "healthz", "metrics", "readyz"]


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


@get("/healthz", tags=["ops"], summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["ops"],
    summary="Readiness: Redis answers (issuers' health is reported, not required)",
    responses={503: problems(503)[503]},
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
)
async def audit_jwks(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    return Response(
        broker_of(request).audit.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )
