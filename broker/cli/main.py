"""``jit``: run the broker (dev, serve) and drive it (request, leases, revoke, task, policy,
keys)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from broker import __version__
from broker.cli.audit import audit as audit_group
from broker.cli.client import (
    ApiClient,
    die,
    jit_home,
    load_dev_state,
    resolve_approver_token,
    resolve_token,
    resolve_url,
)
from broker.cli.mcp import mcp_command
from broker.cli.ops import reconcile as reconcile_command
from broker.cli.ops import state as state_group
from broker.config import load_settings, parse_duration

__all__ = ["main"]

url_option = click.option(
    "--url", envvar="JIT_URL", help="Broker URL (env JIT_URL; default: the running `jit dev`)."
)
token_option = click.option(
    "--token", envvar="JIT_TOKEN", help="Workload identity token (env JIT_TOKEN)."
)
token_file_option = click.option(
    "--token-file",
    envvar="JIT_TOKEN_FILE",
    type=click.Path(dir_okay=False),
    help="File holding the workload identity token (env JIT_TOKEN_FILE).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")


def _client(url: str | None, token: str | None, token_file: str | None) -> ApiClient:
    return ApiClient(resolve_url(url), resolve_token(token, token_file))


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
    client = ApiClient(resolve_url(url or state.get("url")), str(state.get("admin_key", "")))
    body = client.call("POST", "/dev/token", json={"sub": sub, "claims": extra, "ttl": seconds})
    click.echo(body["token"])


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
def serve(config_path: str) -> None:
    """Run the production server (Redis, keys from files, policies from a directory)."""
    from broker.cli.server import run_serve

    run_serve(config_path)


# -- workload commands -------------------------------------------------------------------------


@main.command()
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
@url_option
@token_option
@token_file_option
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
    as_json: bool,
) -> None:
    """Ask for a credential. Prints the secret on stdout, the lease on stderr.

    When the grant needs human approval, waits (with a live status line) until it is approved,
    then prints the credential; denied or expired exits 1. --no-wait prints the approval id."""
    acts = [a.strip() for item in actions for a in item.split(",") if a.strip()]
    body: dict[str, Any] = {"issuer": issuer, "resource": resource, "actions": acts}
    if params:
        body["params"] = _parse_params(params)
    if ttl:
        body["ttl"] = ttl
    if task_id or purpose or task_ttl:
        if not task_id:
            die("--purpose and --task-ttl need --task")
        body["task"] = {"id": task_id, "purpose": purpose}
        if task_ttl:
            body["task"]["ttl"] = task_ttl
    if on_behalf_of:
        body["on_behalf_of"] = on_behalf_of
    client = _client(url, token, token_file)
    data = client.call("POST", "/v1/credentials", json=body)
    if "approval_id" in data:  # 202: approval needed
        if no_wait:
            click.echo(data["approval_id"])
            click.echo(
                f"approval needed for grant {data['grant']}: {data['needed']} of "
                f"{', '.join(data['approvers'])}; expires {data['expires_at']}",
                err=True,
            )
            return
        data = _wait_for_approval(client, data)
    if as_json:
        _print_json(data)
        return
    click.echo(data["credential"]["secret"])
    click.echo(
        f"lease {data['lease_id']} task {data['task_id']} expires {data['expires_at']} "
        f"({data['ttl']}s) grant {data['grant']}",
        err=True,
    )
    if data.get("ttl_capped_by"):
        click.echo(f"ttl capped by {data['ttl_capped_by']}", err=True)


def _wait_for_approval(client: ApiClient, pending: dict[str, Any]) -> dict[str, Any]:
    """Long-poll the approval request with a live status line; return the credential."""
    aid = pending["approval_id"]
    console = Console(stderr=True, highlight=False)
    data = pending
    try:
        with console.status("") as status:
            while True:
                left = datetime.fromisoformat(data["expires_at"]) - datetime.now(UTC)
                secs = max(0, int(left.total_seconds()))
                status.update(
                    f"waiting for approval {aid} (grant {data['grant']}): "
                    f"{data['needed']} more of {', '.join(data['approvers'])}; "
                    f"expires in {secs // 60}:{secs % 60:02d}"
                )
                if data["state"] != "pending":
                    break
                data = client.call("GET", f"/v1/approvals/{aid}", params={"wait": 20})
    except KeyboardInterrupt:
        die(f"stopped waiting; the request is still pending: jit approvals show {aid}", 130)
    if data.get("credential"):
        approvers = [r["person"] for r in data["reviews"] if r["decision"] == "approve"]
        click.echo(f"approved by {', '.join(approvers)}", err=True)
        return dict(data["credential"])
    if data["state"] == "denied":
        reasons = [f"{r['person']}: {r['reason']}" for r in data["reviews"]]
        die("approval denied\n" + "\n".join(f"  - {r}" for r in reasons))
    if data["state"] == "approved":
        die(f"approved, but the credential was already collected (lease {data['lease_id']})")
    die(f"approval request {data['state']}")


def _approval_line(a: dict[str, Any]) -> str:
    return (
        f"{a['approval_id']}  {a['state']:<9} {a['owner']}  task {a['task_id']}  "
        f"{a['issuer']} {a['resource']} {','.join(a['actions'])} for {a['ttl']}s  "
        f"grant {a['grant']}  needs {a['needed']}/{a['quorum']}  expires {a['expires_at']}"
    )


approver_token_option = click.option(
    "--approver-token",
    envvar="JIT_APPROVER_TOKEN",
    help="A human identity token of an approver [env JIT_APPROVER_TOKEN]; jit dev: automatic.",
)


def _approver_client(url: str | None, approver_token: str | None) -> ApiClient:
    base = resolve_url(url)
    return ApiClient(base, resolve_approver_token(approver_token, base))


main.add_command(audit_group)
main.add_command(reconcile_command)
main.add_command(state_group)
main.add_command(mcp_command)  # jit mcp: broker/cli/mcp.py


@main.group()
def approvals() -> None:
    """Approval requests waiting for you (as an approver)."""


@approvals.command("list")
@url_option
@approver_token_option
@json_option
def approvals_list(url: str | None, approver_token: str | None, as_json: bool) -> None:
    """Pending requests you may approve."""
    data = _approver_client(url, approver_token).call("GET", "/v1/approvals/")
    if as_json:
        _print_json(data)
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
    _print_json(_approver_client(url, approver_token).call("GET", f"/v1/approvals/{approval_id}"))


@main.command()
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
    body: dict[str, Any] = {"reason": reason}
    if ttl:
        body["ttl"] = ttl
    acts = [a.strip() for item in actions for a in item.split(",") if a.strip()]
    if acts:
        body["actions"] = acts
    data = _approver_client(url, approver_token).call(
        "POST", f"/v1/approvals/{approval_id}/approve", json=body
    )
    click.echo(f"{data['approval_id']}: {data['state']} ({data['needed']} more needed)")


@main.command()
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (shown to the requester).")
@url_option
@approver_token_option
def deny(approval_id: str, reason: str, url: str | None, approver_token: str | None) -> None:
    """Deny a request."""
    data = _approver_client(url, approver_token).call(
        "POST", f"/v1/approvals/{approval_id}/deny", json={"reason": reason}
    )
    click.echo(f"{data['approval_id']}: {data['state']}")


def _parse_params(items: tuple[str, ...]) -> dict[str, str]:
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


def _lease_table(leases: list[dict[str, Any]]) -> Table:
    table = Table("LEASE", "TASK", "STATE", "ISSUER", "RESOURCE", "ACTIONS", "EXPIRES")
    for le in leases:
        state = le["state"] + (" (overdue)" if le.get("overdue") else "")
        table.add_row(
            le["id"],
            le["task_id"],
            state,
            le["issuer"],
            le["resource"],
            ",".join(le["actions"]),
            le["not_after"],
        )
    return table


@main.command()
@click.option("--all", "include_all", is_flag=True, help="Include revoked and expired leases.")
@url_option
@token_option
@token_file_option
@json_option
def leases(
    include_all: bool, url: str | None, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """List the caller's leases."""
    data = _client(url, token, token_file).call(
        "GET", "/v1/leases", params={"all": "true"} if include_all else None
    )
    if as_json:
        _print_json(data)
    elif not data:
        click.echo("no leases", err=True)
    else:
        Console().print(_lease_table(data))


