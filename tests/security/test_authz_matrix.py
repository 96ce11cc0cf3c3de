"""The authorization matrix: every route of the app, crossed with every kind of caller → the answer.

The route list comes from the app itself (``app.routes``), so a route added without a row here
fails :func:`test_every_route_of_the_app_has_a_row_in_the_matrix`, naming the route.

Every cell is one request, against fresh objects of the owner ``w-owner`` (a lease in a task
and a pending approval request), whose ids fill the path parameters. Beyond the status, every
cell checks:

- a refusal (4xx), or a 2xx marked ``SAME`` (a silent refusal), changed nothing in Redis (the
  audit trail aside);
- the owner's lease, task and approval request are exactly as they were, except the parts the
  cell names as ``touched`` — and those did change (so a revocation that silently does nothing
  fails too);
- no answer carries the owner's credential, and no 2xx answer to someone else names the
  owner's lease or approval request unless the cell says it may (``SEEN``);
- every 401 says how to authenticate (``WWW-Authenticate``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from litestar import Litestar, get
from litestar.params import FromPath

from broker.api import create_app
from broker.config import IdentityIssuerSettings, IssuerInstanceSettings, Settings
from broker.identity import DevIdentityIssuer, TokenVerifier
from broker.service import build_broker
from broker.testing import FakeClock
from issuers.jwt.keys import generate_key
from tests.auditkeys import audit_settings
from tests.conftest import REDIS_URL
from tests.fakes.slack_api import interaction_body, sign_request
from tests.security.conftest import (
    APPROVER,
    APPROVER_SLACK,
    BASE,
    CLIENT_SECRET,
    DEV_ADMIN_KEY,
    DEV_APPROVER_KEY,
    INTROSPECTOR,
    METRICS_TOKEN,
    OTHER,
    OWNER,
    SLACK_SIGNING_SECRET,
    Owned,
    World,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

# -- the callers -------------------------------------------------------------------------------

#: Every kind of caller, in the order the matrix lists them.
CALLERS = (
    "anonymous",  # no credentials at all
    "garbage",  # Authorization: Bearer <not a token>
    "expired",  # the owner's identity token, expired
    "owner",  # w-owner, who owns the objects in the path
    "other",  # w-other: trusted by the same policy, owns nothing here
    "introspector",  # rs-orders: a workload whose policy grants `introspect`
    "client_introspect",  # configured OAuth clients (client_secret_basic), by permission
    "client_revoke",
    "client_report",
    "client_none",
    "approver",  # alice: a configured person, by her human identity token
    "dev_approver",  # the jit dev approver key
    "dev_admin",  # the jit dev admin key
    "scraper",  # the metrics token
    "slack",  # a request signed with the Slack signing secret
)

WORKLOAD_SUBJECTS = {"owner": OWNER, "other": OTHER, "introspector": INTROSPECTOR}
CLIENT_IDS = {
    "client_introspect": "rs-introspect",
    "client_revoke": "rs-revoke",
    "client_report": "rs-report",
    "client_none": "rs-none",
}


def caller_token(world: World, caller: str) -> str | None:
    """The bearer token the caller presents (None: it presents none)."""
    if caller in WORKLOAD_SUBJECTS:
        return world.token(WORKLOAD_SUBJECTS[caller])
    return {
        "garbage": "garbage",
        "expired": world.expired_token,
        "approver": world.token(APPROVER),
        "dev_approver": DEV_APPROVER_KEY,
        "dev_admin": DEV_ADMIN_KEY,
        "scraper": METRICS_TOKEN,
    }.get(caller) or None


def caller_headers(world: World, caller: str, body: bytes) -> dict[str, str]:
    if caller in CLIENT_IDS:
        basic = base64.b64encode(f"{CLIENT_IDS[caller]}:{CLIENT_SECRET}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    if caller == "slack":
        return sign_request(body, SLACK_SIGNING_SECRET, int(world.clock.now().timestamp()))
    token = caller_token(world, caller)
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- the cells ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    status: int
    touches: frozenset[str] = frozenset()  # parts of the owner's objects it must change
    same: bool = False  # a 2xx that must change nothing (a silent refusal)
    sees: bool = False  # a 2xx that may name the owner's lease or approval request


def T(status: int, *parts: str, sees: bool = False) -> Cell:
    """A call that must change these parts of the owner's objects (lease, task, approval)."""
    return Cell(status, touches=frozenset(parts), sees=sees)


