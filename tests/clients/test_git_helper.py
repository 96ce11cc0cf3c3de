"""`jit git-credential` with the real git: clone and push over smart HTTP to a loopback git
server (git http-backend behind a small HTTP front) that accepts only live broker tokens,
checked by RFC 7662 introspection at the broker, with the scope the operation needs (read for
fetch, write for push). A token the server refuses is erased by git, which revokes it."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt as pyjwt
import pytest

from tests.clients.support import Provider, Serve, assert_dead, introspect, jit_env, lease
from tests.e2e.conftest import JIT, free_port

pytestmark = pytest.mark.e2e

GIT = shutil.which("git") or "git"


@dataclass
class Seen:
    token: str
    active: bool
    scope: str
    service: str
    allowed: bool


@dataclass
class GitServer:
    """git http-backend behind Basic auth whose password must be a live broker token for
    this server (``aud``) with the action the service needs."""

    root: Path
    broker: Serve
    introspector: str  # a workload token with the introspect permission
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.handle_git()

            def do_POST(self) -> None:
                self.handle_git()

            def handle_git(self) -> None:
                parts = urlsplit(self.path)
                service = "receive-pack" if "git-receive-pack" in self.path else "upload-pack"
                body = self.read_body()
                user, password = self.basic()
                if password is None:
                    return self.challenge()
                facts = introspect(front.broker, front.introspector, password)
                need = "write" if service == "receive-pack" else "read"
                scope = str(facts.get("scope", ""))
                ok = (
                    facts.get("active") is True
                    and facts.get("aud") == front.url
                    and need in scope.split()
                )
                front.seen.append(Seen(password, facts.get("active") is True, scope, service, ok))
                if not ok:
                    return self.challenge()
                self.cgi(parts.path, parts.query, body, user or "jit")

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def basic(self) -> tuple[str | None, str | None]:
                scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
                if scheme.lower() != "basic":
                    return None, None
                user, _, password = base64.b64decode(value).decode().partition(":")
                return user, password

            def challenge(self) -> None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="jit-test-git"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def cgi(self, path: str, query: str, body: bytes, user: str) -> None:
                env = {
                    "PATH": os.environ["PATH"],
                    "GIT_PROJECT_ROOT": str(front.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": user,
                    "REMOTE_ADDR": "127.0.0.1",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                out = subprocess.run(
                    [GIT, "http-backend"], input=body, env=env, capture_output=True, timeout=60
                ).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def git_env(broker: Serve, job: str, home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return jit_env(
        broker,
        job,
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="ci",
        GIT_AUTHOR_EMAIL="ci@example.com",
        GIT_COMMITTER_NAME="ci",
        GIT_COMMITTER_EMAIL="ci@example.com",
    )


@pytest.fixture
def git_server(broker: Serve, provider: Provider, tmp_path: Path) -> Iterator[GitServer]:
    root = tmp_path / "srv"
    root.mkdir()
    assert git("init", "-q", "--bare", "-b", "main", str(root / "repo.git")).returncode == 0
    seed = tmp_path / "seed"
    env = git_env(broker, "unused", tmp_path / "seed-home")
    assert git("init", "-q", "-b", "main", str(seed), env=env).returncode == 0
    (seed / "README").write_text("hello\n")
    git("add", "README", cwd=seed, env=env)
    assert git("commit", "-q", "-m", "first", cwd=seed, env=env).returncode == 0
    assert git("push", "-q", str(root / "repo.git"), "main", cwd=seed, env=env).returncode == 0
    server = GitServer(root, broker, provider.workload_token("job-git-server"))
    server.start()
    yield server
    server.stop()


def helper(*args: str) -> str:
    return "!" + " ".join([JIT, "git-credential", *args])


def test_clone_and_push_with_broker_tokens_then_the_task_ends_them(
    broker: Serve, job: str, git_server: GitServer, tmp_path: Path
) -> None:
    env = git_env(broker, job, tmp_path / "home")
    helper_cfg = helper("--action", "read", "--action", "write", "--task", "git-1", "--ttl", "5m")
    work = tmp_path / "work"
    cloned = git(
        "-c", f"credential.helper={helper_cfg}",
        "clone", "-q", f"{git_server.url}/repo.git", str(work), env=env,
    )  # fmt: skip
    assert cloned.returncode == 0, cloned.stderr
    assert (work / "README").read_text() == "hello\n"
    git("config", "credential.helper", helper_cfg, cwd=work, env=env)
    (work / "CHANGES").write_text("one\n")
    git("add", "CHANGES", cwd=work, env=env)
    git("commit", "-q", "-m", "change", cwd=work, env=env)
    pushed = git("push", "-q", "origin", "main", cwd=work, env=env)
    assert pushed.returncode == 0, pushed.stderr
    log = git("--git-dir", str(git_server.root / "repo.git"), "log", "--format=%s", "main")
    assert log.stdout.split() == ["change", "first"]
    accepted = [s for s in git_server.seen if s.allowed]
    assert {s.service for s in accepted} == {"upload-pack", "receive-pack"}
    tokens = {s.token for s in accepted}
    assert len(tokens) == 2  # one credential per git command (its helper `get`)
    done = subprocess.run(
        [JIT, "task", "complete", "git-1", "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for token in tokens:
        facts = introspect(broker, job, token)
        assert facts == {"active": False}
    for token in tokens:
        assert token not in cloned.stderr + pushed.stderr


def test_a_token_the_server_refuses_is_erased_by_git_which_revokes_it(
    broker: Serve, job: str, git_server: GitServer, tmp_path: Path
) -> None:
    env = git_env(broker, job, tmp_path / "home")
    read_only = helper("--action", "read", "--task", "git-2")
    work = tmp_path / "work"
    cloned = git(
        "-c", f"credential.helper={read_only}", "clone", "-q",
        f"{git_server.url}/repo.git", str(work), env=env,
    )  # fmt: skip
    assert cloned.returncode == 0, cloned.stderr
    (work / "X").write_text("x\n")
    git("add", "X", cwd=work, env=env)
    git("commit", "-q", "-m", "x", cwd=work, env=env)
    pushed = git(
        "-c", f"credential.helper={read_only}", "push", "origin", "main", cwd=work, env=env
    )
    assert pushed.returncode != 0
    assert "Authentication failed" in pushed.stderr
    [refused] = [s for s in git_server.seen if not s.allowed]
    assert (refused.service, refused.active, refused.scope) == ("receive-pack", True, "read")
    # git said `erase` for it: the broker revoked it.
    lease_id = _jti(refused.token)
    assert_dead(broker, job, refused.token, lease_id)
    assert lease(broker, job, lease_id)["revoke_trigger"] == "explicit"
    subprocess.run([JIT, "task", "complete", "git-2"], env=env, capture_output=True, check=True)


def _jti(token: str) -> str:
    return str(pyjwt.decode(token, options={"verify_signature": False})["jti"])


def test_get_answers_in_git_credential_format_and_store_does_nothing(
    broker: Serve, job: str
) -> None:
    env = jit_env(broker, job)
    asked = "protocol=http\nhost=127.0.0.1:9418\npath=acme/orders.git\n\n"
    out = subprocess.run(
        [JIT, "git-credential", "--action", "read", "--task", "git-3", "get"],
        input=asked, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert set(lines) == {"username", "password", "password_expiry_utc"}
    assert lines["username"] == "x-access-token"
    claims = pyjwt.decode(lines["password"], options={"verify_signature": False})
    # git sends the path only with credential.useHttpPath: then it is part of the resource
    assert claims["aud"] == "http://127.0.0.1:9418/acme/orders.git"
    assert int(lines["password_expiry_utc"]) == claims["exp"]
    stored = subprocess.run(
        [JIT, "git-credential", "--action", "read", "store"],
        input=asked + out.stdout, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (stored.returncode, stored.stdout) == (0, "")
    assert introspect(broker, job, lines["password"])["active"] is True
    subprocess.run([JIT, "task", "complete", "git-3"], env=env, capture_output=True, check=True)
