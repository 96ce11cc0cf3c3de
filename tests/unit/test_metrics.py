"""broker.metrics: counters and histograms fed by the audit events the real broker emits, HTTP
request metrics, gauges read at scrape time, bounded labels, and the exposition itself.

The realistic mix runs the real broker (real Redis, the JWT issuer, the dev identity issuer,
approvals, the reaper) through its HTTP API with a FakeClock; the failure paths run the real
lease manager against a FakeIssuer that refuses revocations."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from broker.api import create_app
from broker.audit import AuditEvent, AuditLog, MemorySink
from broker.config import ApprovalSettings, IssuerInstanceSettings, PersonSettings, Settings
from broker.errors import IssuerUnavailable
from broker.identity import DevIdentityIssuer
from broker.metrics import (
    OTHER,
    REAPER_LAG_BUCKETS,
    UNMATCHED,
    LabelGuard,
    Metrics,
    MetricsSink,
)
from broker.service import Broker, build_broker
from broker.testing import FakeClock
from issuers.jwt.keys import generate_key
from tests.auditkeys import audit_settings
from tests.conftest import REDIS_URL
from tests.leasekit import make_kit

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://broker.test"
T0 = datetime(2030, 1, 1, tzinfo=UTC)

POLICY = """
owner: platform
workloads:
  - issuer: dev
    claims:
      sub: {glob: "ci-*"}
grants:
  - name: read
    issuer: jwt
    resource: https://api.local
    actions: [read]
    max_ttl: 1h
    default_ttl: 10m
    approval: none
  - name: deploy
    issuer: jwt
    resource: https://prod.local
    actions: [deploy]
    max_ttl: 1h
    default_ttl: 10m
    approval:
      approvers: [alice, bob]
      expires_after: 10m
"""


def value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def event(type_: str, *, at: datetime = T0, **fields: Any) -> AuditEvent:
    return AuditEvent(type=type_, time=at, **fields)


def returns(v: Any) -> Callable[[], Awaitable[Any]]:
    async def source() -> Any:
        return v

    return source


def families(body: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


# -- the real broker, driven through HTTP ---------------------------------------------------


@dataclass
class Env:
    client: httpx.AsyncClient
    broker: Broker
    dev: DevIdentityIssuer
    clock: FakeClock
    audit: MemorySink
    metrics: Metrics

    def workload(self, sub: str = "ci-1") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dev.issue(sub, {})}"}

    def human(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dev.issue(name, {})}"}

    async def ask(self, task: str, resource: str, actions: list[str], ttl: str = "10m") -> Any:
        body = {"task": {"id": task}, "issuer": "jwt", "resource": resource, "actions": actions}
        body["ttl"] = ttl
        return await self.client.post("/v1/credentials", json=body, headers=self.workload())


def with_http_metrics(app: Any, metrics: Metrics, clock: FakeClock) -> Any:
    """What the API middleware does (the lead wires it into create_app): the route template
    (litestar puts it in the ASGI scope), the status, the time taken."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status = 500
        start = clock.monotonic()

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            route = scope.get("path_template") or UNMATCHED
            metrics.observe_request(route, status, clock.monotonic() - start)

    return wrapped