def SAME(status: int = 200) -> Cell:
    """A 2xx that must change nothing: a refusal that does not say so (RFC 7009)."""
    return Cell(status, same=True)


def SEEN(status: int = 200) -> Cell:
    """A 2xx that may name the owner's lease or approval request (it is the caller's job)."""
    return Cell(status, sees=True)


Row = Mapping[str, Cell | int]

EVERYONE = dict.fromkeys(CALLERS, 200)
#: Callers that present no workload identity token a /v1 route could verify.
NO_WORKLOAD = dict.fromkeys(
    (
        "anonymous",
        "garbage",
        "expired",
        "client_introspect",
        "client_revoke",
        "client_report",
        "client_none",
        "dev_approver",
        "dev_admin",
        "scraper",
        "slack",
    ),
    401,
)
#: Workloads that do not own the objects (alice's human token is a valid workload token too).
NOT_OWNER = ("other", "introspector", "approver")


def workload_route(owner: Cell | int, not_owner: Cell | int, **over: Cell | int) -> Row:
    return {**NO_WORKLOAD, "owner": owner, **dict.fromkeys(NOT_OWNER, not_owner), **over}


def only(caller: str, cell: Cell | int, *, rest: int = 401, **over: Cell | int) -> Row:
    return {**dict.fromkeys(CALLERS, rest), caller: cell, **over}


def approval_decision() -> Row:
    return workload_route(
        403,
        403,
        approver=T(200, "approval", sees=True),
        dev_approver=T(200, "approval", sees=True),
    )


def oauth_caller(**over: Cell | int) -> Row:
    """/oauth/introspect and /oauth/revoke: a workload bearer token or client credentials."""
    base: dict[str, Cell | int] = {
        **dict.fromkeys(
            ("anonymous", "garbage", "expired", "dev_approver", "dev_admin", "scraper", "slack"),
            401,
        )
    }
    base.update(over)
    return base


MATRIX: dict[str, Row] = {
    # -- /v1: the caller's own credentials, leases and tasks
    "POST /v1/credentials": workload_route(201, 403, other=201),
    "GET /v1/leases": workload_route(200, 200),
    "GET /v1/leases/{lease_id}": workload_route(200, 404),
    "DELETE /v1/leases/{lease_id}": workload_route(T(200, "lease"), 404),
    "POST /v1/leases/revoke-all": workload_route(T(200, "lease"), 200),
    "GET /v1/tasks/{task_id}": workload_route(200, 404),
    "POST /v1/tasks/{task_id}/complete": workload_route(T(200, "lease", "task"), 404),
    "GET /v1/issuers/{issuer}/{document}": EVERYONE,
    # the caller's own access only (a deny is an answer too); nothing changes
    "POST /v1/explain": workload_route(200, 200),
    "POST /v1/usage": {
        **NO_WORKLOAD,
        "owner": 403,
        "other": 403,
        "introspector": SEEN(),  # it presents the credential
        "client_introspect": SEEN(),
        "client_revoke": 403,
        "client_report": SEEN(),
        "client_none": 403,
        "approver": 403,
    },
    # -- approvals
    "GET /v1/approvals": workload_route(
        200, 200, approver=SEEN(), dev_approver=SEEN(), introspector=200
    ),
    "GET /v1/approvals/{approval_id}": workload_route(
        200, 404, approver=SEEN(), dev_approver=SEEN()
    ),
    "POST /v1/approvals/{approval_id}/cancel": workload_route(
        T(200, "approval"), 404, dev_approver=403
    ),
    "POST /v1/approvals/{approval_id}/approve": approval_decision(),
    "POST /v1/approvals/{approval_id}/deny": approval_decision(),
    "POST /slack/interactions": only("slack", T(200, "approval")),
    # -- OAuth
    "POST /oauth/token": {
        **dict.fromkeys(CALLERS, 400),  # no subject token, or one that does not verify
        "owner": 200,
        "other": 200,
    },
    "POST /oauth/introspect": oauth_caller(
        owner=403,
        other=403,
        introspector=SEEN(),
        client_introspect=SEEN(),
        client_revoke=403,
        client_report=403,
        client_none=403,
        approver=403,
    ),
    "POST /oauth/revoke": oauth_caller(
        owner=T(200, "lease"),
        other=SAME(),
        introspector=SAME(),
        client_introspect=SAME(),
        client_revoke=T(200, "lease"),
        client_report=SAME(),
        client_none=SAME(),
        approver=SAME(),
    ),
    # -- public documents and operations
    "GET /.well-known/oauth-authorization-server": EVERYONE,
    "GET /.well-known/jwks.json": EVERYONE,
    "GET /.well-known/audit-jwks.json": EVERYONE,
    "GET /.well-known/ssf-configuration": EVERYONE,
    "GET /ssf/jwks.json": EVERYONE,
    "GET /healthz": EVERYONE,
    "GET /readyz": EVERYONE,
    "GET /metrics": only("scraper", 200),
    # -- jit dev only
    "POST /dev/token": only("dev_admin", 200),
    "GET /dev/oidc/.well-known/openid-configuration": EVERYONE,
    "GET /dev/oidc/jwks": EVERYONE,
    # -- the OpenAPI document and its viewers (litestar's)
    "GET /schema": EVERYONE,
    "GET /schema/openapi.json": EVERYONE,
    "GET /schema/openapi.yaml": EVERYONE,
    "GET /schema/openapi.yml": EVERYONE,
    "GET /schema/swagger": EVERYONE,
    "GET /schema/elements": EVERYONE,
    "GET /schema/redoc": EVERYONE,
    "GET /schema/rapidoc": EVERYONE,
    "GET /schema/oauth2-redirect.html": EVERYONE,
    "GET /schema/{path}": dict.fromkeys(CALLERS, 404),
}


