"""What the OpenAPI document at ``/schema/openapi.json`` says beyond the handlers' signatures,
declared once: the security schemes, the error responses of every route (problem+json for
/v1 and the operational routes, the RFC 6749 §5.2 shape for /oauth), the headers a route
reads or sends that litestar cannot see (``Idempotency-Key``, ``DPoP``, ``Location``,
``Idempotent-Replayed``), the headers the error handlers and the request-id edge put on
answers of every route (``X-Request-ID`` on all, ``WWW-Authenticate`` on a 401,
``Retry-After`` on a 429 and a 503), the form bodies the OAuth handlers read themselves, and
the binary media types of the issuers' documents.

The document describes each answer as the wire carries it; a client generated from it
(``openapi-python-client``) type-checks and reads every answer of the live API
(tests/integration/test_openapi_client.py), and schemathesis' conformance checks hold it to
that (tests/security/test_fuzz_openapi.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from broker.api.auth import _REQUEST_ID
from broker.api.errors import PROBLEM, RETRY_AFTER, OAuthError, Problem

__all__ = [
    "BEARER",
    "CLIENT",
    "COMPONENTS",
    "DPOP",
    "FORM",
    "IDEMPOTENCY_KEY",
    "ISSUER_DOCUMENT_TYPES",
    "LOCATION",
    "PUBLIC",
    "REPLAYED",
    "WORKLOAD",
    "form",
    "oauth_errors",
    "operation",
    "problems",
]

FORM = "application/x-www-form-urlencoded"
_TITLES = {
    400: "Bad request (``errors`` names the invalid fields)",
    401: "Not authenticated (``WWW-Authenticate: Bearer``)",
    403: "Forbidden (``reasons`` says why the policy said no)",
    404: "Not found",
    409: "Conflict",
    413: "Request body too large",
    422: "Unprocessable request",
    429: "Too many requests (``Retry-After``)",
    500: "Internal error (the request id is in the detail)",
    502: "Issuer error",
    503: "Unavailable: the state store or an issuer (``Retry-After``)",
}

BEARER_SCHEME = "bearer"
CLIENT_SCHEME = "clientBasic"

# The headers of answers, as the edge and the error handlers send them (broker.api.app,
# broker.api.errors, broker.api.oauth); declared once under components.headers and referred
# to by every response that carries them (see ``operation``).
_ANSWER_HEADERS = {
    "X-Request-ID": OpenAPIHeader(
        required=True,
        description="The request's id, on every answer (broker.api.app's edge): the caller's "
        "own `X-Request-ID` if it was well-formed, else a fresh one; also the `request_id` "
        "of a problem+json body and of the request's log lines.",
        schema=Schema(type=OpenAPIType.STRING, pattern=_REQUEST_ID.pattern),
    ),
    "WWW-Authenticate": OpenAPIHeader(
        required=True,
        description='On every 401: `Bearer realm="jit-broker"` with a problem+json body; '
        '`Bearer error="<the RFC 6749 error code>"` (such as `invalid_client`) under /oauth/, '
        'or `Basic realm="jit-broker"` there when the caller sent HTTP Basic credentials '
        "(RFC 6749 §5.2: the challenge matches the scheme the client used).",
        schema=Schema(
            type=OpenAPIType.STRING,
            pattern=r'^(Bearer (realm="jit-broker"|error="[a-z_]+")|Basic realm="jit-broker")$',
        ),
    ),
    "Retry-After": OpenAPIHeader(
        required=True,
        description="On every 429 and 503 (except /readyz's): seconds to wait before asking "
        f"again (RFC 9110 delay-seconds; never an HTTP date). A 503 says {RETRY_AFTER}; a 429 "
        "the seconds until the quota it names may allow the request (also `retry_after` in "
        "its body).",
        schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    ),
}


def _ref(header: str) -> Reference:
    return Reference(ref=f"#/components/headers/{header}")


COMPONENTS = Components(
    headers=dict(_ANSWER_HEADERS),
    security_schemes={
        BEARER_SCHEME: SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="JWT",
            description="A workload's (or a configured person's) identity token; under `jit "
            "dev` also the dev approver key.",
        ),
        CLIENT_SCHEME: SecurityScheme(
            type="http",
            scheme="basic",
            description="A configured client (a resource server): client_secret_basic, "
            "RFC 6749 §2.3.1. The OAuth routes also take client_secret_post in the form.",
        ),
    },
)
#: ``security=`` of a route a workload calls with its identity token.
BEARER: list[SecurityRequirement] = [{BEARER_SCHEME: []}]
#: ``security=`` of a route a resource server calls: a workload token or client credentials.
CLIENT: list[SecurityRequirement] = [{BEARER_SCHEME: []}, {CLIENT_SCHEME: []}]
#: Public routes declare no security (the document has no global requirement).
PUBLIC: list[SecurityRequirement] | None = None
WORKLOAD = BEARER


def problems(
    *statuses: int, body: bool = False, unavailable: bool = True
) -> dict[int, ResponseSpec]:
    """``responses=`` for a route's failures, as problem+json: the given statuses, a 500 on
    every route, a 503 (``unavailable``: the store, or the edge's state-lost refusal) and a
    413 on routes that read a body."""
    every = {*statuses, 500}
    if unavailable:
        every.add(503)
    if body:
        every.add(413)
    return {
        s: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM,
            description=_TITLES.get(s, "Error"),
            generate_examples=False,
        )
        for s in sorted(every)
    }


def oauth_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` of an /oauth route: RFC 6749 §5.2 errors, 413, 500 and 503 included."""
    return {
        s: ResponseSpec(
            data_container=OAuthError,
            description=f"RFC 6749 error: {_TITLES.get(s, 'Error')}",
            generate_examples=False,
        )
        for s in sorted({*statuses, 413, 500, 503})
    }


def _string(description: str, **kw: Any) -> Schema:
    return Schema(type=OpenAPIType.STRING, description=description, **kw)


IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    param_in="header",
    required=False,
    description="Retry safely: the same key and body answer with the same credential "
    "(`Idempotent-Replayed: true`), never a second one (docs/adr/0009).",
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=200, pattern=r"^[!-~]+$"),
)
DPOP = Parameter(
    name="DPoP",
    param_in="header",
    required=False,
    description="A DPoP proof (RFC 9449): the credential is bound to its key (docs/dpop.md).",
    schema=Schema(type=OpenAPIType.STRING),
)
LOCATION = {
    "Location": OpenAPIHeader(
        schema=_string("The approval request: /v1/approvals/{approval_id}"), required=True
    )
}
REPLAYED = {
    "Idempotent-Replayed": OpenAPIHeader(
        schema=_string("`true` on the replay of an earlier answer", enum=["true"]),
        required=False,
    )
}
#: What ``GET /v1/issuers/{issuer}/{document}`` sends: the issuers' documents as they are.
ISSUER_DOCUMENT_TYPES = (
    "application/octet-stream",  # ssh: revoked.krl (first: a generated client reads bytes)
    "application/x-pem-file",  # x509: ca.pem, crl.pem
    "application/pkix-crl",  # x509: crl.der
    "text/plain",  # ssh: ca.pub
)


