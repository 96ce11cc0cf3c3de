"""`jit kube-credential` as a kubectl exec credential plugin, with the real kubectl, against a
loopback HTTPS API server (a small fake: TLS with its own CA, the few routes the tests read)
that accepts a bearer token only if it verifies against the broker's JWKS, for its own URL
(``aud``), unexpired. kubectl keeps the ExecCredential until its expirationTimestamp and runs
the plugin again after: shown through one long-running ``kubectl proxy``."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.clients.support import Serve, introspect, jit_env
from tests.e2e.conftest import JIT, free_port

pytestmark = pytest.mark.e2e

VENV_KUBECTL = Path(sys.executable).parent / "kubectl"


def kubectl_binary() -> str:
    """tests/run.sh extracts kubectl from a PyPI wheel into .venv/bin; Debian's will do."""
    if VENV_KUBECTL.exists():
        return str(VENV_KUBECTL)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed (bash tests/run.sh puts it in .venv/bin)")
    return found


@dataclass
class Request:
    token: str
    at: float


@dataclass
class FakeApiServer:
    """HTTPS on 127.0.0.1: the pod list of ``default``; every request needs a broker token."""

    broker: Serve
    tmp: Path
    port: int = 0
    seen: list[Request] = field(default_factory=list)
    refused: int = 0
    ca_pem: bytes = b""
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.ca_pem = cert.public_bytes(serialization.Encoding.PEM)
        (self.tmp / "tls.crt").write_bytes(self.ca_pem)
        (self.tmp / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        jwks = pyjwt.PyJWKClient(f"{self.broker.url}/.well-known/jwks.json")
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
                try:
                    assert scheme.lower() == "bearer"
                    pyjwt.decode(
                        token,
                        jwks.get_signing_key_from_jwt(token).key,
                        algorithms=["EdDSA"],
                        audience=api.url,
                        issuer=api.broker.url,
                    )
                except (AssertionError, pyjwt.PyJWTError):
                    api.refused += 1
                    return self.reply(
                        401, {"kind": "Status", "code": 401, "message": "Unauthorized"}
                    )
                api.seen.append(Request(token, time.time()))
                if self.path.split("?")[0] == "/api/v1/namespaces/default/pods":
                    return self.reply(
                        200,
                        {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []},
                    )
                return self.reply(404, {"kind": "Status", "code": 404, "message": "not found"})

            def reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tmp / "tls.crt", self.tmp / "tls.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def api_server(broker: Serve, tmp_path: Path) -> Iterator[FakeApiServer]:
    server = FakeApiServer(broker, tmp_path)
    server.start()
    yield server
    server.stop()


def kubeconfig(api: FakeApiServer, path: Path, *plugin_args: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fake",
                "cluster": {
                    "server": api.url,
                    "certificate-authority-data": base64.b64encode(api.ca_pem).decode(),
                },
            }
        ],
        "users": [
            {
                "name": "jit",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": JIT,
                        "args": ["kube-credential", "--resource", api.url, *plugin_args],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "jit"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))
    return path


def kube_env(broker: Serve, job: str, home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return jit_env(broker, job, HOME=str(home))


def test_kubectl_authenticates_with_the_plugin_and_the_task_ends_the_token(
    broker: Serve, job: str, api_server: FakeApiServer, tmp_path: Path
) -> None:
    config = kubeconfig(
        api_server, tmp_path / "kubeconfig", "--action", "read", "--task", "kube-1", "--ttl", "5m"
    )
    env = kube_env(broker, job, tmp_path / "home")
    out = subprocess.run(
        [kubectl_binary(), "--kubeconfig", str(config), "get", "--raw",
         "/api/v1/namespaces/default/pods"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kind"] == "PodList"
    [used] = {r.token for r in api_server.seen}
    claims = pyjwt.decode(used, options={"verify_signature": False})
    assert (claims["aud"], claims["task_id"]) == (api_server.url, "kube-1")
    subprocess.run(
        [JIT, "task", "complete", "kube-1"], env=env, check=True, capture_output=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert introspect(broker, job, used) == {"active": False}


def test_the_plugin_prints_an_exec_credential_with_its_expiry(
    broker: Serve, job: str, tmp_path: Path
) -> None:
    out = subprocess.run(
        [JIT, "kube-credential", "--resource", "https://127.0.0.1:6443", "--action", "read",
         "--ttl", "2m"],
        env=jit_env(
            broker, job,
            KUBERNETES_EXEC_INFO=json.dumps(
                {
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "spec": {"interactive": False},
                }
            ),
        ),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    cred = json.loads(out.stdout)
    assert cred["apiVersion"] == "client.authentication.k8s.io/v1beta1"  # as kubectl asked
    assert cred["kind"] == "ExecCredential"
    token, expiry = cred["status"]["token"], cred["status"]["expirationTimestamp"]
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert expiry == dt.datetime.fromtimestamp(claims["exp"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    httpx.post(
        f"{broker.url}/oauth/revoke", data={"token": token},
        headers={"Authorization": f"Bearer {job}"},
    )  # fmt: skip


def test_kubectl_keeps_the_credential_until_it_expires_then_runs_the_plugin_again(
    broker: Serve, job: str, api_server: FakeApiServer, tmp_path: Path
) -> None:
    """A real e2e wait: a 6-second credential, and one kubectl proxy across its expiry."""
    config = kubeconfig(
        api_server, tmp_path / "kubeconfig", "--action", "read", "--task", "kube-2", "--ttl", "6s"
    )
    env = kube_env(broker, job, tmp_path / "home")
    proxy = subprocess.Popen(
        [kubectl_binary(), "--kubeconfig", str(config), "proxy", "--port=0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        assert "Starting to serve on" in line, line + (proxy.stderr.read() if proxy.stderr else "")
        base = "http://" + line.rsplit(" ", 1)[1].strip()
        pods = f"{base}/api/v1/namespaces/default/pods"

        def get() -> None:
            assert httpx.get(pods, timeout=60).json()["kind"] == "PodList"

        get()
        get()
        first = api_server.seen[0].token
        exp = pyjwt.decode(first, options={"verify_signature": False})["exp"]
        before = [r for r in api_server.seen if r.at < exp]
        assert {r.token for r in before} == {first}  # cached: the plugin ran once
        while time.time() <= exp + 0.5:
            time.sleep(0.2)
        get()
        after = api_server.seen[-1].token
        assert after != first  # expired: kubectl ran the plugin again
        assert api_server.refused == 0  # and never sent the expired one
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    leases = httpx.get(
        f"{broker.url}/v1/tasks/kube-2", headers={"Authorization": f"Bearer {job}"}
    ).json()["leases"]
    assert len(leases) == 2
    subprocess.run(
        [JIT, "task", "complete", "kube-2"], env=env, check=True, capture_output=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
