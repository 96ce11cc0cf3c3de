"""A credential recognised by introspection is remembered by its digest for a few seconds, never
past its exp (issue 14 goal 6): introspecting it again skips the signature check, while
revocation and expiry still answer at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from broker.service import tokens as tokens_module
from tests.integration.conftest import JWT_TYPE, TOKEN_EXCHANGE, Api

pytestmark = pytest.mark.integration


async def mint(api: Api, task: str) -> str:
    r = await api.client.post(
        "/oauth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": JWT_TYPE,
            "subject_token": api.dev.issue("ci-1"),
            "resource": "https://demo.local",
            "scope": "read",
            "task_id": task,
        },
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def count_identify(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    issuer: Any = api.broker.issuers["jwt"]
    calls: list[str] = []
    real = issuer.identify

    def identify(token: str, now: Any) -> str | None:
        calls.append(token)
        return real(token, now)  # type: ignore[no-any-return]

    monkeypatch.setattr(issuer, "identify", identify)
    return calls


async def introspect(api: Api, token: str) -> dict[str, Any]:
    r = await api.client.post("/oauth/introspect", data={"token": token}, headers=api.auth("rs"))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_recognised_credential_is_checked_again_only_after_a_few_seconds(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await mint(api, "remember-1")
    calls = count_identify(api, monkeypatch)
    assert (await introspect(api, token))["active"] is True
    assert (await introspect(api, token))["active"] is True
    assert len(calls) == 1
    api.clock.advance(timedelta(seconds=tokens_module.REMEMBER_SECONDS + 1))
    assert (await introspect(api, token))["active"] is True
    assert len(calls) == 2
    # Garbage is never remembered.
    for _ in range(2):
        assert await introspect(api, "not-a-token") == {"active": False}
    assert calls.count("not-a-token") == 2


async def test_a_remembered_credential_answers_revocation_and_expiry_at_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_module, "REMEMBER_SECONDS", 10 * 3600.0)
    token = await mint(api, "remember-2")
    assert (await introspect(api, token))["active"] is True
    calls = count_identify(api, monkeypatch)
    lease_id = (await introspect(api, token))["jti"]
    assert calls == []  # remembered
    await api.broker.manager.revoke(lease_id, "explicit")
    assert await introspect(api, token) == {"active": False}

    other = await mint(api, "remember-3")
    assert (await introspect(api, other))["active"] is True
    api.clock.advance(timedelta(hours=2))  # past its exp: not remembered any more
    assert await introspect(api, other) == {"active": False}
    assert other in calls
