"""Shared by the `jit serve` end-to-end tests: a small OIDC IdP on loopback (ES256, like a
CI provider), a config writer with keys from `jit keys rotate` / `jit audit keygen`, and a
one-shot `jit serve` runner. The ``idp`` fixture is registered in tests/e2e/conftest.py."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.conftest import JIT, free_port


class IdP:
    """A minimal OIDC issuer: discovery and JWKS over HTTP on 127.0.0.1; signs ES256 tokens."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "idp-1", "use": "sig", "alg": "ES256"})
        docs = {
            "/.well-known/openid-configuration": {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/jwks",
            },
            "/jwks": {"keys": [jwk]},
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = docs.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, sub: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "sub": sub,
            "aud": "jit-broker",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            **claims,
        }
        return pyjwt.encode(payload, self.key, algorithm="ES256", headers={"kid": "idp-1"})


POLICY = """
owner: platform
workloads:
  - issuer: ci
    claims:
      sub: {glob: "repo:acme/*"}
grants:
  - name: deploy-read
    issuer: jwt
    resource: https://orders.internal
    actions: [read]
    max_ttl: 30m
    approval: none
"""


def write_config(tmp: Path, idp: IdP, port: int, prefix: str, **over: Any) -> Path:
    keys = tmp / "keys"
    if not keys.exists():
        subprocess.run(
            [JIT, "keys", "rotate", "--dir", str(keys)],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
    audit_key = tmp / "audit-signing.pem"
    if not audit_key.exists():
        jwks = subprocess.run(
            [JIT, "audit", "keygen", str(audit_key)],
            check=True,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        (tmp / "audit-jwks.json").write_text(jwks.stdout)
        (tmp / "audit-hmac.key").write_text(secrets.token_hex(32))
    policies = tmp / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "platform.yaml").write_text(POLICY)
    config: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{port}",
        "port": port,
        "redis_url": "redis://127.0.0.1:6379/0",
        "key_prefix": prefix,
        "policy_dir": "policies",
        "identity": [
            {
                "name": "ci",
                "issuer": idp.issuer,
                "audiences": ["jit-broker"],
                "algorithms": ["ES256"],
            }
        ],
        "issuers": {"jwt": {"type": "jwt", "config": {"keys_dir": str(keys)}}},
        "audit": {"signing_key_file": str(audit_key), "hmac_key_file": str(tmp / "audit-hmac.key")},
    }
    config.update(over)
    path = tmp / "jit.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def serve(config: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JIT, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