@pytest.fixture
async def env(
    real_redis: aioredis.Redis, key_prefix: str, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Env]:
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(keys, "EdDSA", clock.now())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "platform.yaml").write_text(POLICY)
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        audit=audit_settings(tmp_path / "audit"),
        policy_dir=str(policies),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(keys)})},
        approvals=ApprovalSettings(
            people={
                "alice": PersonSettings(identities=["dev:alice"]),
                "bob": PersonSettings(identities=["dev:bob"]),
            },
        ),
    )
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    sink = MemorySink()
    metrics = Metrics(issuers=["jwt"])
    broker = await build_broker(
        settings,
        clock=clock,
        redis=aioredis.Redis.from_url(REDIS_URL),
        dev_identity=dev,
        audit_sinks=[sink, MetricsSink(metrics)],
    )
    store = broker.manager.store
    metrics.set_gauge_sources(
        leases_active=store.live_count,
        overdue=lambda: broker.redis.scard(store.keys.overdue),
    )
    app = with_http_metrics(create_app(broker, manage_lifecycle=False), metrics, clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield Env(c, broker, dev, clock, sink, metrics)
    await broker.aclose()


async def drive_a_day(env: Env) -> None:
    """Allowed, denied and approval requests; explicit, task and TTL revocations; approvals
    approved, denied and expired; a bad token; a 404 on an unknown path."""
    r = await env.ask("build-1", "https://api.local", ["read"])
    assert r.status_code == 201, r.text
    explicit = r.json()["lease_id"]
    r = await env.ask("build-2", "https://api.local", ["read"])
    assert r.status_code == 201, r.text
    r = await env.ask("build-3", "https://api.local", ["read"], ttl="60s")
    assert r.status_code == 201, r.text
    r = await env.ask("build-1", "https://api.local", ["write"])  # no grant
    assert r.status_code == 403
    r = await env.ask("build-1", "https://api.local", ["read"])
    assert r.status_code == 201
    # An issuer name that is an attacker's choice: denied, and it must not become a label.
    body = {
        "task": {"id": "t"},
        "issuer": "evil-1f2e3d4c5b6a7988",
        "resource": "x",
        "actions": ["a"],
    }
    r = await env.client.post("/v1/credentials", json=body, headers=env.workload())
    assert r.status_code in (400, 403)
    r = await env.client.post(
        "/v1/credentials",
        json={"task": {"id": "t"}, "issuer": "jwt", "resource": "x", "actions": ["a"]},
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert r.status_code == 401
    assert (await env.client.get("/v1/leases/" + "ab" * 24)).status_code == 401
    assert (await env.client.get("/no/such/path/12345678")).status_code == 404

    r = await env.client.delete(f"/v1/leases/{explicit}", headers=env.workload())
    assert r.status_code == 200, r.text
    r = await env.client.post("/v1/tasks/build-2/complete", headers=env.workload())
    assert r.status_code == 200, r.text

    approved = (await env.ask("deploy-1", "https://prod.local", ["deploy"])).json()["approval_id"]
    denied = (await env.ask("deploy-2", "https://prod.local", ["deploy"])).json()["approval_id"]
    r = await env.ask("deploy-3", "https://prod.local", ["deploy"])  # left to expire
    assert r.status_code == 202, r.text
    env.clock.advance(timedelta(minutes=3))
    r = await env.client.post(
        f"/v1/approvals/{approved}/approve", json={}, headers=env.human("alice")
    )
    assert r.json()["state"] == "approved", r.text
    env.clock.advance(timedelta(minutes=1))
    r = await env.client.post(
        f"/v1/approvals/{denied}/deny", json={"reason": "freeze"}, headers=env.human("bob")
    )
    assert r.json()["state"] == "denied", r.text
    env.clock.advance(timedelta(minutes=7))  # build-3 (60 s) is past not_after; deploy-3 expired
    assert await env.broker.approvals.sweep() >= 1
    assert await env.broker.reaper.run_once() >= 1


@pytest.mark.integration
async def test_the_real_broker_s_events_are_counted_by_outcome_issuer_and_trigger(
    env: Env,
) -> None:
    await drive_a_day(env)
    m = env.metrics
    assert value(m, "jit_decisions_total", outcome="ok") == 4
    assert value(m, "jit_decisions_total", outcome="deny") >= 1
    assert value(m, "jit_decisions_total", outcome="approval_required") == 3
    assert value(m, "jit_credentials_issued_total", issuer="jwt") == 4
    assert value(m, "jit_revocations_total", issuer="jwt", trigger="explicit") == 1
    assert value(m, "jit_revocations_total", issuer="jwt", trigger="task_completed") == 1
    assert value(m, "jit_revocations_total", issuer="jwt", trigger="ttl") >= 1
    assert value(m, "jit_approvals_opened_total") == 3
    for outcome in ("approved", "denied", "expired"):
        assert value(m, "jit_approvals_total", outcome=outcome) == 1, outcome
    assert value(m, "jit_approvals_total", outcome="cancelled") == 0
    assert value(m, "jit_auth_failures_total", kind="token") == 2
    # Every audit event was seen once, by type.
    seen: dict[str, int] = {}
    for e in env.audit.events:
        seen[e.type] = seen.get(e.type, 0) + 1
    for type_, n in seen.items():
        assert value(m, "jit_audit_events_total", type=type_) == n, type_


@pytest.mark.integration
async def test_reaper_lag_and_approval_wait_are_measured_on_the_injected_clock(
    env: Env,
) -> None:
    await drive_a_day(env)
    m = env.metrics
    ttl = [
        e for e in env.audit.events if e.type == "lease.revoked" and e.detail["trigger"] == "ttl"
    ]
    lags = [int(e.detail["lag_ms"]) / 1000 for e in ttl]  # type: ignore[arg-type]
    assert len(lags) == 2  # build-3 (60 s) and the second build-1 lease (10 m)
    assert value(m, "jit_reaper_lag_seconds_count", issuer="jwt") == 2
    assert value(m, "jit_reaper_lag_seconds_sum", issuer="jwt") == pytest.approx(sum(lags))
    # Approved 3 minutes after it was opened, denied after 4, expired after 10.
    assert value(m, "jit_approval_wait_seconds_sum", outcome="approved") == 180
    assert value(m, "jit_approval_wait_seconds_sum", outcome="denied") == 240
    assert value(m, "jit_approval_wait_seconds_count", outcome="expired") == 1
    assert value(m, "jit_approval_wait_seconds_sum", outcome="expired") >= 600


@pytest.mark.integration
async def test_no_label_value_is_an_id_a_principal_or_a_person_after_a_realistic_mix(
    env: Env,
) -> None:
    await drive_a_day(env)
    body, _ = await env.metrics.render()
    labels: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for sample in fam.samples:
            for k, v in sample.labels.items():
                labels.setdefault(k, set()).add(v)
    assert labels == env.metrics.label_values()

    # Everything that identifies someone or something, from the audit trail itself.
    ids: set[str] = {"alice", "bob", "ci-1", "evil-1f2e3d4c5b6a7988", "12345678", "ab" * 24}
    for e in env.audit.events:
        ids.update(x for x in (e.principal, e.lease_id, e.task_id, e.request_id) if x)
        for key in ("approval_id", "by", "approvers", "resource", "client_id", "grant"):
            found = e.detail.get(key)
            ids.update(
                [found] if isinstance(found, str) else found if isinstance(found, list) else []
            )
    assert any("." in i and len(i) == 25 for i in ids)  # lease ids are in there
    every = {v for vs in labels.values() for v in vs}
    for v in every:
        assert v not in ids
        assert not any(i in v for i in ids if len(i) >= 4), v
        assert not re.search(r"[0-9a-f]{12,}|@|dev:|https?://", v), v

    # And each label comes from its bounded set.
    assert labels["issuer"] <= {"jwt", OTHER}
    assert labels["trigger"] <= {"explicit", "task_completed", "ttl", "workload", "mint_failed"}
    assert labels["outcome"] <= {
        "ok", "deny", "approval_required", "approved", "denied", "expired", "cancelled",
    }  # fmt: skip
    assert labels["status"] <= {"2xx", "3xx", "4xx", "5xx"}
    assert labels["kind"] == {"token", "client", "slack"}
    assert labels["route"] >= {"/v1/credentials", "/v1/leases/{lease_id}", UNMATCHED}
    for route in labels["route"] - {UNMATCHED}:
        assert route.startswith("/")
        assert not re.search(r"\d{3,}|[0-9a-f]{12,}", re.sub(r"\{[^}]*\}", "", route)), route
    for t in labels["type"]:
        assert re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", t), t


@pytest.mark.integration
async def test_live_and_overdue_leases_are_read_from_redis_when_scraped(env: Env) -> None:
    for i in range(3):
        assert (await env.ask(f"job-{i}", "https://api.local", ["read"])).status_code == 201
    fams = families((await env.metrics.render())[0])
    assert fams["jit_leases_active"].samples[0].value == 3
    assert fams["jit_leases_overdue"].samples[0].value == 0
    assert (await env.client.post("/v1/tasks/job-0/complete", headers=env.workload())).is_success
    fams = families((await env.metrics.render())[0])
    assert fams["jit_leases_active"].samples[0].value == 2
    up = {s.labels["source"]: s.value for s in fams["jit_gauge_source_up"].samples}
    assert up == {"leases_active": 1, "overdue": 1}


# -- the failure paths of the real lease manager ---------------------------------------------


async def test_revocation_failures_and_overdue_leases_are_counted_by_issuer(
    fake_redis: aioredis.Redis, key_prefix: str, clock: FakeClock
) -> None:
    kit = make_kit(fake_redis, key_prefix, clock)
    metrics = Metrics(issuers=["fake"])
    kit.manager.audit.sinks.append(MetricsSink(metrics))
    lease, _ = await kit.issue(ttl=60)
    kit.issuer.fail_next_revoke(10)
    clock.advance(timedelta(seconds=61))
    for _ in range(4):  # overdue after 3 failed attempts (tests/leasekit.py)
        await kit.reaper.run_once()
        clock.advance(timedelta(minutes=2))
    assert value(metrics, "jit_revocation_failures_total", issuer="fake") == 4
    assert value(metrics, "jit_leases_marked_overdue_total", issuer="fake") == 1
    assert value(metrics, "jit_revocations_total", issuer="fake", trigger="ttl") == 0
    metrics.set_gauge_sources(overdue=lambda: fake_redis.scard(kit.store.keys.overdue))
    fams = families((await metrics.render())[0])
    assert fams["jit_leases_overdue"].samples[0].value == 1
    assert lease.id not in (await metrics.render())[0].decode()


async def test_a_failed_mint_is_counted_and_its_clean_up_is_not_a_revocation(
    fake_redis: aioredis.Redis, key_prefix: str, clock: FakeClock
) -> None:
    kit = make_kit(fake_redis, key_prefix, clock)
    metrics = Metrics(issuers=["fake"])
    kit.manager.audit.sinks.append(MetricsSink(metrics))
    kit.issuer.fail_next_mint()
    with pytest.raises(IssuerUnavailable):
        await kit.issue()
    assert value(metrics, "jit_credential_mint_failures_total", issuer="fake") == 1
    assert value(metrics, "jit_credentials_issued_total", issuer="fake") == 0
    assert value(metrics, "jit_audit_events_total", type="lease.mint_failed") == 1


# -- events, one by one --------------------------------------------------------------------


async def test_approval_wait_prefers_wait_ms_from_the_event_over_this_replica_s_memory() -> None:
    m = Metrics(issuers=[])
    sink = MetricsSink(m)
    await sink.write([event("approval.opened", detail={"approval_id": "a1"})])
    await sink.write(
        [
            event(
                "approval.approved",
                at=T0 + timedelta(seconds=30),
                detail={"approval_id": "a1", "wait_ms": 45_000},  # opened on another replica
            )
        ]
    )
    assert value(m, "jit_approval_wait_seconds_sum", outcome="approved") == 45


async def test_an_approval_opened_elsewhere_without_wait_ms_is_counted_but_not_timed() -> None:
    m = Metrics(issuers=[])
    await MetricsSink(m).write([event("approval.cancelled", detail={"approval_id": "zz"})])
    assert value(m, "jit_approvals_total", outcome="cancelled") == 1
    assert value(m, "jit_approval_wait_seconds_count", outcome="cancelled") == 0


async def test_the_memory_of_opened_approvals_is_bounded() -> None:
    m = Metrics(issuers=[], approval_memory=2)
    sink = MetricsSink(m)
    for aid in ("a", "b", "c"):
        await sink.write([event("approval.opened", detail={"approval_id": aid})])
    later = T0 + timedelta(seconds=10)
    for aid in ("a", "c"):
        await sink.write([event("approval.denied", at=later, detail={"approval_id": aid})])
    assert value(m, "jit_approval_wait_seconds_count", outcome="denied") == 1  # "a" forgotten


async def test_reaper_lag_buckets_span_ten_seconds_and_early_or_odd_lags_are_safe() -> None:
    assert REAPER_LAG_BUCKETS[-1] == 10.0
    assert 1.0 in REAPER_LAG_BUCKETS  # the p99 target is a bucket bound
    m = Metrics(issuers=["jwt"])
    sink = MetricsSink(m)
    for lag in (15, 900, -20, 12_000):
        detail = {"trigger": "ttl", "lag_ms": lag}
        await sink.write([event("lease.revoked", issuer="jwt", detail=detail)])
    for odd in ("15", True, None):  # not a number: counted as a revocation, not as a lag
        odd_detail: dict[str, Any] = {"trigger": "ttl", "lag_ms": odd}
        await sink.write([event("lease.revoked", issuer="jwt", detail=odd_detail)])
    assert value(m, "jit_revocations_total", issuer="jwt", trigger="ttl") == 7
    assert value(m, "jit_reaper_lag_seconds_count", issuer="jwt") == 4
    assert value(m, "jit_reaper_lag_seconds_bucket", issuer="jwt", le="0.025") == 2  # 15, -20→0
    assert value(m, "jit_reaper_lag_seconds_bucket", issuer="jwt", le="1.0") == 3
    assert value(m, "jit_reaper_lag_seconds_bucket", issuer="jwt", le="10.0") == 3
    assert value(m, "jit_reaper_lag_seconds_bucket", issuer="jwt", le="+Inf") == 4


async def test_an_explicit_revocation_has_no_lag_sample() -> None:
    m = Metrics(issuers=["jwt"])
    await MetricsSink(m).write(
        [event("lease.revoked", issuer="jwt", detail={"trigger": "explicit"})]
    )
    assert value(m, "jit_revocations_total", issuer="jwt", trigger="explicit") == 1
    assert value(m, "jit_reaper_lag_seconds_count", issuer="jwt") == 0


@pytest.mark.parametrize(
    ("detail", "kind"),
    [
        ({}, "token"),
        ({"client_id": "svc-billing"}, "client"),
        ({"via": "slack"}, "slack"),
    ],
)
async def test_auth_failures_are_counted_by_kind_never_by_who(
    detail: dict[str, Any], kind: str
) -> None:
    m = Metrics(issuers=[])
    await MetricsSink(m).write([event("auth.failed", outcome="deny", detail=detail)])
    assert value(m, "jit_auth_failures_total", kind=kind) == 1
    assert "svc-billing" not in (await m.render())[0].decode()


async def test_an_unconfigured_issuer_or_an_id_shaped_trigger_becomes_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics(issuers=["jwt"])
    sink = MetricsSink(m)
    with caplog.at_level(logging.WARNING, "jit.metrics"):
        await sink.write(
            [
                event("lease.minted", issuer="evil-0123456789abcdef"),
                event("lease.minted", issuer="evil-2"),
                event("lease.revoked", issuer="jwt", detail={"trigger": "x0123456789abcdef0"}),
            ]
        )
    assert value(m, "jit_credentials_issued_total", issuer=OTHER) == 2
    assert value(m, "jit_revocations_total", issuer="jwt", trigger=OTHER) == 1
    assert "evil" not in caplog.text  # the refused value itself is never logged either
    assert "0123456789abcdef" not in (await m.render())[0].decode()


async def test_a_decision_with_an_unknown_outcome_is_other_and_a_sink_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    m = Metrics(issuers=[])
    sink = MetricsSink(m)
    await sink.write([event("decision", outcome="maybe")])
    assert value(m, "jit_decisions_total", outcome=OTHER) == 1

    def boom(e: AuditEvent) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(m, "observe_event", boom)
    with caplog.at_level(logging.ERROR, "jit.metrics"):
        await sink.write([event("decision")])  # must not raise into the audit path
    assert "could not count a decision event" in caplog.text
    await sink.aclose()


async def test_the_sink_is_an_audit_sink_behind_audit_log_emit(clock: FakeClock) -> None:
    m = Metrics(issuers=["jwt"])
    audit = AuditLog(clock, [MetricsSink(m)])
    await audit.emit("lease.minted", issuer="jwt", lease_id="l", task_id="t", principal="p:q")
    assert value(m, "jit_credentials_issued_total", issuer="jwt") == 1
    await audit.aclose()


# -- HTTP ------------------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_and_status_class() -> None:
    m = Metrics(issuers=[])
    m.observe_request("/v1/leases/{lease_id}", 200, 0.004)
    m.observe_request("/v1/leases/{lease_id}", 204, 0.2)
    m.observe_request("/v1/leases/{lease_id}", 404, 0.01)
    m.observe_request("/oauth/token", 503, 3.0)
    m.observe_request(UNMATCHED, 404, 0.0)
    assert value(m, "jit_http_requests_total", route="/v1/leases/{lease_id}", status="2xx") == 2
    assert value(m, "jit_http_requests_total", route="/v1/leases/{lease_id}", status="4xx") == 1
    assert value(m, "jit_http_requests_total", route="/oauth/token", status="5xx") == 1
    assert value(m, "jit_http_requests_total", route=UNMATCHED, status="4xx") == 1
    lat = "jit_http_request_duration_seconds"
    assert value(m, f"{lat}_count", route="/v1/leases/{lease_id}") == 3
    assert value(m, f"{lat}_bucket", route="/v1/leases/{lease_id}", le="0.005") == 1
    assert value(m, f"{lat}_sum", route="/oauth/token") == 3.0


@pytest.mark.parametrize(
    "route",
    [
        "/v1/leases/0123456789abcdef.0123456789abcdef0123456789abcdef",  # a raw path with an id
        "/v1/tasks/build-1234567/complete",
        "/v1/approvals/5f1b2c3d-0a9e-4c1b-8d7e-0123456789ab",
        "v1/leases",  # not a path
        "/v1/leases?x=1",
        "/" + "a/" * 120,
    ],
)
def test_a_route_that_is_not_a_template_is_counted_as_other(route: str) -> None:
    m = Metrics(issuers=[])
    m.observe_request(route, 200, 0.1)
    assert value(m, "jit_http_requests_total", route=OTHER, status="2xx") == 1


def test_odd_statuses_and_durations_do_not_break_the_counters() -> None:
    m = Metrics(issuers=[])
    m.observe_request("/healthz", 999, -1.0)
    m.observe_request("/healthz", 200, float("nan"))
    assert value(m, "jit_http_requests_total", route="/healthz", status=OTHER) == 1
    assert value(m, "jit_http_request_duration_seconds_sum", route="/healthz") == 0


def test_the_route_label_is_capped() -> None:
    m = Metrics(issuers=[])
    for i in range(300):
        m.observe_request(f"/r/{chr(97 + i % 26)}{chr(97 + i // 26)}", 200, 0.0)
    assert len(m.label_values()["route"]) == 257  # 256 admitted, the rest "other"
    assert value(m, "jit_http_requests_total", route=OTHER, status="2xx") == 300 - 256


# -- label guards ----------------------------------------------------------------------------


def test_a_label_guard_admits_only_its_bounded_set() -> None:
    allowed = LabelGuard("issuer", allowed=["jwt", "pg-orders"])
    assert [allowed(v) for v in ("jwt", "pg-orders", "x", None, 3)] == [
        "jwt", "pg-orders", OTHER, OTHER, OTHER,
    ]  # fmt: skip
    capped = LabelGuard("trigger", pattern=re.compile(r"^[a-z_]+$"), cap=2)
    assert [capped(v) for v in ("ttl", "explicit", "workload", "ttl")] == [
        "ttl", "explicit", OTHER, "ttl",
    ]  # fmt: skip
    shaped = LabelGuard("type", pattern=re.compile(r"^[a-z0-9_.]+$"))
    for id_like in ("lease.0123456789abcdef", "t.1234567", "5f1b2c3d-0a9e-4c1b"):
        assert shaped(id_like) == OTHER
    with pytest.raises(ValueError, match="needs allowed values"):
        LabelGuard("x")


def test_metrics_refuse_a_bad_configuration() -> None:
    with pytest.raises(TypeError, match="not one string"):
        Metrics(issuers="jwt")
    with pytest.raises(ValueError, match="source_timeout"):
        Metrics(issuers=[], source_timeout=0)


# -- scrape-time gauges and the exposition ---------------------------------------------------


async def test_gauges_come_from_their_sources_at_every_scrape() -> None:
    m = Metrics(issuers=[])
    live_now = [5]
    lag_now = [{"file": 3, "webhook:siem": 10}]

    async def live() -> int:
        return live_now[-1]

    async def lag() -> dict[str, int]:
        return lag_now[-1]

    m.set_gauge_sources(leases_active=live, overdue=returns(0), sink_lag=lag)
    fams = families((await m.render())[0])
    assert fams["jit_leases_active"].samples[0].value == 5
    assert {s.labels["sink"]: s.value for s in fams["jit_audit_sink_lag_records"].samples} == {
        "file": 3,
        "webhook:siem": 10,
    }
    live_now.append(7)
    lag_now.append({"file": 0})  # the webhook sink was removed from the config
    fams = families((await m.render())[0])
    assert fams["jit_leases_active"].samples[0].value == 7
    assert [(s.labels["sink"], s.value) for s in fams["jit_audit_sink_lag_records"].samples] == [
        ("file", 0)
    ]


async def test_a_failing_or_hanging_source_is_absent_not_zero_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics(issuers=[], source_timeout=0.01)
    never = asyncio.Event()

    async def hangs() -> int:
        await never.wait()  # never set: the timeout ends it
        return 1

    async def fails() -> dict[str, int]:
        raise ConnectionError("redis is down")

    m.set_gauge_sources(leases_active=returns(4), overdue=hangs, sink_lag=fails)
    with caplog.at_level(logging.WARNING, "jit.metrics"):
        fams = families((await m.render())[0])
    assert fams["jit_leases_overdue"].samples == []  # absent, never a reassuring 0
    assert fams["jit_audit_sink_lag_records"].samples == []
    assert fams["jit_leases_active"].samples[0].value == 4
    up = {s.labels["source"]: s.value for s in fams["jit_gauge_source_up"].samples}
    assert up == {"leases_active": 1, "overdue": 0, "sink_lag": 0}
    assert "overdue failed: TimeoutError" in caplog.text
    assert "sink_lag failed: ConnectionError" in caplog.text


@pytest.mark.parametrize(
    ("active", "lag"),
    [("3", {"file": 1}), (True, {"file": "x"}), (float("inf"), ["file"])],
)
async def test_a_source_returning_the_wrong_shape_is_treated_as_down(active: Any, lag: Any) -> None:
    m = Metrics(issuers=[])
    m.set_gauge_sources(leases_active=returns(active), sink_lag=returns(lag))
    fams = families((await m.render())[0])
    assert fams["jit_leases_active"].samples == []
    up = {s.labels["source"]: s.value for s in fams["jit_gauge_source_up"].samples}
    assert up["leases_active"] == 0
    if lag != {"file": 1}:
        assert up["sink_lag"] == 0


async def test_without_sources_the_gauges_are_absent_and_the_rest_renders() -> None:
    body, content_type = await Metrics(issuers=["jwt"]).render()
    assert content_type.startswith("text/plain")
    fams = families(body)
    assert fams["jit_leases_active"].samples == []
    assert fams["jit_gauge_source_up"].samples == []
    assert fams["jit_build_info"].samples[0].value == 1
    # Zero series exist from the start, so rate() and increase() alerts work at once.
    assert value(Metrics(issuers=["jwt"]), "jit_leases_marked_overdue_total", issuer="jwt") == 0
    assert b"_created" not in body


async def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    m = Metrics(issuers=["jwt"])
    m.observe_request("/healthz", 200, 0.001)
    body, content_type = await m.render("application/openmetrics-text; version=1.0.0,*/*;q=0.1")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    plain, plain_type = await m.render("text/plain")
    assert plain_type.startswith("text/plain")
    assert not plain.endswith(b"# EOF\n")


async def test_each_broker_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    a, b = Metrics(issuers=["jwt"]), Metrics(issuers=["jwt"])
    await MetricsSink(a).write([event("lease.minted", issuer="jwt")])
    assert value(a, "jit_credentials_issued_total", issuer="jwt") == 1
    assert value(b, "jit_credentials_issued_total", issuer="jwt") == 0
    assert REGISTRY.get_sample_value("jit_credentials_issued_total", {"issuer": "jwt"}) is None


async def test_concurrent_scrapes_see_consistent_values() -> None:
    m = Metrics(issuers=[])
    m.set_gauge_sources(leases_active=returns(2), overdue=returns(1), sink_lag=returns({"f": 4}))
    bodies = await asyncio.gather(*(m.render() for _ in range(20)))
    for body, _ in bodies:
        fams = families(body)
        assert fams["jit_leases_active"].samples[0].value == 2
        assert fams["jit_leases_overdue"].samples[0].value == 1


# -- the reference page ----------------------------------------------------------------------


def test_every_exported_metric_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    m = Metrics(issuers=["jwt"])
    names = {fam.name for fam in m.registry.collect()}
    assert len(names) >= 18
    for name in names:
        shown = name + "_total" if name + "_total" in doc else name
        assert f"`{shown}`" in doc, f"{name} is not in docs/metrics.md"
