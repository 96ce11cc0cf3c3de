"""Delegation chains (RFC 8693 ``actor_token``, ADR 0040) through /oauth/token over the real
Redis: a person delegates to an agent, which delegates to sub-agents; every hop can only
narrow; the policy names who may act and how deep; revoking a link (or completing the task)
revokes everything delegated from it; the audit names every hop."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from click.testing import CliRunner

from broker.audit import read_chain
from broker.audit.receipt import build_receipt
from broker.cli.audit import audit
from tests.integration.conftest import BASE, JWT_TYPE, TOKEN_EXCHANGE, Api

pytestmark = pytest.mark.integration

ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ORDERS = "https://orders.example"

POLICY = f"""
owner: platform
workloads:
  - issuer: dev
    claims: {{role: person}}
permissions: [introspect]
grants:
  - name: orders
    issuer: jwt
    resource: {ORDERS}
    actions: [read, write]
    max_ttl: 1h
    default_ttl: 10m
    approval: none
    delegation:
      actors:
        - issuer: dev
          claims: {{role: {{one_of: [agent, sub-agent]}}}}
      max_depth: 3
  - name: plain
    issuer: jwt
    resource: https://plain.example
    actions: [read]
    max_ttl: 1h
    approval: none
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    (d / "platform.yaml").write_text(POLICY)
    return d


def person(api: Api, sub: str = "alice") -> str:
    return api.dev.issue(sub, {"role": "person"})


def agent(api: Api, sub: str, role: str = "agent") -> str:
    return api.dev.issue(sub, {"role": role})


async def delegate(
    api: Api, subject: str, actor: str, *, subject_type: str = JWT_TYPE, **extra: str
) -> httpx.Response:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": subject_type,
        "actor_token": actor,
        "actor_token_type": JWT_TYPE,
        "resource": ORDERS,
        "scope": "read write",
        **extra,
    }
    return await api.client.post("/oauth/token", data=form)


