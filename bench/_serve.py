"""Shared by the benchmarks that drive a real ``jit serve`` process: a loopback OIDC identity
issuer (RS256, discovery + JWKS, in a thread), a broker configuration in a temporary directory
(one trusted workload with the ``introspect`` permission, one grant, the JWT issuer, the audit
chain with its keys), and the ``jit serve`` subprocess. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from broker.audit.signing import write_private_key
from issuers.jwt.keys import generate_key

__all__ = ["LoopbackIdP", "serve", "wait_ready", "write_config"]

ROOT = Path(__file__).resolve().parents[1]
JIT = str(ROOT / ".venv" / "bin" / "jit") if (ROOT / ".venv/bin/jit").exists() else "jit"
SUBJECT = "bench-workload"


class LoopbackIdP:
    """Serves discovery and JWKS on 127.0.0.1:``port``; :meth:`token` issues identity tokens."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update(kid="bench-1", alg="RS256", use="sig")
        docs = {
            "/.well-known/openid-configuration": {
                "issuer": self.url,
                "jwks_uri": self.url + "/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            },
            "/jwks": {"keys": [jwk]},
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                doc = docs.get(self.path)
                body = json.dumps(doc).encode() if doc else b"{}"
                self.send_response(200 if doc else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def token(self, sub: str = SUBJECT) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": sub,
            "aud": "jit-broker",
            "iat": now,
            "nbf": now,
            "exp": now + 7200,
            "repository": "acme/app",
            "repository_id": "42",
            "ref": "refs/heads/main",
        }
        return pyjwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "bench-1"})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def write_config(where: Path, *, port: int, redis_url: str, idp_url: str, extra: str = "") -> Path:
    """A ``jit serve`` configuration under ``where``; returns the config file."""
    (where / "policies").mkdir(parents=True)
    (where / "keys").mkdir()
    generate_key(where / "keys", "EdDSA", datetime.now(UTC))
    write_private_key(where / "audit-signing.pem")
    hmac = where / "audit-hmac"
    hmac.write_text(secrets.token_hex(32))
    hmac.chmod(0o600)
    (where / "policies" / "bench.yaml").write_text(
        f"""owner: bench
workloads:
  - issuer: bench
    claims: {{sub: {SUBJECT}}}
grants:
  - name: demo-rw
    issuer: jwt
    resource: https://demo.local
    actions: [read, write]
    max_ttl: 1h
    approval: none
    # The introspection bench asks about one credential thousands of times a second: above
    # the default 600 uses a minute that is an anomaly that revokes it (docs/governance.md).
    governance: {{max_uses_per_minute: 100000000}}
permissions: [introspect]
"""
    )
    config = where / "jit.yaml"
    config.write_text(
        f"""public_url: http://127.0.0.1:{port}
host: 127.0.0.1
port: {port}
redis_url: {redis_url}
policy_dir: {where / "policies"}
identity:
  - name: bench
    issuer: {idp_url}
    audiences: [jit-broker]
    preset: generic
    algorithms: [RS256]
issuers:
  jwt: {{type: jwt, config: {{keys_dir: {where / "keys"}, algorithm: EdDSA, max_ttl: 1h,
        default_ttl: 15m}}}}
audit:
  signing_key_file: {where / "audit-signing.pem"}
  hmac_key_file: {hmac}
logging: {{format: json, level: WARNING}}
{extra}"""
    )
    return config


def serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``jit serve --config CONFIG`` as a subprocess (its output in ``log``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    out = log.open("wb")
    return subprocess.Popen(
        [JIT, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Poll /readyz every 5 ms until it answers 200; returns the monotonic time it did."""
    url = f"http://127.0.0.1:{port}/readyz"
    end = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"jit serve exited with {proc.returncode}")
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    raise SystemExit(f"jit serve was not ready in {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("a helper module; run bench/startup.py or bench/introspect.py")
