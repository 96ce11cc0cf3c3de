"""The headers every answer carries are in the served OpenAPI document (ADR 0042), on every
operation: ``X-Request-ID`` on every response (broker.api.app's edge sets it on every answer),
``WWW-Authenticate`` on every 401 and ``Retry-After`` on every 429 and 503 (the error
handlers set them, broker.api.errors and broker.api.oauth), each required, with a schema and
a description. /readyz is the one exception: its 503 is its own readiness answer, sent
without ``Retry-After``, and the last test proves that it is.

That the live answers carry what is declared is the fuzzer's part
(tests/security/test_fuzz_openapi.py, schemathesis' header conformance).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
#: Operations whose 503 is not the error handlers' and carries no Retry-After.
NO_RETRY_AFTER_ON_503 = frozenset({"GET /readyz"})


def expected_headers(operation: str, status: str) -> list[str]:
    names = ["X-Request-ID"]
    if status == "401":
        names.append("WWW-Authenticate")
    if status == "429" or (status == "503" and operation not in NO_RETRY_AFTER_ON_503):
        names.append("Retry-After")
    return names


def resolved(document: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    """A header object, following a ``#/components/headers/…`` reference."""
    ref = header.get("$ref")
    if ref is None:
        return header
    prefix = "#/components/headers/"
    assert isinstance(ref, str), ref
    assert ref.startswith(prefix), ref
    target: dict[str, Any] = document["components"]["headers"][ref.removeprefix(prefix)]
    return target


def undeclared(document: dict[str, Any]) -> list[str]:
    """Every response that lacks one of the headers its status carries, or declares it
    optional, untyped or undescribed: ``"<METHOD> <path> <status>: <header>"``."""
    found = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            operation = f"{method.upper()} {path}"
            for status, response in op["responses"].items():
                declared = {
                    name.lower(): resolved(document, header)
                    for name, header in (response.get("headers") or {}).items()
                }
                for name in expected_headers(operation, status):
                    header = declared.get(name.lower())
                    if (
                        header is None
                        or header.get("required") is not True
                        or not header.get("description")
                        or not header.get("schema", {}).get("type")
                    ):
                        found.append(f"{operation} {status}: {name}")
    return found


async def served(api: Api) -> dict[str, Any]:
    r = await api.client.get("/schema/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_every_response_of_every_operation_declares_the_headers_it_carries(
    api: Api,
) -> None:
    document = await served(api)
    operations = [
        f"{m.upper()} {p}" for p, item in document["paths"].items() for m in item if m in METHODS
    ]
    assert len(operations) >= 20, operations
    statuses = {
        s
        for item in document["paths"].values()
        for m, op in item.items()
        if m in METHODS
        for s in op["responses"]
    }
    assert {"200", "201", "401", "429", "503"} <= statuses  # the walk sees every kind
    assert undeclared(document) == []
    headers = document["components"]["headers"]
    assert headers["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}
    assert headers["X-Request-ID"]["schema"]["type"] == "string"
    # /readyz's 503 declares what it sends: its request id, no Retry-After.
    ready = document["paths"]["/readyz"]["get"]["responses"]["503"]["headers"]
    assert sorted(ready) == ["X-Request-ID"]


@pytest.mark.parametrize(
    ("path", "method", "status", "header"),
    [
        ("/v1/leases", "get", "200", "X-Request-ID"),
        ("/v1/credentials", "post", "201", "X-Request-ID"),
        ("/oauth/token", "post", "400", "X-Request-ID"),
        ("/v1/leases", "get", "401", "WWW-Authenticate"),
        ("/oauth/introspect", "post", "401", "WWW-Authenticate"),
        ("/v1/credentials", "post", "429", "Retry-After"),
        ("/oauth/token", "post", "503", "Retry-After"),
        ("/healthz", "get", "500", "X-Request-ID"),
    ],
)
async def test_a_missing_or_optional_declaration_is_caught(
    api: Api, path: str, method: str, status: str, header: str
) -> None:
    document = await served(api)
    dropped = copy.deepcopy(document)
    del dropped["paths"][path][method]["responses"][status]["headers"][header]
    assert undeclared(dropped) == [f"{method.upper()} {path} {status}: {header}"]
    # Declared inline but optional is caught too.
    optional = copy.deepcopy(document)
    inline = dict(resolved(document, {"$ref": f"#/components/headers/{header}"}), required=False)
    optional["paths"][path][method]["responses"][status]["headers"][header] = inline
    assert undeclared(optional) == [f"{method.upper()} {path} {status}: {header}"]


async def test_readyz_answers_its_503_without_retry_after(api: Api) -> None:
    """Why /readyz is the exception above: a draining replica's readiness 503."""
    api.broker.drain()
    r = await api.client.get("/readyz")
    assert r.status_code == 503, r.text
    assert "retry-after" not in r.headers
    assert r.headers["x-request-id"]
