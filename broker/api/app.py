"""The litestar app factory: routes, problem+json errors (RFC 9457), request ids, lifespan."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from redis.exceptions import RedisError

from broker import __version__
from broker.api.approvals import ApprovalsController, SlackController
from broker.api.auth import bearer_token, broker_of, request_id
from broker.api.dev import DevController
from broker.api.oauth import OAuthController, UsageController, WellKnownOAuth, ssf_jwks
from broker.api.schemas import problem
from broker.api.v1 import IssuerDocuments, V1Controller
from broker.errors import (
    ApprovalRequired,
    AuthenticationError,
    BrokerError,
    NotFound,
    PermissionDenied,
    StoreUnavailable,
)
from broker.logsetup import request_id_var
from broker.metrics import UNMATCHED
from broker.service import Broker

__all__ = ["create_app"]

log = logging.getLogger("jit.api")
PROBLEM = "application/problem+json"


#: Seconds a client should wait before retrying a 503 (the store or an issuer is unavailable).
RETRY_AFTER = "2"


class BrokerRequest(Request[Any, Any, State]):
    """litestar's Request, with a JSON body that nests too deeply answered as a 400 (the
    decoder's RecursionError would otherwise be a 500 with a traceback in the log)."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("invalid request: the JSON body is nested too deeply") from None


def _problem_response(request: Request[Any, Any, State], body: dict[str, Any]) -> Response[Any]:
    body["request_id"] = request_id(request)  # the middleware sends it as X-Request-ID too
    headers: dict[str, str] = {}
    if body["status"] == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="jit-broker"'
    if body["status"] == 503:
        headers["Retry-After"] = RETRY_AFTER
    return Response(body, status_code=body["status"], media_type=PROBLEM, headers=headers)


def broker_error_handler(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    assert isinstance(exc, BrokerError)
    status = exc.status if exc.status >= 400 else 500
    extra: dict[str, Any] = {}
    if isinstance(exc, PermissionDenied):
        extra["reasons"] = list(exc.reasons)
    if isinstance(exc, ApprovalRequired):
        extra["grant"] = exc.grant
    title = {
        400: "Bad request",
        401: "Not authenticated",
        403: "Forbidden",
        404: "Not found",
        409: "Conflict",
        502: "Issuer error",
        503: "Unavailable",
    }.get(status, "Error")
    if isinstance(exc, ApprovalRequired):
        title = "Approval required"
    if status >= 500:
        log.warning("%s: %s", exc.__class__.__name__, exc.message)
    return _problem_response(request, problem(status, exc.code, title, exc.message, **extra))


def store_error_handler(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    """Redis did not answer (or answered with an error) anywhere in a request: 503, never 500."""
    log.warning("state store unavailable: %s", type(exc).__name__)
    return broker_error_handler(
        request, StoreUnavailable(f"the state store is unavailable ({type(exc).__name__})")
    )


def http_error_handler(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    detail = str(exc.detail)
    errors = None
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        errors = [
            {"field": e.get("key"), "message": e.get("message")}
            for e in exc.extra
            if isinstance(e, dict)
        ]
        msgs = [f"{e['field']}: {e['message']}" for e in errors]
        detail = "invalid request: " + "; ".join(msgs) if msgs else detail
    code = {400: "invalid-request", 404: "not-found", 405: "method-not-allowed", 413: "too-large"}
    return _problem_response(
        request,
        problem(status, code.get(status, "http"), exc.detail or "Error", detail, errors=errors),
    )


def internal_error_handler(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    rid = request_id(request)
    log.error("unhandled %s (request %s)", exc.__class__.__name__, rid, exc_info=exc)
    return _problem_response(
        request, problem(500, "internal", "Internal error", f"internal error; request id {rid}")
    )


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every HTTP request an id (the caller's well-formed X-Request-ID, or a fresh one)
    and return it in the X-Request-ID header of every response, errors included; and send
    ``Cache-Control: no-store`` on every response whose route set no caching of its own."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request: Request[Any, Any, State] = Request(scope)
        rid = request_id(request)
        broker = broker_of(request)
        status = 500
        start = broker.clock.monotonic()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    # Nothing the broker answers may be cached unless the route says so
                    # (credentials, leases, approvals; public key sets set their own).
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        token = request_id_var.set(rid)  # every log line of this request carries its id
        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            route = scope.get("path_template") or UNMATCHED
            broker.metrics.observe_request(route, status, broker.clock.monotonic() - start)

    return middleware


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


@get("/readyz", tags=["ops"], summary="Readiness: Redis and every issuer answer")
async def readyz(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    checks = await broker_of(request).ready()
    ok = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ready" if ok else "not ready", "checks": checks},
        status_code=200 if ok else 503,
    )


def create_app(broker: Broker, *, manage_lifecycle: bool = True) -> Litestar:
    """Build the app around an assembled Broker. With ``manage_lifecycle`` the app starts the
    reaper on start-up and closes the broker on shut-down."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if manage_lifecycle:
            await broker.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await broker.aclose()

    handlers: list[Any] = [
        V1Controller,
        ApprovalsController,
        SlackController,
        IssuerDocuments,
        OAuthController,
        UsageController,
        WellKnownOAuth,
        healthz,
        readyz,
        metrics,
        ssf_jwks,
    ]
    if broker.dev_identity is not None:
        handlers.append(DevController)
    app = Litestar(
        route_handlers=handlers,
        state=State({"broker": broker}),
        lifespan=[lifespan],
        exception_handlers={
            BrokerError: broker_error_handler,
            RedisError: store_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
        middleware=[request_id_middleware],
        request_max_body_size=broker.settings.limits.max_body_bytes,
        request_class=BrokerRequest,
        openapi_config=OpenAPIConfig(
            title="jit-broker", version=__version__, path="/schema", use_handler_docstrings=True
        ),
        debug=False,
        logging_config=None,
    )
    return app
