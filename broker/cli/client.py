"""The HTTP client side of the CLI: where the broker is, which token to send, errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

__all__ = [
    "ApiClient",
    "dev_state_path",
    "die",
    "load_dev_state",
    "resolve_approver_token",
    "resolve_token",
    "resolve_url",
]

DEFAULT_URL = "http://127.0.0.1:8200"


def jit_home() -> Path:
    return Path(os.environ.get("JIT_HOME") or Path.home() / ".jit")


def dev_state_path() -> Path:
    return jit_home() / "dev.json"


def load_dev_state() -> dict[str, Any] | None:
    try:
        data = json.loads(dev_state_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def die(message: str, code: int = 1) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def resolve_url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    state = load_dev_state()
    if state and isinstance(state.get("url"), str):
        return str(state["url"]).rstrip("/")
    return DEFAULT_URL


def resolve_approver_token(token: str | None, url: str) -> str:
    """An approver's credential: --approver-token / JIT_APPROVER_TOKEN (a human identity
    token), else, against the running ``jit dev`` broker, its development approver key."""
    if token:
        return token.strip()
    state = load_dev_state()
    if state and state.get("url") == url and isinstance(state.get("approver_key"), str):
        return str(state["approver_key"])
    die("no approver credential: pass --approver-token or set JIT_APPROVER_TOKEN")


def resolve_token(token: str | None, token_file: str | None) -> str:
    if token:
        return token.strip()
    if token_file:
        try:
            return Path(token_file).read_text().strip()
        except OSError as exc:
            die(f"cannot read token file {token_file}: {exc.strerror}")
    die("no workload token: pass --token, set JIT_TOKEN, or --token-file / JIT_TOKEN_FILE")


class ApiClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.url = url

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            die(f"cannot reach the broker at {self.url} (is `jit dev` or `jit serve` running?)")
        except httpx.HTTPError as exc:
            die(f"request to {self.url} failed: {exc.__class__.__name__}")
        if resp.status_code >= 400:
            explain_error(resp)
        return resp.json() if resp.content else None


def explain_error(resp: httpx.Response) -> NoReturn:
    try:
        body = resp.json()
    except ValueError:
        die(f"HTTP {resp.status_code}: {resp.text[:200]}")
    if "error" in body and "title" not in body:  # OAuth shape
        msg = f"{body['error']}: {body.get('error_description', '')}"
    else:
        msg = f"{body.get('title', 'error')} ({resp.status_code}): {body.get('detail', '')}"
    lines = [msg]
    if body.get("approval_id"):
        lines.append(f"  approval: {body['approval_id']}")
    if body.get("grant"):
        lines.append(f"  grant: {body['grant']}")
    for reason in body.get("reasons") or []:
        lines.append(f"  - {reason}")
    die("\n".join(lines), 1)
