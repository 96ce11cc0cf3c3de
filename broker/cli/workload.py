"""Workload commands: ``jit request``, ``jit leases``, ``jit revoke``, ``jit task``. Each is one
call of the SDK (``broker.client``) with the workload's identity."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from broker.cli.client import (
    credential_json,
    die,
    identity_options,
    run,
    workload_client,
)
from broker.client import Approval, Client, Credential, LeaseInfo

__all__ = [
    "ApprovalProgress",
    "leases",
    "parse_actions",
    "parse_params",
    "print_json",
    "request",
    "revoke",
    "task",
]

json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")

#: Seconds between progress lines while waiting for an approval without a terminal (CI logs).
DEFAULT_PROGRESS_INTERVAL = 30.0


def print_json(data: Any) -> None:
    click.echo(json.dumps(msgspec.to_builtins(data), indent=2, sort_keys=True))


def parse_actions(actions: tuple[str, ...]) -> list[str]:
    return [a.strip() for item in actions for a in item.split(",") if a.strip()]


def parse_params(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            die(f"--param {item!r}: expected NAME=VALUE")
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                value = path.read_text().strip()
            except OSError as exc:
                die(f"--param {name}: cannot read {path}: {exc.strerror}")
        out[name] = value
    return out


def _left(expires_at: datetime) -> str:
    secs = max(0, int((expires_at - datetime.now(UTC)).total_seconds()))
    return f"{secs // 60}:{secs % 60:02d}"


class ApprovalProgress:
    """What a waiting ``jit request`` (or ``jit exec``) shows on stderr. On a terminal: one
    live status line. Otherwise (a CI log): the approval id, its link and who must approve,
    once when waiting starts; then a progress line every ``interval`` seconds
    (``JIT_PROGRESS_INTERVAL``, default 30) and whenever an approval comes in."""

    def __init__(self, *, tty: bool | None = None, interval: float | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        if interval is None:
            try:
                interval = float(os.environ.get("JIT_PROGRESS_INTERVAL", DEFAULT_PROGRESS_INTERVAL))
            except ValueError:
                interval = DEFAULT_PROGRESS_INTERVAL
        self.interval = max(interval, 0.1)
        self.view: Approval | None = None
        self._console = Console(stderr=True, highlight=False)
        self._status: Any = None
        self._ticker: asyncio.Task[None] | None = None
        self._shown_needed: int | None = None

    def update(self, view: Approval) -> None:
        first = self.view is None
        self.view = view
        if view.state != "pending":
            return
        if self.tty:
            if self._status is not None:
                self._status.update(self._line(view))
            return
        if first:
            click.echo(
                f"waiting for approval {view.approval_id} (grant {view.grant}): "
                f"{view.needed} of {', '.join(view.approvers)} must approve "
                f"(an approver runs: jit approve {view.approval_id}); {view.link}; "
                f"expires {view.expires_at.isoformat()}",
                err=True,
            )
            self._shown_needed = view.needed
        elif view.needed != self._shown_needed:
            self._progress(view)

    def _line(self, view: Approval) -> str:
        return (
            f"waiting for approval {view.approval_id} (grant {view.grant}): "
            f"{view.needed} more of {', '.join(view.approvers)}; "
            f"expires in {_left(view.expires_at)}"
        )

    def _progress(self, view: Approval) -> None:
        self._shown_needed = view.needed
        click.echo(
            f"still waiting for approval {view.approval_id}: {view.needed} more of "
            f"{', '.join(view.approvers)}; expires in {_left(view.expires_at)}",
            err=True,
        )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self.view is not None and self.view.state == "pending":
                self._progress(self.view)

    @contextlib.asynccontextmanager
    async def showing(self) -> AsyncIterator[ApprovalProgress]:
        if self.tty:
            with self._console.status("waiting for approval") as status:
                self._status = status
                if self.view is not None:
                    status.update(self._line(self.view))
                yield self
            return
        self._ticker = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker


async def wait_with_progress(
    client: Client, pending: Approval, progress: ApprovalProgress
) -> Credential:
    progress.update(pending)
    async with progress.showing():
        cred = await client.wait_for_approval(pending, on_status=progress.update)
    view = progress.view
    approvers = [r.person for r in view.reviews if r.decision == "approve"] if view else []
    click.echo(f"approved by {', '.join(approvers) or 'the approvers'}", err=True)
    return cred


def approval_needed(view: Approval) -> str:
    return (
        f"approval needed for grant {view.grant}: {view.needed} of "
        f"{', '.join(view.approvers)}; expires {msgspec.to_builtins(view.expires_at)}"
    )


@click.command()
@click.option("--issuer", default="jwt", show_default=True, help="Issuer instance.")
@click.option("--resource", required=True, help="The resource (e.g. an audience URL).")
@click.option(
    "--action",
    "-a",
    "actions",
    multiple=True,
    required=True,
    help="An action (repeatable, or comma-separated).",
)
@click.option("--ttl", help="How long, e.g. 10m (default: the grant's default).")
@click.option("--task", "task_id", help="Task id (default: a new task per credential).")
@click.option("--purpose", default="", help="Why: shown to humans, never grants anything.")
@click.option("--task-ttl", help="How long the task may run, e.g. 2h (first request of a task).")
@click.option(
    "--on-behalf-of", help="The person an agent acts for (they cannot approve the request)."
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="If approval is needed, print the approval id and exit instead of waiting.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Issuer input, e.g. public_key=@~/.ssh/id_ed25519.pub (@FILE reads a file). Repeatable.",
)
@identity_options
@json_option
def request(
    issuer: str,
    resource: str,
    actions: tuple[str, ...],
    ttl: str | None,
    task_id: str | None,
    purpose: str,
    task_ttl: str | None,
    on_behalf_of: str | None,
    no_wait: bool,
    params: tuple[str, ...],
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
    as_json: bool,
) -> None:
    """Ask for a credential. Prints the secret on stdout, the lease on stderr.

    When the grant needs human approval, waits until it is approved (a live status line on a
    terminal; the approval id, link and approvers, then progress lines, in a CI log), then
    prints the credential; denied or expired exits 1. --no-wait prints the approval id."""
    if (purpose or task_ttl) and not task_id:
        die("--purpose and --task-ttl need --task")

    async def work() -> Credential | None:
        async with workload_client(url, token, token_file, identity, audience) as client:
            result = await client.request(
                resource=resource,
                actions=parse_actions(actions),
                issuer=issuer,
                ttl=ttl,
                task=task_id,
                purpose=purpose,
                task_ttl=task_ttl,
                params=parse_params(params) if params else None,
                on_behalf_of=on_behalf_of,
            )
            if isinstance(result, Credential):
                return result
            if no_wait:
                click.echo(result.approval_id)
                click.echo(approval_needed(result), err=True)
                return None
            return await wait_with_progress(client, result, ApprovalProgress())

    try:
        cred = run(work)
    except KeyboardInterrupt:
        die("interrupted (a pending approval request of this run was cancelled)", 130)
    if cred is None:
        return
    if as_json:
        click.echo(json.dumps(credential_json(cred), indent=2, sort_keys=True))
        return
    click.echo(cred.secret.reveal())
    click.echo(
        f"lease {cred.lease_id} task {cred.task_id} expires "
        f"{msgspec.to_builtins(cred.expires_at)} ({cred.ttl}s) grant {cred.grant}",
        err=True,
    )
    if cred.ttl_capped_by:
        click.echo(f"ttl capped by {cred.ttl_capped_by}", err=True)


def lease_table(items: list[LeaseInfo]) -> Table:
    table = Table("LEASE", "TASK", "STATE", "ISSUER", "RESOURCE", "ACTIONS", "EXPIRES")
    for le in items:
        state = le.state + (" (overdue)" if le.overdue else "")
        table.add_row(
            le.id,
            le.task_id,
            state,
            le.issuer,
            le.resource,
            ",".join(le.actions),
            str(msgspec.to_builtins(le.not_after)),
        )
    return table


def _with_client(
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
    call: Callable[[Client], Any],
) -> Any:
    async def work() -> Any:
        async with workload_client(url, token, token_file, identity, audience) as client:
            return await call(client)

    return run(work)


@click.command()
@click.option("--all", "include_all", is_flag=True, help="Include revoked and expired leases.")
@identity_options
@json_option
def leases(
    include_all: bool,
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
    as_json: bool,
) -> None:
    """List the caller's leases."""
    data = _with_client(
        url,
        token,
        token_file,
        identity,
        audience,
        lambda c: c.leases(include_inactive=include_all),
    )
    if as_json:
        print_json(data)
    elif not data:
        click.echo("no leases", err=True)
    else:
        Console().print(lease_table(data))


