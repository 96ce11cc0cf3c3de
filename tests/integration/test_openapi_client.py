"""The OpenAPI document is the contract a client can be generated from (issue 10): generate a
client from the live ``/schema/openapi.json`` with ``openapi-python-client``, type-check it
with ``mypy --strict`` together with a program that uses it
(tests/integration/generated_client_usage.py), and run that program against the live API (the
app in process over the real Redis) with undocumented statuses set to fail
(``raise_on_unexpected_status``). Every answer must parse into the model the document names
for its status and carry no field the document does not describe; the leases revoked
through the API must be revoked in the broker's lease store.

The last two tests show the check can fail: a document without the declared 202 makes the
generated client refuse the approval answer, and an answer with a field the document does
not describe is caught.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest

from broker.api import create_app
from broker.config import QuotaLimit, QuotaSettings
from broker.types import LeaseState
from tests.integration.conftest import BASE, CLIENT_SECRET, Api

pytestmark = pytest.mark.integration

USAGE = Path(__file__).with_name("generated_client_usage.py")
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
CONFIG = "project_name_override: {name}\npackage_name_override: {name}\npost_hooks: []\n"
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def generate(document: dict[str, Any], out: Path, package: str) -> Path:
    """Generate the client package ``package`` from ``document`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "openapi.json").write_text(json.dumps(document))
    (out / "config.yaml").write_text(CONFIG.format(name=package))
    subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(out / "openapi.json"),
            "--config",
            str(out / "config.yaml"),
            "--output-path",
            str(out / package),
            "--meta",
            "none",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out / package


@pytest.fixture
def imports(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for generated packages, removed (with the modules) after."""
    root = tmp_path / "generated"
    root.mkdir()
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith(("jit_broker_api_client", "oas_"))]:
            del sys.modules[name]


async def document_of(api: Api) -> dict[str, Any]:
    r = await api.client.get("/schema/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def clients(pkg: ModuleType, api: Api) -> dict[str, Any]:
    def transport() -> httpx.ASGITransport:
        return httpx.ASGITransport(app=create_app(api.broker, manage_lifecycle=False))

    def authed(token: str, prefix: str = "Bearer") -> Any:
        return pkg.AuthenticatedClient(
            base_url=BASE,
            token=token,
            prefix=prefix,
            raise_on_unexpected_status=True,
            httpx_args={"transport": transport()},
        )

    basic = base64.b64encode(f"orders-api:{CLIENT_SECRET}".encode()).decode()
    return {
        "workload": authed(api.dev.issue("oas-1", {})),
        "stranger": authed("not-a-token"),
        "resource_server": authed(basic, prefix="Basic"),
        "public": pkg.Client(
            base_url=BASE, raise_on_unexpected_status=True, httpx_args={"transport": transport()}
        ),
    }


def undescribed(value: object, where: str = "") -> list[str]:
    """Fields of a parsed answer that the document does not describe: a generated model with
    declared properties keeps any other field in ``additional_properties``. (A model without
    declared properties is a map, such as ``metadata``: its entries are its content.)"""
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in undescribed(v, f"{where}[{i}]")]
    if not attrs.has(type(value)):
        return []
    declared = [f.name for f in attrs.fields(type(value)) if f.name != "additional_properties"]
    found = []
    extra = getattr(value, "additional_properties", {})
    if declared and extra:
        found.append(f"{where or type(value).__name__}: {sorted(extra)}")
    for name in declared:
        found += undescribed(getattr(value, name), f"{where}.{name}")
    return found


def test_the_generated_client_and_a_program_using_it_type_check_strictly(
    imports: Path, tmp_path: Path, api_document: dict[str, Any]
) -> None:
    generate(api_document, imports, "jit_broker_api_client")
    shutil.copy(USAGE, imports / USAGE.name)
    (imports / "mypy.ini").write_text("[mypy]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            "mypy.ini",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "jit_broker_api_client",
            USAGE.name,
        ],
        cwd=imports,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
async def api_document(api: Api) -> dict[str, Any]:
    return await document_of(api)


async def test_the_generated_client_reads_every_answer_of_the_live_api(
    api: Api, imports: Path, api_document: dict[str, Any]
) -> None:
    generate(api_document, imports, "jit_broker_api_client")
    shutil.copy(USAGE, imports / USAGE.name)
    pkg = importlib.import_module("jit_broker_api_client")
    usage = importlib.import_module(USAGE.stem)
    c = clients(pkg, api)
    tour = await usage.tour(
        c["workload"],
        c["stranger"],
        c["resource_server"],
        c["public"],
        api.dev.issue("oas-1", {}),
    )
    for answer in tour.answers:
        assert undescribed(answer.parsed) == [], answer.operation
    by_op = {a.operation: a for a in tour.answers}
    assert by_op["requestCredential (replay)"].headers["idempotent-replayed"] == "true"
    pending = by_op["requestCredential (approval)"]
    assert pending.headers["location"] == f"/v1/approvals/{pending.parsed.approval_id}"
    assert by_op["listLeases (refused)"].headers["www-authenticate"] == 'Bearer realm="jit-broker"'
    # X-Request-ID (declared on every response) is on every answer, as the document says.
    for answer in tour.answers:
        assert REQUEST_ID.fullmatch(answer.headers.get("x-request-id", "")), answer.operation
    # The leases revoked through the API are revoked in the broker's lease store.
    assert len(tour.revoked) >= 3
    for lease_id in tour.revoked:
        lease = await api.broker.manager.get(lease_id)
        assert lease.state is LeaseState.REVOKED, (lease_id, lease.state)
    for client in c.values():
        await client.get_async_httpx_client().aclose()


@pytest.mark.parametrize(
    "settings_over", [{"quotas": QuotaSettings(workload=QuotaLimit(live_leases=1))}]
)
async def test_the_generated_client_reads_retry_after_and_the_request_id_of_a_429(
    api: Api, imports: Path, api_document: dict[str, Any]
) -> None:
    """A workload past its live-lease quota: the generated client parses the 429 as a
    ``Problem`` and its ``Retry-After`` and ``X-Request-ID`` are there to read, agreeing with
    the body (``retry_after``, ``request_id``)."""
    generate(api_document, imports, "jit_broker_api_client")
    pkg = importlib.import_module("jit_broker_api_client")
    request_credential = importlib.import_module("jit_broker_api_client.api.v1.request_credential")
    models = importlib.import_module("jit_broker_api_client.models")
    workload = clients(pkg, api)["workload"]
    body = models.CredentialRequest(
        issuer="jwt", resource="https://demo.local", actions=["read"], ttl=300
    )
    issued = await request_credential.asyncio_detailed(client=workload, body=body)
    assert issued.status_code == 201, issued.content
    assert REQUEST_ID.fullmatch(issued.headers["X-Request-ID"])
    refused = await request_credential.asyncio_detailed(client=workload, body=body)
    assert refused.status_code == 429, refused.content
    assert isinstance(refused.parsed, models.Problem)
    assert refused.parsed.quota == "workload.live_leases"
    assert int(refused.headers["Retry-After"]) == refused.parsed.retry_after > 0
    assert refused.headers["X-Request-ID"] == refused.parsed.request_id
    await workload.get_async_httpx_client().aclose()


async def test_an_undeclared_status_fails_the_generated_client(
    api: Api, imports: Path, api_document: dict[str, Any]
) -> None:
    """The 202 of POST /v1/credentials dropped from the document: the client generated from
    it refuses the approval answer, so the tests above would fail."""
    document = copy.deepcopy(api_document)
    del document["paths"]["/v1/credentials"]["post"]["responses"]["202"]
    generate(document, imports, "oas_without_202")
    pkg = importlib.import_module("oas_without_202")
    request_credential = importlib.import_module("oas_without_202.api.v1.request_credential")
    models = importlib.import_module("oas_without_202.models")
    errors = importlib.import_module("oas_without_202.errors")
    workload = clients(pkg, api)["workload"]
    body = models.CredentialRequest(
        issuer="jwt", resource="https://demo.local", actions=["admin"], ttl=300
    )
    with pytest.raises(errors.UnexpectedStatus) as caught:
        await request_credential.asyncio_detailed(client=workload, body=body)
    assert caught.value.status_code == 202
    await workload.get_async_httpx_client().aclose()


def test_an_undescribed_field_is_caught(imports: Path, api_document: dict[str, Any]) -> None:
    generate(api_document, imports, "jit_broker_api_client")
    models = importlib.import_module("jit_broker_api_client.models")
    lease = {
        "id": "l1",
        "task_id": "t1",
        "owner": "w",
        "state": "active",
        "issuer": "jwt",
        "resource": "r",
        "actions": ["read"],
        "issued_at": "2026-01-01T00:00:00Z",
        "not_after": "2026-01-01T01:00:00Z",
    }
    assert undescribed(models.LeaseView.from_dict(lease)) == []
    task = {
        "task_id": "t1",
        "state": "open",
        "created_at": "2026-01-01T00:00:00Z",
        "completed_at": None,
        "deadline": None,
        "leases": [{**lease, "secret": "x"}],
    }
    assert undescribed(models.TaskOut.from_dict(task)) == [".leases[0]: ['secret']"]
