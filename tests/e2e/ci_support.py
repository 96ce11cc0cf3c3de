"""What the CI client tests (the GitHub Action, the GitLab component) share: a loopback OIDC
provider that plays GitHub Actions, GitLab and a human IdP, and a real `jit serve` that trusts
it, with the `github` and `gitlab` presets and a configured approver.

The fake is only the transport the platforms own (their token endpoints and JWKS); the broker,
Redis and the clients are the real programs."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt as pyjwt
import redis
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.conftest import JIT, free_port

# The repository and project the test policies trust (immutable ids, as docs/identity.md says).
GITHUB_REPOSITORY_ID = "640123987"
GITHUB_OWNER_ID = "71234567"
GITLAB_PROJECT_ID = "42"
GITLAB_NAMESPACE_ID = "7"
APPROVER = "alice"  # a configured person; her human identity is humans:alice@example.com


class OidcProvider:
    """Three OIDC issuers on one loopback HTTP server, each with its own RSA key (RS256, as
    GitHub and GitLab sign):

    - ``<url>/github``: also the Actions ID-token endpoint, ``GET <url>/github/idtoken?
      api-version=2.0&audience=X`` with ``Authorization: Bearer <request token>``, answering
      ``{"value": <JWT>}`` for a request token registered with ``github_job()``;
    - ``<url>/gitlab``: GitLab-shaped ``id_tokens`` from ``gitlab_token()``;
    - ``<url>/humans``: a human IdP for approvers, ``human_token()``.
    """

    ISSUERS = ("github", "gitlab", "humans")

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.keys = {name: rsa.generate_private_key(65537, 2048) for name in self.ISSUERS}
        self.jobs: dict[str, dict[str, Any]] = {}  # Actions request token -> claims
        self.id_token_requests = 0
        docs: dict[str, Any] = {}
        for name, key in self.keys.items():
            jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": f"{name}-1", "use": "sig", "alg": "RS256"})
            iss = self.issuer(name)
            docs[f"/{name}/.well-known/openid-configuration"] = {
                "issuer": iss,
                "jwks_uri": f"{iss}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
            docs[f"/{name}/jwks"] = {"keys": [jwk]}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/github/idtoken":
                    self.idtoken(parse_qs(parts.query))
                    return
                body = docs.get(parts.path)
                if body is None:
                    self.send_error(404)
                    return
                self.reply(200, body)

            def idtoken(self, query: dict[str, list[str]]) -> None:
                scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
                claims = provider.jobs.get(token) if scheme.lower() == "bearer" else None
                if claims is None:
                    self.reply(401, {"message": "Bad credentials"})
                    return
                provider.id_token_requests += 1
                audience = query.get("audience", [f"https://github.com/{claims['repository']}"])
                self.reply(200, {"value": provider.sign("github", {"aud": audience[0], **claims})})

            def reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def issuer(self, name: str) -> str:
        return f"{self.url}/{name}"

    def sign(self, name: str, claims: dict[str, Any], lifetime: int = 300) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer(name),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return pyjwt.encode(
            payload, self.keys[name], algorithm="RS256", headers={"kid": f"{name}-1"}
        )

    def github_job(
        self,
        *,
        repository: str = "acme/orders",
        repository_id: str = GITHUB_REPOSITORY_ID,
        **over: Any,
    ) -> str:
        """Register a GitHub Actions job; returns its ACTIONS_ID_TOKEN_REQUEST_TOKEN."""
        owner = repository.split("/")[0]
        claims: dict[str, Any] = {
            "sub": f"repo:{repository}:ref:refs/heads/main",
            "repository": repository,
            "repository_id": repository_id,
            "repository_owner": owner,
            "repository_owner_id": GITHUB_OWNER_ID,
            "repository_visibility": "private",
            "actor": "octocat",
            "actor_id": "583231",
            "triggering_actor": "octocat",
            "run_id": "9876543210",
            "run_number": "42",
            "run_attempt": "1",
            "workflow": "deploy",
            "workflow_ref": f"{repository}/.github/workflows/deploy.yml@refs/heads/main",
            "workflow_sha": "a" * 40,
            "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_sha": "a" * 40,
            "ref": "refs/heads/main",
            "ref_type": "branch",
            "sha": "b" * 40,
            "event_name": "push",
            "runner_environment": "github-hosted",
            **over,
        }
        request_token = secrets.token_urlsafe(24)
        self.jobs[request_token] = claims
        return request_token

    def gitlab_token(self, *, project_id: str = GITLAB_PROJECT_ID, **over: Any) -> str:
        """A GitLab CI ``id_tokens`` JWT, shaped as GitLab documents it."""
        claims: dict[str, Any] = {
            "aud": "jit-broker",
            "sub": "project_path:acme/orders:ref_type:branch:ref:main",
            "namespace_id": GITLAB_NAMESPACE_ID,
            "namespace_path": "acme",
            "project_id": project_id,
            "project_path": "acme/orders",
            "project_visibility": "private",
            "user_id": "31",
            "user_login": "octocat",
            "user_email": "octocat@example.com",
            "user_access_level": "developer",
            "pipeline_id": "1001",
            "pipeline_source": "push",
            "job_id": "5005",
            "ref": "main",
            "ref_type": "branch",
            "ref_path": "refs/heads/main",
            "ref_protected": "true",
            "runner_id": 17,
            "runner_environment": "self-hosted",
            "sha": "c" * 40,
            "ci_config_ref_uri": "gitlab.example.com/acme/orders//.gitlab-ci.yml@refs/heads/main",
            "ci_config_sha": "c" * 40,
            **over,
        }
        return self.sign("gitlab", claims, lifetime=3600)

    def human_token(self, email: str = "alice@example.com") -> str:
        return self.sign("humans", {"sub": email, "aud": "jit-broker"}, lifetime=3600)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


POLICY_GITHUB = f"""
owner: platform
workloads:
  - issuer: github
    claims:
      repository_id: "{GITHUB_REPOSITORY_ID}"
      repository_owner_id: "{GITHUB_OWNER_ID}"