@main.command()
@click.argument("lease_id")
@url_option
@token_option
@token_file_option
@json_option
def revoke(
    lease_id: str, url: str | None, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """Revoke one of the caller's leases."""
    data = _client(url, token, token_file).call("DELETE", f"/v1/leases/{lease_id}")
    if as_json:
        _print_json(data)
    else:
        click.echo(f"lease {data['id']}: {data['state']}")


@main.group()
def task() -> None:
    """Tasks: complete one (revokes all its leases) or show it."""


@task.command("complete")
@click.argument("task_id")
@url_option
@token_option
@token_file_option
@json_option
def task_complete(
    task_id: str, url: str | None, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """Complete a task: every lease of it is revoked."""
    data = _client(url, token, token_file).call("POST", f"/v1/tasks/{task_id}/complete")
    if as_json:
        _print_json(data)
        return
    states = ", ".join(f"{le['id']}={le['state']}" for le in data["leases"]) or "no leases"
    click.echo(f"task {data['task_id']}: {data['state']} ({states})")


@task.command("show")
@click.argument("task_id")
@url_option
@token_option
@token_file_option
@json_option
def task_show(
    task_id: str, url: str | None, token: str | None, token_file: str | None, as_json: bool
) -> None:
    """Show a task and its leases."""
    data = _client(url, token, token_file).call("GET", f"/v1/tasks/{task_id}")
    if as_json:
        _print_json(data)
        return
    click.echo(f"task {data['task_id']}: {data['state']}")
    if data["leases"]:
        Console().print(_lease_table(data["leases"]))


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