def form(fields: Mapping[str, Schema], required: Sequence[str]) -> RequestBody:
    """A form body (``application/x-www-form-urlencoded``) the handler reads itself."""
    return RequestBody(
        required=True,
        content={
            FORM: OpenAPIMediaType(
                schema=Schema(
                    type=OpenAPIType.OBJECT, properties=dict(fields), required=list(required)
                )
            )
        },
    )


def _answer_headers(status: int, *, retry_after: bool = True) -> dict[str, Reference]:
    """The headers every answer with ``status`` carries, whatever the route: ``X-Request-ID``
    (the edge), ``WWW-Authenticate`` on a 401 and ``Retry-After`` on a 429 and (with
    ``retry_after``) a 503 (broker.api.errors, broker.api.oauth)."""
    named = ["X-Request-ID"]
    if status == 401:
        named.append("WWW-Authenticate")
    if status == 429 or (status == 503 and retry_after):
        named.append("Retry-After")
    return {name: _ref(name) for name in named}


def operation(
    *,
    parameters: Sequence[Parameter] = (),
    request_body: RequestBody | None = None,
    headers: Mapping[int, Mapping[str, OpenAPIHeader]] | None = None,
    binary: Mapping[int, Sequence[str]] | None = None,
    retry_after: bool = True,
) -> type[Operation]:
    """An ``operation_class=`` that adds what the signature cannot say: header
    ``parameters``, a ``request_body`` the handler reads itself, response ``headers`` by
    status, and ``binary`` bodies (status → media types, each a binary string). Every
    response also gets the headers every answer of its status carries (:func:`_answer_headers`;
    ``retry_after=False`` for a route whose 503 is its own answer without ``Retry-After``,
    such as /readyz). Every route in the document uses it, ``operation()`` when it has
    nothing else to add (tests/integration/test_openapi_headers.py)."""

    @dataclass
    class Declared(Operation):
        def __post_init__(self) -> None:
            if parameters:
                self.parameters = [*(self.parameters or []), *parameters]
            if request_body is not None:
                self.request_body = request_body
            for status, types in (binary or {}).items():
                described = self.responses[str(status)] if self.responses else None
                content = {
                    t: OpenAPIMediaType(
                        schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
                    )
                    for t in types
                }
                if isinstance(described, OpenAPIResponse):
                    described.content = content
            for status, named in (headers or {}).items():
                described = self.responses[str(status)] if self.responses else None
                if isinstance(described, OpenAPIResponse):
                    described.headers = {**(described.headers or {}), **named}
            for code, described in (self.responses or {}).items():
                if isinstance(described, OpenAPIResponse) and code.isdigit():
                    described.headers = {
                        **(described.headers or {}),
                        **_answer_headers(int(code), retry_after=retry_after),
                    }

    return Declared
