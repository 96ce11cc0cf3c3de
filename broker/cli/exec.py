"""``jit exec``: get every credential of a task, run a command with them, clean up.

::

    jit exec --task build-42 --issuer pg-orders --resource postgresql://db/orders --action read \\
        [--cred issuer=jwt,resource=https://api,action=read ...] -- psql -c 'select 1'

1. Every credential first (waiting for approvals, with the progress ``jit request`` shows).
2. Each credential's exports (ADR 0031) become environment variables and 0600 files in one
   private (0700) temporary directory; a credential without exports gives
   ``JIT_CREDENTIAL``. Two credentials exporting one name need ``prefix=`` on one of them.
   With ``--ssh-agent``, a private ssh-agent holds every exported OpenSSH key and its
   certificate (``SSH_AUTH_SOCK``).
3. The command runs with that environment; SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded
   to it (not SIGINT/SIGQUIT from a terminal, which already delivered them to it).
4. However it ends, the directory is removed and the task completed (every lease of it
   revoked) — or, with ``--keep-task``, the leases taken here revoked. The exit code is the
   command's (128 + N when signal N killed it); 125 when jit exec failed before running it,
   126 when it cannot be executed, 127 when it is not found.

No secret is ever on a command line: the command's arguments are yours, the credentials are
in its environment or in files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from broker.cli.client import die, explain, identity_options, workload_client
from broker.cli.workload import (
    ApprovalProgress,
    parse_actions,
    parse_params,
    wait_with_progress,
)
from broker.client import Client, ClientError, Credential, Task
from broker.client.client import shielded

__all__ = ["CredSpec", "exec_command", "parse_cred"]

#: jit exec's own failure, as env(1) and timeout(1) report theirs.
EXIT_FAILED = 125
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: Signals a terminal sends to its whole foreground process group (the child has it already).
FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT)


@dataclass
class CredSpec:
    issuer: str = "jwt"
    resource: str = ""
    actions: list[str] = field(default_factory=list)
    ttl: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # generate a key pair here: ssh | pem
    prefix: str = ""


def parse_cred(text: str) -> CredSpec:
    """``issuer=NAME,resource=R,action=A[,action=B],ttl=10m,key=ssh,prefix=P_,param.N=V``."""
    spec = CredSpec()
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--cred")
        if name == "issuer":
            spec.issuer = value
        elif name == "resource":
            spec.resource = value
        elif name in ("action", "actions"):
            spec.actions.extend(a for a in value.split(";") if a)
        elif name == "ttl":
            spec.ttl = value
        elif name == "key":
            if value not in ("ssh", "pem"):
                raise click.BadParameter("key= is ssh or pem", param_hint="--cred")
            spec.key = value
        elif name == "prefix":
            spec.prefix = value
        elif name.startswith("param."):
            spec.params.update(parse_params((f"{name.removeprefix('param.')}={value}",)))
        else:
            raise click.BadParameter(f"unknown field {name!r}", param_hint="--cred")
    if not spec.resource or not spec.actions:
        raise click.BadParameter(f"{text!r} needs resource= and action=", param_hint="--cred")
    return spec


class ExecFailed(Exception):
    """jit exec could not prepare the command (exit 125)."""


async def _credentials(client: Client, task: Task, specs: list[CredSpec]) -> list[Credential]:
    creds: list[Credential] = []
    for spec in specs:
        result = await task.request(
            resource=spec.resource,
            actions=spec.actions,
            issuer=spec.issuer,
            ttl=spec.ttl,
            params=spec.params or None,
            generate_key=spec.key,  # ssh | pem: checked by parse_cred and click
        )
        if not isinstance(result, Credential):
            result = await wait_with_progress(client, result, ApprovalProgress())
            task.lease_ids.append(result.lease_id)
        click.echo(
            f"jit exec: {result.issuer} credential for {result.resource}: lease "
            f"{result.lease_id}, expires {result.expires_at.isoformat()}",
            err=True,
        )
        creds.append(result)
    return creds


async def _environment(
    client: Client, creds: list[Credential], specs: list[CredSpec], workdir: Path
) -> dict[str, str]:
    env: dict[str, str] = {}
    for index, (cred, spec) in enumerate(zip(creds, specs, strict=True)):
        exported = await client.environment(cred, workdir / f"cred-{index}", prefix=spec.prefix)
        clash = sorted(set(exported) & set(env))
        if clash:
            raise ExecFailed(
                f"two credentials export {', '.join(clash)}: give one of them "
                "--cred ...,prefix=NAME_"
            )
        env.update(exported)
        needs_key = cred.exports and any(s.private_key for s in cred.exports.files.values())
        if needs_key and cred.private_key is None:
            click.echo(
                f"jit exec: the {cred.issuer} credential certifies a key generated here: "
                "pass --generate-key (or key= in --cred) to get its key file",
                err=True,
            )
    return env


async def _start_agent(
    workdir: Path, env: dict[str, str], lifetime: int
) -> asyncio.subprocess.Process:
    """A private ssh-agent holding every exported OpenSSH key that has its certificate beside
    it (``X`` and ``X-cert.pub``; ssh-add loads the certificate with the key)."""
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        raise ExecFailed("--ssh-agent needs ssh-agent and ssh-add (openssh-client)")
    sock = workdir / "agent.sock"
    agent = await asyncio.create_subprocess_exec(
        "ssh-agent", "-D", "-a", str(sock),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not sock.exists():
        if agent.returncode is not None or time.monotonic() > deadline:
            raise ExecFailed("ssh-agent did not start")
        await asyncio.sleep(0.02)
    keys = [  # a private directory of a few files: no need for a thread
        p
        for p in sorted(workdir.rglob("*"))  # noqa: ASYNC240
        if p.is_file() and p.with_name(p.name + "-cert.pub").is_file()
    ]
    for key in keys:
        added = await asyncio.create_subprocess_exec(
            "ssh-add", "-q", "-t", str(max(lifetime, 1)), str(key),
            env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await added.wait() != 0:
            raise ExecFailed(f"ssh-add could not load {key.name}")
    env["SSH_AUTH_SOCK"] = str(sock)
    return agent


def _in_terminal_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


async def _run_child(command: tuple[str, ...], env: dict[str, str]) -> int:
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env)
    except FileNotFoundError:
        click.echo(f"jit exec: {command[0]}: command not found", err=True)
        return 127
    except PermissionError:
        click.echo(f"jit exec: {command[0]}: permission denied", err=True)
        return 126
    loop = asyncio.get_running_loop()
    foreground = _in_terminal_foreground()

    def forward(sig: signal.Signals) -> None:
        if foreground and sig in FROM_TERMINAL:
            return  # the terminal sent it to the whole group: the child has it already
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)

    for sig in FORWARDED:
        loop.add_signal_handler(sig, forward, sig)
    try:
        code = await child.wait()
    finally:
        for sig in FORWARDED:
            loop.remove_signal_handler(sig)
    return 128 - code if code < 0 else code


async def _exec(
    client: Client,
    task: Task,
    specs: list[CredSpec],
    command: tuple[str, ...],
    ssh_agent: bool,
) -> int:
    """Everything between the first request and the cleanup; returns the exit code."""
    workdir = Path(tempfile.mkdtemp(prefix="jit-exec-"))
    os.chmod(workdir, 0o700)
    agent: asyncio.subprocess.Process | None = None
    try:
        creds = await _credentials(client, task, specs)
        env = {**os.environ, **await _environment(client, creds, specs, workdir)}
        if ssh_agent:
            left = min(int(c.expires_at.timestamp() - time.time()) for c in creds)
            agent = await _start_agent(workdir, env, left)
        return await _run_child(command, env)
    finally:
        if agent is not None and agent.returncode is None:
            agent.terminate()
            await agent.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def _finish(task: Task) -> None:
    """Complete the task (or revoke its leases taken here), shielded from cancellation."""
    try:
        if task.keep:
            await shielded(task.revoke_leases())
            click.echo(f"jit exec: leases of task {task.id} revoked", err=True)
        elif await shielded(task.complete()) is not None:
            click.echo(f"jit exec: task {task.id} completed; its credentials are revoked", err=True)
    except ClientError as exc:
        click.echo(
            f"jit exec: WARNING: task {task.id} was not cleaned up ({explain(exc)}); its "
            "credentials live until their TTL ends",
            err=True,
        )


@click.command("exec")
@click.option("--task", "task_id", help="Task id (default: a new task).")
@click.option("--purpose", default="", help="Why: shown to approvers, never grants anything.")
@click.option("--task-ttl", help="How long the task may run: the backstop if jit is killed.")
@click.option("--issuer", default="jwt", show_default=True, help="Issuer instance.")
@click.option("--resource", help="The resource of the first credential.")
@click.option("--action", "-a", "actions", multiple=True, help="Its actions (repeatable).")
@click.option("--ttl", help="Its TTL, e.g. 10m.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Its issuer inputs.")
@click.option(
    "--generate-key",
    type=click.Choice(["ssh", "pem"]),
    help="Make its key pair here (ssh, x509); the public key goes as param public_key.",
)
@click.option(
    "--cred",
    "creds",
    multiple=True,
    metavar="SPEC",
    help="Another credential: issuer=I,resource=R,action=A[,action=B][,ttl=T][,key=ssh|pem]"
    "[,prefix=P_][,param.NAME=V]. Repeatable.",
)
@click.option("--keep-task", is_flag=True, help="Revoke these leases but leave the task open.")
@click.option("--ssh-agent", is_flag=True, help="Hold the ssh keys in a private ssh-agent.")
@identity_options
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(
    task_id: str | None,
    purpose: str,
    task_ttl: str | None,
    issuer: str,
    resource: str | None,
    actions: tuple[str, ...],
    ttl: str | None,
    params: tuple[str, ...],
    generate_key: str | None,
    creds: tuple[str, ...],
    keep_task: bool,
    ssh_agent: bool,
    url: str | None,
    token: str | None,
    token_file: str | None,
    identity: str | None,
    audience: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with a task's credentials; complete the task when it exits.

    Every credential is obtained first (waiting for approvals); COMMAND gets them in its
    environment and in 0600 files; SIGINT/SIGTERM are forwarded; the exit code is COMMAND's
    (128+N if signal N killed it). Put COMMAND after `--`."""
    specs: list[CredSpec] = []
    if resource:
        if not actions:
            die("--resource needs --action", 2)
        specs.append(
            CredSpec(
                issuer=issuer,
                resource=resource,
                actions=parse_actions(actions),
                ttl=ttl,
                params=parse_params(params),
                key=generate_key,
            )
        )
    specs.extend(parse_cred(c) for c in creds)
    if not specs:
        die("nothing to get: give --resource and --action, or --cred", 2)

    async def work() -> int:
        async with workload_client(url, token, token_file, identity, audience) as client:
            task = client.task(task_id, purpose=purpose, ttl=task_ttl, keep=keep_task)
            code = EXIT_FAILED
            try:
                code = await _exec(client, task, specs, command, ssh_agent)
            except ExecFailed as exc:
                click.echo(f"jit exec: {exc}", err=True)
            except ClientError as exc:
                click.echo(f"jit exec: {explain(exc)}", err=True)
            finally:
                await _finish(task)
            return code

    try:
        code = asyncio.run(work())
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
