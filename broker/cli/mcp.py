"""``jit mcp``: serve the MCP tools of :mod:`broker.mcp` to an agent runtime (stdio by default,
``--http`` for streamable HTTP on loopback). Registered in :mod:`broker.cli.main`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import click

from broker.mcp import MISSING_EXTRA
from broker.urls import check_url

__all__ = ["mcp_command"]


@click.command("mcp", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="JIT_URL", default="http://127.0.0.1:8200", show_default=True)
@click.option("--token", envvar="JIT_TOKEN", help="Workload identity token (env JIT_TOKEN).")
@click.option(
    "--token-file",
    envvar="JIT_TOKEN_FILE",
    type=click.Path(dir_okay=False),
    help="File holding the identity token, read again whenever it changes (env JIT_TOKEN_FILE).",
)
@click.option(
    "--http",
    "http_port",
    type=click.IntRange(1, 65535),
    help="Serve streamable "
    "HTTP on 127.0.0.1:PORT/mcp instead of stdio (the process is then the session).",
)
@click.option(
    "--purpose",
    default="AI agent session (jit mcp)",
    show_default=True,
    help="The task's purpose, shown to approvers.",
)
@click.option(
    "--task-ttl",
    type=click.IntRange(1),
    help="Seconds the session's task may run "
    "(default: the broker's); bounds it if jit mcp itself dies.",
)
@click.option(
    "--files-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the session's credential directory is made (default: $TMPDIR).",
)
def mcp_command(
    url: str,
    token: str | None,
    token_file: str | None,
    http_port: int | None,
    purpose: str,
    task_ttl: int | None,
    files_dir: Path | None,
) -> None:
    """An MCP server for an AI agent: one session is one task, revoked when the session ends.

    The agent gets the tools request_credential, wait_for_approval, list_credentials,
    revoke_credential, explain_access and complete_task (docs/agents.md)."""
    try:
        from broker.mcp.server import Session, build_server
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "mcp":
            raise click.ClickException(MISSING_EXTRA) from None
        raise
    from broker.client import Client, IdentitySource, StaticToken, TokenFile

    try:
        check_url(url)  # the SDK's rule: https, or plain http to a loopback address only
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url / JIT_URL") from None
    identity: IdentitySource
    if token_file:
        try:
            blank = not Path(token_file).read_text().strip()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {token_file}: {exc.strerror}", param_hint="--token-file"
            ) from None
        if blank:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        identity = TokenFile(token_file)  # read again whenever the file changes
    elif token is None:
        raise click.UsageError(
            "no workload token: pass --token, set JIT_TOKEN, or --token-file / JIT_TOKEN_FILE"
        )
    elif not token.strip():
        raise click.BadParameter("the workload token is blank", param_hint="--token / JIT_TOKEN")
    else:
        identity = StaticToken(token)

    async def main() -> None:
        broker = Client(url, identity)
        sessions: list[Session] = []
        server = build_server(
            broker, purpose=purpose, task_ttl=task_ttl, files_dir=files_dir, sessions=sessions
        )
        try:
            if http_port is not None:
                # uvicorn turns SIGTERM and SIGINT into a graceful shutdown, which ends the
                # session (the server's lifespan): the task is completed.
                await server.run_streamable_http_async(host="127.0.0.1", port=http_port)
            else:
                loop = asyncio.get_running_loop()

                async def end_and_exit() -> None:
                    # End every open session (complete its tasks, delete its files), then
                    # leave: cancelling would wait forever for the SDK's stdin reader thread,
                    # blocked in a read that nothing interrupts.
                    try:
                        for session in list(sessions):
                            await session.end(broker)
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(0)

                def stop() -> None:
                    if not stopping:
                        stopping.append(loop.create_task(end_and_exit()))

                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                    loop.add_signal_handler(sig, stop)
                await server.run_stdio_async()
        finally:
            await broker.aclose()

    stopping: list[asyncio.Task[None]] = []

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main())
