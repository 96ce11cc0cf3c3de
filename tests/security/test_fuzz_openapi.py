"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis).

Every operation of ``/schema/openapi.json`` gets hypothesis-generated path parameters, query
strings, headers and bodies, valid and invalid (schemathesis' positive and negative modes),
sent with the credentials the operation needs (and, in half the cases, with path parameters
that name real objects of the owner). For every answer:

- no 5xx (schemathesis' ``not_a_server_error``), and no traceback text in the body;
- the answer is what the document says it is (schemathesis' conformance checks): a documented
  status, the documented content type, a body valid against the documented schema
  (problem+json, the OAuth error shape, or the route's type) and the documented headers;
- the body is JSON, except a public issuer document (PEM);
- a refused request (4xx) changed nothing in Redis (the audit trail aside).

The OAuth endpoints' form bodies are in the document (broker/api/openapi.py), so they are
fuzzed from it like the JSON bodies.

Bounded and reproducible in CI: ``derandomize`` (a fixed seed) and a few examples per
operation. ``JIT_FUZZ_EXAMPLES=500`` (for example) is the deeper run for local hunting.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.api import create_app
from tests.fakes.slack_api import FakeSlack
from tests.security.conftest import (
    BASE,
    DEV_APPROVER_KEY,
    INTROSPECTOR,
    OWNER,
    Owned,
    World,
    open_world,
)

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("JIT_FUZZ_EXAMPLES", "25"))
JSON_TYPES = ("application/json", "application/problem+json")
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")

T = TypeVar("T")


class Background:
    """An event loop in a thread that owns the broker and its client: hypothesis runs the
    test synchronously and hands each request to this loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Fuzz:
    def __init__(self, bg: Background, world: World, owned: Owned) -> None:
        self.bg, self.world, self.owned = bg, world, owned

    def headers_for(self, path: str) -> dict[str, str]:
        """The credentials the operation needs."""
        if path.startswith("/v1/approvals/{approval_id}/approve") or path.endswith("/deny"):
            return {"Authorization": f"Bearer {DEV_APPROVER_KEY}"}
        if path in ("/oauth/introspect", "/v1/usage"):
            return self.world.bearer(INTROSPECTOR)
        return self.world.bearer(OWNER)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    bg = Background()
    with FakeSlack() as slack:
        cm = open_world(tmp_path_factory.mktemp("fuzz"), slack)
        world = bg.run(cm.__aenter__())
        try:
            yield Fuzz(bg, world, bg.run(world.owner_objects()))
        finally:
            bg.run(cm.__aexit__(None, None, None))
            bg.close()


@pytest.fixture(scope="module")
def api_schema(fuzz: Fuzz) -> Any:
    document = copy.deepcopy(
        create_app(fuzz.world.broker, manage_lifecycle=False).openapi_schema.to_schema()
    )
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    )
    return schema


def _real_ids(case: schemathesis.Case, owned: Owned) -> None:
    real = {
        "lease_id": owned.lease_id,
        "task_id": owned.task_id,
        "approval_id": owned.approval_id,
        "issuer": "mtls",
        "document": "ca.pem",
    }
    for name in list(case.path_parameters or {}):
        if name in real:
            case.path_parameters[name] = real[name]


def _httpx_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis serializes a case for ``requests``; the same request for httpx."""
    out: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": kwargs.get("headers") or {},
        "params": kwargs.get("params"),
    }
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    data = kwargs.get("data")
    if isinstance(data, bytes | str):
        out["content"] = data
    elif data is not None:
        out["data"] = data
    return out


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

#: Every operation of the OpenAPI document (checked against it below).
OPERATIONS = (
    "GET /.well-known/audit-jwks.json",
    "GET /.well-known/jwks.json",
    "GET /.well-known/oauth-authorization-server",
    "GET /.well-known/ssf-configuration",
    "GET /healthz",
    "GET /readyz",
    "GET /ssf/jwks.json",
    "GET /v1/approvals",
    "GET /v1/approvals/{approval_id}",
    "GET /v1/issuers/{issuer}/{document}",
    "GET /v1/leases",
    "GET /v1/leases/{lease_id}",
    "GET /v1/tasks/{task_id}",
    "DELETE /v1/leases/{lease_id}",
    "POST /oauth/introspect",
    "POST /oauth/revoke",
    "POST /oauth/token",
    "POST /v1/approvals/{approval_id}/approve",
    "POST /v1/approvals/{approval_id}/cancel",
    "POST /v1/approvals/{approval_id}/deny",
    "POST /v1/credentials",
    "POST /v1/leases/revoke-all",
    "POST /v1/tasks/{task_id}/complete",
    "POST /v1/usage",
)


def check_case(fuzz: Fuzz, case: schemathesis.Case, use_real_ids: bool) -> None:
    if use_real_ids:
        _real_ids(case, fuzz.owned)
    headers = fuzz.headers_for(case.path)
    kwargs = _httpx_kwargs(case.as_transport_kwargs(base_url=BASE, headers=headers))
    world = fuzz.world

    async def call() -> tuple[httpx.Response, bool]:
        before = await world.snapshot()
        response = await world.client.request(**kwargs)
        await world.broker.approvals.idle()
        return response, before == await world.snapshot()

    response, unchanged = fuzz.bg.run(call())
    case.validate_response(response, checks=CHECKS)
    text = response.text
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, f"traceback text in the answer: {text[:300]}"
    ctype = response.headers.get("content-type", "").split(";")[0]
    if case.path == "/v1/issuers/{issuer}/{document}" and response.status_code == 200:
        assert ctype in ("application/x-pem-file", "application/pkix-crl"), ctype
    else:
        assert ctype in JSON_TYPES, f"{response.status_code} {ctype}: {text[:200]}"
        response.json()
    if 400 <= response.status_code < 500:
        assert unchanged, f"a refused request ({response.status_code}) changed Redis: {text[:200]}"


@pytest.mark.parametrize("operation", OPERATIONS)
def test_no_generated_request_gets_a_5xx_a_traceback_or_changes_state_when_refused(
    operation: str, api_schema: Any, fuzz: Fuzz
) -> None:
    method, path = operation.split(" ", 1)
    op = api_schema[path][method]
    cases = st.one_of(
        op.as_strategy(schemathesis.GenerationMode.POSITIVE),
        op.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @given(case=cases, use_real_ids=st.booleans())
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz_operation(case: schemathesis.Case, use_real_ids: bool) -> None:
        check_case(fuzz, case, use_real_ids)

    fuzz_operation()


def test_the_fuzzer_covers_every_operation_of_the_openapi_document(api_schema: Any) -> None:
    operations = {f"{r.ok().method.upper()} {r.ok().path}" for r in api_schema.get_all_operations()}
    assert "POST /v1/credentials" in operations
    assert "POST /oauth/token" in operations
    assert len(operations) >= 20, sorted(operations)


def header_failure(case: schemathesis.Case, response: httpx.Response) -> str:
    """What schemathesis' header conformance check says of ``response``; "" if it passes."""
    try:
        case.validate_response(response, checks=[response_headers_conformance])
    except (Failure, FailureGroup) as exc:
        return str(exc)
    return ""


def altered(
    response: httpx.Response,
    *,
    drop: str = "",
    status: int | None = None,
    body: dict[str, Any] | None = None,
    **set_headers: str,
) -> httpx.Response:
    """``response`` with header ``drop`` dropped, headers set, another status or JSON body."""
    headers = {k.lower(): v for k, v in response.headers.items() if k.lower() != drop.lower()}
    headers.pop("content-length", None)
    headers.update({k.replace("_", "-").lower(): v for k, v in set_headers.items()})
    content = response.content if body is None else json.dumps(body).encode()
    changed = httpx.Response(
        status or response.status_code,
        headers=headers,
        content=content,
        request=response.request,
    )
    changed.elapsed = response.elapsed
    return changed


def test_the_header_checks_hold_answers_to_x_request_id_www_authenticate_and_retry_after(
    api_schema: Any, fuzz: Fuzz
) -> None:
    """The conformance checks the fuzzer runs fail an answer without a header the document
    declares required for its status, or with a value its schema refuses: real 401s of both
    shapes pass every check, and fail without ``X-Request-ID`` or ``WWW-Authenticate``; a
    503 (the 401 turned into one) passes with ``Retry-After: 2`` and fails without it or
    with an HTTP date in it."""
    world = fuzz.world
    leases = api_schema["/v1/leases"]["GET"].Case()
    refused = fuzz.bg.run(
        world.client.get("/v1/leases", headers={"Authorization": "Bearer not-a-token"})
    )
    assert refused.status_code == 401, refused.text
    introspect = api_schema["/oauth/introspect"]["POST"].Case()
    basic = httpx.BasicAuth(INTROSPECTOR, "not-the-secret")
    oauth_refused = fuzz.bg.run(
        world.client.post("/oauth/introspect", data={"token": "x"}, auth=basic)
    )
    assert oauth_refused.status_code == 401, oauth_refused.text
    for case, answer in ((leases, refused), (introspect, oauth_refused)):
        case.validate_response(answer, checks=CHECKS)
        assert header_failure(case, answer) == ""
        for name in ("X-Request-ID", "WWW-Authenticate"):
            assert name in header_failure(case, altered(answer, drop=name)), (case.path, name)
    assert "pattern" in header_failure(leases, altered(refused, www_authenticate="Basic"))

    body = {**refused.json(), "status": 503, "type": "https://jit-broker.dev/problems/x"}
    unavailable = altered(refused, drop="www-authenticate", status=503, body=body, retry_after="2")
    leases.validate_response(unavailable, checks=[c for c in CHECKS if c is not not_a_server_error])
    assert "Retry-After" in header_failure(leases, altered(unavailable, drop="Retry-After"))
    dated = altered(unavailable, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    assert "integer" in header_failure(leases, dated)
