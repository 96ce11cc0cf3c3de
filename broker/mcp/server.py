"""``jit mcp``: the MCP server an agent runtime starts to get credentials for its agent.

One MCP session is one task. The session's task id is made when the session starts; the first
credential request creates the task at the broker, and when the session ends — the client
disconnects or crashes (stdin closes), ``jit mcp`` is stopped (SIGTERM, Ctrl-C) — the task is
completed, which revokes every credential the agent got in it, and the session's credential
files are deleted. If ``jit mcp`` itself dies, each credential's TTL (and the task's deadline,
``--task-ttl``) still bounds it. Over ``--http`` the server process is the session.

Delivery (docs/agents.md): by default a credential is written to a 0600 file in a 0700
directory of the session, and the tool result names the file and the expiry — the model sees
where the secret is, not the secret. With ``reveal: true`` the secret is in the tool result,
which the broker allows only for a grant with ``delivery.reveal_to_model``. The request tells
the broker which it is, and the audit records it.

The broker is reached through the workload SDK, :class:`broker.client.Client`: typed errors,
an ``Idempotency-Key`` on every mint (a retried request never mints twice), retries with
backoff, and a rotated identity token file re-read. Only the contract modules, the SDK and
:mod:`broker.mcp` itself are imported from ``broker``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from broker.client import (
    Approval,
    ApprovalTimeout,
    Client,
    ClientError,
    Credential,
    Denied,
    LeaseInfo,
    NotFound,
)

__all__ = ["Session", "build_server"]

INSTRUCTIONS = """\
Credentials for this session's task, from jit-broker. Ask for exactly what the next step
needs (resource, actions, a short ttl) with request_credential; the result names a file that
holds the credential and when it expires: hand the file's path to the program that needs it
rather than copying the secret. explain_access tells what the policy would allow without
asking. A request that needs a human's approval returns an approval id: show the message to
the user, then call wait_for_approval. Everything is revoked when this session ends; call
complete_task when the work is done sooner."""


@dataclass
class Session:
    """One MCP session's state: its task and the files it delivered."""

    task_id: str
    purpose: str
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)  # lease id -> file
    pending: dict[str, bool] = field(default_factory=dict)  # approval id -> reveal
    tasks: list[str] = field(default_factory=list)  # every task id this session used

    @classmethod
    def open(cls, purpose: str, base: Path | None) -> Session:
        directory = Path(tempfile.mkdtemp(prefix="jit-mcp-", dir=base))  # mode 0700
        task_id = f"mcp-{secrets.token_hex(8)}"
        return cls(task_id=task_id, purpose=purpose, directory=directory, tasks=[task_id])

    def deliver(self, granted: Credential, reveal: bool) -> dict[str, Any]:
        """Hand the credential on as declared at request time; the tool result."""
        result: dict[str, Any] = {
            "status": "issued",
            "lease_id": granted.lease_id,
            "task_id": granted.task_id,
            "issuer": granted.issuer,
            "resource": granted.resource,
            "actions": list(granted.actions),
            "expires_at": granted.expires_at.isoformat(),
            "token_type": granted.token_type,
            "metadata": granted.metadata,
        }
        if reveal:
            result["delivery"] = "model"
            result["secret"] = granted.secret.reveal()
            return result
        path = self.directory / f"{granted.lease_id}.credential"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(granted.secret.reveal())
        self.files[granted.lease_id] = path
        result["delivery"] = "file"
        result["file"] = str(path)
        result["note"] = (
            "The credential is in this file (mode 0600); pass the path to the program that "
            "needs it. It stops working at expires_at, or when this session ends."
        )
        return result

    def forget(self, lease_id: str) -> None:
        path = self.files.pop(lease_id, None)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def end(self, client: Client) -> None:
        """Complete the session's tasks and delete its files (also when the broker fails)."""
        try:
            for task_id in self.tasks:
                await _complete(client, task_id)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.files.clear()


async def _complete(client: Client, task_id: str) -> int:
    """Complete a task (revoking its leases); how many leases it had (0: never created)."""
    try:
        return len((await client.complete_task(task_id)).leases)
    except NotFound:
        return 0


def _pending(session: Session, pending: Approval, reveal: bool) -> dict[str, Any]:
    session.pending[pending.approval_id] = reveal
    return {
        "status": "approval_pending",
        "approval_id": pending.approval_id,
        "grant": pending.grant,
        "expires_at": pending.expires_at.isoformat(),
        "message": (
            f"This needs a human's approval (grant {pending.grant}, {pending.needed} more "
            f"approval(s)). Ask an approver to approve {pending.approval_id} ({pending.link}), "
            "then call wait_for_approval with this approval_id."
        ),
    }


def _lease(info: LeaseInfo, session: Session) -> dict[str, Any]:
    out: dict[str, Any] = {
        "lease_id": info.id,
        "state": info.state,
        "issuer": info.issuer,
        "resource": info.resource,
        "actions": info.actions,
        "expires_at": info.not_after.isoformat(),
    }
    if info.id in session.files:
        out["file"] = str(session.files[info.id])
    return out


def _refused(exc: ClientError) -> ToolError:
    reasons = (
        f" Reasons: {'; '.join(exc.reasons)}" if isinstance(exc, Denied) and exc.reasons else ""
    )
    return ToolError(f"{exc.message}.{reasons}" if reasons else exc.message)


def _session(ctx: Context) -> Session:
    session = ctx.request_context.lifespan_context
    assert isinstance(session, Session)
    return session