# -- the route table -------------------------------------------------------------------------

_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def app_routes(app: Litestar) -> list[str]:
    """``"METHOD /path/{param}"`` for every route handler of the app (litestar's automatic
    OPTIONS handlers aside)."""
    out: set[str] = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if handler.handler_name == "options_handler":
                continue
            path = _PARAM.sub(r"{\1}", route.path)
            out.update(f"{m} {path}" for m in handler.http_methods if m not in ("HEAD",))
    return sorted(out)


def missing_rows(app: Litestar, matrix: Mapping[str, Row] = MATRIX) -> list[str]:
    return [r for r in app_routes(app) if r not in matrix]


async def test_every_route_of_the_app_has_a_row_in_the_matrix(world: World) -> None:
    app = create_app(world.broker, manage_lifecycle=False)
    lacking = missing_rows(app)
    assert not lacking, (
        f"these routes lack rows in the authorization matrix ({__file__}): {lacking}; add one "
        "saying what every kind of caller gets"
    )
    stale = sorted(set(MATRIX) - set(app_routes(app)))
    assert not stale, f"matrix rows for routes the app does not have: {stale}"
    incomplete = {r: sorted(set(CALLERS) - set(row)) for r, row in MATRIX.items()}
    assert not {r: c for r, c in incomplete.items() if c}, "rows missing callers"


async def test_a_new_route_without_a_row_is_reported_by_name(world: World) -> None:
    @get("/v1/brand-new/{thing:str}", sync_to_thread=False)
    def brand_new(thing: FromPath[str]) -> str:
        return thing

    app = create_app(world.broker, manage_lifecycle=False)
    app.register(brand_new)
    assert missing_rows(app) == ["GET /v1/brand-new/{thing}"]


# -- the requests ------------------------------------------------------------------------------


def form(**fields: str) -> dict[str, Any]:
    return {"data": fields}


def request_for(route: str, world: World, caller: str, owned: Owned) -> dict[str, Any]:
    """The body of a request to ``route`` that the right caller would make. Path parameters
    name the owner's objects."""
    token = caller_token(world, caller) or ""
    if route == "POST /v1/credentials":
        return {
            "json": {
                "task": {"id": owned.task_id},
                "issuer": "jwt",
                "resource": "https://demo.local",
                "actions": ["read"],
            }
        }
    if route == "POST /v1/usage":
        return {"json": {"token": owned.secret, "resource": "https://demo.local"}}
    if route == "POST /v1/explain":
        return {"json": {"issuer": "jwt", "resource": "https://demo.local", "actions": ["read"]}}
    if route.endswith("/approve"):
        return {"json": {}}
    if route.endswith("/deny"):
        return {"json": {"reason": "not now"}}
    if route == "POST /slack/interactions":
        body = interaction_body(owned.approval_id, "approve", APPROVER_SLACK)
        return {"content": body, "content_type": "application/x-www-form-urlencoded"}
    if route == "POST /oauth/token":
        fields = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": JWT_TYPE,
            "resource": "https://demo.local",
            "scope": "read",
            "task_id": owned.task_id,
        }
        if caller not in CLIENT_IDS and caller != "slack" and token:
            fields["subject_token"] = token
        return form(**fields)
    if route in ("POST /oauth/introspect", "POST /oauth/revoke"):
        return form(token=owned.secret)
    if route == "POST /dev/token":
        return {"json": {"sub": "w-new"}}
    return {}


