"""``jit``: run the broker (dev, serve) and drive it (request, leases, revoke, task, policy,
keys)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from broker import __version__
from broker.cli.approver import approvals, approve, deny
from broker.cli.audit import audit as audit_group
from broker.cli.client import die, jit_home, load_dev_state, resolve_url, run
from broker.cli.exec import exec_command
from broker.cli.helpers import helper_commands
from broker.cli.mcp import mcp_command
from broker.cli.ops import reconcile as reconcile_command
from broker.cli.ops import state as state_group
from broker.cli.workload import leases, request, revoke, task
from broker.config import load_settings, parse_duration

__all__ = ["main"]

url_option = click.option(
    "--url", envvar="JIT_URL", help="Broker URL (env JIT_URL; default: the running `jit dev`)."
)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jit")
def main() -> None:
    """jit-broker: short-lived, per-task credentials, revoked for real."""


# -- dev ---------------------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@click.option("--port", default=8200, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.pass_context
def dev(ctx: click.Context, port: int, host: str) -> None:
    """Start a complete broker in memory (like `vault server -dev`)."""
    if ctx.invoked_subcommand is not None:
        return
    from broker.cli.server import run_dev

    run_dev(host, port, jit_home())


@dev.command("token")
@click.option("--sub", required=True, help="The workload's subject.")
@click.option(
    "--claim", "claims", multiple=True, metavar="KEY=VALUE", help="Extra claim (repeatable)."
)
@click.option("--ttl", default="1h", show_default=True, help="Token lifetime.")
@url_option
def dev_token(sub: str, claims: tuple[str, ...], ttl: str, url: str | None) -> None:
    """Print a workload identity token from the running dev broker's OIDC issuer."""
    state = load_dev_state()
    if state is None:
        die("no running `jit dev` found (start it first; it writes $JIT_HOME/dev.json)")
    extra: dict[str, Any] = {}
    for item in claims:
        key, sep, value = item.partition("=")
        if not sep or not key:
            die(f"--claim expects KEY=VALUE, got {item!r}")
        extra[key] = value
    try:
        seconds = int(parse_duration(ttl).total_seconds())
    except ValueError as exc:
        die(str(exc))
    from broker.client import Client, StaticToken

    base = resolve_url(url or state.get("url"))

    async def work() -> str:
        async with Client(base, StaticToken(str(state.get("admin_key", "")))) as admin:
            return await admin.dev_token(sub, extra, ttl=seconds)

    click.echo(run(work))


# -- serve -------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    envvar="JIT_CONFIG",
    help="Config file (YAML or JSON).",
)
@click.option(
    "--workers",
    default="1",
    envvar="JIT_WORKERS",
    show_default=True,
    help="Broker processes sharing the port (one core each); 'auto' = one per CPU.",
)
def serve(config_path: str, workers: str) -> None:
    """Run the production server (Redis, keys from files, policies from a directory)."""
    from broker.cli.server import run_serve

    run_serve(config_path, _worker_count(workers))


def _worker_count(text: str) -> int:
    if text.strip() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    try:
        count = int(text, 10)
    except ValueError:
        count = 0
    if not 1 <= count <= 256:
        raise click.BadParameter(
            f"{text!r}: a whole number from 1 to 256, or 'auto'", param_hint="--workers"
        )
    return count


# -- workload and approver commands (broker/cli/workload.py, approver.py, exec.py, helpers.py) --

main.add_command(audit_group)
main.add_command(reconcile_command)
main.add_command(state_group)
main.add_command(mcp_command)  # jit mcp: broker/cli/mcp.py
for _command in (request, leases, revoke, task, approvals, approve, deny, exec_command):
    main.add_command(_command)
for _command in helper_commands:
    main.add_command(_command)


# -- policy ------------------------------------------------------------------------------------


def _policy_context(
    config_path: str | None,
) -> tuple[dict[str, set[str] | None] | None, set[str] | None]:
    if not config_path:
        return None, None
    known_claims, issuers, _, _ = _policy_options(config_path)
    return known_claims, issuers


