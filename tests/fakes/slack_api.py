"""A fake Slack Web API on 127.0.0.1, and Slack's request-signing algorithm for tests.

:class:`FakeSlack` is a real HTTP server (stdlib ``http.server`` in a thread) that follows
Slack's documented wire format for the three methods the broker uses:

- ``POST /api/chat.postMessage`` — ``channel``, ``text`` and/or ``blocks``, optional
  ``thread_ts`` (a reply in the thread of an existing message) →
  ``{"ok": true, "channel": "C…", "ts": "<epoch>.<seq>", "message": {…}}``
- ``POST /api/chat.update`` — ``channel``, ``ts``, ``text`` and/or ``blocks`` →
  ``{"ok": true, "channel": …, "ts": …, "text": …, "message": {…}}``
- ``POST /api/conversations.open`` — ``users`` (one user id, or a comma-separated list) →
  ``{"ok": true, "channel": {"id": "D…"}}`` (the same DM channel for the same user)

Bodies may be ``application/json`` or ``application/x-www-form-urlencoded`` (where ``blocks``
is a JSON string, as Slack documents). Every call needs ``Authorization: Bearer <token>``:
none → ``{"ok": false, "error": "not_authed"}``, a wrong one → ``invalid_auth``. Blocks are
checked against Block Kit's main limits (``invalid_blocks``), a missing channel is
``channel_not_found``, a message to update that does not exist ``message_not_found``, a reply
to an unknown parent ``thread_not_found`` (stricter than Slack, to catch bugs), no text and no
blocks ``no_text``.

For assertions: ``calls`` (every request, in order, with its parsed body), ``messages`` (the
current state of each message by ``(channel, ts)``, after any ``chat.update``),
:meth:`FakeSlack.replies`, :meth:`FakeSlack.calls_to`. For failures: ``down = True`` answers
HTTP 503; ``drop = True`` closes each connection without answering; :meth:`FakeSlack.fail`
makes the next call(s) of a method answer an error (``ok: false`` or an HTTP status such as
429 with ``Retry-After``); :meth:`FakeSlack.stop` leaves a port that refuses connections.

Usage::

    with FakeSlack() as slack:
        settings = SlackSettings(..., api_url=slack.url)   # slack.token is the valid token
        ...
        assert slack.calls_to("chat.postMessage")[0].params["channel"] == "C0APPROVALS"

Also here: :func:`sign_request` (Slack's v0 signing, written from the documentation and
independent of the broker's verifier) and :func:`interaction_body` (a realistic
``block_actions`` request body, as Slack posts it when a button is clicked).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "DEFAULT_TOKEN",
    "FakeSlack",
    "SlackCall",
    "blocks_text",
    "interaction_body",
    "interaction_payload",
    "sign_request",
]

DEFAULT_TOKEN = "xoxb-1000000001-2000000002-fakeslackbottokenforjit"  # a test value
BOT_USER = "U0FAKEBOT"
BOT_ID = "B0FAKEBOT"
TEAM = "T0FAKETEAM"


@dataclass(frozen=True)
class SlackCall:
    """One request the fake received. ``params`` is the parsed body (JSON object or form
    fields; a form's ``blocks`` decoded from its JSON string); ``token`` the bearer token
    sent, if any."""

    method: str
    params: dict[str, Any]
    content_type: str
    token: str | None


@dataclass
class _Failure:
    error: str | None
    status: int
    retry_after: int | None
    times: int


@dataclass
class _State:
    calls: list[SlackCall] = field(default_factory=list)
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    dms: dict[str, str] = field(default_factory=dict)
    failures: dict[str, list[_Failure]] = field(default_factory=dict)


class FakeSlack:
    """A fake Slack Web API server on 127.0.0.1 (a free port). See the module docstring.

    ``url`` ends in ``/api/`` (use it as ``SlackSettings.api_url``); ``token`` is the one bot
    token it accepts. Thread-safe: the server runs in its own thread, tests read the state
    from theirs.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.down = False  # answer every call with HTTP 503 (an outage)
        self.drop = False  # close every connection without answering
        self._lock = threading.Lock()
        self._state = _State()
        self._seq = itertools.count(1)
        self._epoch = int(time.time())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        if self._server is not None:
            raise RuntimeError("FakeSlack is already running")
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving. The port then refuses connections (until something else takes it)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeSlack is not started")
        return f"http://127.0.0.1:{self._port}/api/"

    # -- what happened --------------------------------------------------------------------------

    @property
    def calls(self) -> list[SlackCall]:
        with self._lock:
            return list(self._state.calls)

    def calls_to(self, method: str) -> list[SlackCall]:
        return [c for c in self.calls if c.method == method]

    @property
    def messages(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every message by ``(channel, ts)``, as it is now (a deep copy)."""
        with self._lock:
            return copy.deepcopy(self._state.messages)

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        return self.messages[(channel, ts)]

    def replies(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The thread replies under a message, oldest first."""
        return [
            m
            for (ch, _), m in sorted(self.messages.items(), key=lambda kv: kv[0][1])
            if ch == channel and m.get("thread_ts") == ts and m["ts"] != ts
        ]

    def dm_channel(self, user: str) -> str | None:
        """The DM channel opened with ``user`` (``None`` if none was)."""
        with self._lock:
            return self._state.dms.get(user)

    def reset(self) -> None:
        """Forget calls, messages, DMs and queued failures; back up."""
        with self._lock:
            self._state = _State()
        self.down = False
        self.drop = False

    # -- failures -------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        error: str | None = "internal_error",
        *,
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail: with ``status`` 200 they answer
        ``{"ok": false, "error": error}``; with another status (429, 500 …) that HTTP status
        (and ``Retry-After`` when given)."""
        with self._lock:
            self._state.failures.setdefault(method, []).append(
                _Failure(error, status, retry_after, times)
            )

    # -- the API (called from the server thread) ------------------------------------------------

    def _take_failure(self, method: str) -> _Failure | None:
        queue = self._state.failures.get(method)
        if not queue:
            return None
        f = queue[0]
        f.times -= 1
        if f.times <= 0:
            queue.pop(0)
        return f

    def _next_ts(self) -> str:
        return f"{self._epoch}.{next(self._seq):06d}"

    def _handle(
        self, method: str, params: dict[str, Any], content_type: str, token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self._state.calls.append(SlackCall(method, params, content_type, token))
            if token is None:
                return 200, {"ok": False, "error": "not_authed"}, {}
            if not hmac.compare_digest(token.encode(), self.token.encode()):
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            failure = self._take_failure(method)
            if failure is not None:
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = str(failure.retry_after)
                if failure.status != 200:
                    body = {"ok": False, "error": failure.error or "ratelimited"}
                    return failure.status, body, headers
                return 200, {"ok": False, "error": failure.error}, headers
            handler = _METHODS.get(method)
            if handler is None:
                return 200, {"ok": False, "error": "unknown_method"}, {}
            return 200, handler(self, params), {}

    def _post_message(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel")
        if not isinstance(channel, str) or not channel:
            return {"ok": False, "error": "channel_not_found"}
        content = _content(p)
        if "error" in content:
            return _content_error(content)
        thread_ts = p.get("thread_ts")
        if thread_ts is not None:
            parent = self._state.messages.get((channel, str(thread_ts)))
            if parent is None:
                return {"ok": False, "error": "thread_not_found"}
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent.setdefault("thread_ts", parent["ts"])
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "user": BOT_USER,
            "bot_id": BOT_ID,
            "team": TEAM,
            "ts": ts,
            **content,
        }
        if thread_ts is not None:
            message["thread_ts"] = str(thread_ts)
        self._state.messages[(channel, ts)] = dict(message, channel=channel)
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = p.get("channel"), p.get("ts")
        if not isinstance(channel, str) or not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not isinstance(ts, str) or (channel, ts) not in self._state.messages:
            return {"ok": False, "error": "message_not_found"}
        content = _content(p)
        if "error" in content:
            return _content_error(content)
        message = self._state.messages[(channel, ts)]
        message.pop("blocks", None)
        message.update(content)
        message["edited"] = {"user": BOT_USER, "ts": self._next_ts()}
        shown = {k: v for k, v in message.items() if k != "channel"}
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": message.get("text", ""),
            "message": shown,
        }

    def _open(self, p: dict[str, Any]) -> dict[str, Any]:
        users = p.get("users")
        if not isinstance(users, str) or not users:
            return {"ok": False, "error": "users_list_not_supplied"}
        ids = [u.strip() for u in users.split(",")]
        if any(not u or u[0] not in "UW" or not u.isalnum() or not u.isupper() for u in ids):
            return {"ok": False, "error": "user_not_found"}
        if len(ids) != 1:  # a group DM: not something the broker opens
            return {"ok": False, "error": "not_enough_users" if not ids else "invalid_arguments"}
        user = ids[0]
        dm = self._state.dms.get(user)
        if dm is None:
            dm = "D" + hashlib.sha256(user.encode()).hexdigest()[:10].upper()
            self._state.dms[user] = dm
        return {"ok": True, "channel": {"id": dm}}


_METHODS = {
    "chat.postMessage": FakeSlack._post_message,
    "chat.update": FakeSlack._update,
    "conversations.open": FakeSlack._open,
}


def _content_error(content: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"ok": False, "error": content["error"]}
    if "problem" in content:
        answer["response_metadata"] = {"messages": [f"[ERROR] {content['problem']}"]}
    return answer


def _content(p: dict[str, Any]) -> dict[str, Any]:
    """``text``/``blocks`` of a post or update, validated; or ``{"error": code}``."""
    text = p.get("text")
    blocks = p.get("blocks")
    if text is not None and not isinstance(text, str):
        return {"error": "invalid_arguments"}
    if blocks is not None:
        problem = _check_blocks(blocks)
        if problem:
            return {"error": "invalid_blocks", "problem": problem}
    if not text and not blocks:
        return {"error": "no_text"}
    if text and len(text) > 40_000:
        return {"error": "msg_too_long"}
    out: dict[str, Any] = {"text": text or ""}
    if blocks:
        out["blocks"] = blocks
    return out


def _check_text(obj: Any, where: str, limit: int, *, plain_only: bool = False) -> str | None:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        return f"{where}: not a text object"
    if plain_only and obj["type"] != "plain_text":
        return f"{where}: must be plain_text"
    text = obj.get("text")
    if not isinstance(text, str) or not 1 <= len(text) <= limit:
        return f"{where}: text must be 1..{limit} characters"
    if "verbatim" in obj and obj["type"] != "mrkdwn":
        return f"{where}: verbatim is only for mrkdwn"
    if "emoji" in obj and obj["type"] != "plain_text":
        return f"{where}: emoji is only for plain_text"
    return None


def _check_blocks(blocks: Any) -> str | None:
    """The main Block Kit limits (docs: reference/block-kit/blocks); None when fine."""
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return "blocks must be a list of 1..50 blocks"
    for i, b in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(b, dict):
            return f"{where}: not an object"
        kind = b.get("type")
        if kind == "header":
            problem = _check_text(b.get("text"), f"{where}.text", 150, plain_only=True)
        elif kind == "section":
            problem = None
            if "text" not in b and "fields" not in b:
                problem = f"{where}: a section needs text or fields"
            if "text" in b:
                problem = problem or _check_text(b["text"], f"{where}.text", 3000)
            fields = b.get("fields", [])
            if not isinstance(fields, list) or len(fields) > 10:
                problem = problem or f"{where}.fields: at most 10"
            for j, f in enumerate(fields if isinstance(fields, list) else []):
                problem = problem or _check_text(f, f"{where}.fields[{j}]", 2000)
        elif kind == "context":
            elements = b.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                problem = f"{where}.elements: 1..10 expected"
            else:
                problem = None
                for j, e in enumerate(elements):
                    problem = problem or _check_text(e, f"{where}.elements[{j}]", 3000)
        elif kind == "actions":
            problem = _check_actions(b, where)
        elif kind == "divider":
            problem = None
        else:
            problem = f"{where}: unsupported block type {kind!r}"
        if problem:
            return problem
    return None


def _check_actions(b: dict[str, Any], where: str) -> str | None:
    elements = b.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
        return f"{where}.elements: 1..25 expected"
    ids = set()
    for j, e in enumerate(elements):
        at = f"{where}.elements[{j}]"
        if not isinstance(e, dict) or e.get("type") != "button":
            return f"{at}: only buttons are supported by this fake"
        problem = _check_text(e.get("text"), f"{at}.text", 75, plain_only=True)
        if problem:
            return problem
        action_id = e.get("action_id")
        if not isinstance(action_id, str) or not 1 <= len(action_id) <= 255 or action_id in ids:
            return f"{at}.action_id: 1..255 characters, unique in the block"
        ids.add(action_id)
        value = e.get("value")
        if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 2000):
            return f"{at}.value: 1..2000 characters"
        if e.get("style") not in (None, "primary", "danger"):
            return f"{at}.style: primary or danger"
    return None


class _Handler(BaseHTTPRequestHandler):
    owner: FakeSlack
    protocol_version = "HTTP/1.1"
    server_version = "FakeSlack/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        pass

    def do_GET(self) -> None:
        self._reply(405, {"ok": False, "error": "invalid_method"}, {})

    def do_POST(self) -> None:
        fake = self.owner
        if fake.drop:
            self.close_connection = True
            self.connection.close()
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if fake.down:
            self._reply_raw(503, b"<html><body>Service Unavailable</body></html>", "text/html")
            return
        path = urllib.parse.urlsplit(self.path).path
        if not path.startswith("/api/"):
            self._reply(404, {"ok": False, "error": "unknown_method"}, {})
            return
        method = path.removeprefix("/api/")
        content_type = self.headers.get("Content-Type", "")
        params = _parse_body(raw, content_type)
        if params is None:
            self._reply(200, {"ok": False, "error": "invalid_form_data"}, {})
            return
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        status, body, headers = fake._handle(method, params, content_type, token or None)
        self._reply(status, body, headers)

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self._reply_raw(status, data, "application/json; charset=utf-8", headers)

    def _reply_raw(
        self,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """A JSON object or form fields (one value each; ``blocks`` decoded from JSON)."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            data = json.loads(raw.decode("utf-8")) if raw else {}
            return data if isinstance(data, dict) else None
        if kind in ("application/x-www-form-urlencoded", ""):
            form = urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True)
            params: dict[str, Any] = {k: v[-1] for k, v in form.items()}
            for key in ("blocks", "attachments"):
                if isinstance(params.get(key), str):
                    params[key] = json.loads(params[key])
            for key in ("unfurl_links", "unfurl_media", "link_names", "reply_broadcast"):
                if params.get(key) in ("true", "1"):
                    params[key] = True
                elif params.get(key) in ("false", "0"):
                    params[key] = False
            return params
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


# -- signing and interaction payloads -----------------------------------------------------------


def sign_request(body: bytes, secret: str, timestamp: int) -> dict[str, str]:
    """The headers Slack adds to a request it sends to an app, per "Verifying requests from
    Slack": ``v0=`` + hex HMAC-SHA256, keyed with the signing secret, of
    ``v0:<timestamp>:<raw body>``."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Signature": f"v0={digest}", "X-Slack-Request-Timestamp": str(timestamp)}


_action_seq = itertools.count(1)


def interaction_payload(
    approval_id: str,
    decision: str,
    user_id: str,
    *,
    channel: str = "C0APPROVALS",
    message_ts: str = "1893456000.000100",
    action_ts: str | None = None,
    action_id: str | None = None,
    team_id: str = TEAM,
) -> dict[str, Any]:
    """The JSON payload of a ``block_actions`` interaction (a button click on a message).

    ``decision`` "approve"/"deny" picks the button (``action_id`` overrides it, to test
    foreign buttons). ``action_ts`` defaults to a fresh value, so two clicks differ."""
    if action_id is None:
        action_id = {"approve": "jit_approve", "deny": "jit_deny"}[decision]
    if action_ts is None:
        action_ts = f"1893456000.{next(_action_seq):06d}"
    label, style = ("Approve", "primary") if decision == "approve" else ("Deny", "danger")
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": "someone", "name": "someone", "team_id": team_id},
        "api_app_id": "A0FAKEAPP",
        "token": "deprecated-verification-token",  # Slack still sends it; never to be trusted
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": "1000000001.2000000002.abcdef0123456789",
        "team": {"id": team_id, "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "approvals"},
        "message": {"type": "message", "ts": message_ts, "bot_id": BOT_ID, "text": "..."},
        "state": {"values": {}},
        "response_url": "https://hooks.slack.com/actions/T0FAKETEAM/1/abcdef",
        "actions": [
            {
                "action_id": action_id,
                "block_id": "jit_decision",
                "text": {"type": "plain_text", "text": label, "emoji": False},
                "value": approval_id,
                "style": style,
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }


def interaction_body(approval_id: str, decision: str, user_id: str, **kwargs: Any) -> bytes:
    """The raw body Slack POSTs to the interactivity request URL when a button is clicked:
    ``application/x-www-form-urlencoded`` with one field, ``payload=<JSON>``. Keyword
    arguments as for :func:`interaction_payload`."""
    payload = interaction_payload(approval_id, decision, user_id, **kwargs)
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def _iter_blocks_text(blocks: list[dict[str, Any]]) -> Iterator[str]:
    """Every text string in a list of blocks (for assertions)."""
    stack: list[Any] = list(blocks)
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            for k, v in item.items():
                if k == "text" and isinstance(v, str):
                    yield v
                else:
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def blocks_text(blocks: list[dict[str, Any]]) -> str:
    """All the text in a list of blocks, joined by newlines (for assertions)."""
    return "\n".join(_iter_blocks_text(blocks))