async def ok(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def introspect(api: Api, token: str) -> dict[str, Any]:
    r = await api.client.post(
        "/oauth/introspect",
        data={"token": token},
        headers={"Authorization": f"Bearer {person(api)}"},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def chain_of_three(api: Api) -> list[dict[str, Any]]:
    """alice → agent-a → sub-b → sub-c, each hop narrower than the one before."""
    hop1 = await ok(await delegate(api, person(api), agent(api, "agent-a"), task_id="t-1"))
    hop2 = await ok(
        await delegate(
            api,
            hop1["access_token"],
            agent(api, "sub-b", "sub-agent"),
            subject_type=ACCESS_TYPE,
            scope="read",
            ttl="300",
        )
    )
    hop3 = await ok(
        await delegate(
            api,
            hop2["access_token"],
            agent(api, "sub-c", "sub-agent"),
            subject_type=ACCESS_TYPE,
            scope="read",
            ttl="120",
        )
    )
    return [hop1, hop2, hop3]


def verify(api: Api, jwks: dict[str, Any], token: str) -> dict[str, Any]:
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = pyjwt.PyJWK.from_dict(next(k for k in jwks["keys"] if k["kid"] == kid))
    # The broker runs on a fake clock in 2030: PyJWT checks signature, aud and iss here (the
    # e2e test against `jit dev` checks the times too).
    claims: dict[str, Any] = pyjwt.decode(
        token,
        key=key,
        algorithms=["EdDSA"],
        audience=ORDERS,
        issuer=BASE,
        options={"verify_iat": False, "verify_nbf": False, "verify_exp": False},
    )
    return claims


async def test_a_chain_of_three_hops_names_every_actor_newest_first_in_act(api: Api) -> None:
    hops = await chain_of_three(api)
    jwks = (await api.client.get("/.well-known/jwks.json")).json()
    claims = [verify(api, jwks, h["access_token"]) for h in hops]

    assert [c["sub"] for c in claims] == ["dev:alice"] * 3  # whose authority: the person's
    assert claims[0]["act"] == {"sub": "dev:agent-a"}
    assert claims[1]["act"] == {"sub": "dev:sub-b", "act": {"sub": "dev:agent-a"}}
    assert claims[2]["act"] == {
        "sub": "dev:sub-c",
        "act": {"sub": "dev:sub-b", "act": {"sub": "dev:agent-a"}},
    }
    assert [c["scope"] for c in claims] == ["read write", "read", "read"]
    # Every hop lives in the first hop's task, as the person's lease with its parent recorded.
    assert {h["task_id"] for h in hops} == {"t-1"}
    leases = [await api.broker.manager.get(h["lease_id"]) for h in hops]
    assert [le.parent for le in leases] == [None, hops[0]["lease_id"], hops[1]["lease_id"]]
    assert {le.owner for le in leases} == {"dev:alice"}
    assert [[a.id for a in le.actors] for le in leases] == [
        ["dev:agent-a"],
        ["dev:sub-b", "dev:agent-a"],
        ["dev:sub-c", "dev:sub-b", "dev:agent-a"],
    ]
    # Introspection tells a resource server the chain too (RFC 8693 §4.1).
    answer = await introspect(api, hops[2]["access_token"])
    assert answer["active"] is True
    assert answer["sub"] == "dev:alice"
    assert answer["act"] == claims[2]["act"]


async def test_an_agent_may_delegate_its_own_credential_to_a_sub_agent(api: Api) -> None:
    """The subject_token may be an ordinary credential (no act yet): its owner becomes sub."""
    own = await ok(
        await api.client.post(
            "/oauth/token",
            data={
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": person(api, "bob"),
                "subject_token_type": JWT_TYPE,
                "resource": ORDERS,
                "scope": "read",
                "task_id": "bob-1",
            },
        )
    )
    child = await ok(
        await delegate(
            api, own["access_token"], agent(api, "agent-x"), subject_type=ACCESS_TYPE, scope="read"
        )
    )
    assert child["task_id"] == "bob-1"
    lease = await api.broker.manager.get(child["lease_id"])
    assert lease.owner == "dev:bob"
    assert lease.parent == own["lease_id"]


@pytest.mark.parametrize(
    ("extra", "error", "needle"),
    [
        pytest.param({"scope": "read write"}, "invalid_scope", "write", id="more actions"),
        pytest.param(
            {"resource": "https://elsewhere.example"},
            "invalid_target",
            "elsewhere",
            id="another resource",
        ),
        pytest.param({"ttl": "3000"}, "invalid_scope", "remaining", id="a longer ttl"),
        pytest.param({"task_ttl": "86400"}, "invalid_scope", "deadline", id="a later deadline"),
        pytest.param(
            {"task_id": "other-task"}, "invalid_request", "parent's task", id="another task"
        ),
    ],
)
async def test_a_hop_that_would_widen_its_parent_is_refused_with_the_reason(
    api: Api, extra: dict[str, str], error: str, needle: str
) -> None:
    parent = await ok(
        await delegate(
            api, person(api), agent(api, "agent-a"), scope="read", ttl="600", task_id="w-1"
        )
    )
    form = {"scope": "read", **extra}
    r = await delegate(
        api,
        parent["access_token"],
        agent(api, "sub-b", "sub-agent"),
        subject_type=ACCESS_TYPE,
        **form,
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == error
    assert needle in body["error_description"]
    task = await api.broker.manager.get_task("dev:alice", "w-1")
    assert [le.id for le in task.leases] == [parent["lease_id"]]  # nothing minted
    refusal = [e for e in api.audit.events if e.type == "decision" and e.outcome == "deny"]
    if error != "invalid_request":
        assert refusal[-1].detail["act"] == ["dev:sub-b", "dev:agent-a"]
        assert refusal[-1].detail["parent_lease_id"] == parent["lease_id"]


async def test_a_chain_longer_than_max_depth_is_refused(api: Api) -> None:
    hops = await chain_of_three(api)
    r = await delegate(
        api,
        hops[2]["access_token"],
        agent(api, "sub-d", "sub-agent"),
        subject_type=ACCESS_TYPE,
        scope="read",
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_scope"
    assert any("delegation too deep: 4 actors" in reason for reason in r.json()["reasons"])


@pytest.mark.parametrize(
    ("actor_claims", "needle"),
    [
        pytest.param({"role": "robot"}, "may not act", id="an actor the grant does not name"),
        pytest.param({}, "may not act", id="an actor without the claim"),
    ],
)
async def test_an_actor_the_grant_does_not_allow_is_refused(
    api: Api, actor_claims: dict[str, str], needle: str
) -> None:
    r = await delegate(api, person(api), api.dev.issue("stranger", actor_claims))
    assert r.status_code == 400, r.text
    assert any(needle in reason for reason in r.json()["reasons"])
    assert not await api.lease_keys()


async def test_a_grant_without_delegation_refuses_an_actor(api: Api) -> None:
    r = await delegate(
        api, person(api), agent(api, "agent-a"), resource="https://plain.example", scope="read"
    )
    assert r.status_code == 400, r.text
    assert any("does not allow delegation" in reason for reason in r.json()["reasons"])


@pytest.mark.parametrize(
    ("form", "needle"),
    [
        pytest.param(
            {"actor_token_type": JWT_TYPE}, "actor_token is required", id="a type without a token"
        ),
        pytest.param({"actor_token": "x"}, "actor_token_type", id="a token without a type"),
    ],
)
async def test_an_incomplete_actor_is_an_invalid_request(
    api: Api, form: dict[str, str], needle: str
) -> None:
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": person(api),
        "subject_token_type": JWT_TYPE,
        "resource": ORDERS,
        "scope": "read",
        **form,
    }
    r = await api.client.post("/oauth/token", data=data)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"
    assert needle in r.json()["error_description"]


async def test_an_actor_token_that_does_not_verify_is_invalid_grant(api: Api) -> None:
    r = await delegate(api, person(api), "not-a-token")
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_an_access_token_is_no_subject_token_without_an_actor(api: Api) -> None:
    hop1 = await ok(await delegate(api, person(api), agent(api, "agent-a")))
    r = await api.client.post(
        "/oauth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": hop1["access_token"],
            "subject_token_type": ACCESS_TYPE,
            "resource": ORDERS,
            "scope": "read",
        },
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"


async def test_an_actor_cannot_appear_twice_in_a_chain(api: Api) -> None:
    hop1 = await ok(await delegate(api, person(api), agent(api, "agent-a")))
    r = await delegate(api, hop1["access_token"], agent(api, "agent-a"), subject_type=ACCESS_TYPE)
    assert r.status_code == 400
    assert "already in the delegation chain" in r.json()["error_description"]


async def test_revoking_a_link_revokes_everything_delegated_from_it_and_nothing_else(
    api: Api,
) -> None:
    hops = await chain_of_three(api)
    sibling = await ok(
        await api.client.post(
            "/oauth/token",
            data={
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": person(api),
                "subject_token_type": JWT_TYPE,
                "resource": ORDERS,
                "scope": "read",
                "task_id": "t-1",
            },
        )
    )
    # The middle link's holder revokes it with its own identity.
    sub_b = {"Authorization": f"Bearer {agent(api, 'sub-b', 'sub-agent')}"}
    r = await api.client.delete(f"/v1/leases/{hops[1]['lease_id']}", headers=sub_b)
    assert r.status_code == 200, r.text
    active = [(await introspect(api, h["access_token"]))["active"] for h in hops]
    assert active == [True, False, False]
    assert (await introspect(api, sibling["access_token"]))["active"] is True
    third = await api.broker.manager.get(hops[2]["lease_id"])
    assert third.revoke_trigger == "parent_revoked"
    # A new hop from the revoked link is refused: its credential is no longer active.
    r = await delegate(
        api,
        hops[1]["access_token"],
        agent(api, "sub-z", "sub-agent"),
        subject_type=ACCESS_TYPE,
        scope="read",
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


async def test_rfc7009_revocation_by_the_first_actor_cascades(api: Api) -> None:
    hops = await chain_of_three(api)
    r = await api.client.post(
        "/oauth/revoke",
        data={"token": hops[0]["access_token"]},
        headers={"Authorization": f"Bearer {agent(api, 'agent-a')}"},
    )
    assert r.status_code == 200
    assert [(await introspect(api, h["access_token"]))["active"] for h in hops] == [False] * 3


async def test_completing_the_task_revokes_the_whole_chain(api: Api) -> None:
    hops = await chain_of_three(api)
    r = await api.client.post(
        "/v1/tasks/t-1/complete", headers={"Authorization": f"Bearer {person(api)}"}
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["leases"]) == 3
    assert [(await introspect(api, h["access_token"]))["active"] for h in hops] == [False] * 3


async def test_an_actor_sees_its_delegated_lease_and_an_outsider_does_not(api: Api) -> None:
    hops = await chain_of_three(api)
    lease_id = hops[2]["lease_id"]
    for sub, role in (("sub-c", "sub-agent"), ("agent-a", "agent")):
        r = await api.client.get(
            f"/v1/leases/{lease_id}", headers={"Authorization": f"Bearer {agent(api, sub, role)}"}
        )
        assert r.status_code == 200, (sub, r.text)
        assert r.json()["owner"] == "dev:alice"
    r = await api.client.get(
        f"/v1/leases/{lease_id}", headers={"Authorization": f"Bearer {agent(api, 'mallory')}"}
    )
    assert r.status_code == 404
    r = await api.client.delete(
        f"/v1/leases/{lease_id}", headers={"Authorization": f"Bearer {agent(api, 'mallory')}"}
    )
    assert r.status_code == 404
    assert (await introspect(api, hops[2]["access_token"]))["active"] is True


async def test_the_audit_and_the_receipt_name_every_hop(api: Api, tmp_path: Path) -> None:
    hops = await chain_of_three(api)
    await api.client.post(
        "/v1/tasks/t-1/complete", headers={"Authorization": f"Bearer {person(api)}"}
    )
    minted = {e.lease_id: e for e in api.audit.events if e.type == "lease.minted"}
    third = minted[hops[2]["lease_id"]]
    assert third.principal == "dev:alice"
    assert third.detail["act"] == ["dev:sub-c", "dev:sub-b", "dev:agent-a"]
    assert third.detail["parent_lease_id"] == hops[1]["lease_id"]

    export = tmp_path / "audit.jsonl"
    prefix = api.broker.settings.key_prefix
    with export.open("wb") as fh:
        async for record in read_chain(api.redis, prefix):
            fh.write(record.data + b"\n")
    records = [json.loads(line) for line in export.read_text().splitlines()]
    receipt = build_receipt(records, lease_id=hops[2]["lease_id"])
    assert [(h.who, h.role, h.lease_id) for h in receipt.chain] == [
        ("dev:alice", "subject", None),
        ("dev:agent-a", "actor", hops[0]["lease_id"]),
        ("dev:sub-b", "actor", hops[1]["lease_id"]),
        ("dev:sub-c", "actor", hops[2]["lease_id"]),
    ]
    out = CliRunner().invoke(
        audit, ["show", str(export), "--lease", hops[2]["lease_id"]], terminal_width=400
    )
    assert out.exit_code == 0, out.output
    assert (
        f"delegation chain: dev:alice (subject) -> dev:agent-a (actor, lease {hops[0]['lease_id']})"
        f" -> dev:sub-b (actor, lease {hops[1]['lease_id']}) -> dev:sub-c (actor, lease "
        f"{hops[2]['lease_id']})"
    ) in " ".join(out.output.split())
    assert "acting: dev:sub-c <- dev:sub-b <- dev:agent-a" in out.output
    assert "task_completed" in out.output


async def test_a_delegated_default_ttl_is_capped_to_the_parent(api: Api) -> None:
    parent = await ok(await delegate(api, person(api), agent(api, "agent-a"), ttl="120"))
    api.clock.advance(timedelta(seconds=20))
    child = await ok(
        await delegate(
            api, parent["access_token"], agent(api, "sub-b", "sub-agent"), subject_type=ACCESS_TYPE
        )
    )
    assert child["ttl_capped_by"] == "parent"
    assert child["expires_in"] <= 100
