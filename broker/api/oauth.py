"""The OAuth side: RFC 8693 token exchange, RFC 7662 introspection, RFC 7009 revocation, and
RFC 8414 metadata with the JWKS of the tokens the broker issues. Every answer here, errors
included, is in the RFC 6749 §5.2 shape, not problem+json."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Schema
from litestar.openapi.spec.enums import OpenAPIType
from redis.exceptions import RedisClusterException, RedisError

from broker.api.auth import authenticate_caller, broker_of, client_address, request_id
from broker.api.errors import NO_STORE, OAuthError, oauth_error
from broker.api.openapi import CLIENT, FORM, PUBLIC, form, oauth_errors, operation, problems
from broker.api.schemas import JsonWebKeySet, new_task_id, parse_ttl
from broker.approvals import ApprovalState, ApprovalView
from broker.errors import (
    ApprovalRequired,
    AuthenticationError,
    BrokerError,
    InvalidRequest,
    PermissionDenied,
    QuotaExceeded,
    StoreUnavailable,
)
from broker.service import Broker, Issued
from broker.service.delegation import Hop, authenticate_hop
from broker.types import TASK_ID_RULE, Intent, Scope, Task, valid_task_id

__all__ = [
    "AuthorizationServerMetadata",
    "OAuthController",
    "OAuthError",
    "RevocationResponse",
    "WellKnownOAuth",
    "oauth_error",
    "oauth_refusal",
    "use_params",
]

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (an RFC 8693 URN)
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
TT_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 (an RFC 8693 URN)
TT_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (an RFC 8693 URN)
_MULTI = {"resource", "audience"}
_SECONDS = re.compile(r"[0-9]{1,9}", re.ASCII)


class TokenResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 8693 §2.2.1 response, with RFC 9396 ``authorization_details`` and the lease."""

    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    scope: str
    authorization_details: list[dict[str, Any]]
    lease_id: str
    task_id: str
    ttl_capped_by: str | None = None


class IntrospectionResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 7662 §2.2: ``{"active": false}`` or the token's facts."""

    active: bool
    scope: str | None = None
    client_id: str | None = None
    sub: str | None = None
    aud: str | None = None
    iss: str | None = None
    exp: int | None = None
    iat: int | None = None
    jti: str | None = None
    token_type: str | None = None
    task_id: str | None = None
    authorization_details: list[dict[str, Any]] | None = None
    cnf: dict[str, str] | None = None
    act: dict[str, Any] | None = None  # RFC 8693 §4.1: a delegated credential's actors


def _text(description: str, *values: str) -> Schema:
    return Schema(
        type=OpenAPIType.STRING, description=description, enum=list(values) if values else None
    )


_TOKEN_FORM = form(
    {
        "grant_type": _text("RFC 8693 token exchange", GRANT_TOKEN_EXCHANGE),
        "subject_token": _text(
            "the workload's identity token (with actor_token: or a broker-issued access "
            "token to delegate further)"
        ),
        "subject_token_type": _text(
            "jwt or id_token (access_token only with actor_token)",
            TT_JWT,
            TT_ID_TOKEN,
            TT_ACCESS_TOKEN,
        ),
        "requested_token_type": _text("access_token (default) or jwt", TT_ACCESS_TOKEN, TT_JWT),
        "resource": _text("the resource (one)"),
        "audience": _text("alternative to resource"),
        "scope": _text("the actions, space-separated"),
        "authorization_details": _text("RFC 9396: a JSON array with one entry (type = issuer)"),
        "issuer": _text("the issuer instance (default jwt)"),
        "task_id": _text("the task (default: a new one)"),
        "ttl": _text("seconds (ASCII digits)"),
        "task_ttl": _text("how long the task may run, seconds (its first request only)"),
        "purpose": _text("free text shown to approvers"),
        "actor_token": _text("delegation (RFC 8693): the acting party's identity token"),
        "actor_token_type": _text("required with actor_token", TT_JWT, TT_ID_TOKEN),
    },
    ["grant_type", "subject_token", "subject_token_type"],
)
_CLIENT_FIELDS = {
    "client_id": _text("client_secret_post (with client_secret)"),
    "client_secret": _text("client_secret_post (with client_id)"),
}
_INTROSPECT_FORM = form(
    {
        "token": _text("the token"),
        "token_type_hint": _text("RFC 7662 §2.1 (ignored)", "access_token", "refresh_token"),
        **_CLIENT_FIELDS,
        "resource": _text("the resource server's identifier (governance)"),
        "action": _text("what the client tried (governance)"),
        "client_address": _text("the client's IP as the resource server saw it (governance)"),
    },
    ["token"],
)
_REVOKE_FORM = form(
    {
        "token": _text("the token"),
        "token_type_hint": _text("RFC 7009 §2.1 (ignored)", "access_token", "refresh_token"),
        **_CLIENT_FIELDS,
    },
    ["token"],
)


