"""What the client tests (the SDK, `jit exec`, the credential helpers) share: a loopback OIDC
provider that plays GitHub Actions, GitLab, a Kubernetes cluster, a generic workload IdP and a
human IdP; and a real `jit serve` on the real Redis, which can be stopped and started again on
the same port and key prefix (a broker restart)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from broker.audit.signing import write_private_key
from issuers.jwt.keys import generate_key
from tests.conftest import REDIS_URL
from tests.e2e.ci_support import APPROVER, POLICY_GITHUB, POLICY_GITLAB, OidcProvider
from tests.e2e.conftest import JIT, free_port

SECOND_APPROVER = "bob"


class Provider(OidcProvider):
    """ci_support's provider (github, gitlab, humans) plus a generic workload IdP and a
    Kubernetes service-account issuer."""

    ISSUERS = ("github", "gitlab", "humans", "workloads", "kubernetes")

    def workload_token(self, sub: str, lifetime: int = 600, **claims: Any) -> str:
        return self.sign("workloads", {"sub": sub, "aud": "jit-broker", **claims}, lifetime)

    def kubernetes_token(self, namespace: str, account: str, lifetime: int = 600) -> str:
        return self.sign(
            "kubernetes",
            {
                "sub": f"system:serviceaccount:{namespace}:{account}",
                "aud": ["jit-broker"],
                "kubernetes.io": {
                    "namespace": namespace,
                    "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
                },
            },
            lifetime,
        )


POLICY_WORKLOADS = f"""
owner: platform
workloads:
  - issuer: workloads
    claims:
      sub: {{glob: "job-*"}}
permissions: [introspect]
grants:
  - name: api
    issuer: jwt
    resource: https://api.internal
    actions: [read, write]
    max_ttl: 30m
    approval: none
  - name: loopback
    issuer: jwt
    resource: "http://127.0.0.1:*"
    actions: [read, write]
    max_ttl: 30m
    approval: none
  - name: kube
    issuer: jwt
    resource: "https://127.0.0.1:*"
    actions: [read]
    max_ttl: 30m
    approval: none
  - name: prod
    issuer: jwt
    resource: https://prod.internal
    actions: [deploy]
    max_ttl: 30m
    approval:
      approvers: [{APPROVER}, {SECOND_APPROVER}]
  - name: flash
    issuer: jwt
    resource: https://flash.internal
    actions: [deploy]
    max_ttl: 30m
    approval:
      approvers: [{APPROVER}]
      expires_after: 2s
"""

POLICY_KUBERNETES = """
owner: platform-k8s
workloads:
  - issuer: kubernetes
    claims:
      namespace: ci
grants:
  - name: api
    issuer: jwt
    resource: https://api.internal
    actions: [read]
    max_ttl: 30m
    approval: none
"""


@dataclass
class Serve:
    """A `jit serve` process; :meth:`kill` and :meth:`start` restart it on the same port,
    key prefix and config."""

    tmp: Path
    url: str
    port: int
    prefix: str
    config: Path
    log: Path
    proc: subprocess.Popen[str] | None = None
    secrets_dir: Path = field(default_factory=Path)

    def start(self) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [JIT, "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"jit serve exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"jit serve not ready in {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, whatever was in flight is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        r = redis.Redis.from_url(REDIS_URL)
        for key in r.scan_iter(match=f"{self.prefix}:*"):
            r.unlink(key)


def serve(
    tmp: Path,
    oidc: Provider,
    *,
    issuers: dict[str, Any] | None = None,
    policies: dict[str, str] | None = None,
    **over: Any,
) -> Serve:
    """Configure and start (and wait for) a `jit serve` trusting ``oidc``'s issuers."""
    tmp.mkdir(parents=True, exist_ok=True)
    keys = tmp / "keys"  # what `jit keys rotate` and `jit audit keygen` write, made in-process
    keys.mkdir(mode=0o700)
    generate_key(keys, "EdDSA", datetime.now(UTC))
    audit_key = tmp / "audit-signing.pem"
    write_private_key(str(audit_key))
    (tmp / "audit-hmac.key").write_text(secrets.token_hex(32))
    policy_dir = tmp / "policies"
    policy_dir.mkdir()
    for name, text in (
        policies
        or {
            "workloads": POLICY_WORKLOADS,
            "github": POLICY_GITHUB,
            "gitlab": POLICY_GITLAB,
            "kubernetes": POLICY_KUBERNETES,
        }
    ).items():
        (policy_dir / f"{name}.yaml").write_text(text)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prefix = f"jittest-clients-{uuid.uuid4().hex[:8]}"
    presets = {
        "github": "github",
        "gitlab": "gitlab",
        "humans": "generic",
        "workloads": "generic",
        "kubernetes": "kubernetes",
    }
    config: dict[str, Any] = {
        "public_url": url,
        "port": port,
        "redis_url": REDIS_URL,
        "key_prefix": prefix,
        "policy_dir": str(policy_dir),
        "identity": [
            {
                "name": name,
                "issuer": oidc.issuer(name),
                "audiences": ["jit-broker"],
                "algorithms": ["RS256"],
                "preset": preset,
            }
            for name, preset in presets.items()
        ],
        "issuers": {
            "jwt": {"type": "jwt", "config": {"keys_dir": str(keys)}},
            **(issuers or {}),
        },
        "approvals": {
            "people": {
                APPROVER: {"identities": ["humans:alice@example.com"], "github": "alice"},
                SECOND_APPROVER: {"identities": ["humans:bob@example.com"]},
            },
            "max_wait": "30s",
        },
        "audit": {"signing_key_file": str(audit_key), "hmac_key_file": str(tmp / "audit-hmac.key")},
        **over,
    }
    path = tmp / "jit.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    broker = Serve(tmp=tmp, url=url, port=port, prefix=prefix, config=path, log=tmp / "serve.log")
    broker.start()
    try:
        broker.wait_ready()
    except BaseException:
        broker.cleanup()
        raise
    return broker


def jit_env(broker: Serve, token: str | None = None, **extra: str) -> dict[str, str]:
    """An environment for a `jit` subprocess: no JIT_* or CI identity variables of ours."""
    drop = ("JIT_", "ACTIONS_ID_TOKEN", "GITLAB_", "AWS_", "PG", "SSH_AUTH_SOCK", "KUBE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["JIT_URL"] = broker.url
    if token is not None:
        env["JIT_TOKEN"] = token
    env.update(extra)
    return env


def introspect(broker: Serve, caller: str, token: str) -> dict[str, Any]:
    resp = httpx.post(
        f"{broker.url}/oauth/introspect",
        data={"token": token},
        headers={"Authorization": f"Bearer {caller}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def lease(broker: Serve, caller: str, lease_id: str) -> dict[str, Any]:
    resp = httpx.get(
        f"{broker.url}/v1/leases/{lease_id}",
        headers={"Authorization": f"Bearer {caller}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def assert_dead(broker: Serve, caller: str, token: str, lease_id: str) -> None:
    """The end of every cleanup path: introspection says inactive, the lease is revoked."""
    assert introspect(broker, caller, token) == {"active": False}
    assert lease(broker, caller, lease_id)["state"] == "revoked"
