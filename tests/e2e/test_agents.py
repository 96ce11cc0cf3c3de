"""docs/agents.md's delegation walk-through, as a newcomer runs it against `jit dev`: two
`jit dev token`s, one token exchange with an actor_token, the JWT checked with PyJWT against
the JWKS (times included), and the sample policy's limit of one hop."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import DevBroker
from tests.e2e.test_quickstart import JWT_TYPE, TOKEN_EXCHANGE, verify_with_pyjwt

pytestmark = pytest.mark.e2e

ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def delegate(
    broker: DevBroker, subject: str, actor: str, subject_type: str = JWT_TYPE
) -> httpx.Response:
    return httpx.post(
        f"{broker.url}/oauth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": subject_type,
            "actor_token": actor,
            "actor_token_type": JWT_TYPE,
            "resource": "https://demo.local",
            "scope": "read",
            "task_id": "help-alice",
        },
        timeout=10,
    )


def test_the_sample_policy_lets_one_dev_identity_act_for_another_one_hop_deep(
    dev_broker: DevBroker,
) -> None:
    alice = dev_broker.token("alice")
    agent = dev_broker.token("agent-1")
    resp = delegate(dev_broker, alice, agent)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    claims = verify_with_pyjwt(dev_broker, body["access_token"], "https://demo.local")
    assert claims["sub"] == "dev:alice"
    assert claims["act"] == {"sub": "dev:agent-1"}

    # The lease is alice's; the agent sees it too, by its lease id.
    lease = dev_broker.jit("leases", "--json", token=alice).stdout
    assert body["lease_id"] in lease
    seen = httpx.get(
        f"{dev_broker.url}/v1/leases/{body['lease_id']}",
        headers={"Authorization": f"Bearer {agent}"},
        timeout=10,
    )
    assert seen.status_code == 200

    # A second hop is one more than the sample policy's max_depth of 1.
    sub_agent = dev_broker.token("sub-agent-1")
    again = delegate(dev_broker, body["access_token"], sub_agent, ACCESS_TYPE)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_scope"
    assert any(
        "delegation too deep: 2 actors in the chain, max_depth 1" in r
        for r in again.json()["reasons"]
    )

    # Completing alice's task revokes the delegated credential.
    dev_broker.jit("task", "complete", "help-alice", token=alice)
    active = httpx.post(
        f"{dev_broker.url}/oauth/introspect",
        data={"token": body["access_token"]},
        headers={"Authorization": f"Bearer {alice}"},
        timeout=10,
    ).json()["active"]
    assert active is False
