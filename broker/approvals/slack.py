"""The Slack layer of human approvals: post, update and thread approval requests; verify and
parse the button clicks Slack sends back.

Owns everything that speaks Slack and nothing else: the approval core decides; this module
renders its decisions and brings clicks in as plain values.

- Outbound: the Slack Web API (``chat.postMessage``, ``chat.update``, ``conversations.open``)
  through slack_sdk's ``WebClient`` (the standard library's HTTP client, run in a worker thread
  so the event loop never blocks), with the bot token in the ``Authorization`` header only, one
  verifying TLS context per process and slack_sdk's own retries off (retrying is the approval
  flow's job, with backoff). Every failure — network, timeout, HTTP 429/5xx, ``ok: false``, an
  answer that is not a Slack API answer — becomes :class:`SlackUnavailable` (503); the Slack
  error code is in its message and attributes, the token never is.
- Inbound: :meth:`SlackNotifier.verify` checks the header formats and a timestamp within five
  minutes of the injected clock (past and future), then Slack's v0 request signature
  (HMAC-SHA256 over ``v0:<timestamp>:<body>`` with the signing secret, constant-time compare)
  with slack_sdk's ``SignatureVerifier`` on that same clock;
  :meth:`SlackNotifier.parse_action` turns a ``block_actions`` payload into a
  :class:`SlackAction`. Refusing replays inside the window (a seen-set shared by replicas) and
  who the Slack user is (and whether they may approve) are the core's
  decisions (the latter through ``approvals.people.<name>.slack``).
- Rendering: :func:`approval_blocks` (Block Kit). Every piece of text that a workload or an
  approver controls is cleaned of control characters, clipped, and escaped for mrkdwn
  (``&``, ``<``, ``>``), in ``verbatim`` text objects (no auto-linking of URLs, channel names or
  mentions); the purpose is shown as a quote and labelled as unverified. Text grants nothing.

slack_sdk is a dependency of the project and this is the only module that imports it. Tests
point ``api_url`` at a fake Slack Web API on loopback (tests/fakes/slack_api.py) and sign the
interaction requests they send with their own implementation of Slack's v0 signing.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import logging
import re
import ssl
import unicodedata
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import Clock as SlackSdkClock
from slack_sdk.signature import SignatureVerifier

from broker.approvals.model import ApprovalState, ApprovalView, Review
from broker.clock import Clock
from broker.config import SlackSettings
from broker.errors import AuthenticationError, BrokerError, ConfigError, InvalidRequest
from broker.types import Secret
from broker.urls import check_url

__all__ = [
    "ACTION_APPROVE",
    "ACTION_DENY",
    "SIGNATURE_MAX_AGE",
    "SlackAction",
    "SlackNotifier",
    "SlackRef",
    "SlackUnavailable",
    "approval_blocks",
    "escape_mrkdwn",
]

log = logging.getLogger("jit.approvals.slack")

#: ``action_id`` of the two buttons; their ``value`` is the approval id.
ACTION_APPROVE = "jit_approve"
ACTION_DENY = "jit_deny"
_DECISIONS: dict[str, Literal["approve", "deny"]] = {
    ACTION_APPROVE: "approve",
    ACTION_DENY: "deny",
}

#: How far a request's timestamp may be from now, either way (Slack's recommendation).
SIGNATURE_MAX_AGE = timedelta(minutes=5)

#: Slack ``error`` codes that mean "try again later" rather than "this call is wrong".
TRANSIENT_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "request_timeout",
        "service_unavailable",
        "fatal_error",
        "internal_error",
        "team_added_to_org",
    }
)

_BOT_TOKEN_PREFIXES = ("xoxb-", "xoxe.xoxb-")  # a bot token; xoxe.xoxb- when rotation is on
_SLACK_ERROR = re.compile(r"[a-z0-9_.]{1,64}")
_APPROVAL_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SLACK_ID = re.compile(r"[A-Z0-9]{2,32}")
_SLACK_TS = re.compile(r"[0-9]{1,12}\.[0-9]{1,9}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# Clipping keeps every text object well inside Block Kit's limits (field 2000, section 3000,
# header 150) and the whole message far below Slack's total, so a long purpose or resource name
# cannot make Slack refuse the request message.
_MAX_WORD = 200
_MAX_PURPOSE = 1500
_MAX_PURPOSE_LINES = 20
_MAX_REASON = 500
_MAX_FALLBACK = 2000


class SlackUnavailable(BrokerError):
    """Slack could not be reached, or answered with an error.

    ``slack_error`` is Slack's error code when it answered ``ok: false`` (``None`` for network
    and HTTP failures); ``retryable`` is False only for errors that will not go away by
    themselves (``channel_not_found``, ``invalid_auth`` …); ``retry_after`` is Slack's
    ``Retry-After`` in seconds on a 429."""

    status = 503
    code = "slack-unavailable"
    oauth_error = "temporarily_unavailable"

    def __init__(
        self,
        message: str,
        *,
        slack_error: str | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.slack_error = slack_error
        self.retryable = retryable
        self.retry_after = retry_after


class SlackRef(msgspec.Struct, frozen=True):
    """Where a message lives: its channel id and its ``ts``."""

    channel: str
    ts: str


class SlackAction(msgspec.Struct, frozen=True):
    """A verified button click, as plain values. ``slack_user`` is the clicking user's Slack id;
    mapping it to a configured person (and refusing unknown users) is the approval core's job.
    ``action_ts`` is unique per click (a dedupe key)."""

    approval_id: str
    decision: Literal["approve", "deny"]
    slack_user: str
    action_ts: str
    channel: str | None = None
    message_ts: str | None = None


# -- rendering ----------------------------------------------------------------------------------


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn gives meaning to (``&``, ``<``, ``>``), so
    text cannot form links, user/channel mentions or ``<!here>``-style commands."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clean(text: str, *, keep_newlines: bool = False) -> str:
    """Control and format characters (including bidi overrides and zero-width characters) become
    spaces: they could hide or reorder what an approver reads."""
    out = []
    for ch in text.replace("\r\n", "\n"):
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _word(text: str, limit: int = _MAX_WORD) -> str:
    """One user-controlled value on one line, escaped; as inline code when it holds no backtick
    (code is immune to *bold*/_italic_ spoofing)."""
    s = _clip(_clean(text).strip(), limit)
    if not s:
        return "_(none)_"
    return f"`{escape_mrkdwn(s)}`" if "`" not in s else escape_mrkdwn(s)


def _plain(text: str, limit: int = _MAX_WORD) -> str:
    """One user-controlled value on one line, escaped, without code formatting."""
    return escape_mrkdwn(_clip(_clean(text).strip(), limit))


def _quote(text: str) -> str:
    """Free text (a purpose) as a block quote: every line prefixed, cleaned, escaped."""
    s = _clean(text, keep_newlines=True).strip()
    if not s:
        return "_(no purpose given)_"
    lines = _clip(s, _MAX_PURPOSE).split("\n")
    if len(lines) > _MAX_PURPOSE_LINES:
        lines = [*lines[:_MAX_PURPOSE_LINES], "…"]
    return "\n".join(">" + escape_mrkdwn(line) for line in lines)


def _names(names: Sequence[str]) -> str:
    return ", ".join(_plain(n, 80) for n in names) if names else "_(none)_"


def _duration(d: timedelta) -> str:
    """timedelta → the config syntax: ``15m``, ``1h30m``, ``90s`` → ``1m30s``."""
    total = int(d.total_seconds())
    if total <= 0:
        return "0s"
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def _when(t: datetime) -> str:
    """A time every reader sees in their own time zone (Slack's date formatting), with UTC as
    the fallback text."""
    utc = t.astimezone(UTC)
    fallback = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<!date^{int(utc.timestamp())}^{{date_short_pretty}} {{time_secs}}|{fallback}>"


def _link(broker_url: str, approval_id: str) -> str:
    return f"{broker_url.rstrip('/')}/v1/approvals/{urllib.parse.quote(approval_id, safe='')}"


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: Slack must not auto-link URLs, channel names or mentions in what we send.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _label(a: ApprovalView) -> str:
    """``PENDING 1/2``, ``APPROVED``, ``DENIED``, ``EXPIRED``, ``CANCELLED``."""
    if a.state is ApprovalState.PENDING:
        return f"PENDING {len(a.approvals)}/{a.quorum}"
    return a.state.value.upper()


def _review_line(r: Review) -> str:
    """``alice approved (ttl narrowed to 5m)``, ``bob denied: not during the freeze``."""
    who = f"*{_plain(r.person, 80)}*"
    if r.decision == "deny":
        reason = _plain(r.reason, _MAX_REASON)
        return f"{who} denied: {reason}" if reason else f"{who} denied"
    narrowed = []
    if r.ttl is not None:
        narrowed.append(f"ttl narrowed to {_duration(r.ttl)}")
    if r.actions is not None:
        narrowed.append(f"actions narrowed to {_plain(', '.join(r.actions))}")
    line = f"{who} approved" + (f" ({'; '.join(narrowed)})" if narrowed else "")
    reason = _plain(r.reason, _MAX_REASON)
    return f"{line}: {reason}" if reason else line


def _deciders(a: ApprovalView) -> tuple[str, ...]:
    if a.state is ApprovalState.APPROVED:
        return tuple(r.person for r in a.approvals)
    if a.state is ApprovalState.DENIED:
        return tuple(r.person for r in a.reviews if r.decision == "deny")
    return ()


def _outcome(a: ApprovalView) -> str:
    """What happened (or what is awaited), who decided and when."""
    at = _when(a.decided_at) if a.decided_at is not None else None
    if a.state is ApprovalState.PENDING:
        head = (
            f"*Waiting for {a.needed} more approval{'s' if a.needed != 1 else ''}* "
            f"(quorum {a.quorum}) before {_when(a.expires_at)}"
        )
    elif a.state is ApprovalState.APPROVED:
        head = f"*APPROVED* by {_names(_deciders(a))}" + (f" at {at}" if at else "")
        granted = []
        if a.approved_scope is not None and a.approved_scope != a.scope:
            granted.append(f"actions {_word(', '.join(a.approved_scope.actions))}")
        if a.approved_ttl is not None and a.approved_ttl != a.ttl:
            granted.append(f"TTL {_duration(a.approved_ttl)}")
        if granted:
            head += "\nApproved narrower than asked: " + ", ".join(granted)
        if a.lease_id is not None:
            head += f"\nCredential issued: lease {_word(a.lease_id)}"
    elif a.state is ApprovalState.DENIED:
        head = f"*DENIED* by {_names(_deciders(a))}" + (f" at {at}" if at else "")
    elif a.state is ApprovalState.EXPIRED:
        head = f"*EXPIRED* at {at or _when(a.expires_at)}: not enough approvals in time"
    else:
        head = "*CANCELLED*" + (f" at {at}" if at else "")
    if a.reviews:
        head += "\n" + "\n".join(f"• {_review_line(r)}" for r in a.reviews[:20])
    return head


def approval_blocks(a: ApprovalView, *, broker_url: str) -> list[dict[str, Any]]:
    """The Block Kit message for an approval request in its current state.

    Shows: who asks (workload, its identity issuer and subject, the person it acts for, the
    grant's owner); the task and its stated purpose; the exact scope and TTL asked; the grant
    and policy version; the quorum, approvals so far and by whom; when the request expires; a
    link to the request in the broker. While pending, an actions block with Approve (primary,
    ``jit_approve``) and Deny (danger, ``jit_deny``) buttons whose value is the approval id;
    once final, the outcome instead of the buttons.
    """
    p = a.principal
    who = (
        f"*Requested by* {_word(a.owner)}\n"
        f"identity issuer {_word(p.issuer)}, subject {_word(p.subject)}"
    )
    if a.on_behalf_of:
        who += f"\n*On behalf of* {_word(a.on_behalf_of)}"
    who += f"\n*Grant owner* {_word(a.grant_owner)}"
    approvals = a.approvals
    so_far = f"{len(approvals)} of {a.quorum}"
    if approvals:
        so_far += f"\nby {_names([r.person for r in approvals])}"
    fields = [
        f"*Issuer*\n{_word(a.scope.issuer)}",
        f"*Resource*\n{_word(a.scope.resource)}",
        f"*Actions*\n{_word(', '.join(a.scope.actions))}",
        f"*TTL asked*\n{_duration(a.ttl)}",
        f"*Task*\n{_word(a.task.id)}",
        f"*Grant*\n{_word(a.grant)}",
        f"*Policy version*\n{_word(a.policy_version)}",
        f"*Request expires*\n{_when(a.expires_at)}",
        f"*Approvals*\n{so_far}",
        f"*May approve*\n{_names(a.approvers[:20])}",
    ]
    link = _link(broker_url, a.id)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"Access request: {_label(a)}", "emoji": False},
        },
        _section(who),
        {"type": "section", "fields": [_mrkdwn(f) for f in fields]},
        _section(
            "*Purpose* (stated by the requester, not verified; it grants nothing)\n"
            + _quote(a.task.purpose)
        ),
        _section(_outcome(a)),
        {
            "type": "context",
            "elements": [
                _mrkdwn(
                    f"Approval {_word(a.id)} · <{link}|open in jit-broker> · {escape_mrkdwn(link)}"
                ),
            ],
        },
    ]
    if a.state is ApprovalState.PENDING:
        blocks.append(
            {
                "type": "actions",
                "block_id": "jit_decision",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ACTION_APPROVE,
                        "text": {"type": "plain_text", "text": "Approve", "emoji": False},
                        "style": "primary",
                        "value": a.id,
                        "confirm": {
                            "title": {"type": "plain_text", "text": "Approve this request?"},
                            "text": {
                                "type": "plain_text",
                                "text": "A credential will be issued for exactly the scope and "
                                "TTL shown in the request.",
                            },
                            "confirm": {"type": "plain_text", "text": "Approve"},
                            "deny": {"type": "plain_text", "text": "Cancel"},
                        },
                    },
                    {
                        "type": "button",
                        "action_id": ACTION_DENY,
                        "text": {"type": "plain_text", "text": "Deny", "emoji": False},
                        "style": "danger",
                        "value": a.id,
                    },
                ],
            }
        )
    return blocks


def _fallback(a: ApprovalView) -> str:
    """The plain ``text`` of the request message (notifications, screen readers)."""
    s = a.scope
    text = (
        f"Access request {a.id} ({_label(a)}): {_clean(a.owner)} asks for "
        f"{', '.join(s.actions)} on {_clean(s.issuer)} {_clean(s.resource)} "
        f"for {_duration(a.ttl)}"
    )
    return escape_mrkdwn(_clip(_clean(text), _MAX_FALLBACK))


# -- payload parsing ----------------------------------------------------------------------------


class _User(msgspec.Struct):
    id: str


class _Action(msgspec.Struct):
    action_id: str
    type: str = ""
    value: str | None = None
    action_ts: str | None = None


class _Container(msgspec.Struct):
    channel_id: str | None = None
    message_ts: str | None = None


class _Channel(msgspec.Struct):
    id: str | None = None


class _Payload(msgspec.Struct):
    type: str
    user: _User
    actions: list[_Action] = msgspec.field(default_factory=list)
    container: _Container | None = None
    channel: _Channel | None = None


# -- the notifier -------------------------------------------------------------------------------


def _read_secret_file(key: str, path: str) -> Secret:
    """A secret from a file: stripped of surrounding whitespace, never empty, one line."""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"approvals.slack.{key}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"approvals.slack.{key}: cannot read {path}: {reason}") from None
    if not value:
        raise ConfigError(f"approvals.slack.{key}: {path} is empty")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"approvals.slack.{key}: {path} must hold the value on one line")
    return Secret(value)


class _SlackClock(SlackSdkClock):
    """slack_sdk's verifier asks its clock for epoch seconds: ours is injected."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.now().timestamp()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one costs ~50 ms; it is shareable)."""
    return httpx.create_ssl_context()


def _check_api_url(url: str) -> None:
    """The bot token travels to this URL: the one transport rule (:mod:`broker.urls`)."""
    try:
        check_url(url)
    except ValueError as exc:
        raise ConfigError(f"approvals.slack.api_url: {exc}") from None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        for k, v in headers.items():
            if k.lower() == wanted:
                return v
    return value


class SlackNotifier:
    """Posts and updates approval requests in Slack and checks what Slack sends back.

    ``broker_url`` is the broker's public URL (links in messages). The token and signing secret
    are read from the files named in ``settings`` at construction (``ConfigError`` naming the
    key when a file is missing, unreadable or empty); restart the broker to rotate them.
    """

    def __init__(self, settings: SlackSettings, clock: Clock, *, broker_url: str) -> None:
        self._clock = clock
        self._broker_url = broker_url.rstrip("/")
        self._token = _read_secret_file("bot_token_file", settings.bot_token_file)
        if not self._token.reveal().startswith(_BOT_TOKEN_PREFIXES):
            raise ConfigError(
                f"approvals.slack.bot_token_file: {settings.bot_token_file} does not hold a "
                "bot token (xoxb-…)"
            )
        self._signing_secret = _read_secret_file(
            "signing_secret_file", settings.signing_secret_file
        )
        _check_api_url(settings.api_url)
        timeout = settings.timeout.total_seconds()
        if timeout <= 0:
            raise ConfigError("approvals.slack.timeout: must be positive")
        self._api_url = (
            settings.api_url if settings.api_url.endswith("/") else settings.api_url + "/"
        )
        # slack_sdk's WebClient (stdlib HTTP, no extra dependency), run in a worker thread.
        self._client = WebClient(
            token=self._token.reveal(),
            base_url=self._api_url,
            timeout=max(1, int(timeout)),
            ssl=_ssl_context(),
            user_agent_prefix="jit-broker",
        )
        self._client.retry_handlers = []  # retries are the approval flow's job (with backoff)
        self._verifier = SignatureVerifier(self._signing_secret.reveal(), clock=_SlackClock(clock))

    def __repr__(self) -> str:
        return f"SlackNotifier(api_url={self._api_url!r})"

    # -- outbound -------------------------------------------------------------------------------

    async def post_request(self, a: ApprovalView, channel: str) -> SlackRef:
        """Post the request message (blocks + a plain-text fallback) to ``channel``; returns
        where it landed (Slack resolves a channel name to its id)."""
        data = await self._call(
            "chat.postMessage",
            {
                "channel": channel,
                "text": _fallback(a),
                "blocks": approval_blocks(a, broker_url=self._broker_url),
                **_QUIET,
            },
        )
        ref_channel, ts = data.get("channel"), data.get("ts")
        if not isinstance(ref_channel, str) or not isinstance(ts, str) or not ref_channel or not ts:
            raise SlackUnavailable("Slack chat.postMessage: answer without channel and ts")
        log.info("slack: posted approval %s to %s (ts %s)", a.id, ref_channel, ts)
        return SlackRef(channel=ref_channel, ts=ts)

    async def update_request(self, a: ApprovalView) -> None:
        """Re-render the request message in ``a.channel``/``a.slack_ts`` for the current state;
        the buttons go once the request is final. Does nothing when the request has no
        message (it was never posted, e.g. Slack was down when it was opened)."""
        if not a.channel or not a.slack_ts:
            log.debug("slack: approval %s has no message to update", a.id)
            return
        await self._call(
            "chat.update",
            {
                "channel": a.channel,
                "ts": a.slack_ts,
                "text": _fallback(a),
                "blocks": approval_blocks(a, broker_url=self._broker_url),
                "parse": "none",
                "link_names": False,
            },
        )
        log.info("slack: updated approval %s (%s)", a.id, _label(a))

    async def post_review(self, a: ApprovalView, review: Review) -> None:
        """A thread reply under the request message: ``alice approved (ttl narrowed to 5m)`` or
        ``bob denied: reason``. Does nothing when the request has no message."""
        if not a.channel or not a.slack_ts:
            log.debug("slack: approval %s has no message to reply to", a.id)
            return
        line = _review_line(review)
        via = " via the API" if review.via == "api" else ""
        text = f"{line}{via} · {_label(a)}"
        await self._call(
            "chat.postMessage",
            {
                "channel": a.channel,
                "thread_ts": a.slack_ts,
                "text": text,
                "blocks": [_section(text)],
                **_QUIET,
            },
        )

    async def notify_people(self, slack_user_ids: Sequence[str], a: ApprovalView) -> None:
        """A direct message to each user (``conversations.open`` then ``chat.postMessage``):
        the request's state, who decided and a link. Every user is tried; if any failed, the
        first failure is raised afterwards."""
        text = self._outcome_text(a)
        failure: SlackUnavailable | None = None
        for user in dict.fromkeys(slack_user_ids):  # once each, in order
            try:
                opened = await self._call("conversations.open", {"users": user})
                chan = opened.get("channel")
                dm = chan.get("id") if isinstance(chan, dict) else None
                if not isinstance(dm, str) or not dm:
                    raise SlackUnavailable("Slack conversations.open: answer without channel id")
                await self._call(
                    "chat.postMessage",
                    {"channel": dm, "text": text, "blocks": [_section(text)], **_QUIET},
                )
            except SlackUnavailable as exc:
                log.warning("slack: could not notify %s about approval %s: %s", user, a.id, exc)
                failure = failure or exc
        if failure is not None:
            raise failure

    def _outcome_text(self, a: ApprovalView) -> str:
        s = a.scope
        deciders = _deciders(a)
        text = (
            f"Your access request {_word(a.id)} is *{_label(a)}*: "
            f"{_word(', '.join(s.actions))} on {_word(s.resource)} ({_word(s.issuer)}) "
            f"for task {_word(a.task.id)}"
        )
        if deciders:
            text += f"\nDecided by {_names(deciders)}"
            if a.decided_at is not None:
                text += f" at {_when(a.decided_at)}"
        elif a.decided_at is not None:
            text += f"\nAt {_when(a.decided_at)}"
        for r in a.reviews[:20]:
            if r.decision == "deny" or r.ttl is not None or r.actions is not None:
                text += f"\n• {_review_line(r)}"
        link = _link(self._broker_url, a.id)
        return text + f"\n<{link}|open in jit-broker> · {escape_mrkdwn(link)}"

    async def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One Web API call through slack_sdk. Returns the answer when ``ok`` is true; raises
        SlackUnavailable otherwise. Messages name the method and Slack's error code only."""
        try:
            resp = await asyncio.to_thread(self._client.api_call, method, json=payload)
        except SlackApiError as exc:
            status = exc.response.status_code
            headers = exc.response.headers or {}
            retry_after = _retry_after(_header(headers, "Retry-After"))
            if status == 429:
                log.warning("slack: %s rate limited (retry after %s s)", method, retry_after)
                raise SlackUnavailable(
                    f"Slack {method}: rate limited",
                    slack_error="ratelimited",
                    retry_after=retry_after,
                ) from None
            body = exc.response.data
            err = body.get("error") if isinstance(body, dict) else None
            # slack_sdk reports a body that is not JSON as ok=false with a prose "error".
            not_json = isinstance(err, str) and err.startswith("Received a response in a non-JSON")
            if status == 200 and (not_json or not (isinstance(body, dict) and "ok" in body)):
                log.warning("slack: %s answered something that is not a Slack API answer", method)
                raise SlackUnavailable(f"Slack {method}: not a Slack API answer") from None
            if status != 200:
                log.warning("slack: %s answered HTTP %d", method, status)
                raise SlackUnavailable(
                    f"Slack {method}: HTTP {status}", retryable=status >= 500
                ) from None
            code = err if isinstance(err, str) and _SLACK_ERROR.fullmatch(err) else "unknown_error"
            log.warning("slack: %s failed: %s", method, code)
            if code in TRANSIENT_ERRORS:
                raise SlackUnavailable(
                    f"Slack {method} failed temporarily: {code}",
                    slack_error=code,
                    retry_after=retry_after,
                ) from None
            raise SlackUnavailable(
                f"Slack {method} refused: {code}", slack_error=code, retryable=False
            ) from None
        except TimeoutError:
            log.warning("slack: %s timed out", method)
            raise SlackUnavailable(f"Slack {method}: timed out") from None
        except ValueError:
            log.warning("slack: %s answered something that is not a Slack API answer", method)
            raise SlackUnavailable(f"Slack {method}: not a Slack API answer") from None
        except (OSError, http.client.HTTPException) as exc:
            # URLError (refused, reset, DNS) or a dropped connection.
            log.warning("slack: %s failed: %s", method, type(exc).__name__)
            raise SlackUnavailable(
                f"Slack {method}: cannot reach Slack ({type(exc).__name__})"
            ) from None
        data = resp.data
        if not isinstance(data, dict):
            raise SlackUnavailable(f"Slack {method}: not a Slack API answer")
        return data

    async def aclose(self) -> None:
        return None  # the WebClient holds no open connections between calls

    # -- inbound --------------------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Check that ``body`` came from Slack: signature v0 over the raw body with the signing
        secret (constant-time compare), timestamp within five minutes of now in either
        direction. A replay inside that window passes this check: the caller refuses a request
        it has seen before (across replicas), see docs/slack.md.

        Raises AuthenticationError: "invalid Slack signature" (missing, malformed or wrong) or
        "stale Slack request". Header names are case-insensitive.
        """
        sig = _header(headers, "X-Slack-Signature")
        ts = _header(headers, "X-Slack-Request-Timestamp")
        if sig is None or ts is None:
            raise AuthenticationError("invalid Slack signature")
        sig, ts = sig.strip(), ts.strip()
        if not _SIGNATURE.fullmatch(sig) or not _TIMESTAMP.fullmatch(ts):
            raise AuthenticationError("invalid Slack signature")
        now = int(self._clock.now().timestamp())
        if abs(now - int(ts)) > SIGNATURE_MAX_AGE.total_seconds():
            raise AuthenticationError("stale Slack request")
        # slack_sdk's verifier: v0 HMAC-SHA256, constant-time compare, the same time window.
        if not self._verifier.is_valid(body=body, timestamp=ts, signature=sig):
            raise AuthenticationError("invalid Slack signature")

    def parse_action(self, body: bytes) -> SlackAction:
        """A (verified) interaction request body → the button click it carries.

        The body is form-encoded ``payload=<JSON>``; the payload must be a ``block_actions``
        interaction with exactly one action whose ``action_id`` is ``jit_approve`` or
        ``jit_deny`` and whose ``value`` is an approval id, from a user with an id. Anything
        else raises InvalidRequest."""
        try:
            form = urllib.parse.parse_qs(
                body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=True,
                max_num_fields=8,
            )
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("Slack interaction: not a form-encoded body") from None
        values = form.get("payload")
        if values is None or len(values) != 1:
            raise InvalidRequest("Slack interaction: exactly one 'payload' field expected")
        try:
            payload = msgspec.json.decode(values[0].encode("utf-8"), type=_Payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidRequest(f"Slack interaction: bad payload ({_short(exc)})") from None
        if payload.type != "block_actions":
            raise InvalidRequest(
                f"Slack interaction: unsupported type {_clip(_clean(payload.type), 40)!r}"
            )
        if len(payload.actions) != 1:
            raise InvalidRequest("Slack interaction: exactly one action expected")
        action = payload.actions[0]
        decision = _DECISIONS.get(action.action_id)
        if decision is None:
            raise InvalidRequest("Slack interaction: not a jit-broker approval button")
        if action.type not in ("", "button"):
            raise InvalidRequest("Slack interaction: the action is not a button")
        if action.value is None or not _APPROVAL_ID.fullmatch(action.value):
            raise InvalidRequest("Slack interaction: the button carries no valid approval id")
        if not _SLACK_ID.fullmatch(payload.user.id):
            raise InvalidRequest("Slack interaction: no valid user id")
        if action.action_ts is None or not _SLACK_TS.fullmatch(action.action_ts):
            raise InvalidRequest("Slack interaction: no valid action_ts")
        container = payload.container or _Container()
        channel = container.channel_id or (payload.channel.id if payload.channel else None)
        message_ts = container.message_ts
        if channel is not None and not _SLACK_ID.fullmatch(channel):
            raise InvalidRequest("Slack interaction: bad channel id")
        if message_ts is not None and not _SLACK_TS.fullmatch(message_ts):
            raise InvalidRequest("Slack interaction: bad message ts")
        return SlackAction(
            approval_id=action.value,
            decision=decision,
            slack_user=payload.user.id,
            action_ts=action.action_ts,
            channel=channel,
            message_ts=message_ts,
        )


#: Message options for everything we post: no unfurling, no name linking, no parsing.
_QUIET: dict[str, Any] = {
    "unfurl_links": False,
    "unfurl_media": False,
    "parse": "none",
    "link_names": False,
}


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


def _short(exc: Exception) -> str:
    return _clip(_clean(str(exc)), 120)