def path_of(route: str, owned: Owned) -> tuple[str, str]:
    method, template = route.split(" ", 1)
    values = {
        "lease_id": owned.lease_id,
        "task_id": owned.task_id,
        "approval_id": owned.approval_id,
        "issuer": "mtls",
        "document": "ca.pem",
        "path": "nope",
    }
    return method, template.format(**values)


async def send(world: World, route: str, caller: str, owned: Owned) -> httpx.Response:
    method, path = path_of(route, owned)
    spec = request_for(route, world, caller, owned)
    kwargs: dict[str, Any] = {}
    if "json" in spec:
        kwargs["json"] = spec["json"]
    if "data" in spec:
        kwargs["data"] = spec["data"]
    raw = b""
    headers: dict[str, str] = {}
    if "content" in spec:
        raw = spec["content"]
        kwargs["content"] = raw
        headers["Content-Type"] = spec["content_type"]
    headers.update(caller_headers(world, caller, raw))
    return await world.client.request(method, path, headers=headers, **kwargs)


async def owner_state(world: World, owned: Owned) -> dict[str, str]:
    m, a = world.broker.manager, world.broker.approvals
    lease = await m.get(owned.lease_id)
    task = await m.get_task(f"dev:{OWNER}", owned.task_id)
    approval = await a.get(owned.approval_id)
    return {
        "lease": lease.state.value,
        "task": task.state,
        "approval": f"{approval.state.value}/{len(approval.reviews)}",
    }


def _cell(value: Cell | int) -> Cell:
    return value if isinstance(value, Cell) else Cell(value)


