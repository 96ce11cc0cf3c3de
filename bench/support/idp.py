"""A loopback OIDC identity issuer for the benchmarks: discovery and JWKS over HTTP, RS256.

    python bench/support/idp.py PORT TOKEN_FILE [SUB]

Writes one identity token (audience jit-broker, valid 2 h) to TOKEN_FILE, then serves until
killed. PyJWT (a test dependency) signs the token: an independent library, not the broker's.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


def main() -> None:
    port, token_file = int(sys.argv[1]), sys.argv[2]
    sub = sys.argv[3] if len(sys.argv) > 3 else "bench-workload"
    iss = f"http://127.0.0.1:{port}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench-1", alg="RS256", use="sig")
    now = int(time.time())
    claims = {"iss": iss, "sub": sub, "aud": "jit-broker", "iat": now, "exp": now + 7200}
    with open(token_file, "w") as fh:
        fh.write(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench-1"}))
    docs = {
        "/.well-known/openid-configuration": {
            "issuer": iss,
            "jwks_uri": iss + "/jwks",
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

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
