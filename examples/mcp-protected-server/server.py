"""An MCP server (a tool provider) that trusts jit-broker as its authorization server.

It is an example to copy: nothing in it is specific to jit-broker beyond standard OAuth.

- Every request needs ``Authorization: Bearer <token>``. The token is a JWT access token
  (RFC 9068) the broker signed: its signature is checked against the broker's
  ``/.well-known/jwks.json``, its ``iss`` must be the broker, its ``aud`` must be exactly this
  server's URL (RFC 8707: the agent asked for ``resource=<this URL>``), and it must not be
  expired. A token for another server is refused here, however valid it is there.
- With client credentials configured (a ``clients`` entry in the broker's config with the
  ``introspect`` permission), every token is also introspected (RFC 7662), so a credential
  revoked at the broker — its task completed, revoked on command, a governance violation —
  stops working here at once, not only when it expires.
- It publishes RFC 9728 protected resource metadata at
  ``/.well-known/oauth-protected-resource/mcp`` naming the broker as its authorization server,
  and a 401 carries ``WWW-Authenticate: Bearer resource_metadata=...`` pointing at it.

Run it (the mcp extra: ``pip install 'jit-broker[mcp]'``)::

    python examples/mcp-protected-server/server.py --broker http://127.0.0.1:8200 \\
        --port 8300 --client-id orders-mcp --client-secret-file /etc/orders-mcp/secret

See docs/agents.md, "Protecting an MCP server with the broker".
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

ALGORITHMS = ["EdDSA", "ES256"]  # what the broker's jwt issuer signs with
JWKS_MAX_AGE = 300.0  # seconds; a token naming an unknown kid refreshes at once


class BrokerTokenVerifier:
    """The mcp SDK's ``TokenVerifier`` for tokens issued by jit-broker."""

    def __init__(
        self,
        broker_url: str,
        resource_url: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.broker_url = broker_url.rstrip("/")
        self.resource_url = resource_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.http = http or httpx.AsyncClient(timeout=10)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0

    async def _key(self, kid: object) -> jwt.PyJWK | None:
        stale = time.monotonic() - self._fetched > JWKS_MAX_AGE
        if not isinstance(kid, str):
            return None
        if stale or kid not in self._keys:
            resp = await self.http.get(f"{self.broker_url}/.well-known/jwks.json")
            resp.raise_for_status()
            self._keys = {
                k["kid"]: jwt.PyJWK.from_dict(k)
                for k in resp.json().get("keys", [])
                if isinstance(k, dict) and k.get("kid")
            }
            self._fetched = time.monotonic()
        return self._keys.get(kid)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header = jwt.get_unverified_header(token)
            key = await self._key(header.get("kid"))
            if key is None or header.get("typ") != "at+jwt":
                return None
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.resource_url,
                issuer=self.broker_url,
                options={"require": ["exp", "iat", "sub", "jti", "aud"]},
            )
        except (jwt.PyJWTError, httpx.HTTPError, ValueError):
            return None
        if self.client_id is not None and not await self._active(token):
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id") or claims["sub"]),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=str(claims["aud"]),
            subject=str(claims["sub"]),
            claims={k: claims[k] for k in ("iss", "act", "task_id", "jti") if k in claims},
        )

    async def _active(self, token: str) -> bool:
        """RFC 7662 at the broker: still active, and still for this server."""
        assert self.client_id is not None
        assert self.client_secret is not None
        try:
            resp = await self.http.post(
                f"{self.broker_url}/oauth/introspect",
                data={"token": token, "resource": self.resource_url},
                auth=(self.client_id, self.client_secret),
            )
            resp.raise_for_status()
            answer = resp.json()
        except (httpx.HTTPError, ValueError):
            return False  # fail closed: no answer is no access
        return answer.get("active") is True and answer.get("aud") == self.resource_url


def build_server(
    broker_url: str,
    resource_url: str,
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    required_scopes: list[str] | None = None,
) -> MCPServer:
    """The protected MCP server; ``resource_url`` is its own URL (the tokens' ``aud``)."""
    verifier = BrokerTokenVerifier(
        broker_url, resource_url, client_id=client_id, client_secret=client_secret
    )
    server: MCPServer = MCPServer(
        "orders",
        instructions="Read orders. Authorize with a token from jit-broker for this server.",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=broker_url.rstrip("/"),  # RFC 9728 authorization_servers
            resource_server_url=resource_url,
            validate_token_resource=True,  # the SDK re-checks aud == resource_url
            required_scopes=required_scopes or ["read"],
        ),
    )

    @server.tool()
    def list_orders() -> dict[str, Any]:
        """The open orders, and on whose authority they were read."""
        token = get_access_token()
        claims = (token.claims or {}) if token else {}
        return {
            "orders": [{"id": "o-1001", "item": "coffee", "qty": 2}],
            "read_for": token.subject if token else None,
            "acting": claims.get("act"),
            "task_id": claims.get("task_id"),
        }

    return server


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="the broker's public URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--url", help="this server's public URL (default http://HOST:PORT/mcp)")
    parser.add_argument("--client-id", help="the broker client to introspect as")
    parser.add_argument("--client-secret-file", type=Path, help="its secret (a file)")
    args = parser.parse_args()
    url = args.url or f"http://{args.host}:{args.port}/mcp"
    secret = args.client_secret_file.read_text().strip() if args.client_secret_file else None
    server = build_server(args.broker, url, client_id=args.client_id, client_secret=secret)
    uvicorn.run(server.streamable_http_app(host=args.host), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