class Owner:
    """The owner's objects for the next cell, and Redis as it was: fresh objects only after
    a cell that may have changed something (most cells are refusals that change nothing)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.owned: Owned | None = None
        self.before: dict[bytes, bytes | None] = {}
        self.state: dict[str, str] = {}

    async def objects(self) -> Owned:
        if self.owned is None:
            self.owned = await self.world.owner_objects()
            self.before = await self.world.snapshot()
            self.state = await owner_state(self.world, self.owned)
        return self.owned


async def check_cell(owner: Owner, route: str, caller: str, cell: Cell) -> list[str]:
    world = owner.world
    owned = await owner.objects()
    before, state = owner.before, owner.state
    r = await send(world, route, caller, owned)
    await world.broker.approvals.idle()
    problems: list[str] = []
    if r.status_code != cell.status:
        problems.append(f"status {r.status_code}, expected {cell.status}: {r.text[:200]}")
    after = await world.snapshot()
    if r.status_code >= 400 or cell.same:
        changed = sorted(
            k.decode() for k in set(before) | set(after) if before.get(k) != after.get(k)
        )
        if changed:
            problems.append(f"a refused request changed Redis: {changed}")
    now = await owner_state(world, owned)
    for part in ("lease", "task", "approval"):
        if part in cell.touches and now[part] == state[part]:
            problems.append(f"the owner's {part} should have changed and did not ({now[part]})")
        if part not in cell.touches and now[part] != state[part]:
            problems.append(f"the owner's {part} changed: {state[part]} -> {now[part]}")
    if owned.secret in r.text:
        problems.append("the answer carries the owner's credential")
    if caller != "owner" and r.is_success and not cell.sees:
        for name, value in (("lease", owned.lease_id), ("approval", owned.approval_id)):
            if value in r.text:
                problems.append(f"the answer names the owner's {name}")
    if r.status_code == 401 and "www-authenticate" not in r.headers:
        problems.append("a 401 without WWW-Authenticate")
    if after == before and now == state:
        owner.before = after  # nothing changed: the next cell may use the same objects
    else:
        owner.owned = None
    return problems


@pytest.mark.parametrize("route", sorted(MATRIX))
async def test_every_caller_gets_the_expected_answer_from(world: World, route: str) -> None:
    failures = {}
    owner = Owner(world)
    for caller in CALLERS:
        problems = await check_cell(owner, route, caller, _cell(MATRIX[route][caller]))
        if problems:
            failures[caller] = problems
    assert not failures, "\n".join(
        f"{route} as {caller}: {'; '.join(p)}" for caller, p in failures.items()
    )


# -- the owner check on revoke, from more angles ----------------------------------------------


async def lease_state(world: World, lease_id: str) -> str:
    return (await world.broker.manager.get(lease_id)).state.value


async def test_another_workload_using_the_owners_task_id_completes_only_its_own_task(
    world: World,
) -> None:
    owned = await world.owner_objects()
    body = {
        "task": {"id": owned.task_id},
        "issuer": "jwt",
        "resource": "https://demo.local",
        "actions": ["read"],
    }
    theirs = await world.client.post("/v1/credentials", json=body, headers=world.bearer(OTHER))
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["lease_id"] != owned.lease_id
    r = await world.client.post(f"/v1/tasks/{owned.task_id}/complete", headers=world.bearer(OTHER))
    assert r.status_code == 200, r.text
    assert [le["id"] for le in r.json()["leases"]] == [theirs.json()["lease_id"]]
    assert await lease_state(world, theirs.json()["lease_id"]) == "revoked"
    assert await lease_state(world, owned.lease_id) == "active"
    mine = await world.client.get(f"/v1/tasks/{owned.task_id}", headers=world.bearer(OWNER))
    assert mine.json()["state"] == "open"


async def test_revoke_all_revokes_the_callers_leases_and_nobody_elses(world: World) -> None:
    owned = await world.owner_objects()
    theirs = await world.client.post(
        "/v1/credentials",
        json={"issuer": "jwt", "resource": "https://demo.local", "actions": ["read"]},
        headers=world.bearer(OTHER),
    )
    assert theirs.status_code == 201
    r = await world.client.post("/v1/leases/revoke-all", headers=world.bearer(OTHER))
    assert r.status_code == 200
    assert r.json()["revoked"] >= 1
    assert await lease_state(world, theirs.json()["lease_id"]) == "revoked"
    assert await lease_state(world, owned.lease_id) == "active"


class LabIdentity(DevIdentityIssuer):
    """A second identity issuer: the same subjects, a different issuer."""

    name = "lab"


@pytest.fixture
async def lab_world(world: World) -> AsyncIterator[tuple[World, LabIdentity]]:
    """The world's broker, with a second trusted identity issuer that can name ``w-owner``."""
    lab = LabIdentity(f"{BASE}/lab", world.clock)
    verifier = TokenVerifier(
        [world.dev.settings(), lab.settings()],
        world.clock,
        static_keys={"dev": world.dev.keyset(), "lab": lab.keyset()},
    )
    original = world.broker.callers.verifier
    world.broker.callers.verifier = verifier  # who verifies a caller's token
    try:
        yield world, lab
    finally:
        world.broker.callers.verifier = original
        await verifier.aclose()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("DELETE", "/v1/leases/{lease_id}", 404),
        ("GET", "/v1/leases/{lease_id}", 404),
        ("POST", "/v1/tasks/{task_id}/complete", 404),
        ("POST", "/v1/leases/revoke-all", 200),
        ("POST", "/oauth/revoke", 200),
    ],
)
async def test_the_same_subject_from_another_identity_issuer_owns_nothing(
    lab_world: tuple[World, LabIdentity], method: str, path: str, status: int
) -> None:
    world, lab = lab_world
    owned = await world.owner_objects()
    headers = {"Authorization": f"Bearer {lab.issue(OWNER, {})}"}
    url = path.format(lease_id=owned.lease_id, task_id=owned.task_id)
    data = {"token": owned.secret} if path == "/oauth/revoke" else None
    r = await world.client.request(method, url, headers=headers, data=data)
    assert r.status_code == status, r.text
    if path == "/v1/leases/revoke-all":
        assert r.json() == {"revoked": 0}
    assert await lease_state(world, owned.lease_id) == "active"


async def test_a_refused_token_revocation_is_audited_and_looks_like_an_unknown_token(
    world: World,
) -> None:
    owned = await world.owner_objects()
    refused = await world.client.post(
        "/oauth/revoke", data={"token": owned.secret}, headers=world.bearer(OTHER)
    )
    unknown = await world.client.post(
        "/oauth/revoke", data={"token": "not-a-token"}, headers=world.bearer(OTHER)
    )
    assert (refused.status_code, refused.json()) == (unknown.status_code, unknown.json())
    assert refused.status_code == 200
    assert await lease_state(world, owned.lease_id) == "active"
    [event] = [
        e
        for e in world.audit.events
        if e.type == "lease.revoke_refused" and e.lease_id == owned.lease_id
    ]
    assert event.detail == {"caller": f"dev:{OTHER}"}


