"""Who is calling, as HTTP sees it: bearer tokens, OAuth client credentials, request ids and
the peer address. Verification itself is :class:`broker.service.callers.Callers`'s."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import Any
from urllib.parse import unquote

from litestar import Request
from litestar.datastructures import State

from broker.errors import AuthenticationError
from broker.service import Broker, Client
from broker.types import Principal

__all__ = [
    "authenticate_caller",
    "basic_credentials",
    "bearer",
    "bearer_token",
    "broker_of",
    "client_address",
    "principal",
    "request_id",
]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_TOKEN_BYTES = 16 * 1024


def broker_of(request: Request[Any, Any, State]) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def request_id(request: Request[Any, Any, State]) -> str:
    """The caller's X-Request-ID if well-formed, else a fresh one; cached on the request."""
    rid = request.scope.get("jit_request_id")
    if isinstance(rid, str):
        return rid
    given = request.headers.get("x-request-id", "")
    rid = given if _REQUEST_ID.match(given) else secrets.token_hex(8)
    request.scope["jit_request_id"] = rid  # type: ignore[typeddict-unknown-key]  # ASGI scope is a plain dict at run time
    return rid


def client_address(request: Request[Any, Any, State]) -> str | None:
    """The peer address of the HTTP connection (the broker does not trust X-Forwarded-For)."""
    return request.client.host if request.client else None


def bearer_token(request: Request[Any, Any, State]) -> str:
    """The token of an ``Authorization: Bearer`` header (the scheme is case-insensitive)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("missing bearer token (Authorization: Bearer <identity token>)")
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationError("token too large")
    return token


async def bearer(request: Request[Any, Any, State]) -> str:
    """:func:`bearer_token`, with a missing or malformed header audited as a refusal."""
    try:
        return bearer_token(request)
    except AuthenticationError as exc:
        await broker_of(request).callers.refused(exc.message, request_id=request_id(request))
        raise


def basic_credentials(request: Request[Any, Any, State]) -> tuple[str, str] | None:
    """client_secret_basic (RFC 6749 §2.3.1): form-urlencoded id and secret, base64."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationError("malformed Basic credentials") from None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise AuthenticationError("malformed Basic credentials")
    return unquote(client_id), unquote(secret)


async def principal(request: Request[Any, Any, State]) -> Principal:
    """Dependency: the verified workload behind the bearer token."""
    callers, rid = broker_of(request).callers, request_id(request)
    return await callers.workload(await bearer(request), request_id=rid)


async def authenticate_caller(
    request: Request[Any, Any, State], form: dict[str, str]
) -> tuple[Principal | None, Client | None]:
    """For the OAuth endpoints: a workload bearer token, or client credentials (Basic or
    client_secret_post)."""
    callers, rid = broker_of(request).callers, request_id(request)
    basic = basic_credentials(request)
    if basic is not None:
        return None, await callers.client(*basic, request_id=rid)
    if "client_id" in form and "client_secret" in form:
        return None, await callers.client(form["client_id"], form["client_secret"], request_id=rid)
    return await callers.workload(await bearer(request), request_id=rid), None