def build_server(
    client: Client,
    *,
    purpose: str = "AI agent session (jit mcp)",
    task_ttl: int | None = None,
    files_dir: Path | None = None,
    sessions: list[Session] | None = None,
) -> MCPServer[Session]:
    """The ``jit mcp`` server over the SDK's ``client`` (whose identity is the agent's
    workload identity). ``files_dir``: where session directories are
    made (default: the system's temporary directory). ``sessions``, if given, holds the open
    sessions, so that a signal handler can end them."""
    open_sessions = sessions if sessions is not None else []

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[Session]) -> AsyncIterator[Session]:
        session = Session.open(purpose, files_dir)
        open_sessions.append(session)
        try:
            yield session
        finally:
            open_sessions.remove(session)
            with anyio.CancelScope(shield=True):  # runs on cancellation too
                await session.end(client)

    server: MCPServer[Session] = MCPServer(
        "jit-broker", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING"
    )

    @server.tool()
    async def request_credential(
        ctx: Context,
        resource: Annotated[str, Field(description="What the credential is for, e.g. a URL")],
        actions: Annotated[list[str], Field(description='The actions needed, e.g. ["read"]')],
        issuer: Annotated[str, Field(description="The broker's issuer instance")] = "jwt",
        ttl_seconds: Annotated[
            int | None, Field(description="How long it may live; omit for the grant's default")
        ] = None,
        purpose: Annotated[str, Field(description="Why; shown to approvers")] = "",
        reveal: Annotated[
            bool,
            Field(
                description="Return the secret in this result instead of a file (only if the "
                "policy allows it for this grant)"
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Get one short-lived credential for this session's task. The result names the file
        holding it and when it expires; or, if a human must approve, an approval id and a
        message to show (then call wait_for_approval)."""
        session = _session(ctx)
        try:
            result = await client.request(
                task=session.task_id,
                purpose=purpose or session.purpose,
                task_ttl=task_ttl,
                issuer=issuer,
                resource=resource,
                actions=actions,
                ttl=ttl_seconds,
                delivery="model" if reveal else "file",
                # One key per call: the SDK's retries of this call never mint twice.
                idempotency_key=str(uuid.uuid4()),
            )
        except ClientError as exc:
            raise _refused(exc) from None
        if isinstance(result, Approval):
            return _pending(session, result, reveal)
        return session.deliver(result, reveal)

    @server.tool()
    async def wait_for_approval(
        ctx: Context,
        approval_id: Annotated[str, Field(description="From request_credential's result")],
        timeout_seconds: Annotated[int, Field(ge=0, le=300)] = 60,
    ) -> dict[str, Any]:
        """Wait (up to timeout_seconds) for a human to decide an approval request; returns the
        credential once approved, or the request still pending."""
        session = _session(ctx)
        reveal = session.pending.get(approval_id, False)
        view: Approval | None = None
        try:
            view = await client.approval(approval_id)
            # A wait the agent runtime cancels leaves the request pending: the agent may
            # wait again (the SDK's default would cancel the request).
            granted = await client.wait_for_approval(
                view, approval_timeout=timeout_seconds, cancel_if_cancelled=False
            )
        except ApprovalTimeout:
            assert view is not None
            return _pending(session, view, reveal)
        except ClientError as exc:
            session.pending.pop(approval_id, None)
            raise _refused(exc) from None
        session.pending.pop(approval_id, None)
        return session.deliver(granted, reveal)

    @server.tool()
    async def list_credentials(ctx: Context) -> dict[str, Any]:
        """The credentials of this session's task, live and finished."""
        session = _session(ctx)
        try:
            leases = (await client.get_task(session.task_id)).leases
        except NotFound:
            leases = []  # the task has no credential yet
        except ClientError as exc:
            raise _refused(exc) from None
        return {"task_id": session.task_id, "credentials": [_lease(le, session) for le in leases]}

    @server.tool()
    async def revoke_credential(
        ctx: Context, lease_id: Annotated[str, Field(description="The credential's lease_id")]
    ) -> dict[str, Any]:
        """Revoke one credential now (and delete its file)."""
        session = _session(ctx)
        try:
            info = await client.revoke(lease_id)
        except ClientError as exc:
            raise _refused(exc) from None
        session.forget(lease_id)
        return _lease(info, session)

    @server.tool()
    async def explain_access(
        resource: Annotated[str, Field(description="What it would be for")],
        actions: Annotated[list[str], Field(description="The actions")],
        issuer: str = "jwt",
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        """What the policy would answer a request_credential with these arguments, and why,
        without asking for anything."""
        try:
            out = await client.explain(
                issuer=issuer, resource=resource, actions=actions, ttl=ttl_seconds
            )
        except ClientError as exc:
            raise _refused(exc) from None
        return {
            "decision": out.decision,
            "reasons": out.reasons,
            "grant": out.grant,
            "ttl_seconds": out.ttl,
            "may_reveal_to_model": out.reveal_to_model,
        }

    @server.tool()
    async def complete_task(ctx: Context) -> dict[str, Any]:
        """The work is done: revoke every credential of this session's task now. Later
        requests start a new task."""
        session = _session(ctx)
        done = session.task_id
        try:
            count = await _complete(client, done)
        except ClientError as exc:
            raise _refused(exc) from None
        for lease_id in list(session.files):
            session.forget(lease_id)
        session.task_id = f"mcp-{secrets.token_hex(8)}"
        session.tasks.append(session.task_id)
        return {"completed": done, "revoked": count, "next_task_id": session.task_id}

    return server
