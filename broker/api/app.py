"""The litestar app factory: routes, error handlers, request ids, caching, lifespan.

broker.api is the only litestar code of the broker; each module is one protocol:
``v1`` (credentials, leases, tasks, issuer documents), ``approvals`` (approval requests, Slack),
``usage`` (governance reports), ``oauth`` (RFC 8693/7662/7009/8414), ``ssf`` (Shared Signals),
``ops`` (health, metrics, audit keys), ``dev`` (``jit dev`` only). ``errors`` is the wire shape
of every failure, ``schemas`` the wire types, ``openapi`` what the OpenAPI document says beyond
the handlers' signatures, ``auth`` who calls.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import ClientException
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker import __version__
from broker.api.approvals import ApprovalsController, SlackController
from broker.api.auth import _REQUEST_ID
from broker.api.dev import DevController
from broker.api.errors import exception_handlers, problem, problem_response
from broker.api.oauth import OAuthController, WellKnownOAuth, oauth_refusal
from broker.api.openapi import COMPONENTS
from broker.api.ops import audit_jwks, healthz, metrics, readyz
from broker.api.ssf import ssf_configuration, ssf_jwks
from broker.api.usage import UsageController
from broker.api.v1 import IssuerDocuments, V1Controller
from broker.logsetup import request_id_var
from broker.metrics import UNMATCHED
from broker.service import Broker
from broker.service.stateguard import StateLost

__all__ = ["create_app"]

log = logging.getLogger("jit.api")


class BrokerRequest(Request[Any, Any, State]):
    """litestar's Request, with a JSON body that nests too deeply answered as a 400 (the
    decoder's RecursionError would otherwise be a 500 with a traceback in the log)."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("invalid request: the JSON body is nested too deeply") from None


#: What a replica still answers after Redis lost its state (broker.service.stateguard).
_SERVED_WHEN_STATE_LOST = frozenset({"/healthz", "/readyz", "/metrics"})


async def _refuse(request: Request[Any, Any, State], broker: Broker, send: Send) -> None:
    """503 state-lost without routing the request: in the RFC 6749 §5.2 shape under /oauth/
    (as every answer there), in problem+json elsewhere."""
    try:
        broker.guard.check_serving()
    except StateLost as exc:
        response: Response[Any]
        if request.url.path.startswith("/oauth/"):
            response = oauth_refusal(exc.status, exc.message)
        else:
            response = problem_response(
                request, problem(exc.status, exc.code, "Unavailable", exc.message)
            )
        await response.to_asgi_response(app=None, request=request)(
            request.scope, request.receive, send
        )


def _request_id(scope: Scope) -> str:
    """:func:`broker.api.auth.request_id` from the raw ASGI headers, without building a
    request object; cached in the scope, where ``request_id`` finds it."""
    given = b""
    for key, value in scope["headers"]:
        if key == b"x-request-id":  # ASGI header names are lower-case
            given = value
            break
    text = given.decode("latin-1")
    rid = text if _REQUEST_ID.match(text) else secrets.token_hex(8)
    scope["jit_request_id"] = rid  # type: ignore[typeddict-unknown-key]  # ASGI scope is a plain dict at run time
    return rid


def edge(app: ASGIApp) -> ASGIApp:
    """Around every HTTP request, routed or not (an unmatched route's 404 included): an id
    (the caller's well-formed X-Request-ID, or a fresh one) in the X-Request-ID header and in
    every log line; ``Cache-Control: no-store`` unless the route set caching of its own; and
    the request counted in the metrics by route template."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        rid = _request_id(scope)
        broker: Broker = scope["app"].state.broker
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
            if broker.guard.lost and scope.get("path") not in _SERVED_WHEN_STATE_LOST:
                await _refuse(Request(scope), broker, send_with_id)
                return
            await app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            route = scope.get("path_template") or UNMATCHED
            broker.metrics.observe_request(route, status, broker.clock.monotonic() - start)

    return handle


def create_app(broker: Broker, *, manage_lifecycle: bool = True) -> Litestar:
    """Build the app around an assembled Broker. With ``manage_lifecycle`` the app starts the
    background components on start-up and closes the broker on shut-down."""

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
        UsageController,
        OAuthController,
        WellKnownOAuth,
        healthz,
        readyz,
        metrics,
        audit_jwks,
        ssf_configuration,
        ssf_jwks,
    ]
    if broker.dev_identity is not None:
        handlers.append(DevController)
    app = Litestar(
        route_handlers=handlers,
        state=State({"broker": broker}),
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        request_max_body_size=broker.settings.limits.max_body_bytes,
        request_class=BrokerRequest,
        openapi_config=OpenAPIConfig(
            title="jit-broker",
            version=__version__,
            path="/schema",
            use_handler_docstrings=True,
            components=COMPONENTS,
        ),
        debug=False,
        logging_config=None,
    )
    app.asgi_handler = edge(app.asgi_handler)
    return app