class RevocationResponse(msgspec.Struct, frozen=True):
    """RFC 7009 §2.2: an empty object, also for a token the caller may not revoke."""


class AuthorizationServerMetadata(msgspec.Struct, frozen=True):
    """RFC 8414 §2 (with the RFC 8693 token types as extensions)."""

    issuer: str
    token_endpoint: str
    introspection_endpoint: str
    revocation_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    dpop_signing_alg_values_supported: list[str]
    response_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    introspection_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    authorization_details_types_supported: list[str]
    subject_token_types_supported: list[str]
    actor_token_types_supported: list[str]
    service_documentation: str


class AuthorizationDetail(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RFC 9396 entry; ``type`` names the issuer instance."""

    type: str
    locations: list[str] = msgspec.field(default_factory=list)
    actions: list[str] = msgspec.field(default_factory=list)


def from_broker_error(
    exc: BrokerError, *, client_auth: bool = False, basic: bool = False
) -> Response[dict[str, Any]]:
    """``client_auth``: the caller itself failed to authenticate (401 ``invalid_client``);
    ``basic``: it sent HTTP Basic credentials, so the 401 challenges in Basic."""
    extra: dict[str, Any] = {}
    if isinstance(exc, PermissionDenied) and exc.reasons:
        extra["reasons"] = list(exc.reasons)
    if isinstance(exc, ApprovalRequired):
        extra["grant"] = exc.grant
    if isinstance(exc, AuthenticationError) and exc.oauth_error in (
        "invalid_dpop_proof",
        "use_dpop_nonce",
    ):
        return oauth_error(exc.oauth_error, exc.message, 400)  # RFC 9449 §5.1
    if isinstance(exc, AuthenticationError):
        # The subject token failed: invalid_grant (400). A bad caller: invalid_client (401).
        if client_auth:
            return oauth_error("invalid_client", exc.message, 401, basic=basic)
        return oauth_error("invalid_grant", exc.message, 400)
    if isinstance(exc, QuotaExceeded):
        response = oauth_error(exc.oauth_error, exc.message, 429, quota=exc.quota)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    status = exc.status
    if status in (401, 403, 404, 409):
        status = 400  # RFC 6749 §5.2: token endpoint errors are 400
    return oauth_error(exc.oauth_error, exc.message, status, **extra)


def _sent_basic(request: Request[Any, Any, State]) -> bool:
    scheme = request.headers.get("authorization", "").split(" ", 1)[0]
    return scheme.lower() == "basic"


async def read_form(request: Request[Any, Any, State]) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != FORM:
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    body = await request.body()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("malformed form body") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            if key in _MULTI:
                raise _target_error(f"one {key} per request")
            raise InvalidRequest(f"parameter {key!r} given more than once")
        form[key] = value
    return form


def _target_error(message: str) -> BrokerError:
    return InvalidRequest(message, oauth_error="invalid_target")


def check_exchange(form: dict[str, str]) -> str:
    """The token-exchange parameters that come before authentication; returns the subject
    token. Nothing here looks at the intent, so an unauthenticated caller learns nothing.
    With an ``actor_token`` (delegation, RFC 8693 §2.1) the subject token may also be an
    access token this broker issued (``subject_token_type`` access_token or jwt)."""
    if form.get("grant_type") != GRANT_TOKEN_EXCHANGE:
        raise InvalidRequest(
            f"grant_type must be {GRANT_TOKEN_EXCHANGE}", oauth_error="unsupported_grant_type"
        )
    if not form.get("subject_token"):
        raise InvalidRequest("subject_token is required")
    delegated = "actor_token" in form or "actor_token_type" in form
    subject_types = (TT_JWT, TT_ID_TOKEN, TT_ACCESS_TOKEN) if delegated else (TT_JWT, TT_ID_TOKEN)
    if form.get("subject_token_type") not in subject_types:
        raise InvalidRequest(f"subject_token_type must be one of {', '.join(subject_types)}")
    if delegated:
        if not form.get("actor_token"):
            raise InvalidRequest("actor_token is required with actor_token_type")
        if form.get("actor_token_type") not in (TT_JWT, TT_ID_TOKEN):
            raise InvalidRequest(
                f"actor_token_type is required with actor_token: {TT_JWT} or {TT_ID_TOKEN}"
            )
    return form["subject_token"]


def intent_from_form(form: dict[str, str], default_issuer: str | None) -> Intent:
    """The intent of an authenticated token-exchange request (RFC 8693 + RFC 9396 + the
    ``ttl``, ``task_id`` and ``purpose`` extension parameters)."""
    if form.get("requested_token_type") not in (None, TT_ACCESS_TOKEN, TT_JWT):
        raise _target_error("requested_token_type must be access_token or jwt")
    issuer = form.get("issuer") or default_issuer
    resource = form.get("resource") or form.get("audience")
    if form.get("resource") and form.get("audience") and form["resource"] != form["audience"]:
        raise _target_error("resource and audience name different targets")
    actions = form.get("scope", "").split()
    if "authorization_details" in form:
        try:
            details = msgspec.json.decode(
                form["authorization_details"].encode(), type=list[AuthorizationDetail]
            )
        except msgspec.DecodeError as exc:
            raise InvalidRequest(
                f"authorization_details: {exc}", oauth_error="invalid_authorization_details"
            ) from None
        if len(details) != 1:
            raise InvalidRequest(
                "authorization_details must hold exactly one entry",
                oauth_error="invalid_authorization_details",
            )
        d = details[0]
        if len(d.locations) > 1:
            raise _target_error("authorization_details: one location per request")
        issuer = d.type
        if d.locations:
            if resource and resource != d.locations[0]:
                raise _target_error("resource and authorization_details.locations differ")
            resource = d.locations[0]
        if d.actions:
            if actions and set(actions) != set(d.actions):
                raise InvalidRequest(
                    "scope and authorization_details.actions differ", oauth_error="invalid_scope"
                )
            actions = d.actions
    if not issuer:
        raise InvalidRequest("no issuer: pass authorization_details (type = issuer) or issuer")
    if not resource:
        raise _target_error("resource (or audience) is required")
    if not actions:
        raise InvalidRequest("scope (the actions) is required", oauth_error="invalid_scope")
    ttl = _seconds_param(form, "ttl")
    task_ttl = _seconds_param(form, "task_ttl")
    auto = not form.get("task_id")
    task_id = form.get("task_id") or new_task_id()
    if not valid_task_id(task_id):
        raise InvalidRequest(f"task_id: {TASK_ID_RULE}")
    purpose = form.get("purpose", "")
    if len(purpose) > 1000:
        raise InvalidRequest("purpose: at most 1000 characters")
    return Intent(
        task=Task(id=task_id, purpose=purpose, auto=auto, ttl=task_ttl),
        scope=Scope.of(issuer, resource, actions),
        ttl=ttl,
    )


def _seconds_param(form: dict[str, str], name: str) -> timedelta | None:
    raw = form.get(name)
    if not raw:
        return None
    if not _SECONDS.fullmatch(raw):
        raise InvalidRequest(f"{name} must be a number of seconds (ASCII digits)")
    return parse_ttl(int(raw))


def use_params(fields: dict[str, str]) -> dict[str, str | None]:
    """The optional description of a use that a resource server adds when it introspects or
    reports (extension parameters): what it is (``resource``), what the client tried to do
    (``action``) and the client's address as the resource server saw it (``client_address``)."""
    address = fields.get("client_address") or None
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise InvalidRequest("client_address must be an IP address") from None
    resource = fields.get("resource") or None
    action = fields.get("action") or None
    for name, value in (("resource", resource), ("action", action)):
        if value is not None and (len(value) > 2048 or not value.isprintable()):
            raise InvalidRequest(f"{name}: at most 2048 printable characters")
    return {"resource": resource, "action": action, "client_address": address}


def _oauth_store_error(_: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    return from_broker_error(
        StoreUnavailable(f"the state store is unavailable ({type(exc).__name__})")
    )


def _oauth_broker_error(_: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    assert isinstance(exc, BrokerError)
    return from_broker_error(exc)


def oauth_refusal(status: int, description: str) -> Response[dict[str, Any]]:
    """A refusal before routing (broker.api.app's edge: the state is lost) in this shape."""
    return oauth_error(
        "temporarily_unavailable" if status == 503 else "server_error", description, status
    )


class OAuthController(Controller):
    """Every answer here, errors included, is in the RFC 6749 §5.2 shape."""

    path = "/oauth"
    tags = ["oauth"]
    # HTTP errors (404, 405, 413, a bad form) and 500s under /oauth/ are answered in this
    # shape by the app's handlers (broker.api.errors), an unmatched route's included.
    exception_handlers = {
        RedisError: _oauth_store_error,
        RedisClusterException: _oauth_store_error,
        BrokerError: _oauth_broker_error,
    }

    @post(
        "/token",
        status_code=200,
        summary="RFC 8693 token exchange: identity token → scoped credential",
        operation_id="exchangeToken",
        security=PUBLIC,
        operation_class=operation(request_body=_TOKEN_FORM),
        responses={
            200: ResponseSpec(TokenResponse, description="The credential", generate_examples=False),
            # A subject token that fails is invalid_grant (400): this route never answers 401.
            **oauth_errors(400, 429, 502),
        },
    )
    async def token(self, request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
        """The subject token is verified before anything else of the request is read. A grant
        that needs approval answers ``authorization_pending`` (with ``approval_id``) until it
        is decided; repeat the same request to collect the credential."""
        broker = broker_of(request)
        rid = request_id(request)
        try:
            form = await read_form(request)
            subject_token = check_exchange(form)
            hop: Hop | None = None
            if form.get("actor_token"):
                hop = await authenticate_hop(
                    broker.callers,
                    broker.tokens,
                    broker.clock,
                    subject_token=subject_token,
                    actor_token=form["actor_token"],
                    subject_is_access_token=form["subject_token_type"] == TT_ACCESS_TOKEN,
                    request_id=rid,
                )
                principal = hop.subject
            else:
                principal = await broker.callers.workload(subject_token, request_id=rid)
            intent = intent_from_form(form, "jwt" if "jwt" in broker.issuers else None)
            # After authentication, so an unauthenticated caller cannot fill the replay cache.
            cnf = await broker.callers.dpop_binding(
                request.headers.getall("dpop", []), path="/oauth/token", request_id=rid
            )
            if cnf is not None:
                intent = msgspec.structs.replace(intent, cnf=cnf)
            result: Issued | ApprovalView
            if hop is not None:
                result = await broker.issuance.delegate(
                    hop, intent, origin=client_address(request), request_id=rid
                )
            else:
                result = await broker.issuance.request(
                    principal, intent, origin=client_address(request), request_id=rid
                )
        except BrokerError as exc:
            return from_broker_error(exc)
        if not isinstance(result, Issued):
            return _pending(broker, result)
        lease, cred = result.lease, result.credential
        body = TokenResponse(
            access_token=cred.secret.reveal(),
            issued_token_type=TT_ACCESS_TOKEN,
            token_type=cred.token_type,
            expires_in=int((cred.expires_at - broker.clock.now()).total_seconds()),
            scope=" ".join(lease.scope.actions),
            authorization_details=[
                {
                    "type": lease.scope.issuer,
                    "locations": [lease.scope.resource],
                    "actions": list(lease.scope.actions),
                }
            ],
            lease_id=lease.id,
            task_id=lease.task_id,
            ttl_capped_by=result.ttl_capped_by,
        )
        return Response(msgspec.to_builtins(body), status_code=200, headers=NO_STORE)

    @post(
        "/introspect",
        status_code=200,
        summary="RFC 7662 token introspection",
        operation_id="introspectToken",
        security=CLIENT,
        operation_class=operation(request_body=_INTROSPECT_FORM),
        responses={
            200: ResponseSpec(
                IntrospectionResponse, description="The token's facts", generate_examples=False
            ),
            **oauth_errors(400, 401, 403),
        },
    )
    async def introspect(self, request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
        """For resource servers: a workload whose policy grants ``introspect``, or a configured
        client with that permission. Every introspection of a known token is a recorded use."""
        broker = broker_of(request)
        try:
            form = await read_form(request)
            principal, client = await authenticate_caller(request, form)
        except AuthenticationError as exc:
            return from_broker_error(exc, client_auth=True, basic=_sent_basic(request))
        except BrokerError as exc:
            return from_broker_error(exc)
        allowed, caller = broker.tokens.resource_server(principal, client, {"introspect"})
        if not allowed:
            return oauth_error("unauthorized_client", "caller may not introspect tokens", 403)
        token = form.get("token", "")
        if not token:
            return oauth_error("invalid_request", "token is required")
        try:
            use = use_params(form)
        except InvalidRequest as exc:
            return oauth_error("invalid_request", exc.message)
        answer = await broker.tokens.introspect(token, caller=caller, **use)
        return Response(answer, headers=NO_STORE)

    @post(
        "/revoke",
        status_code=200,
        summary="RFC 7009 token revocation",
        operation_id="revokeToken",
        security=CLIENT,
        operation_class=operation(request_body=_REVOKE_FORM),
        responses={
            200: ResponseSpec(
                RevocationResponse, description="Revoked (or unknown)", generate_examples=False
            ),
            **oauth_errors(400, 401),
        },
    )
    async def revoke(self, request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
        """The owner of a token, or a client with the ``revoke`` permission. A token the caller
        may not revoke gets the answer an unknown token gets: ``200 {}``."""
        broker = broker_of(request)
        try:
            form = await read_form(request)
            principal, client = await authenticate_caller(request, form)
        except AuthenticationError as exc:
            return from_broker_error(exc, client_auth=True, basic=_sent_basic(request))
        except BrokerError as exc:
            return from_broker_error(exc)
        token = form.get("token", "")
        if not token:
            return oauth_error("invalid_request", "token is required")
        try:
            await broker.tokens.revoke(
                token, principal=principal, client=client, request_id=request_id(request)
            )
        except BrokerError as exc:
            return from_broker_error(exc)
        return Response({}, status_code=200, headers=NO_STORE)


def _pending(broker: Broker, view: ApprovalView) -> Response[dict[str, Any]]:
    """The device-flow/CIBA convention for a request that needs approval: repeat the same
    token request; ``authorization_pending`` until decided, then the token,
    ``access_denied`` or ``expired_token``."""
    if view.state is ApprovalState.DENIED:
        return oauth_error("access_denied", "the approval request was denied", approval_id=view.id)
    if view.state in (ApprovalState.EXPIRED, ApprovalState.CANCELLED):
        return oauth_error(
            "expired_token", f"the approval request is {view.state.value}", approval_id=view.id
        )
    expires_in = int((view.expires_at - broker.clock.now()).total_seconds())
    return oauth_error(
        "authorization_pending",
        f"waiting for approval of grant {view.grant} ({view.needed} more needed)",
        approval_id=view.id,
        approval_uri=f"{broker.settings.public_url}/v1/approvals/{view.id}",
        expires_in=max(expires_in, 0),
        interval=5,
    )


class WellKnownOAuth(Controller):
    path = "/.well-known"
    tags = ["discovery"]

    @get(
        "/oauth-authorization-server",
        summary="RFC 8414 metadata",
        operation_id="getAuthorizationServerMetadata",
        operation_class=operation(),
        security=PUBLIC,
        responses=problems(),
    )
    async def metadata(self, request: Request[Any, Any, State]) -> AuthorizationServerMetadata:
        broker = broker_of(request)
        base = broker.settings.public_url.rstrip("/")
        auth_methods = ["client_secret_basic", "client_secret_post", "bearer_workload_token"]
        return AuthorizationServerMetadata(
            issuer=base,
            token_endpoint=f"{base}/oauth/token",
            introspection_endpoint=f"{base}/oauth/introspect",
            revocation_endpoint=f"{base}/oauth/revoke",
            jwks_uri=f"{base}/.well-known/jwks.json",
            grant_types_supported=[GRANT_TOKEN_EXCHANGE],
            dpop_signing_alg_values_supported=sorted(broker.dpop.algorithms),
            response_types_supported=[],
            token_endpoint_auth_methods_supported=["none"],
            introspection_endpoint_auth_methods_supported=auth_methods,
            revocation_endpoint_auth_methods_supported=auth_methods,
            authorization_details_types_supported=sorted(broker.issuers),
            # Extensions (RFC 8693 names no metadata): what /oauth/token takes as subject and
            # actor tokens, so an agent runtime can discover delegation (docs/agents.md).
            # There is deliberately no authorization_endpoint: the broker offers no browser
            # flow (RFC 8414 §2 makes it optional then); agents exchange identity tokens.
            subject_token_types_supported=[TT_JWT, TT_ID_TOKEN, TT_ACCESS_TOKEN],
            actor_token_types_supported=[TT_JWT, TT_ID_TOKEN],
            service_documentation=f"{base}/schema",
        )

    @get(
        "/jwks.json",
        summary="Public keys of the broker's signing issuers",
        operation_id="getJwks",
        operation_class=operation(),
        security=PUBLIC,
        responses={
            200: ResponseSpec(JsonWebKeySet, description="A JWK set", generate_examples=False),
            **problems(),
        },
    )
    async def jwks(self, request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
        return Response(
            broker_of(request).documents.jwks(), headers={"Cache-Control": "public, max-age=60"}
        )
