"""Approvals through the HTTP API, as the workload, its approvers and Slack use it: quorum,
denial, expiry, separation of duties, non-approvers, concurrent approvals, narrower approvals,
merging and caps, OAuth `authorization_pending`, and Slack (signed interactions, replays,
outages). Real Redis; a FakeClock; a fake Slack Web API on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import redis.asyncio as aioredis

from broker.api import create_app
from broker.audit import MemorySink
from broker.config import (
    ApprovalSettings,
    IssuerInstanceSettings,
    PersonSettings,
    RedisSettings,
    Settings,
    SlackSettings,
)
from broker.identity import DevIdentityIssuer
from broker.service import Broker, build_broker
from broker.state.connect import redis_client
from broker.testing import FakeClock
from issuers.jwt.keys import generate_key
from tests.auditkeys import audit_settings
from tests.fakes.slack_api import FakeSlack, interaction_body, sign_request

pytestmark = pytest.mark.integration

BASE = "http://broker.test"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # a test value
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

POLICY = """
owner: platform
workloads:
  - issuer: dev
    claims:
      sub: {glob: "ci-*"}
grants:
  - name: deploy
    issuer: jwt
    resource: https://prod.local
    actions: [deploy, read]
    max_ttl: 1h
    default_ttl: 10m
    approval:
      approvers: [group:sre]
      expires_after: 10m
      channel: C0APPROVALS
  - name: db-admin
    issuer: jwt
    resource: https://db.local
    actions: [admin]
    max_ttl: 1h
    approval:
      approvers: [alice, bob, carol]
      quorum: 2
      channel: C0APPROVALS
  - name: ops
    issuer: jwt
    resource: https://ops.local
    actions: [restart]
    max_ttl: 1h
    approval:
      approvers: [U0DAVE]   # a Slack user id names the person it maps to
