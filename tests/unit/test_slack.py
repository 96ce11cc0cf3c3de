"""The Slack layer against a fake Slack Web API on 127.0.0.1 (tests/fakes/slack_api.py).

Rendering, posting, updating, threading and DMs; every failure mode becomes SlackUnavailable;
request signing checked against Slack's documented algorithm and example; interaction payloads;
mrkdwn injection; and no token or signing secret in any log record or exception.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from broker.approvals.model import ApprovalState, ApprovalView, Review
from broker.approvals.slack import (
    ACTION_APPROVE,
    ACTION_DENY,
    SlackAction,
    SlackNotifier,
    SlackRef,
    SlackUnavailable,
    approval_blocks,
    escape_mrkdwn,
)
from broker.config import SlackSettings
from broker.errors import AuthenticationError, ConfigError, InvalidRequest
from broker.testing import FakeClock
from broker.types import Principal, Scope, Task
from tests.fakes import FakeSlack, blocks_text, interaction_body, interaction_payload, sign_request

BROKER_URL = "https://jit.example.test"
CHANNEL = "C0APPROVALS"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def token() -> str:
    return f"xoxb-{secrets.randbelow(10**12)}-{secrets.randbelow(10**12)}-{secrets.token_hex(12)}"


@pytest.fixture
def signing_secret() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def fake(token: str) -> Iterator[FakeSlack]:
    with FakeSlack(token=token) as slack:
        yield slack


@pytest.fixture
def settings(tmp_path: Path, fake: FakeSlack, token: str, signing_secret: str) -> SlackSettings:
    (tmp_path / "bot-token").write_text(token + "\n")
    (tmp_path / "signing-secret").write_text(signing_secret + "\n")
    return SlackSettings(
        bot_token_file=str(tmp_path / "bot-token"),
        signing_secret_file=str(tmp_path / "signing-secret"),
        api_url=fake.url,
        default_channel=CHANNEL,
        timeout=timedelta(seconds=5),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def notifier(settings: SlackSettings, clock: FakeClock) -> AsyncIterator[SlackNotifier]:
    n = SlackNotifier(settings, clock, broker_url=BROKER_URL)
    yield n
    await n.aclose()


def view(**changes: Any) -> ApprovalView:
    """A pending approval request: two approvals needed, nobody has decided yet."""
    base = ApprovalView(
        id="apr_7f3a9c1e2b4d",
        state=ApprovalState.PENDING,
        owner="github:repo:acme/orders:ref:refs/heads/main",
        principal=Principal(
            id="github:repo:acme/orders:ref:refs/heads/main",
            issuer="github",
            subject="repo:acme/orders:ref:refs/heads/main",
        ),
        task=Task(id="deploy-4711", purpose="Run the nightly migration for orders"),
        scope=Scope.of("pg-orders", "orders_db", ["read", "write"]),
        ttl=timedelta(minutes=15),
        grant="team-payments/db-migrations",
        grant_owner="team-payments",
        policy_version="pv-2c1e9a",
        approvers=("alice", "bob", "carol"),
        quorum=2,
        created_at=T0,
        expires_at=T0 + timedelta(minutes=15),
        on_behalf_of="dave@acme.example",
        channel=CHANNEL,
    )
    return msgspec.structs.replace(base, **changes)


def approve(person: str, **kw: Any) -> Review:
    return Review(person=person, decision="approve", at=T0 + timedelta(minutes=1), **kw)


def deny(person: str, reason: str = "") -> Review:
    return Review(
        person=person, decision="deny", at=T0 + timedelta(minutes=2), reason=reason, via="slack"
    )


def all_text(blocks: list[dict[str, Any]]) -> str:
    return blocks_text(blocks)


def actions_block(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    found = [b for b in blocks if b["type"] == "actions"]
    assert len(found) <= 1
    return found[0] if found else None


async def posted(notifier: SlackNotifier, fake: FakeSlack, a: ApprovalView) -> ApprovalView:
    ref = await notifier.post_request(a, CHANNEL)
    return msgspec.structs.replace(a, channel=ref.channel, slack_ts=ref.ts)


# -- posting the request ------------------------------------------------------------------------


async def test_the_request_message_shows_every_fact_an_approver_needs(
    notifier: SlackNotifier, fake: FakeSlack, token: str
) -> None:
    a = view()
    ref = await notifier.post_request(a, CHANNEL)

    assert isinstance(ref, SlackRef)
    assert ref.channel == CHANNEL
    assert ref.ts
    (call,) = fake.calls_to("chat.postMessage")
    assert call.token == token
    assert call.content_type.startswith("application/json")
    assert call.params["channel"] == CHANNEL
    assert call.params["unfurl_links"] is False
    assert "apr_7f3a9c1e2b4d" in call.params["text"]  # the plain-text fallback

    message = fake.message(ref.channel, ref.ts)
    text = all_text(message["blocks"])
    for fact in [
        "github:repo:acme/orders:ref:refs/heads/main",  # the owner
        "`github`",  # the principal's identity issuer
        "repo:acme/orders:ref:refs/heads/main",  # its subject
        "dave@acme.example",  # on behalf of
        "team-payments",  # the grant's owner
        "deploy-4711",  # the task
        "Run the nightly migration for orders",  # its purpose
        "pg-orders",
        "orders_db",
        "read, write",
        "15m",  # the TTL asked
        "team-payments/db-migrations",  # the grant
        "pv-2c1e9a",  # the policy version
        "0 of 2",  # approvals so far / quorum
        "alice, bob, carol",  # who may approve
        f"<!date^{int((T0 + timedelta(minutes=15)).timestamp())}^",  # the expiry
        f"{BROKER_URL}/v1/approvals/apr_7f3a9c1e2b4d",  # the link
    ]:
        assert fact in text, fact
    assert message["blocks"][0]["type"] == "header"
    assert message["blocks"][0]["text"]["text"] == "Access request: PENDING 0/2"


async def test_the_buttons_carry_the_approval_id_and_the_agreed_action_ids(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    ref = await notifier.post_request(view(), CHANNEL)
    block = actions_block(fake.message(ref.channel, ref.ts)["blocks"])
    assert block is not None
    buttons = {e["action_id"]: e for e in block["elements"]}
    assert set(buttons) == {ACTION_APPROVE, ACTION_DENY} == {"jit_approve", "jit_deny"}
    assert buttons["jit_approve"]["style"] == "primary"
    assert buttons["jit_deny"]["style"] == "danger"
    assert {b["value"] for b in buttons.values()} == {"apr_7f3a9c1e2b4d"}


def test_the_blocks_stay_within_block_kit_limits_whatever_the_workload_writes() -> None:
    huge = "x" * 50_000
    a = view(
        task=Task(id="t" * 300, purpose=("line\n" * 500) + huge),
        scope=Scope.of("pg-orders", "r" * 5000, ["a" * 300, "b"]),
        owner="o" * 3000,
        on_behalf_of="p" * 3000,
    )
    blocks = approval_blocks(a, broker_url=BROKER_URL)
    for b in blocks:
        if b["type"] == "section":
            if "text" in b:
                assert len(b["text"]["text"]) <= 3000
            for f in b.get("fields", []):
                assert len(f["text"]) <= 2000
            assert len(b.get("fields", [])) <= 10
        if b["type"] == "header":
            assert len(b["text"]["text"]) <= 150
    assert len(json.dumps(blocks)) < 12_000


async def test_a_long_purpose_is_clipped_and_slack_still_takes_the_message(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    a = view(task=Task(id="deploy-4711", purpose="why " * 5000))
    ref = await notifier.post_request(a, CHANNEL)
    assert (ref.channel, ref.ts) in fake.messages


# -- updating it --------------------------------------------------------------------------------


async def test_an_approval_in_progress_shows_who_approved_and_keeps_the_buttons(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    a = await posted(notifier, fake, view())
    a = msgspec.structs.replace(a, reviews=(approve("alice", ttl=timedelta(minutes=5)),))
    await notifier.update_request(a)

    message = fake.message(CHANNEL, a.slack_ts or "")
    text = all_text(message["blocks"])
    assert message["blocks"][0]["text"]["text"] == "Access request: PENDING 1/2"
    assert "1 of 2" in text
    assert "alice" in text
    assert "ttl narrowed to 5m" in text
    assert "Waiting for 1 more approval" in text
    assert actions_block(message["blocks"]) is not None
    assert "edited" in message


FINAL = [
    pytest.param(
        {
            "state": ApprovalState.APPROVED,
            "reviews": (approve("alice"), approve("bob")),
            "decided_at": T0 + timedelta(minutes=3),
            "approved_scope": Scope.of("pg-orders", "orders_db", ["read"]),
            "approved_ttl": timedelta(minutes=5),
            "lease_id": "0123abcd.feedface",
        },
        "APPROVED",
        ["alice, bob", "actions `read`", "TTL 5m", "0123abcd.feedface"],
        id="approved",
    ),
    pytest.param(
        {
            "state": ApprovalState.DENIED,
            "reviews": (approve("alice"), deny("carol", "not during the freeze")),
            "decided_at": T0 + timedelta(minutes=3),
        },
        "DENIED",
        ["DENIED* by carol", "carol* denied: not during the freeze"],
        id="denied",
    ),
    pytest.param(
        {"state": ApprovalState.EXPIRED, "decided_at": T0 + timedelta(minutes=15)},
        "EXPIRED",
        ["not enough approvals in time"],
        id="expired",
    ),
    pytest.param(
        {"state": ApprovalState.CANCELLED, "decided_at": T0 + timedelta(minutes=4)},
        "CANCELLED",
        ["CANCELLED* at"],
        id="cancelled",
    ),
]


@pytest.mark.parametrize(("changes", "label", "shown"), FINAL)
async def test_a_final_state_replaces_the_buttons_with_the_outcome(
    notifier: SlackNotifier,
    fake: FakeSlack,
    changes: dict[str, Any],
    label: str,
    shown: list[str],
) -> None:
    a = await posted(notifier, fake, view())
    a = msgspec.structs.replace(a, **changes)
    await notifier.update_request(a)

    (update,) = fake.calls_to("chat.update")
    assert update.params["channel"] == CHANNEL
    assert update.params["ts"] == a.slack_ts
    message = fake.message(CHANNEL, a.slack_ts or "")
    assert message["blocks"][0]["text"]["text"] == f"Access request: {label}"
    assert actions_block(message["blocks"]) is None
    text = all_text(message["blocks"])
    for fact in shown:
        assert fact in text, fact
    if a.decided_at is not None:
        assert f"<!date^{int(a.decided_at.timestamp())}^" in text
    assert label in message["text"]


async def test_a_request_without_a_message_is_not_updated_or_threaded(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    a = view(slack_ts=None)
    await notifier.update_request(a)
    await notifier.post_review(a, approve("alice"))
    assert fake.calls == []


# -- thread replies and DMs ---------------------------------------------------------------------


async def test_each_review_is_a_reply_in_the_request_thread(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    a = await posted(notifier, fake, view())
    await notifier.post_review(a, approve("alice", ttl=timedelta(minutes=5), via="slack"))
    await notifier.post_review(a, deny("bob", "needs a change ticket"))

    replies = fake.replies(CHANNEL, a.slack_ts or "")
    assert [r["thread_ts"] for r in replies] == [a.slack_ts, a.slack_ts]
    assert replies[0]["text"].startswith("*alice* approved (ttl narrowed to 5m)")
    assert replies[1]["text"].startswith("*bob* denied: needs a change ticket")
    assert fake.message(CHANNEL, a.slack_ts or "")["reply_count"] == 2


async def test_a_review_made_through_the_api_says_so(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    a = await posted(notifier, fake, view())
    await notifier.post_review(a, approve("alice", actions=("read",), reason="ok for today"))
    (reply,) = fake.replies(CHANNEL, a.slack_ts or "")
    assert "*alice* approved (actions narrowed to read): ok for today via the API" in reply["text"]


async def test_the_people_behind_a_request_hear_the_outcome_in_a_dm(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    a = view(
        state=ApprovalState.DENIED,
        reviews=(deny("carol", "use the read replica"),),
        decided_at=T0 + timedelta(minutes=2),
    )
    await notifier.notify_people(["U0DAVE", "U0ERIN", "U0DAVE"], a)

    opens = fake.calls_to("conversations.open")
    assert [c.params["users"] for c in opens] == ["U0DAVE", "U0ERIN"]  # once each
    posts = fake.calls_to("chat.postMessage")
    assert [p.params["channel"] for p in posts] == [
        fake.dm_channel("U0DAVE"),
        fake.dm_channel("U0ERIN"),
    ]
    text = posts[0].params["text"]
    assert "*DENIED*" in text
    assert "Decided by carol" in text
    assert "use the read replica" in text
    assert f"{BROKER_URL}/v1/approvals/apr_7f3a9c1e2b4d" in text


async def test_one_unreachable_person_does_not_stop_the_others_being_told(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    a = view(state=ApprovalState.APPROVED, reviews=(approve("alice"), approve("bob")))
    fake.fail("conversations.open", "user_not_found")
    with pytest.raises(SlackUnavailable, match="user_not_found"):
        await notifier.notify_people(["U0GONE", "U0DAVE"], a)
    assert [c.params["channel"] for c in fake.calls_to("chat.postMessage")] == [
        fake.dm_channel("U0DAVE")
    ]


# -- failures -----------------------------------------------------------------------------------


async def test_a_permanent_slack_error_names_its_code_and_is_not_retryable(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    fake.fail("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackUnavailable) as info:
        await notifier.post_request(view(), "C0NOWHERE")
    err = info.value
    assert err.status == 503
    assert err.slack_error == "channel_not_found"
    assert err.retryable is False
    assert "channel_not_found" in str(err)


@pytest.mark.parametrize("code", ["internal_error", "fatal_error", "ratelimited"])
async def test_a_transient_slack_error_is_retryable(
    notifier: SlackNotifier, fake: FakeSlack, code: str
) -> None:
    fake.fail("chat.postMessage", code)
    with pytest.raises(SlackUnavailable) as info:
        await notifier.post_request(view(), CHANNEL)
    assert info.value.retryable is True
    assert info.value.slack_error == code


async def test_rate_limiting_is_unavailable_with_retry_after(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    fake.fail("chat.update", "ratelimited", status=429, retry_after=30)
    a = await posted(notifier, fake, view())
    with pytest.raises(SlackUnavailable, match="rate limited") as info:
        await notifier.update_request(a)
    assert info.value.retry_after == 30
    assert info.value.retryable is True


async def test_http_5xx_is_unavailable(notifier: SlackNotifier, fake: FakeSlack) -> None:
    fake.fail("chat.postMessage", None, status=502)
    with pytest.raises(SlackUnavailable, match="HTTP 502"):
        await notifier.post_request(view(), CHANNEL)


async def test_an_outage_is_unavailable_and_recovery_needs_nothing(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    fake.down = True
    with pytest.raises(SlackUnavailable, match="HTTP 503"):
        await notifier.post_request(view(), CHANNEL)
    fake.down = False
    ref = await notifier.post_request(view(), CHANNEL)
    assert (ref.channel, ref.ts) in fake.messages


async def test_a_dropped_connection_is_unavailable(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    fake.drop = True
    with pytest.raises(SlackUnavailable, match="cannot reach Slack"):
        await notifier.post_request(view(), CHANNEL)


async def test_a_refused_connection_is_unavailable(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    fake.stop()
    with pytest.raises(SlackUnavailable, match="cannot reach Slack"):
        await notifier.notify_people(["U0DAVE"], view())


async def test_a_revoked_token_is_unavailable_and_not_retryable(
    settings: SlackSettings, clock: FakeClock, fake: FakeSlack, tmp_path: Path
) -> None:
    (tmp_path / "other-token").write_text("xoxb-999-999-revokedrevokedrevoked")
    bad = msgspec.structs.replace(settings, bot_token_file=str(tmp_path / "other-token"))
    n = SlackNotifier(bad, clock, broker_url=BROKER_URL)
    try:
        with pytest.raises(SlackUnavailable, match="invalid_auth") as info:
            await n.post_request(view(), CHANNEL)
        assert info.value.retryable is False
    finally:
        await n.aclose()


async def test_an_answer_that_is_not_slack_json_is_unavailable(
    settings: SlackSettings, clock: FakeClock
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class CaptivePortal(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html>login</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), CaptivePortal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    portal = msgspec.structs.replace(
        settings, api_url=f"http://127.0.0.1:{server.server_address[1]}/api/"
    )
    n = SlackNotifier(portal, clock, broker_url=BROKER_URL)
    try:
        with pytest.raises(SlackUnavailable, match="not a Slack API answer"):
            await n.post_request(view(), CHANNEL)
    finally:
        await n.aclose()
        server.shutdown()


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "content", "message"),
    [
        ("bot_token_file", None, "approvals.slack.bot_token_file: file not found"),
        ("bot_token_file", "  \n", "approvals.slack.bot_token_file: .* is empty"),
        ("bot_token_file", "xoxp-user-token", "does not hold a bot token"),
        ("bot_token_file", "xoxb-1 2", "on one line"),
        ("signing_secret_file", None, "approvals.slack.signing_secret_file: file not found"),
        ("signing_secret_file", "", "approvals.slack.signing_secret_file: .* is empty"),
    ],
)
def test_a_missing_or_bad_secret_file_stops_start_up_naming_the_key(
    settings: SlackSettings,
    clock: FakeClock,
    tmp_path: Path,
    key: str,
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / f"bad-{key}"
    if content is not None:
        path.write_text(content)
    bad = msgspec.structs.replace(settings, **{key: str(path)})
    with pytest.raises(ConfigError, match=message):
        SlackNotifier(bad, clock, broker_url=BROKER_URL)


def test_the_token_is_never_sent_over_plain_http_to_another_host(
    settings: SlackSettings, clock: FakeClock
) -> None:
    bad = msgspec.structs.replace(settings, api_url="http://slack.example.com/api/")
    with pytest.raises(ConfigError, match=r"approvals\.slack\.api_url"):
        SlackNotifier(bad, clock, broker_url=BROKER_URL)


# -- request signing ----------------------------------------------------------------------------

# Slack's worked example ("Verifying requests from Slack").
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TIMESTAMP = 1531420618
DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


def test_the_signing_helper_reproduces_slacks_documented_example() -> None:
    assert sign_request(DOC_BODY, DOC_SECRET, DOC_TIMESTAMP) == {
        "X-Slack-Signature": DOC_SIGNATURE,
        "X-Slack-Request-Timestamp": str(DOC_TIMESTAMP),
    }


async def test_the_verifier_accepts_slacks_documented_example(
    settings: SlackSettings, tmp_path: Path
) -> None:
    (tmp_path / "doc-secret").write_text(DOC_SECRET)
    doc = msgspec.structs.replace(settings, signing_secret_file=str(tmp_path / "doc-secret"))
    n = SlackNotifier(
        doc, FakeClock(datetime.fromtimestamp(DOC_TIMESTAMP, UTC)), broker_url=BROKER_URL
    )
    try:
        n.verify(
            {"X-Slack-Signature": DOC_SIGNATURE, "X-Slack-Request-Timestamp": str(DOC_TIMESTAMP)},
            DOC_BODY,
        )
    finally:
        await n.aclose()


def now_ts(clock: FakeClock) -> int:
    return int(clock.now().timestamp())


def test_a_correctly_signed_request_verifies(
    notifier: SlackNotifier, clock: FakeClock, signing_secret: str
) -> None:
    body = interaction_body("apr_1", "approve", "U0ALICE")
    notifier.verify(sign_request(body, signing_secret, now_ts(clock)), body)


def test_header_names_are_case_insensitive(
    notifier: SlackNotifier, clock: FakeClock, signing_secret: str
) -> None:
    body = interaction_body("apr_1", "approve", "U0ALICE")
    headers = {k.lower(): v for k, v in sign_request(body, signing_secret, now_ts(clock)).items()}
    notifier.verify(headers, body)


@pytest.mark.parametrize("skew", [-300, 300])
def test_a_timestamp_exactly_five_minutes_off_is_still_fresh(
    notifier: SlackNotifier, clock: FakeClock, signing_secret: str, skew: int
) -> None:
    body = interaction_body("apr_1", "approve", "U0ALICE")
    notifier.verify(sign_request(body, signing_secret, now_ts(clock) + skew), body)


@pytest.mark.parametrize("skew", [-301, 301, -86_400], ids=["past", "future", "a-day-old"])
def test_a_stale_request_is_refused_in_either_direction(
    notifier: SlackNotifier, clock: FakeClock, signing_secret: str, skew: int
) -> None:
    body = interaction_body("apr_1", "approve", "U0ALICE")
    with pytest.raises(AuthenticationError, match="stale Slack request"):
        notifier.verify(sign_request(body, signing_secret, now_ts(clock) + skew), body)


def test_a_request_signed_earlier_goes_stale_when_the_clock_moves_on(
    notifier: SlackNotifier, clock: FakeClock, signing_secret: str
) -> None:
    body = interaction_body("apr_1", "approve", "U0ALICE")
    headers = sign_request(body, signing_secret, now_ts(clock))
    clock.advance(timedelta(minutes=5, seconds=1))
    with pytest.raises(AuthenticationError, match="stale Slack request"):
        notifier.verify(headers, body)


def test_the_same_signed_request_verifies_again_inside_the_window(
    notifier: SlackNotifier, clock: FakeClock, signing_secret: str
) -> None:
    """Replays inside the five minutes are the caller's to refuse (a seen-set shared by the
    replicas, in Redis); verify() is a pure check of signature and time."""
    body = interaction_body("apr_1", "approve", "U0ALICE")
    headers = sign_request(body, signing_secret, now_ts(clock))
    notifier.verify(headers, body)
    clock.advance(30)
    notifier.verify(headers, body)


def forged(body: bytes, headers: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """The signature of one body, on another (alice's click turned into a deny)."""
    return headers, body.replace(b"jit_approve", b"jit_deny")


ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def bad_request(case: str, secret: str, ts: int) -> tuple[dict[str, str], bytes]:
    body = interaction_body("apr_1", "approve", "U0ALICE", action_ts="1893456000.000001")
    good = sign_request(body, secret, ts)
    sig = good["X-Slack-Signature"]
    cases: dict[str, tuple[dict[str, str], bytes]] = {
        "forged body": forged(body, good),
        "wrong secret": (sign_request(body, "not-the-secret", ts), body),
        "no signature": ({"X-Slack-Request-Timestamp": str(ts)}, body),
        "no timestamp": ({"X-Slack-Signature": sig}, body),
        "no headers": ({}, body),
        "other version": ({**good, "X-Slack-Signature": "v1=" + sig[3:]}, body),
        "not hex": ({**good, "X-Slack-Signature": "v0=" + "z" * 64}, body),
        "uppercase hex": ({**good, "X-Slack-Signature": sig.upper()}, body),
        "truncated": ({**good, "X-Slack-Signature": sig[:-2]}, body),
        "timestamp not a number": ({**good, "X-Slack-Request-Timestamp": "1e9"}, body),
        "timestamp in other digits": (
            {**good, "X-Slack-Request-Timestamp": str(ts).translate(ARABIC_INDIC)},
            body,
        ),
        "signed for another time": ({**good, "X-Slack-Request-Timestamp": str(ts - 1)}, body),
        "empty body": (good, b""),
        "non-ascii signature": ({**good, "X-Slack-Signature": "v0=" + "é" * 64}, body),
    }
    return cases[case]


BAD_REQUESTS = [
    "forged body",
    "wrong secret",
    "no signature",
    "no timestamp",
    "no headers",
    "other version",
    "not hex",
    "uppercase hex",
    "truncated",
    "timestamp not a number",
    "timestamp in other digits",
    "signed for another time",
    "empty body",
    "non-ascii signature",
]


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_request_that_slack_did_not_sign_is_refused(
    notifier: SlackNotifier, clock: FakeClock, signing_secret: str, case: str
) -> None:
    headers, body = bad_request(case, signing_secret, now_ts(clock))
    with pytest.raises(AuthenticationError) as info:
        notifier.verify(headers, body)
    assert info.value.message == "invalid Slack signature"


# -- interaction payloads -----------------------------------------------------------------------


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_button_click_becomes_a_slack_action(notifier: SlackNotifier, decision: str) -> None:
    body = interaction_body(
        "apr_7f3a9c1e2b4d",
        decision,
        "U0ALICE",
        channel="C0APPROVALS",
        message_ts="1893456000.000100",
        action_ts="1893456123.456789",
    )
    assert notifier.parse_action(body) == SlackAction(
        approval_id="apr_7f3a9c1e2b4d",
        decision=decision,  # type: ignore[arg-type]
        slack_user="U0ALICE",
        action_ts="1893456123.456789",
        channel="C0APPROVALS",
        message_ts="1893456000.000100",
    )


def form(payload: object) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return urllib.parse.urlencode({"payload": text}).encode()


def mutated(**changes: Any) -> bytes:
    p = interaction_payload("apr_1", "approve", "U0ALICE")
    for path, value in changes.items():
        target: Any = p
        *parents, last = path.split("__")
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return form(p)


MALFORMED = [
    pytest.param(b"", id="empty body"),
    pytest.param(b"\xff\xfe", id="not utf-8"),
    pytest.param(b'{"type": "block_actions"}', id="json, not a form"),
    pytest.param(b"payload=1&payload=2", id="two payloads"),
    pytest.param(b"token=abc", id="no payload"),
    pytest.param(form("{not json"), id="payload not json"),
    pytest.param(form([1, 2]), id="payload not an object"),
    pytest.param(mutated(type="view_submission"), id="not block_actions"),
    pytest.param(mutated(user=...), id="no user"),
    pytest.param(mutated(user={"id": "<!channel>"}), id="bad user id"),
    pytest.param(mutated(actions=[]), id="no action"),
    pytest.param(
        form(
            {
                **interaction_payload("apr_1", "approve", "U0ALICE"),
                "actions": interaction_payload("apr_1", "approve", "U0ALICE")["actions"] * 2,
            }
        ),
        id="two actions",
    ),
    pytest.param(mutated(actions__0__action_id="some_other_app"), id="foreign button"),
    pytest.param(mutated(actions__0__type="static_select"), id="not a button"),
    pytest.param(mutated(actions__0__value=...), id="no approval id"),
    pytest.param(mutated(actions__0__value=""), id="empty approval id"),
    pytest.param(mutated(actions__0__value="apr 1/../x"), id="approval id with junk"),
    pytest.param(mutated(actions__0__value=7), id="approval id not a string"),
    pytest.param(mutated(actions__0__value="apr_1\n"), id="approval id with a newline"),
    pytest.param(mutated(actions__0__action_ts=...), id="no action_ts"),
    pytest.param(mutated(container__message_ts="yesterday"), id="bad message ts"),
]


@pytest.mark.parametrize("body", MALFORMED)
def test_a_malformed_interaction_is_an_invalid_request(
    notifier: SlackNotifier, body: bytes
) -> None:
    with pytest.raises(InvalidRequest):
        notifier.parse_action(body)


def test_the_channel_falls_back_to_the_payload_channel(notifier: SlackNotifier) -> None:
    body = mutated(container={"type": "message"})
    action = notifier.parse_action(body)
    assert action.channel == "C0APPROVALS"
    assert action.message_ts is None


# -- escaping -----------------------------------------------------------------------------------


def test_mrkdwn_escaping_covers_the_three_control_characters() -> None:
    assert escape_mrkdwn("a & <b> <!here>") == "a &amp; &lt;b&gt; &lt;!here&gt;"


async def test_workload_text_cannot_inject_links_mentions_or_fake_lines(
    notifier: SlackNotifier, fake: FakeSlack
) -> None:
    evil = "<!channel> <https://evil.example|click to approve> <@U0BOSS> & more"
    a = view(
        task=Task(id="t-<!here>", purpose=f"{evil}\n*Approved by security*"),
        owner="github:<!everyone>",
        on_behalf_of="<@U0CEO>",
        scope=Scope.of("pg-orders", "db\n*Quorum* 0 of 0\u202e", ["read"]),
        reviews=(deny("bob", "<https://evil.example|appeal here>"),),
    )
    ref = await notifier.post_request(a, CHANNEL)
    message = fake.message(ref.channel, ref.ts)
    text = all_text(message["blocks"]) + message["text"]
    for raw in ["<!channel>", "<!here>", "<!everyone>", "<@U0", "<https://evil", "\u202e"]:
        assert raw not in text, raw
    assert "&lt;!channel&gt;" in text
    assert "&lt;https://evil.example|click to approve&gt;" in text
    assert " &amp; more" in text
    # the purpose is quoted line by line, so it cannot start a line of its own
    purpose = next(b for b in message["blocks"] if "Purpose" in b.get("text", {}).get("text", ""))
    assert "\n>*Approved by security*" in purpose["text"]["text"]
    # a newline in a resource name cannot fake a line of the message
    assert "\n*Quorum* 0 of 0" not in text
    # every mrkdwn object we send is verbatim: Slack auto-links nothing
    for block in message["blocks"]:
        objs = [block.get("text"), *block.get("fields", []), *block.get("elements", [])]
        for obj in objs:
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                assert obj["verbatim"] is True


# -- secrets ------------------------------------------------------------------------------------


async def test_no_token_or_signing_secret_reaches_a_log_or_an_exception(
    notifier: SlackNotifier,
    fake: FakeSlack,
    clock: FakeClock,
    token: str,
    signing_secret: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []

    async def attempt(coro: Any) -> None:
        try:
            await coro
        except Exception as exc:
            errors.append(exc)

    a = await posted(notifier, fake, view())
    await notifier.update_request(msgspec.structs.replace(a, state=ApprovalState.CANCELLED))
    await notifier.post_review(a, approve("alice"))
    await notifier.notify_people(["U0DAVE"], a)
    fake.fail("chat.postMessage", "invalid_auth")
    await attempt(notifier.post_request(a, CHANNEL))
    fake.fail("chat.update", "x", status=429, retry_after=1)
    await attempt(notifier.update_request(a))
    fake.down = True
    await attempt(notifier.post_request(a, CHANNEL))
    fake.down, fake.drop = False, True
    await attempt(notifier.post_request(a, CHANNEL))
    body = interaction_body("apr_1", "approve", "U0ALICE")
    for headers in (
        sign_request(body, "wrong", now_ts(clock)),
        sign_request(body, signing_secret, now_ts(clock) - 3600),
        {},
    ):
        try:
            notifier.verify(headers, body)
        except AuthenticationError as exc:
            errors.append(exc)
    for bad in (b"payload=%7B", b"junk"):
        try:
            notifier.parse_action(bad)
        except InvalidRequest as exc:
            errors.append(exc)

    assert len(errors) == 9
    seen = caplog.text + "".join(
        f"{e!s} {e!r} {getattr(e, '__cause__', '')!r} {getattr(e, '__context__', '')!r}"
        for e in errors
    )
    seen += repr(notifier) + "".join(str(r.args) for r in caplog.records)
    assert caplog.records  # something was logged
    for secret in (token, signing_secret):
        assert secret not in seen
    assert token not in repr(fake.messages)


# -- the fake itself (the lead's API tests rely on its wire format) -----------------------------


def test_the_fake_speaks_form_encoding_and_json_as_slack_documents(fake: FakeSlack) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {fake.token}"}
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]
    with httpx.Client(base_url=fake.url, headers=auth) as http:
        form_answer = http.post(
            "chat.postMessage",
            data={"channel": CHANNEL, "text": "hi", "blocks": json.dumps(blocks)},
        ).json()
        assert form_answer["ok"] is True
        assert form_answer["channel"] == CHANNEL
        ts = form_answer["ts"]
        assert fake.message(CHANNEL, ts)["blocks"] == blocks
        reply = http.post(
            "chat.postMessage", json={"channel": CHANNEL, "text": "r", "thread_ts": ts}
        ).json()
        assert reply["message"]["thread_ts"] == ts
        updated = http.post(
            "chat.update", json={"channel": CHANNEL, "ts": ts, "text": "edited"}
        ).json()
        assert updated["ok"] is True
        assert fake.message(CHANNEL, ts)["text"] == "edited"
        assert "blocks" not in fake.message(CHANNEL, ts)
        opened = http.post("conversations.open", data={"users": "U0DAVE"}).json()
        assert opened == {"ok": True, "channel": {"id": fake.dm_channel("U0DAVE")}}
    assert [c.content_type.split(";")[0] for c in fake.calls] == [
        "application/x-www-form-urlencoded",
        "application/json",
        "application/json",
        "application/x-www-form-urlencoded",
    ]


@pytest.mark.parametrize(
    ("method", "body", "headers", "error"),
    [
        ("chat.postMessage", {"channel": CHANNEL, "text": "x"}, {}, "not_authed"),
        (
            "chat.postMessage",
            {"channel": CHANNEL, "text": "x"},
            {"Authorization": "Bearer xoxb-wrong"},
            "invalid_auth",
        ),
        ("chat.postMessage", {"text": "x"}, None, "channel_not_found"),
        ("chat.postMessage", {"channel": CHANNEL}, None, "no_text"),
        (
            "chat.postMessage",
            {"channel": CHANNEL, "blocks": [{"type": "x"}]},
            None,
            "invalid_blocks",
        ),
        (
            "chat.postMessage",
            {"channel": CHANNEL, "text": "x", "thread_ts": "1.000001"},
            None,
            "thread_not_found",
        ),
        (
            "chat.update",
            {"channel": CHANNEL, "ts": "1.000001", "text": "x"},
            None,
            "message_not_found",
        ),
        ("conversations.open", {"users": "not-a-user"}, None, "user_not_found"),
        ("chat.delete", {"channel": CHANNEL, "ts": "1.000001"}, None, "unknown_method"),
    ],
)
def test_the_fake_answers_slack_errors(
    fake: FakeSlack,
    method: str,
    body: dict[str, Any],
    headers: dict[str, str] | None,
    error: str,
) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {fake.token}"} if headers is None else headers
    answer = httpx.post(fake.url + method, json=body, headers=auth)
    assert answer.status_code == 200
    assert answer.json()["ok"] is False
    assert answer.json()["error"] == error