permissions: [introspect]
grants:
  - name: orders
    issuer: jwt
    resource: https://orders.internal
    actions: [read, write]
    max_ttl: 30m
    approval: none
  - name: prod-deploy
    issuer: jwt
    resource: https://prod.internal
    actions: [deploy]
    max_ttl: 30m
    approval:
      approvers: [{APPROVER}]
"""

POLICY_GITLAB = f"""
owner: platform-gitlab
workloads:
  - issuer: gitlab
    claims:
      project_id: "{GITLAB_PROJECT_ID}"
      namespace_id: "{GITLAB_NAMESPACE_ID}"
      ref_protected: "true"
permissions: [introspect]
grants:
  - name: orders
    issuer: jwt
    resource: https://orders.internal
    actions: [read, write]
    max_ttl: 30m
    approval: none
  - name: prod-deploy
    issuer: jwt
    resource: https://prod.internal
    actions: [deploy]
    max_ttl: 30m
    approval:
      approvers: [{APPROVER}]
"""


@dataclass
class Serve:
    url: str
    prefix: str
    proc: subprocess.Popen[str]
    log: Path


@contextmanager
def jit_serve(tmp: Path, oidc: OidcProvider) -> Iterator[Serve]:
    """A real `jit serve` on a free loopback port, against the real Redis under a fresh key
    prefix, trusting the three issuers of ``oidc``; removes its Redis keys afterwards."""
    keys = tmp / "keys"
    subprocess.run(
        [JIT, "keys", "rotate", "--dir", str(keys)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    audit_key = tmp / "audit-signing.pem"
    subprocess.run(
        [JIT, "audit", "keygen", str(audit_key)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    (tmp / "audit-hmac.key").write_text(secrets.token_hex(32))
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "github.yaml").write_text(POLICY_GITHUB)
    (policies / "gitlab.yaml").write_text(POLICY_GITLAB)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prefix = f"jittest-ci-{uuid.uuid4().hex[:8]}"

    def identity(name: str, preset: str) -> dict[str, Any]:
        return {
            "name": name,
            "issuer": oidc.issuer(name),
            "audiences": ["jit-broker"],
            "algorithms": ["RS256"],
            "preset": preset,
        }

    config = {
        "public_url": url,
        "port": port,
        "redis_url": "redis://127.0.0.1:6379/0",
        "key_prefix": prefix,
        "policy_dir": str(policies),
        "identity": [
            identity("github", "github"),
            identity("gitlab", "gitlab"),
            identity("humans", "generic"),
        ],
        "issuers": {"jwt": {"type": "jwt", "config": {"keys_dir": str(keys)}}},
        "approvals": {
            "people": {APPROVER: {"identities": ["humans:alice@example.com"], "github": "alice"}},
            "max_wait": "30s",
        },
        "audit": {"signing_key_file": str(audit_key), "hmac_key_file": str(tmp / "audit-hmac.key")},
    }
    path = tmp / "jit.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = tmp / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [JIT, "serve", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"jit serve exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"jit serve not ready within 30 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Serve(url=url, prefix=prefix, proc=proc, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        r = redis.Redis()
        for key in r.scan_iter(match=f"{prefix}:*"):
            r.unlink(key)


def verify_credential(broker_url: str, token: str, audience: str) -> dict[str, Any]:
    """Verify a broker-issued JWT against the broker's published JWKS (EdDSA)."""
    jwks = pyjwt.PyJWKClient(f"{broker_url}/.well-known/jwks.json")
    return pyjwt.decode(
        token,
        jwks.get_signing_key_from_jwt(token).key,
        algorithms=["EdDSA"],
        audience=audience,
        issuer=broker_url,
    )