@click.command()
@click.argument("lease_id")
@identity_options
@json_option
def revoke(
    lease_id: str,
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
    as_json: bool,
) -> None:
    """Revoke one of the caller's leases."""
    data = _with_client(url, token, token_file, identity, audience, lambda c: c.revoke(lease_id))
    if as_json:
        print_json(data)
    else:
        click.echo(f"lease {data.id}: {data.state}")


@click.group()
def task() -> None:
    """Tasks: complete one (revokes all its leases) or show it."""


@task.command("complete")
@click.argument("task_id")
@identity_options
@json_option
def task_complete(
    task_id: str,
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
    as_json: bool,
) -> None:
    """Complete a task: every lease of it is revoked."""
    data = _with_client(
        url, token, token_file, identity, audience, lambda c: c.complete_task(task_id)
    )
    if as_json:
        print_json(data)
        return
    states = ", ".join(f"{le.id}={le.state}" for le in data.leases) or "no leases"
    click.echo(f"task {data.task_id}: {data.state} ({states})")


@task.command("show")
@click.argument("task_id")
@identity_options
@json_option
def task_show(
    task_id: str,
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
    as_json: bool,
) -> None:
    """Show a task and its leases."""
    data = _with_client(url, token, token_file, identity, audience, lambda c: c.get_task(task_id))
    if as_json:
        print_json(data)
        return
    click.echo(f"task {data.task_id}: {data.state}")
    if data.leases:
        Console().print(lease_table(data.leases))
