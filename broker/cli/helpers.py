"""Credential helpers: each speaks the protocol its client program defines (docs/helpers.md).

- ``jit aws credential-process``: the AWS SDKs' ``credential_process`` (JSON ``Version: 1``
  with ``Expiration``; botocore runs it again before the credential expires).
- ``jit git-credential get|store|erase``: git's credential helper protocol (``key=value``
  lines on stdin and stdout). ``get`` mints, ``store`` does nothing (the credential dies by
  itself), ``erase`` (git's word for "the server refused it") revokes it (RFC 7009).
- ``jit kube-credential``: a kubectl exec credential plugin, printing an ``ExecCredential``
  (``client.authentication.k8s.io/v1``) with ``expirationTimestamp``; kubectl keeps it until
  then and runs the plugin again after.

They print the credential on stdout (for the program that runs them) and nothing else there;
messages go to stderr; a refusal exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any, Final

import click

from broker.cli.client import die, identity_options, run, workload_client
from broker.cli.workload import ApprovalProgress, parse_actions, wait_with_progress
from broker.client import Client, Credential

__all__ = ["aws", "git_credential", "helper_commands", "kube_credential"]

EXEC_CREDENTIAL_VERSIONS: Final = (
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
)


def _scope_options(*, resource_required: bool = True) -> Callable[[Any], Any]:
    return lambda fn: _with_scope_options(fn, resource_required)


def _with_scope_options(fn: Callable[..., Any], resource_required: bool) -> Any:
    options = [
        click.option("--issuer", default="jwt", show_default=True, help="Issuer instance."),
        click.option(
            "--resource", required=resource_required, help="The resource the credential is for."
        ),
        click.option(
            "--action",
            "-a",
            "actions",
            multiple=True,
            required=True,
            help="An action (repeatable).",
        ),
        click.option("--ttl", help="How long each credential lives, e.g. 15m."),
        click.option("--task", "task_id", help="The task its leases belong to."),
        click.option("--purpose", default="", help="Why (needs --task)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return identity_options(fn)


def _mint(
    opts: dict[str, Any], resource: str, then: Callable[[Credential], Any] | None = None
) -> Credential:
    """One credential (waiting for an approval with progress on stderr)."""
    if opts["purpose"] and not opts["task_id"]:
        die("--purpose needs --task")

    async def work() -> Credential:
        async with workload_client(
            opts["url"], opts["token"], opts["token_file"], opts["identity"], opts["audience"]
        ) as client:
            result = await client.request(
                resource=resource,
                actions=parse_actions(opts["actions"]),
                issuer=opts["issuer"],
                ttl=opts["ttl"],
                task=opts["task_id"],
                purpose=opts["purpose"],
            )
            if isinstance(result, Credential):
                return result
            return await wait_with_progress(client, result, ApprovalProgress())

    return run(work)


def _as_workload(opts: dict[str, Any], call: Callable[[Client], Awaitable[Any]]) -> Any:
    async def work() -> Any:
        async with workload_client(
            opts["url"], opts["token"], opts["token_file"], opts["identity"], opts["audience"]
        ) as client:
            return await call(client)

    return run(work)


def _utc(cred: Credential) -> str:
    return cred.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- AWS ---------------------------------------------------------------------------------------


@click.group()
def aws() -> None:
    """AWS: a credential_process for AWS profiles."""


@aws.command("credential-process")
@_scope_options()
def aws_credential_process(**opts: Any) -> None:
    """Print an AWS credential (credential_process JSON, Version 1, with Expiration).

    In ~/.aws/config: credential_process = jit aws credential-process --issuer aws
    --resource arn:aws:s3:::orders --action read --task build-42"""
    cred = _mint(opts, opts["resource"])
    try:
        document = json.loads(cred.secret.reveal())
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("Version") != 1:
        die(f"issuer {cred.issuer!r} did not issue an AWS credential (credential_process JSON)")
    document.setdefault("Expiration", _utc(cred))
    click.echo(json.dumps(document))


# -- git ---------------------------------------------------------------------------------------


def read_git_attributes(stream: Any) -> dict[str, str]:
    """git's credential input: ``key=value`` lines up to a blank line or EOF."""
    attrs: dict[str, str] = {}
    for line in stream:
        line = line.rstrip("\n")
        if not line:
            break
        key, sep, value = line.partition("=")
        if sep:
            attrs[key] = value
    return attrs


def git_resource(attrs: dict[str, str]) -> str:
    """The resource git asks for: ``protocol://host[/path]`` (the path only when git sends
    it, i.e. with ``credential.useHttpPath``)."""
    if not attrs.get("protocol") or not attrs.get("host"):
        die("git sent no protocol and host")
    path = attrs.get("path", "").strip("/")
    return f"{attrs['protocol']}://{attrs['host']}" + (f"/{path}" if path else "")


@click.command("git-credential")
@click.option(
    "--username",
    default="x-access-token",
    show_default=True,
    help="The user name given to git with the token.",
)
@_scope_options(resource_required=False)
@click.argument("operation", type=click.Choice(["get", "store", "erase"]))
def git_credential(operation: str, username: str, **opts: Any) -> None:
    """git credential helper: get mints a credential, erase revokes it.

    git config credential.https://git.example.com.helper \\
        '!jit git-credential --action read --action write --task build-42'

    The resource is what git asks for (protocol://host, plus /path with
    credential.useHttpPath) unless --resource says."""
    attrs = read_git_attributes(sys.stdin)
    if operation == "store":
        return  # nothing to keep: the credential dies with its lease
    if operation == "erase":
        password = attrs.get("password")
        if password:
            _as_workload(opts, lambda c: c.revoke_token(password))
        return
    cred = _mint(opts, opts["resource"] or git_resource(attrs))
    out = [f"username={username}", f"password={cred.secret.reveal()}"]
    out.append(f"password_expiry_utc={int(cred.expires_at.timestamp())}")
    sys.stdout.write("".join(f"{line}\n" for line in out))


# -- kubectl -----------------------------------------------------------------------------------


@click.command("kube-credential")
@_scope_options()
def kube_credential(**opts: Any) -> None:
    """kubectl exec credential plugin: print an ExecCredential (client.authentication.k8s.io/v1)
    with the token and its expirationTimestamp.

    In a kubeconfig user: exec: {apiVersion: client.authentication.k8s.io/v1, command: jit,
    args: [kube-credential, --resource, https://k8s.example.com, --action, read],
    interactiveMode: Never}"""
    version = EXEC_CREDENTIAL_VERSIONS[0]
    info = os.environ.get("KUBERNETES_EXEC_INFO")
    if info:
        try:
            asked = json.loads(info).get("apiVersion")
        except (ValueError, AttributeError):
            asked = None
        if asked in EXEC_CREDENTIAL_VERSIONS:
            version = asked
    cred = _mint(opts, opts["resource"])
    click.echo(
        json.dumps(
            {
                "apiVersion": version,
                "kind": "ExecCredential",
                "status": {"token": cred.secret.reveal(), "expirationTimestamp": _utc(cred)},
            }
        )
    )


helper_commands = (aws, git_credential, kube_credential)
