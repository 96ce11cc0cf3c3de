"""Errors on the wire: problem+json (RFC 9457) for /v1 and the operational routes, the
RFC 6749 §5.2 shape (:class:`OAuthError`, :func:`oauth_error`) for every answer under /oauth/
(an unmatched route's included). One handler per kind of failure; the OpenAPI document
declares both shapes (broker.api.openapi)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from redis.exceptions import RedisClusterException, RedisError

from broker.api.auth import request_id
from broker.errors import (
    ApprovalRequired,
    BrokerError,
    PermissionDenied,
    QuotaExceeded,
    StoreUnavailable,
)

__all__ = [
    "NO_STORE",
    "PROBLEM",
    "RETRY_AFTER",
    "FieldError",
    "OAuthError",
    "Problem",
    "exception_handlers",
    "oauth_error",
    "problem",
    "problem_response",
]

log = logging.getLogger("jit.api")
PROBLEM = "application/problem+json"
#: Seconds a client should wait before retrying a 503 (the store or an issuer is unavailable).
RETRY_AFTER = "2"
#: Headers of every /oauth answer (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    422: "Unprocessable request",
    429: "Too many requests",
    500: "Internal error",
    502: "Issuer error",
    503: "Unavailable",
}


class FieldError(msgspec.Struct, frozen=True):
    field: str | None
    message: str | None


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """An error (RFC 9457). ``type`` ends in a stable code (``…/denied``,
    ``…/store-unavailable``); ``request_id`` is also the X-Request-ID header."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str = ""
    reasons: list[str] | None = None  # why the policy said no (403)
    grant: str | None = None  # the grant that needs approval (403 approval-required)
    errors: list[FieldError] | None = None  # which fields are invalid (400)
    quota: str | None = None  # which quota was reached (429), e.g. workload.live_leases
    retry_after: int | None = None  # seconds (429; also the Retry-After header)


class OAuthError(msgspec.Struct, frozen=True, omit_defaults=True):
    """An error of the /oauth routes (RFC 6749 §5.2), with the broker's extensions where they
    apply: ``reasons`` (policy), ``grant``, the approval request of a pending grant
    (``approval_id``, ``approval_uri``, ``expires_in``, ``interval``) and ``quota``."""

    error: str
    error_description: str
    reasons: list[str] | None = None
    grant: str | None = None
    approval_id: str | None = None
    approval_uri: str | None = None
    quota: str | None = None
    expires_in: int | None = None
    interval: int | None = None


def oauth_error(
    error: str, description: str, status: int = 400, *, basic: bool = False, **extra: Any
) -> Response[dict[str, Any]]:
    """An RFC 6749 §5.2 error. A 401 challenges in the scheme the caller used (§5.2: "matching
    the authentication scheme used by the client"): ``basic`` for a client that sent HTTP
    Basic credentials, Bearer otherwise."""
    body: dict[str, Any] = {"error": error, "error_description": description}
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = (
            'Basic realm="jit-broker"' if basic else f'Bearer error="{error}"'
        )
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER
    return Response(body, status_code=status, headers=headers)


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://jit-broker.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(request: Request[Any, Any, State], body: dict[str, Any]) -> Response[Any]:
    body["request_id"] = request_id(request)  # the middleware sends it as X-Request-ID too
    headers: dict[str, str] = {}
    if body["status"] == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="jit-broker"'
    if body["status"] == 503:
        headers["Retry-After"] = RETRY_AFTER
    if body["status"] == 429 and isinstance(body.get("retry_after"), int):
        headers["Retry-After"] = str(body["retry_after"])
    return Response(body, status_code=body["status"], media_type=PROBLEM, headers=headers)


def _broker_error(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    assert isinstance(exc, BrokerError)
    status = exc.status if exc.status >= 400 else 500
    extra: dict[str, Any] = {}
    if isinstance(exc, PermissionDenied):
        extra["reasons"] = list(exc.reasons)
    if isinstance(exc, ApprovalRequired):
        extra["grant"] = exc.grant
    if isinstance(exc, QuotaExceeded):
        extra["quota"] = exc.quota
        extra["retry_after"] = exc.retry_after
    title = "Approval required" if isinstance(exc, ApprovalRequired) else _TITLES.get(status)
    if status >= 500:
        log.warning("%s: %s", exc.__class__.__name__, exc.message)
    return problem_response(
        request, problem(status, exc.code, title or "Error", exc.message, **extra)
    )


def _store_error(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    """Redis did not answer (or answered with an error) anywhere in a request: 503, never 500."""
    log.warning("state store unavailable: %s", type(exc).__name__)
    return _broker_error(
        request, StoreUnavailable(f"the state store is unavailable ({type(exc).__name__})")
    )


def _oauth_path(request: Request[Any, Any, State]) -> bool:
    """Under /oauth/ every answer is in the RFC 6749 shape, an unmatched route's included."""
    return request.url.path.startswith("/oauth/")


def _http_error(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if _oauth_path(request):
        return oauth_error(
            "invalid_request" if status < 500 else "server_error", str(exc.detail), status
        )
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
    return problem_response(
        request,
        problem(status, code.get(status, "http"), exc.detail or "Error", detail, errors=errors),
    )


def _internal_error(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    rid = request_id(request)
    log.error("unhandled %s (request %s)", exc.__class__.__name__, rid, exc_info=exc)
    if _oauth_path(request):
        return oauth_error("server_error", f"internal error; request id {rid}", 500)
    return problem_response(
        request, problem(500, "internal", "Internal error", f"internal error; request id {rid}")
    )


def exception_handlers() -> dict[int | type[Exception], Any]:
    return {
        BrokerError: _broker_error,
        RedisError: _store_error,
        # A cluster that lost a slot's master or cannot be reached (not a RedisError).
        RedisClusterException: _store_error,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
