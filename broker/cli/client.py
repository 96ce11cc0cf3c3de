"""The CLI's side of the SDK: where the broker is (``--url``, ``JIT_URL``, the running ``jit
dev``), which identity to present, running one SDK call, and turning its errors into the
messages and exit codes the CLI prints. Every HTTP call of the CLI goes through
``broker.client``: there is one HTTP client in the code base."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec

from broker.client import Client, ClientError, Credential, StaticToken
from broker.client.errors import ApprovalDenied, ApprovalRequired, Denied
from broker.client.identity import DEFAULT_AUDIENCE, SOURCES, from_name

__all__ = [
    "DEFAULT_URL",
    "approver_client",
    "credential_json",
    "dev_state_path",
    "die",
    "explain",
    "identity_options",
    "jit_home",
    "load_dev_state",
    "resolve_approver_token",
    "resolve_url",
    "run",
    "workload_client",
]

DEFAULT_URL = "http://127.0.0.1:8200"
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


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
    """--url / JIT_URL, else the running ``jit dev``, else the default. ``jit dev --host
    0.0.0.0`` listens everywhere; it is reached, as the SDK's transport rule wants, on
    127.0.0.1."""
    if not url:
        state = load_dev_state()
        url = str(state["url"]) if state and isinstance(state.get("url"), str) else DEFAULT_URL
    return url.rstrip("/").replace("://0.0.0.0:", "://127.0.0.1:", 1)


def resolve_approver_token(token: str | None, url: str) -> str:
    """An approver's credential: --approver-token / JIT_APPROVER_TOKEN (a human identity
    token), else, against the running ``jit dev`` broker, its development approver key."""
    if token:
        return token.strip()
    state = load_dev_state()
    here = resolve_url(str(state.get("url"))) if state and state.get("url") else None
    if state and here == url and isinstance(state.get("approver_key"), str):
        return str(state["approver_key"])
    die("no approver credential: pass --approver-token or set JIT_APPROVER_TOKEN")


def explain(exc: ClientError) -> str:
    """The lines the CLI prints for an error: ``Title (status): detail``, then the approval
    request, the grant and every reason."""
    if exc.status is not None and exc.title and exc.code and exc.title == exc.code:
        lines = [f"{exc.code}: {exc.message}"]  # the OAuth shape
    elif exc.status is not None:
        lines = [f"{exc.title or 'error'} ({exc.status}): {exc.message}"]
    else:
        lines = [exc.message]
    if isinstance(exc, ApprovalRequired | ApprovalDenied) and exc.approval_id:
        lines.append(f"  approval: {exc.approval_id}")
    if isinstance(exc, ApprovalRequired) and exc.grant:
        lines.append(f"  grant: {exc.grant}")
    if isinstance(exc, Denied):
        lines.extend(f"  - {reason}" for reason in exc.reasons)
    return "\n".join(lines)


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one SDK coroutine; a ClientError exits 1 with :func:`explain`'s message."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]  # any awaitable is a coroutine here
    except ClientError as exc:
        if "cannot reach the broker" in exc.message:
            die(f"{exc.message} (is `jit dev` or `jit serve` running?)")
        die(explain(exc))


def identity_options(fn: F) -> F:
    """--url, --token, --token-file, --identity, --audience (with their environment
    variables), for every workload command."""
    options = [
        click.option(
            "--url",
            envvar="JIT_URL",
            help="Broker URL (env JIT_URL; default: the running `jit dev`).",
        ),
        click.option(
            "--token", envvar="JIT_TOKEN", help="Workload identity token (env JIT_TOKEN)."
        ),
        click.option(
            "--token-file",
            envvar="JIT_TOKEN_FILE",
            type=click.Path(dir_okay=False),
            help="File holding the workload identity token (env JIT_TOKEN_FILE).",
        ),
        click.option(
            "--identity",
            "identity",
            envvar="JIT_IDENTITY",
            type=click.Choice(SOURCES),
            help="Where the identity token comes from (env JIT_IDENTITY; default: --token or "
            "--token-file if given, else auto: GitHub Actions OIDC, GitLab $JIT_ID_TOKEN, a "
            "Kubernetes token file, $JIT_TOKEN / $JIT_TOKEN_FILE).",
        ),
        click.option(
            "--audience",
            envvar="JIT_AUDIENCE",
            default=DEFAULT_AUDIENCE,
            show_default=True,
            help="Audience of a GitHub Actions OIDC token (env JIT_AUDIENCE).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def workload_client(
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
) -> Client:
    """A client that presents the workload's identity (build it inside :func:`run`)."""
    name = identity or ("token" if token or token_file else "auto")
    try:
        source = from_name(name, audience=audience, token=token, token_file=token_file)
        return Client(resolve_url(url), source, audience=audience)
    except ClientError as exc:
        die(exc.message)


def approver_client(url: str | None, approver_token: str | None) -> Client:
    base = resolve_url(url)
    try:
        return Client(base, StaticToken(resolve_approver_token(approver_token, base)))
    except ClientError as exc:
        die(exc.message)


def credential_json(cred: Credential) -> dict[str, Any]:
    """The /v1 answer for a credential, as the API sends it (``--json``): the secret in
    ``credential.secret``. The one place the CLI reveals it besides the plain stdout line."""
    body: dict[str, Any] = {
        "lease_id": cred.lease_id,
        "task_id": cred.task_id,
        "issuer": cred.issuer,
        "resource": cred.resource,
        "actions": list(cred.actions),
        "issued_at": cred.issued_at,
        "expires_at": cred.expires_at,
        "ttl": cred.ttl,
        "grant": cred.grant,
        "policy_version": cred.policy_version,
        "credential": {
            "token_type": cred.token_type,
            "secret": cred.secret.reveal(),
            "metadata": dict(cred.metadata),
        },
        "ttl_capped_by": cred.ttl_capped_by,
    }
    if cred.exports is not None:
        body["exports"] = cred.exports
    result: dict[str, Any] = msgspec.to_builtins(body)
    return result
