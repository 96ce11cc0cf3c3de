"""Approver commands: ``jit approvals list|show``, ``jit approve``, ``jit deny``, through the
SDK with an approver's credential (a human identity token, or ``jit dev``'s approver key)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from broker.cli.client import approver_client, run
from broker.cli.workload import parse_actions, print_json
from broker.client import Approval, Client

__all__ = ["approvals", "approve", "deny"]

T = TypeVar("T")

url_option = click.option(
    "--url", envvar="JIT_URL", help="Broker URL (env JIT_URL; default: the running `jit dev`)."
)
approver_token_option = click.option(
    "--approver-token",
    envvar="JIT_APPROVER_TOKEN",
    help="A human identity token of an approver [env JIT_APPROVER_TOKEN]; jit dev: automatic.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")


def _as_approver(
    url: str | None, approver_token: str | None, call: Callable[[Client], Awaitable[T]]
) -> T:
    async def work() -> T:
        async with approver_client(url, approver_token) as client:
            return await call(client)

    return run(work)


def _approval_line(a: Approval) -> str:
    return (
        f"{a.approval_id}  {a.state:<9} {a.owner}  task {a.task_id}  "
        f"{a.issuer} {a.resource} {','.join(a.actions)} for {a.ttl}s  "
        f"grant {a.grant}  needs {a.needed}/{a.quorum}  expires {a.expires_at.isoformat()}"
    )


@click.group()
def approvals() -> None:
    """Approval requests waiting for you (as an approver)."""


@approvals.command("list")
@url_option
@approver_token_option
@json_option
def approvals_list(url: str | None, approver_token: str | None, as_json: bool) -> None:
    """Pending requests you may approve."""
    data = _as_approver(url, approver_token, lambda c: c.approvals())
    if as_json:
        print_json(data)
        return
    if not data:
        click.echo("no pending approval requests", err=True)
    for a in data:
        click.echo(_approval_line(a))


@approvals.command("show")
@click.argument("approval_id")
@url_option
@approver_token_option
def approvals_show(approval_id: str, url: str | None, approver_token: str | None) -> None:
    """One approval request, in full (JSON)."""
    print_json(_as_approver(url, approver_token, lambda c: c.approval(approval_id)))


@click.command()
@click.argument("approval_id")
@click.option("--ttl", help="Approve a shorter TTL than asked, e.g. 5m.")
@click.option(
    "--action", "-a", "actions", multiple=True, help="Approve only these actions (repeatable)."
)
@click.option("--reason", default="", help="A note for the record.")
@url_option
@approver_token_option
def approve(
    approval_id: str,
    ttl: str | None,
    actions: tuple[str, ...],
    reason: str,
    url: str | None,
    approver_token: str | None,
) -> None:
    """Approve a request (optionally narrower: a shorter TTL, fewer actions)."""
    acts: Any = parse_actions(actions) or None
    data = _as_approver(
        url, approver_token, lambda c: c.approve(approval_id, ttl=ttl, actions=acts, reason=reason)
    )
    click.echo(f"{data.approval_id}: {data.state} ({data.needed} more needed)")


@click.command()
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (shown to the requester).")
@url_option
@approver_token_option
def deny(approval_id: str, reason: str, url: str | None, approver_token: str | None) -> None:
    """Deny a request."""
    data = _as_approver(url, approver_token, lambda c: c.deny(approval_id, reason=reason))
    click.echo(f"{data.approval_id}: {data.state}")
