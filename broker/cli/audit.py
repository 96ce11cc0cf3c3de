"""``jit audit``: verify an exported chain, export it from Redis, show a credential's receipt,
and make the checkpoint signing key.

Registered in :mod:`broker.cli.main` with ``main.add_command(audit)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import msgspec
from rich.console import Console
from rich.markup import escape

from broker.audit.chain import read_chain
from broker.audit.receipt import Receipt, build_receipt
from broker.audit.signing import (
    CheckpointSigner,
    load_verification_keys,
    parse_verification_keys,
    write_private_key,
)
from broker.audit.verify import VerifyReport, verify_lines
from broker.errors import ConfigError

__all__ = ["audit"]


def _die(message: str, code: int = 1) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def audit() -> None:
    """The tamper-evident audit trail: verify, export, show receipts."""


# -- verify --------------------------------------------------------------------------------


def _lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
        return
    with open(path, "rb") as fh:
        yield from fh


@audit.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, exists=True),
    help="The checkpoint public key(s): a JWK set (JSON) or a PEM key.",
)
@click.option(
    "--partial", is_flag=True, help="The file may start mid-chain (an export --from a seq)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(file: str, key_file: str | None, partial: bool, as_json: bool) -> None:
    """Check FILE's hash chain (hashes, seq continuity, prev links) and every checkpoint
    signature; report the first altered, removed, reordered or inserted record.

    Exit status 0: intact; 1: a problem (or unreadable input)."""
    keys = None
    if key_file is not None:
        try:
            keys = load_verification_keys(key_file)
        except ConfigError as exc:
            _die(exc.message)
    try:
        report = verify_lines(_lines(file), keys, partial=partial)
    except OSError as exc:
        _die(f"cannot read {file}: {exc.strerror}")
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(report), indent=2, sort_keys=True))
    else:
        _print_report(report)
    sys.exit(0 if report.ok else 1)


def _print_report(report: VerifyReport) -> None:
    p = report.problem
    if p is not None:
        where = f"line {p.line}" + (f", seq {p.seq}" if p.seq is not None else "")
        click.secho(f"FAIL [{p.kind}] {where}: {p.message}", fg="red")
        return
    click.secho(
        f"OK: {report.records} records, seq {report.first_seq}..{report.last_seq}, "
        f"{report.checkpoints} checkpoints",
        fg="green",
    )
    if report.signatures_checked:
        if report.last_signed_seq is not None:
            click.echo(f"signatures verified; signed up to seq {report.last_signed_seq}")
        else:
            click.secho("no checkpoint in the file: nothing is signed", fg="yellow")
    else:
        click.secho(
            "WARNING: checkpoint signatures NOT checked (pass --key): the file is only shown "
            "to be self-consistent, which anyone can recompute",
            fg="yellow",
        )
    if report.unsigned_tail:
        click.secho(
            f"{report.unsigned_tail} records after the last checkpoint are not covered by a "
            "signature yet",
            fg="yellow",
        )


# -- export --------------------------------------------------------------------------------


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdout.buffer
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        yield fh


async def _export(
    url: str | None, config_path: str | None, prefix: str, out: IO[bytes], from_seq: int
) -> tuple[int, int, int]:
    from redis.exceptions import RedisError

    from broker.config import RedisSettings, load_settings, redis_settings
    from broker.errors import BrokerError
    from broker.state.connect import redis_client

    try:
        if config_path is not None:
            settings = load_settings(config_path)
            client = redis_client(redis_settings(settings))
        else:
            client = redis_client(RedisSettings(url=url))
    except BrokerError as exc:
        raise click.ClickException(exc.message) from None
    count, first, last = 0, 0, 0
    try:
        async for record in read_chain(client, prefix, from_seq=from_seq):
            out.write(record.data + b"\n")
            count += 1
            first = first or record.seq
            last = record.seq
    except (RedisError, OSError) as exc:
        raise click.ClickException(f"Redis: {type(exc).__name__}") from None
    finally:
        await client.aclose()
    return count, first, last


@audit.command("export")
@click.option(
    "--redis-url",
    envvar="JIT_REDIS_URL",
    default=None,
    help="Redis URL of a standalone Redis (env JIT_REDIS_URL; keep a password out of the "
    "command line). Sentinel, Cluster or a password file: --config.",
)
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="The config file `jit serve` uses: its redis settings and key_prefix.",
)
@click.option(
    "--prefix", "prefix", default=None, help="The key prefix [default: jit, or the config's]."
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Output file (mode 0600), or - for stdout.",
)
@click.option("--from", "from_seq", default=1, show_default=True, type=click.IntRange(min=1))
def export_cmd(
    redis_url: str | None, config_path: str | None, prefix: str | None, out: str, from_seq: int
) -> None:
    """Write the chain from the Redis stream as JSON lines: every replica's records, in order,
    up to the head at the start of the export."""
    if (redis_url is None) == (config_path is None):
        raise click.UsageError("give one of --redis-url (or JIT_REDIS_URL) and --config")
    if prefix is None and config_path is not None:
        from broker.config import load_settings
        from broker.errors import BrokerError

        try:
            prefix = load_settings(config_path).key_prefix
        except BrokerError as exc:
            raise click.ClickException(exc.message) from None
    with _output(out) as fh:
        count, first, last = asyncio.run(
            _export(redis_url, config_path, prefix or "jit", fh, from_seq)
        )
    if count == 0:
        click.echo(f"no records from seq {from_seq}", err=True)
        return
    click.echo(f"exported {count} records (seq {first}..{last})", err=True)
    if first > from_seq:
        click.secho(
            f"warning: seq {from_seq}..{first - 1} are no longer in the stream (delivered to "
            "every audit sink, or past audit.stream_maxlen); verify this export with --partial",
            fg="yellow",
            err=True,
        )


# -- show ------------------------------------------------------------------------------------


def _records(path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bad = 0
    for raw in _lines(path):
        if not raw.strip():
            continue
        try:
            obj = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            bad += 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
    if bad:
        click.secho(f"warning: skipped {bad} unreadable lines", fg="yellow", err=True)
    return out


@audit.command("show")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--lease", "lease_id", help="The lease whose receipt to show.")
@click.option("--task", "task_id", help="The task whose leases to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
def show_cmd(file: str, lease_id: str | None, task_id: str | None, as_json: bool) -> None:
    """The credential receipt from an exported chain FILE: identity → decision → approvals →
    mint → each use → revocation. (It does not verify the file: run `jit audit verify`.)"""
    if (lease_id is None) == (task_id is None):
        raise click.UsageError("give exactly one of --lease or --task")
    try:
        records = _records(file)
    except OSError as exc:
        _die(f"cannot read {file}: {exc.strerror}")
    try:
        receipt = build_receipt(records, lease_id=lease_id, task_id=task_id)
    except LookupError as exc:
        _die(str(exc.args[0]))
    if as_json:
        data = msgspec.to_builtins(receipt)
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    _render(receipt)


_STAGE_STYLE = {
    "identity": "cyan",
    "decision": "magenta",
    "approval": "yellow",
    "mint": "green",
    "use": "blue",
    "revocation": "red",
    "task": "white",
}


def _render(receipt: Receipt) -> None:
    console = Console(highlight=False)
    what = f"lease {receipt.lease_id}" if receipt.lease_id else f"task {receipt.task_id}"
    console.print(f"[bold]Credential receipt: {escape(what)}[/bold]")
    facts = [
        f"principal {receipt.principal}" if receipt.principal else "",
        f"task {receipt.task_id}" if receipt.task_id and receipt.lease_id else "",
        f"leases {', '.join(receipt.leases)}" if receipt.lease_id is None else "",
    ]
    line = " · ".join(f for f in facts if f)
    if line:
        console.print(escape(line))
    if receipt.chain:  # a delegated credential: every hop, from the subject to its holder
        hops = [
            f"{hop.who} ({hop.role}{', lease ' + hop.lease_id if hop.lease_id else ''})"
            for hop in receipt.chain
        ]
        console.print("delegation chain: " + escape(" -> ".join(hops)), soft_wrap=True)
    for n, step in enumerate(receipt.steps, start=1):
        style = _STAGE_STYLE.get(step.stage, "white")
        outcome = "green" if step.outcome == "ok" else "red"
        where = " · ".join(
            x for x in (f"seq {step.seq}" if step.seq is not None else "", step.time or "") if x
        )
        console.print(
            f"\n{n:>2}. [{style}]{step.stage:<10}[/{style}] {escape(step.type)} "
            f"[{outcome}]{escape(step.outcome)}[/{outcome}]  [dim]{escape(where)}[/dim]"
        )
        console.print(f"    {escape(step.summary)}", soft_wrap=False)


# -- keys ------------------------------------------------------------------------------------


@audit.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False))
def keygen_cmd(path: str) -> None:
    """Write a new Ed25519 checkpoint signing key to PATH (mode 0600; never overwrites) and
    print its public JWK set (keep it with your exports: `jit audit verify --key`)."""
    try:
        write_private_key(path)
    except FileExistsError:
        _die(f"{path} exists; not overwriting a key")
    except OSError as exc:
        _die(f"cannot write {path}: {exc.strerror}")
    signer = CheckpointSigner.from_file(path)
    click.echo(json.dumps(signer.jwks(), indent=2))


@audit.command("jwks")
@click.argument("key_file", type=click.Path(dir_okay=False, exists=True))
def jwks_cmd(key_file: str) -> None:
    """Print the public JWK set of a checkpoint key (PEM, private or public)."""
    try:
        keys = parse_verification_keys(Path(key_file).read_bytes(), where=key_file)
    except ConfigError as exc:
        _die(exc.message)
    jwks = []
    for kid, key in keys.items():
        jwk = dict(key.as_dict(private=False))
        jwk.update(kid=kid, alg="EdDSA", use="sig")
        jwks.append(jwk)
    click.echo(json.dumps({"keys": jwks}, indent=2))
