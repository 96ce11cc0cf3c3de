"""A fake GitHub for the ``github`` issuer's tests: a real HTTP server on 127.0.0.1.

It speaks the parts of GitHub's REST API the issuer uses, in GitHub's documented wire format,
and enforces what GitHub enforces:

- ``GET /app``, ``GET /repos/{owner}/{repo}/installation`` and
  ``POST /app/installations/{id}/access_tokens`` need an App JWT: ``Authorization: Bearer``,
  RS256, verified with PyJWT (an implementation independent of the issuer's joserfc) against
  the App's public key; ``iss`` must be the App id or client ID, ``iat`` in the past and
  ``exp`` in the future but at most 10 minutes ahead.
- Token requests are checked against the installation: repositories it can reach, permissions
  it was granted (422 otherwise). Tokens are ``ghs_`` + 36 characters and expire one hour after
  creation, on the fake's clock (the test's clock).
- ``DELETE /installation/token`` revokes the token that authenticates it: 204, or 401 for a
  token that is unknown, expired or already revoked.
- A few repository endpoints accept only a live token for that repository with the permission
  GitHub requires (``contents`` read to ``GET .../contents/{path}`` and so on): 401 for a dead
  token, 404 for a repository outside the token, 403 "Resource not accessible by integration".

Every request is recorded (:attr:`FakeGitHub.requests`) so tests can assert what GitHub received.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import ssl
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from broker.clock import Clock

__all__ = ["ACTION_REQUESTS", "FakeGitHub", "Installation", "Recorded", "TokenRecord"]

LEVELS = ("read", "write", "admin")
TOKEN_LIFETIME = timedelta(hours=1)
_ALPHABET = string.ascii_letters + string.digits

#: How a client exercises each permission: (method, path under /repos/{owner}/{repo}).
ACTION_REQUESTS: dict[str, tuple[str, str]] = {
    "metadata:read": ("GET", ""),
    "contents:read": ("GET", "/contents/README.md"),
    "contents:write": ("PUT", "/contents/notes.txt"),
    "issues:read": ("GET", "/issues"),
    "issues:write": ("POST", "/issues"),
    "pull_requests:read": ("GET", "/pulls"),
    "pull_requests:write": ("POST", "/pulls"),
}
_REPO_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    ("GET", re.compile(r"^$"), "metadata", "read"),
    ("GET", re.compile(r"^/contents/.+$"), "contents", "read"),
    ("PUT", re.compile(r"^/contents/.+$"), "contents", "write"),
    ("GET", re.compile(r"^/issues$"), "issues", "read"),
    ("POST", re.compile(r"^/issues$"), "issues", "write"),
    ("GET", re.compile(r"^/pulls$"), "pull_requests", "read"),
    ("POST", re.compile(r"^/pulls$"), "pull_requests", "write"),
]


@dataclass
class Installation:
    id: int
    account: str
    repositories: dict[str, int]  # name -> repository id
    permissions: dict[str, str]  # what the App was granted on this installation


@dataclass
class TokenRecord:
    token: str
    installation_id: int
    repositories: set[str]  # lower-case full names
    permissions: dict[str, str]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


@dataclass
class Recorded:
    method: str
    path: str
    auth: str  # "jwt", "token" or "none"
    body: Any = None
    token: str | None = None  # the installation token used, for DELETE and repository calls
    jwt_header: dict[str, Any] = field(default_factory=dict)
    jwt_claims: dict[str, Any] = field(default_factory=dict)
    status: int = 0
    user_agent: str = ""
    api_version: str = ""


class _Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _gh_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGitHub:
    """GitHub's App and installation-token API on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        public_key: RSAPublicKey,
        *,
        app_id: int,
        client_id: str = "Iv23liJitTestApp0001",
        prefix: str = "",
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.clock = clock
        self.public_key = public_key
        self.app_id = app_id
        self.client_id = client_id
        self.prefix = prefix  # "/api/v3" for a GitHub Enterprise Server
        self.tls = tls  # (certificate file, key file): serve HTTPS
        self.installations: dict[int, Installation] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.requests: list[Recorded] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with
        self.delay = 0.0  # seconds to wait before answering a token request
        self.grant_extra: dict[str, str] = {}  # misbehave: grant more than asked
        self.all_repositories = False  # misbehave: ignore the repositories asked for
        self.echo_metadata = True  # GitHub adds metadata:read to repository tokens
        self.answer_app_id: int | None = None  # misbehave: GET /app names another App
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.prefix}"

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = fake.handle(
                    self.command, self.path, dict(self.headers.items()), raw
                )
                payload = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if payload:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        server.block_on_close = False
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and drop open connections: connections to the port are refused
        until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- state helpers for tests -----------------------------------------------------------

    def install(
        self,
        installation_id: int,
        account: str,
        repositories: dict[str, int],
        permissions: dict[str, str],
    ) -> Installation:
        inst = Installation(installation_id, account, dict(repositories), dict(permissions))
        self.installations[installation_id] = inst
        return inst

    def record(self, token: str) -> TokenRecord | None:
        with self._lock:
            return self.tokens.get(token)

    def calls(self, method: str, path_suffix: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    def revocations(self) -> list[str]:
        """The tokens that ``DELETE /installation/token`` was called with, in order."""
        return [r.token or "" for r in self.calls("DELETE", "/installation/token")]

    # -- the API ---------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {k.lower(): v for k, v in headers.items()}
        path = target.split("?", 1)[0]
        rec = Recorded(
            method=method,
            path=path,
            auth="none",
            user_agent=headers.get("user-agent", ""),
            api_version=headers.get("x-github-api-version", ""),
        )
        try:
            if raw:
                try:
                    rec.body = json.loads(raw)
                except ValueError:
                    raise _Reply(400, {"message": "Problems parsing JSON"}) from None
            with self._lock:
                self.requests.append(rec)
                failing = self.fail_next.pop(0) if self.fail_next else None
            if failing is not None:
                raise _Reply(failing, {"message": "Server Error"})
            if not rec.user_agent:
                raise _Reply(403, {"message": "Request forbidden by administrative rules."})
            if not path.startswith(self.prefix + "/"):
                raise _Reply(404, {"message": "Not Found"})
            self._route(method, path[len(self.prefix) :], headers, rec)
            raise _Reply(404, {"message": "Not Found"})
        except _Reply as reply:
            rec.status = reply.status
            reply.headers.setdefault("X-GitHub-Request-Id", secrets.token_hex(8).upper())
            return reply.status, reply.body, reply.headers

    def _route(self, method: str, path: str, headers: dict[str, str], rec: Recorded) -> None:
        if method == "GET" and path == "/app":
            self._app_jwt(headers, rec)
            raise _Reply(
                200,
                {
                    "id": self.answer_app_id or self.app_id,
                    "slug": "jit-test-app",
                    "client_id": self.client_id if self.answer_app_id is None else "Iv23other",
                    "name": "jit test app",
                },
            )
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if m and method == "POST":
            self._app_jwt(headers, rec)
            self._create_token(int(m[1]), rec.body)
        if method == "DELETE" and path == "/installation/token":
            record = self._installation_token(headers, rec)
            with self._lock:
                record.revoked_at = self.clock.now()
            raise _Reply(204)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/installation", path)
        if m and method == "GET":
            self._app_jwt(headers, rec)
            inst = self._installation_of(m[1], m[2])
            if inst is None:
                raise _Reply(404, {"message": "Not Found"})
            raise _Reply(
                200,
                {
                    "id": inst.id,
                    "account": {"login": inst.account, "type": "Organization"},
                    "app_id": self.app_id,
                    "repository_selection": "selected",
                    "permissions": inst.permissions,
                },
            )
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", path)
        if m:
            self._repository_call(method, m[1], m[2], m[3] or "", headers, rec)

    def _app_jwt(self, headers: dict[str, str], rec: Recorded) -> None:
        """GitHub's checks of an App JWT, on this fake's clock."""
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or value.count(".") != 2:
            raise _Reply(401, {"message": "A JSON web token could not be decoded"})
        rec.auth = "jwt"
        try:
            rec.jwt_header = pyjwt.get_unverified_header(value)
            claims: dict[str, Any] = pyjwt.decode(
                value,
                key=self.public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except pyjwt.InvalidTokenError:
            raise _Reply(401, {"message": "A JSON web token could not be decoded"}) from None
        rec.jwt_claims = claims
        now = self.clock.now().timestamp()
        iat, exp, iss = claims.get("iat"), claims.get("exp"), claims.get("iss")
        if not isinstance(iat, int) or iat > now:
            raise _Reply(
                401, {"message": "'Issued at' claim ('iat') must be an Integer in the past"}
            )
        if not isinstance(exp, int) or exp <= now:
            raise _Reply(401, {"message": "'Expiration time' claim ('exp') is in the past"})
        if exp > now + 600:
            raise _Reply(
                401, {"message": "'Expiration time' claim ('exp') is too far in the future"}
            )
        if str(iss) not in (str(self.app_id), self.client_id):
            raise _Reply(401, {"message": "'Issuer' claim ('iss') must be an Integer"})

    def _installation_token(self, headers: dict[str, str], rec: Recorded) -> TokenRecord:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or not value:
            raise _Reply(401, {"message": "Requires authentication"})
        rec.auth = "token"
        rec.token = value
        with self._lock:
            record = self.tokens.get(value)
        if record is None or not record.live(self.clock.now()):
            raise _Reply(401, {"message": "Bad credentials"})
        return record

    def _installation_of(self, owner: str, repo: str) -> Installation | None:
        for inst in self.installations.values():
            if inst.account.lower() == owner.lower() and repo.lower() in {
                r.lower() for r in inst.repositories
            }:
                return inst
        return None

    def _create_token(self, installation_id: int, body: Any) -> None:
        inst = self.installations.get(installation_id)
        if inst is None:
            raise _Reply(404, {"message": "Not Found"})
        body = body if body is not None else {}
        if not isinstance(body, dict) or set(body) - {
            "repositories",
            "repository_ids",
            "permissions",
        }:
            raise _Reply(422, {"message": "Invalid request."})
        if self.delay:
            time.sleep(self.delay)
        known = {name.lower(): (name, rid) for name, rid in inst.repositories.items()}
        asked = body.get("repositories")
        if asked is None or self.all_repositories:
            chosen = list(known.values())
            selection = "all" if asked is None else "selected"
        else:
            if not isinstance(asked, list) or not all(isinstance(n, str) for n in asked):
                raise _Reply(422, {"message": "Invalid request."})
            missing = [n for n in asked if n.lower() not in known]
            if missing:
                raise _Reply(
                    422,
                    {
                        "message": "There is at least one repository that does not exist or "
                        "is not accessible to the parent installation."
                    },
                )
            chosen = [known[n.lower()] for n in asked]
            selection = "selected"
        permissions = body.get("permissions")
        if permissions is None:
            permissions = dict(inst.permissions)
        if not isinstance(permissions, dict):
            raise _Reply(422, {"message": "Invalid request."})
        for name, level in permissions.items():
            granted = inst.permissions.get(name)
            if (
                level not in LEVELS
                or granted is None
                or LEVELS.index(level) > LEVELS.index(granted)
            ):
                raise _Reply(
                    422,
                    {"message": "The permissions requested are not granted to this installation."},
                )
        permissions = {**permissions, **self.grant_extra}
        shown = dict(permissions)
        if self.echo_metadata:
            shown.setdefault("metadata", "read")
        now = self.clock.now()
        token = "ghs_" + "".join(secrets.choice(_ALPHABET) for _ in range(36))
        record = TokenRecord(
            token=token,
            installation_id=installation_id,
            repositories={f"{inst.account}/{name}".lower() for name, _ in chosen},
            permissions=shown,
            created_at=now,
            expires_at=now.replace(microsecond=0) + TOKEN_LIFETIME,
        )
        with self._lock:
            self.tokens[token] = record
        raise _Reply(
            201,
            {
                "token": token,
                "expires_at": _gh_time(record.expires_at),
                "permissions": shown,
                "repository_selection": selection,
                "repositories": [
                    {
                        "id": rid,
                        "node_id": f"R_{rid}",
                        "name": name,
                        "full_name": f"{inst.account}/{name}",
                        "private": True,
                    }
                    for name, rid in chosen
                ],
            },
        )

    def _repository_call(
        self, method: str, owner: str, repo: str, rest: str, headers: dict[str, str], rec: Recorded
    ) -> None:
        record = self._installation_token(headers, rec)
        if f"{owner}/{repo}".lower() not in record.repositories:
            raise _Reply(404, {"message": "Not Found"})
        for route_method, pattern, permission, needed in _REPO_ROUTES:
            if route_method == method and pattern.match(rest):
                level = record.permissions.get(permission)
                if permission == "metadata" and record.permissions:
                    level = level or "read"  # every repository token reads metadata
                if level is None or LEVELS.index(level) < LEVELS.index(needed):
                    raise _Reply(403, {"message": "Resource not accessible by integration"})
                raise _Reply(201 if method in ("POST", "PUT") else 200, {"ok": True})
        raise _Reply(404, {"message": "Not Found"})
