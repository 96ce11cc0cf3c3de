"""Who is calling: bearer workload tokens, OAuth client credentials, request ids."""

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

__all__ = ["basic_credentials", "bearer_token", "broker_of", "principal", "request_id"]

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
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("missing bearer token (Authorization: Bearer <identity token>)")
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationError("token too large")
    return token


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
    broker, rid = broker_of(request), request_id(request)
    return await broker.authenticate(await bearer_or_audit(request, broker, rid), request_id=rid)


async def bearer_or_audit(request: Request[Any, Any, State], broker: Broker, rid: str) -> str:
    try:
        return bearer_token(request)
    except AuthenticationError as exc:
        await broker.audit.emit(
            "auth.failed", outcome="deny", reasons=[exc.message], request_id=rid
        )
        raise


async def authenticate_caller(
    request: Request[Any, Any, State], form: dict[str, str]
) -> tuple[Principal | None, Client | None]:
    """For the OAuth endpoints: a workload bearer token, or client credentials (Basic or
    client_secret_post)."""
    broker = broker_of(request)
    rid = request_id(request)
    basic = basic_credentials(request)
    if basic is not None:
        return None, await broker.authenticate_client(*basic, request_id=rid)
    if "client_id" in form and "client_secret" in form:
        return None, await broker.authenticate_client(
            form["client_id"], form["client_secret"], request_id=rid
        )
    token = await bearer_or_audit(request, broker, rid)
    return await broker.authenticate(token, request_id=rid), None
