"""One HTTP exchange with the broker, retried when that is safe, and its errors typed.

Retries (capped exponential backoff with jitter, :func:`broker.retry.backoff`, within a time
budget, default 60 s):

- connection failures before the request left (refused, connect timeout): always;
- connection failures after it left (reset, read timeout): only for requests that are safe to
  repeat — reads, revocations, task completion, and credential requests, which always carry an
  ``Idempotency-Key`` (the broker answers a repeat with the same lease and credential);
- ``503`` (Redis or the issuer unavailable) and ``429``: after the ``Retry-After`` the broker
  sends (capped at 30 s), else after the backoff;
- ``401`` once, with a fresh identity token from sources that can fetch one (GitHub Actions).

Everything else is an answer, turned into a :class:`ClientError` by :func:`error_from`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

import httpx

from broker import __version__
from broker.client.errors import (
    ApprovalRequired,
    BrokerUnavailable,
    ClientError,
    Conflict,
    Denied,
    IdempotencyKeyReused,
    InvalidRequest,
    IssuerFailed,
    NotFound,
    ProtocolError,
    Unauthenticated,
)
from broker.client.identity import IdentitySource
from broker.retry import backoff

__all__ = ["Http", "RetryPolicy", "error_from"]

log = logging.getLogger("broker.client")

#: A ``Retry-After`` longer than this is not waited for in one go.
MAX_RETRY_AFTER: Final = 30.0
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_OAUTH_ERRORS: Final[dict[str, type[ClientError]]] = {
    "invalid_grant": Unauthenticated,
    "invalid_client": Unauthenticated,
    "invalid_scope": Denied,
    "access_denied": Denied,
    "temporarily_unavailable": BrokerUnavailable,
    "server_error": IssuerFailed,
}
_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Request Entity Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying (``budget`` seconds in all) and how to space the tries."""

    budget: float = 60.0
    base: float = 0.25
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        return backoff(
            attempt, base=timedelta(seconds=self.base), cap=timedelta(seconds=self.cap)
        ).total_seconds()


Auth = Literal["identity", "none"]
Retry = Literal["idempotent", "unsent"]


class Http:
    """The SDK's one ``httpx.AsyncClient`` (pooled connections, the caller's transport in
    tests) and the retry loop around it."""

    def __init__(
        self,
        url: str,
        identity: IdentitySource | None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.identity = identity
        self.retry = retry or RetryPolicy()
        self.http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            verify=verify,
            follow_redirects=False,
            headers={"User-Agent": f"jit-broker-sdk/{__version__}"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def identity_token(self, *, refresh: bool = False) -> str:
        if self.identity is None:
            from broker.client.errors import IdentityUnavailable

            raise IdentityUnavailable("this client has no identity source")
        return await self.identity.token(self.http, refresh=refresh)

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Auth | str = "identity",
        retry: Retry = "idempotent",
        budget: float | None = None,
    ) -> httpx.Response:
        """Send, retrying as the module says; return the answer (any status but 503/429
        within the budget). ``auth``: the identity token, none, or this bearer token."""
        deadline = time.monotonic() + (self.retry.budget if budget is None else budget)
        attempt = 0
        refresh = refreshed = False
        while True:
            attempt += 1
            hdrs = dict(headers or {})
            if auth == "identity":
                hdrs["Authorization"] = f"Bearer {await self.identity_token(refresh=refresh)}"
            elif auth != "none":
                hdrs["Authorization"] = f"Bearer {auth}"
            refresh = False
            try:
                resp = await self.http.request(
                    method, path, json=json, data=data, params=params, headers=hdrs
                )
            except httpx.TransportError as exc:
                if retry == "unsent" and not isinstance(exc, _NOT_SENT):
                    raise BrokerUnavailable(
                        f"the connection to the broker at {self.url} failed after the request "
                        f"was sent ({exc.__class__.__name__}); not repeated"
                    ) from None
                delay = self.retry.delay(attempt)
                if time.monotonic() + delay > deadline:
                    raise BrokerUnavailable(
                        f"cannot reach the broker at {self.url} ({exc.__class__.__name__}); "
                        f"gave up after {attempt} attempts"
                    ) from None
                log.info("broker unreachable (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            if (
                resp.status_code == 401
                and auth == "identity"
                and not refreshed
                and _refreshable(self.identity)
            ):
                refresh = refreshed = True  # an expired CI token: fetch a fresh one, once
                continue
            if resp.status_code in (429, 503):
                delay = retry_after(resp) or self.retry.delay(attempt)
                if time.monotonic() + delay > deadline:
                    return resp
                log.info("broker answered %d; retrying in %.1fs", resp.status_code, delay)
                await asyncio.sleep(delay)
                continue
            return resp


def _refreshable(source: IdentitySource | None) -> bool:
    """Whether asking ``source`` again can give a newer token (a CI token endpoint)."""
    inner = getattr(source, "source", source)  # the client's lazily detected source
    return getattr(inner, "name", "") == "github"


def retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the delay form; the date form is not used by the broker),
    capped at :data:`MAX_RETRY_AFTER`."""
    value = resp.headers.get("retry-after", "").strip()
    if not value.isascii() or not value.isdigit():
        return None
    return min(float(value), MAX_RETRY_AFTER)


def error_from(resp: httpx.Response) -> ClientError:
    """The typed error for a non-2xx answer (problem+json, or the OAuth error shape)."""
    status = resp.status_code
    rid = resp.headers.get("x-request-id")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        plain: type[ClientError] = BrokerUnavailable if status in (502, 503, 504) else ProtocolError
        return plain(
            f"HTTP {status} from {resp.request.url.copy_with(query=None)}: not a broker answer",
            status=status,
            request_id=rid,
        )
    reasons = [str(r) for r in body.get("reasons") or []]
    if "error" in body and "type" not in body:  # RFC 6749 §5.2 (the OAuth endpoints)
        error = str(body["error"])
        detail = str(body.get("error_description") or error)
        if error == "approval_required":
            return ApprovalRequired(
                detail,
                reasons,
                grant=body.get("grant"),
                approval_id=body.get("approval_id"),
                status=status,
                code=error,
                title=error,
                request_id=rid,
            )
        oauth: dict[str, Any] = {"status": status, "code": error, "title": error, "request_id": rid}
        kind = _OAUTH_ERRORS.get(error, InvalidRequest)
        if kind is Denied:
            return Denied(detail, reasons, **oauth)
        return kind(detail, **oauth)
    code = str(body.get("type", "")).rsplit("/", 1)[-1] or None
    title = str(body.get("title") or _TITLES.get(status, "Error"))
    detail = str(body.get("detail") or title)
    common: dict[str, Any] = {"status": status, "code": code, "title": title, "request_id": rid}
    if status == 403 and code == "approval-required":
        return ApprovalRequired(detail, reasons, grant=body.get("grant"), **common)
    if status == 403:
        return Denied(detail, reasons, **common)
    kinds: dict[int, type[ClientError]] = {
        400: InvalidRequest,
        401: Unauthenticated,
        404: NotFound,
        409: Conflict,
        413: InvalidRequest,
        422: IdempotencyKeyReused if code == "idempotency-key-reused" else InvalidRequest,
        429: BrokerUnavailable,
        502: IssuerFailed,
        503: BrokerUnavailable,
    }
    return kinds.get(status, ClientError)(detail, **common)