@pytest.mark.parametrize(
    ("client_id", "secret", "status", "state"),
    [
        pytest.param("rs-revoke", CLIENT_SECRET, 200, "revoked", id="the revoke permission"),
        pytest.param("rs-introspect", CLIENT_SECRET, 200, "active", id="another permission"),
        pytest.param("rs-revoke", "wrong-" + CLIENT_SECRET, 401, "active", id="a wrong secret"),
        pytest.param("nobody", CLIENT_SECRET, 401, "active", id="an unknown client"),
    ],
)
async def test_a_client_revokes_with_client_secret_post_only_with_the_revoke_permission(
    world: World, client_id: str, secret: str, status: int, state: str
) -> None:
    owned = await world.owner_objects()
    r = await world.client.post(
        "/oauth/revoke",
        data={"token": owned.secret, "client_id": client_id, "client_secret": secret},
    )
    assert r.status_code == status, r.text
    assert await lease_state(world, owned.lease_id) == state


async def test_revoking_twice_is_idempotent_for_the_owner(world: World) -> None:
    owned = await world.owner_objects()
    url = f"/v1/leases/{owned.lease_id}"
    first = await world.client.delete(url, headers=world.bearer(OWNER))
    second = await world.client.delete(url, headers=world.bearer(OWNER))
    assert first.status_code == second.status_code == 200
    assert first.json()["state"] == second.json()["state"] == "revoked"
    revoked = [
        e for e in world.audit.events if e.type == "lease.revoked" and e.lease_id == owned.lease_id
    ]
    assert len(revoked) == 1


# -- the Bearer scheme -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(world: World, scheme: str) -> None:
    owned = await world.owner_objects()
    workload = {"Authorization": f"{scheme} {world.token(OWNER)}"}
    r = await world.client.get(f"/v1/leases/{owned.lease_id}", headers=workload)
    assert r.status_code == 200, r.text
    introspector = {"Authorization": f"{scheme} {world.token(INTROSPECTOR)}"}
    r = await world.client.post(
        "/oauth/introspect", data={"token": owned.secret}, headers=introspector
    )
    assert r.status_code == 200, r.text
    assert r.json()["active"] is True
    r = await world.client.get(
        "/v1/approvals", headers={"Authorization": f"{scheme} {DEV_APPROVER_KEY}"}
    )
    assert r.status_code == 200, r.text
    r = await world.client.get("/metrics", headers={"Authorization": f"{scheme} {METRICS_TOKEN}"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Token {token}", id="another scheme"),
        pytest.param("Bearer{token}", id="no space after the scheme"),
        pytest.param("Bearer ", id="no token"),
        pytest.param("{token}", id="no scheme"),
    ],
)
async def test_anything_but_the_bearer_scheme_is_a_401(world: World, header: str) -> None:
    r = await world.client.get(
        "/v1/leases", headers={"Authorization": header.format(token=world.token(OWNER))}
    )
    assert r.status_code == 401
    assert "missing bearer token" in r.json()["detail"]


# -- /metrics ----------------------------------------------------------------------------------


async def test_metrics_need_their_token_and_nothing_else_opens_them(world: World) -> None:
    ok = await world.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert ok.status_code == 200
    assert "jit_" in ok.text
    for headers in (
        {},
        {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
        world.bearer(OWNER),
        {"Authorization": f"Bearer {DEV_ADMIN_KEY}"},
    ):
        r = await world.client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert "jit_" not in r.text


async def test_metrics_are_off_under_jit_serve_without_a_token(
    real_redis: aioredis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    clock = FakeClock()
    generate_key(keys, "EdDSA", clock.now())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "corp.yaml").write_text(
        "owner: corp\nworkloads: [{issuer: corp}]\npermissions: [introspect]\n"
    )
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        policy_dir=str(policies),
        identity=[
            IdentityIssuerSettings(
                name="corp",
                issuer="https://idp.corp.example",
                audiences=["jit-broker"],
                jwks_uri="https://idp.corp.example/jwks",
            )
        ],
        audit=audit_settings(tmp_path / "audit"),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(keys)})},
    )
    broker = await build_broker(
        settings, clock=clock, redis=aioredis.Redis.from_url(REDIS_URL), audit_sinks=[]
    )
    try:
        app = create_app(broker, manage_lifecycle=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE
        ) as client:
            for headers in ({}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
                r = await client.get("/metrics", headers=headers)
                assert r.status_code == 404
                assert "metrics are off" in r.json()["detail"]
    finally:
        await broker.aclose()