def _policy_options(config_path: str | None) -> tuple[Any, Any, Any, bool]:
    """(known claims, issuer names, approver names, has default approvers) from a config;
    all unchecked (None) without one."""
    if not config_path:
        return None, None, None, True
    from broker.approvals import People
    from broker.clock import SystemClock
    from broker.errors import BrokerError
    from broker.identity import TokenVerifier

    try:
        settings = load_settings(config_path)
    except BrokerError as exc:
        die(exc.message, 2)
    verifier = TokenVerifier(settings.identity, SystemClock())
    people = People(settings.approvals)
    return (
        verifier.known_claims(),
        set(settings.issuers),
        people.known_names(),
        bool(people.expand(())),
    )


@main.group()
def policy() -> None:
    """Check and explain policies."""


@policy.command("lint")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Also check claims and issuer names against this config.",
)
def policy_lint(directory: str, config_path: str | None) -> None:
    """Validate every policy document in DIRECTORY; print file:line: reason for each problem."""
    from broker.policy import lint_policy_dir

    known_claims, issuers, approvers, has_default = _policy_options(config_path)
    problems = lint_policy_dir(
        directory,
        known_claims=known_claims,
        issuers=issuers,
        approvers=approvers,
        has_default_approvers=has_default,
    )
    for p in problems:
        click.echo(str(p), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo(f"{directory}: ok")


@policy.command("explain")
@click.option(
    "--policy",
    "policy_dir",
    type=click.Path(file_okay=False),
    help="Policy directory (default: the `jit dev` sample policy).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file: identity issuers and their presets.",
)
@click.option(
    "--identity-issuer",
    default="dev",
    show_default=True,
    help="Which configured identity issuer the token came from.",
)
@click.option(
    "--claims", "claims_json", required=True, help="The token's claims: a JSON object, or @FILE."
)
@click.option("--issuer", default="jwt", show_default=True)
@click.option("--resource", required=True)
@click.option("--action", "-a", "actions", multiple=True, required=True)
@click.option("--ttl", help="Requested TTL, e.g. 10m.")
@click.option("--task", "task_id", default="explain")
def policy_explain(
    policy_dir: str | None,
    config_path: str | None,
    identity_issuer: str,
    claims_json: str,
    issuer: str,
    resource: str,
    actions: tuple[str, ...],
    ttl: str | None,
    task_id: str,
) -> None:
    """Print the decision for a token's claims and a request, with every reason."""
    from broker.errors import BrokerError
    from broker.identity import principal_from_claims
    from broker.policy import Allow, NeedsApproval, decide, explain, load_policy_dir
    from broker.types import Intent, Scope, Task

    raw = claims_json
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text()
        except OSError as exc:
            die(f"cannot read {raw[1:]}: {exc.strerror}", 2)
    try:
        claims = json.loads(raw)
    except ValueError as exc:
        die(f"--claims is not JSON: {exc}", 2)
    if not isinstance(claims, dict):
        die("--claims must be a JSON object", 2)
    known_claims, issuers = _policy_context(config_path)
    ident = _identity_settings(config_path, identity_issuer)
    if policy_dir is None:
        from broker.cli.server import dev_policy_dir

        policy_dir = str(dev_policy_dir())
    try:
        principal = principal_from_claims(ident, claims)
        policy_set = load_policy_dir(policy_dir, known_claims=known_claims, issuers=issuers)
        acts = [a.strip() for item in actions for a in item.split(",") if a.strip()]
        intent = Intent(
            task=Task(id=task_id),
            scope=Scope.of(issuer, resource, acts),
            ttl=parse_duration(ttl) if ttl else None,
        )
    except (BrokerError, ValueError) as exc:
        die(str(exc), 2)
    now = datetime.now(UTC)
    decision = decide(policy_set, principal, intent, now)
    console = Console(highlight=False)
    console.print(f"principal: {principal.id}   policy version: {policy_set.version}")
    if isinstance(decision, Allow):
        console.print(f"[green]ALLOW[/] by grant {decision.grant}, ttl {_fmt(decision.ttl)}")
    elif isinstance(decision, NeedsApproval):
        console.print(f"[yellow]APPROVAL REQUIRED[/] by grant {decision.grant}")
    else:
        console.print("[red]DENY[/]")
    for line in explain(policy_set, principal, intent, now):
        console.print(f"  - {line}", markup=False)
    sys.exit(0 if isinstance(decision, Allow) else 1)


def _fmt(d: timedelta) -> str:
    return f"{int(d.total_seconds())}s"


def _identity_settings(config_path: str | None, name: str) -> Any:
    from broker.config import IdentityIssuerSettings

    if config_path:
        for ident in load_settings(config_path).identity:
            if ident.name == name:
                return ident
        die(f"no identity issuer named {name!r} in {config_path}", 2)
    if name != "dev":
        die("--identity-issuer other than dev needs --config", 2)
    return IdentityIssuerSettings(name="dev", issuer="dev", audiences=["jit-broker"])


# -- keys --------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Signing keys of the JWT issuer (a directory of PEM files)."""


@keys.command("rotate")
@click.option("--dir", "keys_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--algorithm", type=click.Choice(["EdDSA", "ES256"]), default="EdDSA", show_default=True
)
def keys_rotate(keys_dir: str, algorithm: str) -> None:
    """Add a new signing key. Older keys keep verifying until pruned."""
    from issuers.jwt.keys import generate_key

    Path(keys_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    info = generate_key(Path(keys_dir), algorithm, datetime.now(UTC))
    click.echo(f"new signing key {info.kid} ({info.algorithm}) in {info.path}")
    click.echo("running brokers pick it up within a few seconds; old keys still verify", err=True)


@keys.command("list")
@click.option("--dir", "keys_dir", required=True, type=click.Path(file_okay=False))
def keys_list(keys_dir: str) -> None:
    """List keys: which signs, which only verify."""
    from issuers.jwt.keys import list_keys

    table = Table("KID", "ALG", "CREATED", "RETIRED", "ACTIVE")
    for k in list_keys(Path(keys_dir)):
        table.add_row(
            k.kid,
            k.algorithm,
            k.created_at.isoformat(),
            k.retired_at.isoformat() if k.retired_at else "",
            "yes" if k.active else "",
        )
    Console().print(table)


@keys.command("prune")
@click.option("--dir", "keys_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--max-token-lifetime",
    default="12h",
    show_default=True,
    help="The longest TTL any token signed by these keys can have.",
)
def keys_prune(keys_dir: str, max_token_lifetime: str) -> None:
    """Delete keys retired longer ago than the longest token lifetime."""
    from issuers.jwt.keys import prune_keys

    removed = prune_keys(
        Path(keys_dir), max_token_lifetime=parse_duration(max_token_lifetime), now=datetime.now(UTC)
    )
    for k in removed:
        click.echo(f"removed {k.kid}")
    if not removed:
        click.echo("nothing to prune", err=True)


# -- config ------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Configuration: JSON Schema and validation."""


@config_group.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file (issuer configs of every installed type)."""
    from broker.config import json_schema
    from broker.errors import BrokerError
    from broker.registry import issuer_config_types

    try:
        types = issuer_config_types()
    except BrokerError as exc:
        raise click.ClickException(exc.message) from None
    _print_json(json_schema(types))


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a config file, its issuers' configs and its policy directory without starting
    anything (no backend is contacted; key and password files are read when the broker starts).

    A config problem ends like `jit serve` ends on it: the same message, exit status 1."""
    from broker.errors import BrokerError
    from broker.policy import lint_policy_dir
    from broker.registry import validate_issuer_configs

    try:
        settings = load_settings(path)
        validate_issuer_configs(settings.issuers)
    except BrokerError as exc:
        raise click.ClickException(exc.message) from None
    known_claims, issuers = _policy_context(path)
    problems = lint_policy_dir(settings.policy_dir, known_claims=known_claims, issuers=issuers)
    for p in problems:
        click.echo(str(p), err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{path}: ok")


if __name__ == "__main__":
    main()
