"""Operator commands against a production config: ``jit reconcile`` and ``jit state accept``
(docs/revocation.md, "When Redis loses its data")."""

from __future__ import annotations

import asyncio
import json

import click

from broker.clock import SystemClock
from broker.config import load_settings
from broker.errors import BrokerError
from broker.logsetup import setup_logging

__all__ = ["reconcile", "state"]

config_option = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    envvar="JIT_CONFIG",
    help="Config file (YAML or JSON), the one `jit serve` uses.",
)


@click.command()
@config_option
@click.option("--dry-run", is_flag=True, help="List the orphans; revoke nothing.")
def reconcile(config_path: str, dry_run: bool) -> None:
    """Revoke every credential a backend holds that no live lease owns.

    Asks each issuer that can list what it minted (redis, postgres). Replicas also do this at
    start and every reaper.reconcile_interval. Exit 1 when something could not be listed or
    revoked."""
    from broker.service import build_broker

    setup_logging("text", "WARNING")

    async def run() -> bool:
        try:
            broker = await build_broker(load_settings(config_path))
        except BrokerError as exc:
            raise click.ClickException(exc.message) from None
        try:
            report = await broker.reconciler.reconcile(dry_run=dry_run)
        finally:
            await broker.aclose()
        click.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "listed": report.listed,
                    "orphans": report.orphans,
                    "revoked": report.revoked,
                    "errors": report.errors,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return not report.errors

    if not asyncio.run(run()):
        raise SystemExit(1)


@click.group()
def state() -> None:
    """The broker's state in Redis (see docs/revocation.md)."""


@state.command("accept")
@config_option
def accept(config_path: str) -> None:
    """After Redis lost its data: accept the empty state so replicas serve again.

    Run `jit reconcile` first: what the backends still hold of the lost leases must be revoked
    before the broker serves on."""
    from broker.config import redis_settings
    from broker.service.stateguard import accept_epoch
    from broker.state.connect import redis_client

    try:
        settings = load_settings(config_path)
    except BrokerError as exc:
        raise click.ClickException(exc.message) from None

    async def run() -> str:
        client = redis_client(redis_settings(settings))
        try:
            return await accept_epoch(client, settings.key_prefix, SystemClock())
        finally:
            await client.aclose()

    epoch = asyncio.run(run())
    click.echo(f"accepted; new epoch {epoch}: replicas serve again within a few seconds")
