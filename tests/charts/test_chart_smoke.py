"""The chart's smoke test: the broker a pod would run, started here.

1. The Secrets are made by the script in docs/deploy.md (`jit keys rotate`, `jit audit keygen`,
   `openssl`, `kubectl create secret ... --dry-run=client -o yaml`).
2. The chart is rendered with ci/production-values.yaml (every option on) plus the few values
   that point it at this machine: the loopback IdP, the real Redis, loopback receivers.
3. Every volume of the rendered Deployment is laid out under a temporary directory as the
   kubelet would (ConfigMaps and Secrets with their items and modes, ``..data`` symlinks), the
   environment is built as the kubelet builds it (secretKeyRef, ``$(VAR)`` expansion).
4. The container's command and args start ``jit serve``, with only two changes: the mount paths
   point into the temporary directory, and ``JIT_HOST=127.0.0.1`` keeps the listener on
   loopback (the pod listens on 0.0.0.0).

Then it must become ready and do its job: a credential for a workload, introspection by the
OAuth client with its mounted secret, metrics with the mounted token, the audit webhook and the
SSF receiver called with their mounted tokens, the shared audit file written, and Redis used as
the ACL user whose password came from the Secret.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
import yaml

from tests.charts import tools
from tests.charts.chartkit import (
    CHART,
    expand_env,
    lay_out_pod,
    render,
    run_doc_block,
    secrets_of,
    update_secret_volume,
)
from tests.e2e.conftest import free_port
from tests.e2e.serve_support import IdP

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def create_secrets(workdir: Path) -> dict[str, dict[str, bytes]]:
    secrets_dir = workdir / "jit-secrets"
    secrets_dir.mkdir(parents=True)
    # What the operator gets from elsewhere (Slack's settings page, receivers' owners).
    (secrets_dir / "slack-bot-token").write_text("xoxb-" + secrets.token_hex(16))
    (secrets_dir / "slack-signing-secret").write_text(secrets.token_hex(16))
    (secrets_dir / "orders-api.ssf-token").write_text(secrets.token_hex(24))
    (secrets_dir / "siem.token").write_text(secrets.token_hex(24))
    return secrets_of(run_doc_block("create-secrets", workdir))


class Receiver:
    """A loopback HTTP endpoint that records what is POSTed to it (audit webhook, SSF push)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.calls: list[tuple[str, str, bytes]] = []  # path, Authorization, body
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                calls.append((self.path, self.headers.get("Authorization", ""), body))
                self.send_response(202 if self.path.startswith("/ssf") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[tuple[str, bytes]]:
        return [(auth, body) for p, auth, body in list(self.calls) if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def idp() -> Iterator[IdP]:
    p = IdP()
    yield p
    p.server.shutdown()


def wait_for(what: str, check: Any, proc: subprocess.Popen[str], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the broker exited ({proc.returncode}) waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def jit_cli(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The `jit` command as a workload runs it."""
    result = subprocess.run(
        [str(BIN / "jit"), *args],
        env={**os.environ, "JIT_URL": url, "JIT_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result


def get(url: str, **kw: Any) -> int:
    try:
        return httpx.get(url, timeout=5, **kw).status_code
    except httpx.TransportError:
        return 0


def test_the_rendered_pod_starts_and_serves_a_credential(
    tmp_path: Path, idp: IdP, receiver: Receiver
) -> None:
    tools.ensure()
    secret_objects = create_secrets(tmp_path)
    assert set(secret_objects) == {
        "jit-signing-keys",
        "jit-audit-keys",
        "jit-metrics",
        "jit-redis",
        "jit-redis-sentinel",
        "jit-client-orders-api",
        "jit-slack",
        "jit-ssf",
        "jit-ssf-orders-api",
        "jit-siem",
    }
    port = free_port()
    prefix = f"jittest-chart-{uuid.uuid4().hex[:8]}"
    acl_user = prefix
    here = {
        "containerPort": port,
        "config": {
            "public_url": f"http://127.0.0.1:{port}",
            "key_prefix": prefix,
            "identity": [
                {
                    "name": "github",
                    "issuer": idp.issuer,
                    "audiences": ["jit-broker"],
                    "algorithms": ["ES256"],
                }
            ],
            "audit": {"webhooks": [{"name": "siem", "url": f"{receiver.url}/ingest"}]},
            "ssf": {
                "receivers": [
                    {
                        "name": "orders-api",
                        "endpoint": f"{receiver.url}/ssf",
                        "audience": "https://orders.example.com",
                    }
                ]
            },
        },
        "redis": {
            "host": "127.0.0.1",
            "port": 6379,
            "db": 0,
            "tls": {"enabled": False, "ca": {"existingConfigMap": ""}},
            "username": acl_user,
            "waitReplicas": 0,  # this Redis has no replica to WAIT for
        },
        "ingress": {"host": "127.0.0.1"},
    }
    override = tmp_path / "here-values.yaml"
    override.write_text(yaml.safe_dump(here))
    manifests = render(CHART / "ci" / "production-values.yaml", override)

    # The one ConfigMap the production values name that the chart does not render.
    corporate_ca = {"corporate-ca-bundle": {"ca.crt": "(a CA bundle)\n"}}
    pod = lay_out_pod(manifests, tmp_path / "pod", secret_objects, corporate_ca)
    container = manifests.container
    config_file = pod.mounts["/etc/jit/config.yaml"]
    config_file.write_text(pod.local(config_file.read_text()))
    env = expand_env(container["env"], secret_objects)
    env = {k: pod.local(v) for k, v in env.items()}
    assert container["command"] == ["jit"]
    argv = [str(BIN / "jit"), *(pod.local(a) for a in container["args"])]
    assert argv[1:] == ["serve", "--config", str(config_file)]

    password = secret_objects["jit-redis"]["redis-password"].decode().removesuffix("\n")
    r = redis.Redis()
    r.acl_setuser(
        acl_user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[f"{prefix}:*"],
        channels=["*"],
        commands=["+@all"],
    )
    log = tmp_path / "broker.log"  # a file, not a pipe: a full pipe would stall the broker
    with log.open("w") as sink:
        proc = subprocess.Popen(
            argv,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env, "JIT_HOST": "127.0.0.1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        probes = {p: container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe")}
        wait_for("the startup probe", lambda: get(url + probes["startupProbe"]) == 200, proc)
        wait_for("readiness", lambda: get(url + probes["readinessProbe"]) == 200, proc)
        assert get(url + container["livenessProbe"]["httpGet"]["path"]) == 200

        # Redis is used as the ACL user, with the password from the Secret's mounted file.
        users = {c.get("user") for c in r.client_list()}
        assert acl_user in users

        # A credential for a workload the production policy trusts.
        identity = idp.token("repo:acme/orders", repository_id="123456")
        request = jit_cli(
            url,
            identity,
            "request",
            "--resource",
            "https://orders.internal",
            "--action",
            "read",
            "--task",
            "deploy-1",
            "--json",
        )
        issued = json.loads(request.stdout)
        token = issued["credential"]["secret"]

        # Rotating the signing key as docs/deploy.md says reaches the running broker when the
        # kubelet updates the mounted Secret: no restart; the next credential uses the new key.
        def kids() -> set[str]:
            keys = httpx.get(f"{url}/.well-known/jwks.json").json()["keys"]
            return {k["kid"] for k in keys}

        before = kids()
        assert jwt.get_unverified_header(token)["kid"] in before
        rotated = secrets_of(run_doc_block("rotate-signing-key", tmp_path))["jit-signing-keys"]
        assert len(rotated) == 2
        keys_dir = manifests.broker_config["issuers"]["jwt"]["config"]["keys_dir"]
        (keys_volume,) = [
            m["name"] for m in container["volumeMounts"] if m["mountPath"] == keys_dir
        ]
        update_secret_volume(manifests, pod, keys_volume, rotated)
        wait_for("the rotated key", lambda: len(kids()) == 2, proc)
        (new_kid,) = kids() - before
        again = jit_cli(
            url,
            identity,
            "request",
            "--resource",
            "https://orders.internal",
            "--action",
            "read",
            "--task",
            "deploy-2",
        )
        assert jwt.get_unverified_header(again.stdout.strip())["kid"] == new_kid

        # The OAuth client authenticates with the secret mounted from its Secret.
        client_secret = secret_objects["jit-client-orders-api"]["client-secret"].decode().strip()
        answer = httpx.post(
            f"{url}/oauth/introspect", data={"token": token}, auth=("orders-api", client_secret)
        ).json()
        assert answer.get("active") is True, answer
        assert answer["jti"] == issued["lease_id"]

        # Metrics need the token mounted from jit-metrics (the ServiceMonitor's Secret).
        metrics_token = secret_objects["jit-metrics"]["metrics-token"].decode().strip()
        assert get(f"{url}/metrics") == 401
        headers = {"Authorization": f"Bearer {metrics_token}"}
        assert get(f"{url}/metrics", headers=headers) == 200

        # Completing the task revokes the credential: the SSF receiver is told, with its token.
        jit_cli(url, identity, "task", "complete", "deploy-1")
        ssf_token = secret_objects["jit-ssf-orders-api"]["token"].decode().strip()
        pushes = wait_for("the SSF push", lambda: receiver.to("/ssf"), proc)
        assert pushes[0][0] == f"Bearer {ssf_token}"

        # The audit webhook gets the chain's records, with its token.
        siem_token = secret_objects["jit-siem"]["token"].decode().strip()
        batches = wait_for("the audit webhook", lambda: receiver.to("/ingest"), proc)
        assert batches[0][0] == f"Bearer {siem_token}"
        assert json.loads(batches[0][1])[0]["seq"] == 1

        # The shared audit file (auditFile: a ReadWriteMany claim) is written.
        audit_file = Path(pod.local(manifests.broker_config["audit"]["file"]))
        wait_for("the audit file", lambda: audit_file.exists() and audit_file.stat().st_size, proc)

        # SIGTERM (what the kubelet sends after the preStop sleep) stops it within the grace
        # period; uvicorn shuts down, then re-raises the signal (exit status -SIGTERM).
        proc.send_signal(signal.SIGTERM)
        grace = manifests.pod["terminationGracePeriodSeconds"]
        assert proc.wait(timeout=grace) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        output = log.read_text()
        r.acl_deluser(acl_user)
        for key in r.scan_iter(match=f"{prefix}:*"):
            r.unlink(key)
    assert "Traceback" not in output, output
    # Kubernetes mounts secret files 0440 (group fsGroup): the broker says so, and runs.
    assert "accessible to group or others (mode 440)" in output
    for secret in secret_objects.values():
        for value in secret.values():
            text = value.decode().strip()
            if len(text) >= 16 and not text.startswith("-----"):
                assert text not in output, "a mounted secret reached the broker's log"