"""


@dataclass
class Env:
    client: httpx.AsyncClient
    broker: Broker
    dev: DevIdentityIssuer
    clock: FakeClock
    audit: MemorySink
    slack: FakeSlack

    def workload(self, sub: str = "ci-1", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dev.issue(sub, claims)}"}

    def human(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dev.issue(name, {})}"}

    async def ask(self, headers: dict[str, str] | None = None, **over: Any) -> httpx.Response:
        body: dict[str, Any] = {
            "task": {"id": "release-7", "purpose": "deploy <@U999> *now*"},
            "issuer": "jwt",
            "resource": "https://prod.local",
            "actions": ["deploy"],
            "ttl": "10m",
        }
        body.update(over)
        return await self.client.post(
            "/v1/credentials", json=body, headers=headers or self.workload()
        )

    async def decide(
        self, aid: str, who: str, verb: str = "approve", **body: Any
    ) -> httpx.Response:
        if verb == "deny":
            body.setdefault("reason", "not now")
        return await self.client.post(
            f"/v1/approvals/{aid}/{verb}", json=body, headers=self.human(who)
        )

    async def state(self, aid: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.client.get(f"/v1/approvals/{aid}", headers=headers or self.workload())
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def slack_ts(self, aid: str) -> str:
        found = await self.broker.approvals.store.load(aid)
        assert found is not None
        assert found.view.slack_ts is not None
        return found.view.slack_ts

    def events(self, type_: str) -> list[Any]:
        return [e for e in self.audit.events if e.type == type_]

    def interaction(self, aid: str, decision: str, user: str, ts: int | None = None) -> Any:
        body = interaction_body(aid, decision, user)
        stamp = int(self.clock.now().timestamp()) if ts is None else ts
        headers = {
            **sign_request(body, SIGNING_SECRET, stamp),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return self.client.post("/slack/interactions", content=body, headers=headers)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def env(
    test_redis: RedisSettings,
    real_redis: aioredis.Redis,
    key_prefix: str,
    clock: FakeClock,
    tmp_path: Path,
    slack: FakeSlack,
) -> AsyncIterator[Env]:
    keys = tmp_path / "keys"
    keys.mkdir()
    generate_key(keys, "EdDSA", clock.now())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "platform.yaml").write_text(POLICY)
    (tmp_path / "bot").write_text(slack.token)
    (tmp_path / "signing").write_text(SIGNING_SECRET)
    people = {
        "alice": PersonSettings(slack="U0ALICE", identities=["dev:alice"]),
        "bob": PersonSettings(slack="U0BOB", identities=["dev:bob"]),
        "carol": PersonSettings(slack="U0CAROL", identities=["dev:carol"], github="carol-gh"),
        "dave": PersonSettings(slack="U0DAVE", identities=["dev:dave"]),
    }
    settings = Settings(
        public_url=BASE,
        key_prefix=key_prefix,
        audit=audit_settings(tmp_path / "audit"),
        policy_dir=str(policies),
        issuers={"jwt": IssuerInstanceSettings(type="jwt", config={"keys_dir": str(keys)})},
        approvals=ApprovalSettings(
            people=people,
            groups={"sre": ["alice", "bob", "carol"]},
            max_pending_per_workload=3,
            slack=SlackSettings(
                bot_token_file=str(tmp_path / "bot"),
                signing_secret_file=str(tmp_path / "signing"),
                api_url=slack.url,
            ),
        ),
    )
    dev = DevIdentityIssuer(f"{BASE}/dev/oidc", clock)
    sink = MemorySink()
    broker = await build_broker(
        settings,
        clock=clock,
        redis=redis_client(test_redis),
        dev_identity=dev,
        audit_sinks=[sink],
    )
    app = create_app(broker, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Env(client, broker, dev, clock, sink, slack)
    await broker.aclose()


def verify(env: Env, token: str) -> dict[str, Any]:
    keys = env.broker.documents.jwks()["keys"]
    key = pyjwt.PyJWK(keys[0]).key
    return dict(
        pyjwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            audience="https://prod.local",
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    )


async def test_quorum_of_one_approval_mints_once_and_the_clock_starts_at_approval(
    env: Env,
) -> None:
    r = await env.ask()
    assert r.status_code == 202, r.text
    pending = r.json()
    aid = pending["approval_id"]
    assert pending["state"] == "pending"
    assert pending["approvers"] == ["alice", "bob", "carol"]
    assert pending["link"] == f"{BASE}/v1/approvals/{aid}"
    assert pending["needed"] == 1
    assert (await env.state(aid))["credential"] is None
    env.clock.advance(timedelta(minutes=3))  # the request waits three minutes
    ok = await env.decide(aid, "alice")
    assert ok.status_code == 200, ok.text
    assert ok.json()["state"] == "approved"
    env.clock.advance(timedelta(minutes=1))  # collected one minute after approval
    got = await env.state(aid)
    cred = got["credential"]
    assert cred is not None
    assert cred["actions"] == ["deploy"]
    assert cred["ttl"] == 9 * 60  # 10m from approval, one minute of it spent
    claims = verify(env, cred["credential"]["secret"])
    assert claims["jti"] == cred["lease_id"] == got["lease_id"]
    again = await env.state(aid)
    assert again["credential"] is None  # minted once
    assert again["lease_id"] == cred["lease_id"]
    [minted] = env.events("approval.minted")
    assert minted.lease_id == cred["lease_id"]
    assert minted.detail["approved_by"] == ["alice"]
    assert [e.detail["grant"] for e in env.events("lease.minted")] == ["platform/deploy"]
    assert env.events("lease.minted")[0].detail["approval_id"] == aid


async def test_quorum_of_two_needs_two_different_people(env: Env) -> None:
    r = await env.ask(resource="https://db.local", actions=["admin"])
    aid = r.json()["approval_id"]
    first = await env.decide(aid, "alice")
    assert first.json()["state"] == "pending"
    assert first.json()["needed"] == 1
    twice = await env.decide(aid, "alice")
    assert twice.status_code == 409
    second = await env.decide(aid, "bob")
    assert second.json()["state"] == "approved"
    got = await env.state(aid)
    assert got["credential"]["actions"] == ["admin"]


async def test_a_denial_ends_the_request_and_the_workload_is_told_why(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    denied = await env.decide(aid, "bob", "deny", reason="change freeze")
    assert denied.json()["state"] == "denied"
    assert (await env.decide(aid, "alice")).status_code == 409
    again = await env.ask()  # the same request again: answered with the denial
    assert again.status_code == 403
    assert "bob: change freeze" in again.json()["reasons"]
    assert (await env.state(aid))["lease_id"] is None
    assert env.events("approval.denied")


async def test_a_pending_request_expires_and_a_late_decision_is_refused(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    env.clock.advance(timedelta(minutes=10))
    late = await env.decide(aid, "alice")
    assert late.status_code == 409
    assert "expired" in late.json()["detail"]
    assert (await env.state(aid))["state"] == "expired"
    assert len(env.events("approval.expired")) == 1
    await env.broker.approvals.idle()
    # The Slack message now says EXPIRED, without buttons.
    msg = env.slack.message("C0APPROVALS", await env.slack_ts(aid))
    assert "EXPIRED" in json.dumps(msg)
    assert "jit_approve" not in json.dumps(msg)


async def test_the_sweep_expires_requests_nobody_looks_at(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    env.clock.advance(timedelta(minutes=11))
    assert await env.broker.approvals.sweep() >= 1
    view = await env.broker.approvals.store.load(aid)
    assert view is not None
    assert view.view.state.value == "expired"


async def test_the_human_behind_a_ci_job_cannot_approve_it(env: Env) -> None:
    headers = env.workload("ci-2", actor="carol-gh")
    aid = (await env.ask(headers=headers)).json()["approval_id"]
    refused = await env.decide(aid, "carol")
    assert refused.status_code == 403
    assert "separation of duties" in refused.json()["detail"]
    got = await env.state(aid, headers)
    assert got["state"] == "pending"
    assert got["reviews"] == []
    assert env.events("approval.refused_review")


async def test_the_user_an_agent_acts_for_cannot_approve_it(env: Env) -> None:
    aid = (await env.ask(on_behalf_of="alice")).json()["approval_id"]
    assert (await env.decide(aid, "alice")).status_code == 403
    assert (await env.state(aid))["on_behalf_of"] == "alice"
    assert (await env.decide(aid, "bob")).json()["state"] == "approved"


@pytest.mark.parametrize(
    ("workload", "on_behalf_of", "eligible"),
    [
        pytest.param({"actor": "carol-gh"}, "alice", 1, id="the CI actor and the user acted for"),
        pytest.param({"triggering_actor": "carol-gh"}, "U0BOB", 1, id="a user named by Slack id"),
    ],
)
async def test_a_request_without_enough_independent_approvers_is_refused_before_it_opens(
    env: Env, workload: dict[str, str], on_behalf_of: str, eligible: int
) -> None:
    r = await env.ask(
        headers=env.workload(**workload),
        resource="https://db.local",
        actions=["admin"],
        on_behalf_of=on_behalf_of,
    )
    assert r.status_code == 403, r.text
    assert f"needs 2 approval(s) but only {eligible} approver(s)" in r.json()["detail"]
    assert await env.broker.approvals.list_for(owner="dev:ci-1", person=None) == []
    await env.broker.approvals.idle()
    assert env.slack.calls_to("chat.postMessage") == []


async def test_non_approvers_are_refused_and_change_nothing(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    outsider = await env.decide(aid, "dave")  # a configured person, not an approver here
    assert outsider.status_code == 403
    stranger = await env.decide(aid, "mallory")  # not a configured person at all
    assert stranger.status_code == 403
    workload = await env.client.post(
        f"/v1/approvals/{aid}/approve", json={}, headers=env.workload()
    )
    assert workload.status_code == 403
    assert (await env.state(aid))["reviews"] == []


async def test_two_concurrent_approvals_mint_exactly_one_credential(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    results = await asyncio.gather(env.decide(aid, "alice"), env.decide(aid, "bob"))
    assert sorted(r.status_code for r in results) == [200, 409]
    collected = await asyncio.gather(*(env.state(aid) for _ in range(5)))
    creds = [c["credential"] for c in collected if c["credential"]]
    assert len(creds) == 1
    leases = (await env.client.get("/v1/leases", headers=env.workload())).json()
    assert [le["id"] for le in leases] == [creds[0]["lease_id"]]


async def test_an_approver_may_approve_narrower_never_wider(env: Env) -> None:
    aid = (await env.ask(actions=["deploy", "read"], ttl="30m")).json()["approval_id"]
    wider = await env.decide(aid, "alice", ttl="2h")
    assert wider.status_code == 400
    extra = await env.decide(aid, "alice", actions=["deploy", "admin"])
    assert extra.status_code == 400
    ok = await env.decide(aid, "alice", ttl="5m", actions=["read"])
    assert ok.json()["state"] == "approved"
    cred = (await env.state(aid))["credential"]
    assert cred["actions"] == ["read"]
    assert cred["ttl"] == 300
    assert verify(env, cred["credential"]["secret"])["scope"] == "read"


async def test_identical_requests_merge_and_a_workload_has_a_cap(env: Env) -> None:
    first = (await env.ask()).json()["approval_id"]
    assert (await env.ask()).json()["approval_id"] == first
    assert len(env.slack.calls_to("chat.postMessage")) == 1  # posted once
    for i in range(2):
        r = await env.ask(task={"id": f"other-{i}"})
        assert r.status_code == 202
    flood = await env.ask(task={"id": "one-too-many"})
    assert flood.status_code == 429


async def test_the_requester_may_cancel(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    other = await env.client.post(f"/v1/approvals/{aid}/cancel", headers=env.workload("ci-9"))
    assert other.status_code == 404
    r = await env.client.post(f"/v1/approvals/{aid}/cancel", headers=env.workload())
    assert r.json()["state"] == "cancelled"
    assert (await env.decide(aid, "alice")).status_code == 409


async def test_approvers_list_what_they_may_decide(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    mine = await env.client.get("/v1/approvals/", headers=env.human("alice"))
    assert [a["approval_id"] for a in mine.json()] == [aid]
    none = await env.client.get("/v1/approvals/", headers=env.human("dave"))
    assert none.json() == []
    own = await env.client.get("/v1/approvals/", headers=env.workload())
    assert [a["approval_id"] for a in own.json()] == [aid]
    other = await env.client.get(f"/v1/approvals/{aid}", headers=env.workload("ci-other"))
    assert other.status_code == 404


def token_form(env: Env, **over: str) -> dict[str, str]:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": env.dev.issue("ci-1", {}),
        "subject_token_type": JWT_TYPE,
        "resource": "https://prod.local",
        "scope": "deploy",
        "authorization_details": "",
    }
    form.pop("authorization_details")
    form.update(over)
    return form


async def test_oauth_token_answers_authorization_pending_until_approved(env: Env) -> None:
    r = await env.client.post("/oauth/token", data=token_form(env))
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "authorization_pending"
    aid = body["approval_id"]
    assert body["interval"] == 5
    again = await env.client.post("/oauth/token", data=token_form(env))
    assert again.json()["error"] == "authorization_pending"
    assert again.json()["approval_id"] == aid  # the same request, merged
    await env.decide(aid, "alice")
    done = await env.client.post("/oauth/token", data=token_form(env))
    assert done.status_code == 200, done.text
    assert verify(env, done.json()["access_token"])["jti"] == done.json()["lease_id"]


async def test_oauth_token_answers_access_denied_and_expired_token(env: Env) -> None:
    aid = (await env.client.post("/oauth/token", data=token_form(env))).json()["approval_id"]
    await env.decide(aid, "alice", "deny")
    denied = await env.client.post("/oauth/token", data=token_form(env))
    assert denied.json()["error"] == "access_denied"
    other = token_form(env, scope="read")
    (await env.client.post("/oauth/token", data=other)).json()
    env.clock.advance(timedelta(minutes=10))
    expired = await env.client.post("/oauth/token", data=other)
    assert expired.json()["error"] == "expired_token"


# -- Slack ------------------------------------------------------------------------------------


async def test_the_request_is_posted_to_slack_and_a_signed_click_approves_it(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    [post] = env.slack.calls_to("chat.postMessage")
    assert post.params["channel"] == "C0APPROVALS"
    text = json.dumps(post.params["blocks"])
    for fact in ("release-7", "https://prod.local", "deploy", "platform/deploy", aid):
        assert fact in text
    assert "<@U999>" not in text  # the purpose cannot mention or link anyone
    assert env.events("approval.posted")
    r = await env.interaction(aid, "approve", "U0ALICE")
    assert r.status_code == 200, r.text
    assert (await env.state(aid))["credential"] is not None
    await env.broker.approvals.idle()
    ts = await env.slack_ts(aid)
    message = json.dumps(env.slack.message("C0APPROVALS", ts))
    assert "APPROVED" in message
    assert "alice" in message
    assert env.slack.replies("C0APPROVALS", ts)  # a thread reply per review


async def test_forged_stale_and_replayed_slack_requests_change_nothing(env: Env) -> None:
    aid = (await env.ask()).json()["approval_id"]
    body = interaction_body(aid, "approve", "U0ALICE")
    now = int(env.clock.now().timestamp())
    forged = sign_request(body, "not-the-signing-secret", now)
    r = await env.client.post("/slack/interactions", content=body, headers=forged)
    assert r.status_code == 401
    stale = sign_request(body, SIGNING_SECRET, now - 6 * 60)
    r = await env.client.post("/slack/interactions", content=body, headers=stale)
    assert r.status_code == 401
    assert (await env.state(aid))["reviews"] == []
    # A genuine click from someone who may not approve: refused, nothing changes.
    r = await env.interaction(aid, "approve", "U0DAVE")
    assert r.status_code == 403
    assert (await env.state(aid))["reviews"] == []
    # A genuine click, then the very same request replayed.
    good = sign_request(body, SIGNING_SECRET, now)
    assert (
        await env.client.post("/slack/interactions", content=body, headers=good)
    ).status_code == 200
    replay = await env.client.post("/slack/interactions", content=body, headers=good)
    assert replay.status_code == 401
    assert len((await env.state(aid))["reviews"]) == 1


async def test_a_deny_click_ends_the_request_and_the_requester_is_told(env: Env) -> None:
    headers = env.workload("ci-3", actor="carol-gh")  # carol triggered the job
    aid = (await env.ask(headers=headers)).json()["approval_id"]
    r = await env.interaction(aid, "deny", "U0BOB")
    assert r.status_code == 200
    assert (await env.state(aid, headers))["state"] == "denied"
    await env.broker.approvals.idle()
    dm = env.slack.dm_channel("U0CAROL")
    assert dm is not None
    assert any(c.params.get("channel") == dm for c in env.slack.calls_to("chat.postMessage"))


async def test_a_slack_outage_loses_nothing(env: Env) -> None:
    env.slack.down = True
    aid = (await env.ask()).json()["approval_id"]
    assert (await env.state(aid))["state"] == "pending"
    assert env.events("approval.post_failed")
    # Meanwhile it can be decided through the API (the CLI uses this).
    env.slack.down = False
    env.clock.advance(timedelta(seconds=10))
    assert await env.broker.approvals.sweep() >= 1  # the post is retried
    assert len(env.slack.calls_to("chat.postMessage")) == 1
    assert (await env.decide(aid, "bob")).json()["state"] == "approved"
    assert (await env.state(aid))["credential"] is not None


async def test_a_grant_may_name_approvers_by_slack_user_id(env: Env) -> None:
    aid = (await env.ask(resource="https://ops.local", actions=["restart"])).json()["approval_id"]
    assert (await env.state(aid))["approvers"] == ["dave"]
    assert (await env.decide(aid, "alice")).status_code == 403
    assert (await env.decide(aid, "dave")).json()["state"] == "approved"
