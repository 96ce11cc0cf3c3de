"""``jit serve`` and ``jit dev``: assemble a Broker, wrap it in the app, run uvicorn."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from importlib.resources import files
from pathlib import Path
from types import FrameType
from typing import Any

import click
import uvicorn
from rich.console import Console
from rich.panel import Panel

from broker.api import create_app
from broker.config import IssuerInstanceSettings, Settings, load_settings
from broker.errors import BrokerError
from broker.identity import DevIdentityIssuer
from broker.logsetup import setup_logging
from broker.service import Broker, build_broker
from broker.types import Secret

__all__ = ["run_dev", "run_serve"]

log = logging.getLogger("jit")


async def _serve(
    broker: Broker,
    host: str,
    port: int,
    on_ready: Any = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until a stop signal; on ``sock`` (inherited from ``jit serve --workers``) when given,
    else on a socket of its own bound to ``host:port``."""
    app = create_app(broker)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        log_config=None,  # uvicorn's loggers go through our handler (JSON under jit serve)
        http=_http_protocol(),
        # Requests in flight when the server stops accepting get this long (shutdown:).
        timeout_graceful_shutdown=max(
            1, round(broker.settings.shutdown.drain_timeout.total_seconds())
        ),
    )
    server = _DrainingServer(config, broker)
    if on_ready is not None:

        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.05)
            on_ready()

        asyncio.create_task(announce())  # noqa: RUF006  # lives as long as the server
    # uvicorn re-raises the stop signal once it has drained, with the handler it found in place:
    # a no-op one makes a drained broker exit 0 instead of dying by its own signal.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _drained)
    _settle_heap()
    await server.serve(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise click.ClickException(f"could not listen on {host}:{port} (is the port in use?)")


def _http_protocol() -> Any:
    """One socket write per answer (ADR 0068) where uvicorn runs httptools; its default else."""
    try:
        from broker.cli.onewrite import OneWriteProtocol
    except ImportError:  # uvicorn without httptools (not the default install)
        return "auto"
    return OneWriteProtocol


def _settle_heap() -> None:
    """What start-up built (modules, the app, the policy, the key rings) lives as long as the
    process: move it out of the cyclic collector's way (``gc.freeze``), so that a full
    collection under load scans only what requests made, and collect the young generation
    less often (every 10,000 net allocations instead of 700). ADR 0066 has the numbers."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server with the broker's drain (docs/deploy.md, ADR 0051). The first SIGTERM
    (or SIGINT) makes /readyz answer 503 at once; the replica keeps serving for
    ``shutdown.drain_delay`` (while load balancers notice), then stops accepting and gives
    requests in flight ``shutdown.drain_timeout`` to finish (approval long-polls answer at
    once); then the lifespan stops the background work (the reaper gives back its claims).
    A second signal skips what is left of the delay; a SIGINT once the server stops accepting
    (as in uvicorn) exits without waiting for requests in flight."""

    def __init__(self, config: uvicorn.Config, broker: Broker) -> None:
        super().__init__(config)
        self.broker = broker
        self.drain_delay = broker.settings.shutdown.drain_delay.total_seconds()
        self._stop_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stop_at is None and not self.should_exit:
            self._captured_signals.append(sig)  # re-raised by uvicorn once it has stopped
            self.broker.drain()
            self._stop_at = time.monotonic() + self.drain_delay
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        stop_at = self._stop_at
        if stop_at is not None and not self.should_exit and time.monotonic() >= stop_at:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._stop_at is not None:
            log.info(
                "draining: stopped accepting; up to %ss for requests in flight",
                self.config.timeout_graceful_shutdown,
            )
        self.broker.stop_accepting()
        await super().shutdown(sockets)


def _drained(signum: int, frame: object) -> None:
    """The stop signal uvicorn raises again after its graceful shutdown: nothing left to do."""


def run_serve(config_path: str, workers: int = 1) -> None:
    setup_logging("json", "INFO")
    try:
        settings = load_settings(config_path)
    except BrokerError as exc:
        raise click.ClickException(exc.message) from None
    setup_logging(settings.logging.format, settings.logging.level)
    if workers == 1:
        _fast_loop()
        asyncio.run(_serve_one(settings))  # a start-up failure is a ClickException
        return

    from broker.cli.workers import START_FAILED, listen, supervise

    try:
        sock = listen(settings.host, settings.port)
    except OSError as exc:
        raise click.ClickException(
            f"could not listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None

    def worker(index: int) -> int:
        _fast_loop()
        return 0 if asyncio.run(_serve_one(settings, sock, worker=index)) else START_FAILED

    sys.exit(supervise(sock, workers, worker))


async def _serve_one(
    settings: Settings, sock: socket.socket | None = None, worker: int | None = None
) -> bool:
    """Build one broker and serve it until a stop signal. False when it could not start (the
    reason is logged, or raised as a ClickException for a single process)."""
    try:
        broker = await build_broker(settings)
    except BrokerError as exc:
        if worker is None:
            raise click.ClickException(exc.message) from None
        log.error("worker %d: %s", worker, exc.message)
        return False
    log.info(
        "jit-broker listening on %s:%s (public URL %s)%s",
        settings.host,
        settings.port,
        settings.public_url,
        "" if worker is None else f" (worker {worker}, pid {os.getpid()})",
    )
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:  # `kill -HUP`: reload the policy directory
        task = loop.create_task(broker.reload_policy())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await _serve(broker, settings.host, settings.port, sock=sock)
    return True


def _fast_loop() -> None:
    """uvloop's event loop when it is installed (the default install has it: ADR 0061)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def dev_policy_dir() -> Path:
    return Path(str(files("broker.dev")))


def run_dev(host: str, port: int, home: Path) -> None:
    """Start a complete broker in memory: fakeredis, fresh keys, a dev OIDC issuer, the sample
    policy. Writes the URL and the dev admin key to ``home/dev.json`` (mode 0600)."""
    import fakeredis

    from issuers.jwt.keys import generate_key

    setup_logging("text", "WARNING")
    url = f"http://{host}:{port}"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys_dir = home / f"dev-keys-{port}"
    shutil.rmtree(keys_dir, ignore_errors=True)
    keys_dir.mkdir(mode=0o700)
    from broker.clock import SystemClock

    clock = SystemClock()
    generate_key(keys_dir, "EdDSA", clock.now())
    settings = Settings(
        public_url=url,
        host=host,
        port=port,
        policy_dir=str(dev_policy_dir()),
        issuers={
            "jwt": IssuerInstanceSettings(
                type="jwt",
                config={"keys_dir": str(keys_dir), "max_ttl": "1h", "default_ttl": "15m"},
            )
        },
    )
    admin_key = secrets.token_urlsafe(32)
    approver_key = "jitdev-approver-" + secrets.token_urlsafe(32)
    dev_identity = DevIdentityIssuer(f"{url}/dev/oidc", clock, audience=settings.broker_audience)
    state_file = home / "dev.json"

    def on_ready() -> None:
        fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(
                {
                    "url": url,
                    "admin_key": admin_key,
                    "approver_key": approver_key,
                    "keys_dir": str(keys_dir),
                    "pid": os.getpid(),
                },
                fh,
            )
        banner(url, state_file, keys_dir)

    async def main() -> None:
        try:
            broker = await build_broker(
                settings,
                clock=clock,
                redis=fakeredis.FakeAsyncRedis(),
                dev=True,
                dev_identity=dev_identity,
                dev_admin_key=Secret(admin_key),
                dev_approver_key=Secret(approver_key),
            )
        except BrokerError as exc:
            raise click.ClickException(exc.message) from None
        try:
            await _serve(broker, host, port, on_ready)
        finally:
            try:
                current = json.loads(state_file.read_text())
                if current.get("pid") == os.getpid():
                    state_file.unlink()
            except (OSError, ValueError):
                pass

    asyncio.run(main())


def _activate_hint() -> str:
    """``source …/activate`` when the ``jit`` that runs is not the one on PATH."""
    here = Path(sys.executable).parent
    on_path = shutil.which("jit")
    if on_path and Path(on_path).resolve().parent == here.resolve():
        return ""
    activate = here / "activate"
    return f"source {activate}\n" if activate.exists() else ""


def banner(url: str, state_file: Path, keys_dir: Path) -> None:
    console = Console(stderr=False, highlight=False)
    env = "" if url == "http://127.0.0.1:8200" else f"export JIT_URL={url}\n"
    console.print(
        Panel.fit(
            "[bold yellow]WARNING: dev mode.[/] Everything is in memory (leases, tasks, audit) and "
            "is lost when this process stops.\nThe signing key and the development identity "
            "issuer are freshly generated. Do not use in production: see `jit serve`.",
            title="jit-broker dev",
            border_style="yellow",
        )
    )

    def line(text: str) -> None:  # never hard-wrapped: commands must stay copy-pastable
        console.print(text, markup=False, soft_wrap=True)

    line(f"Broker URL:        {url}")
    line(f"Identity issuer:   {url}/dev/oidc  (audience jit-broker)")
    line(f"Signing keys:      {keys_dir}  (rotate: jit keys rotate --dir {keys_dir})")
    line(f"Dev admin key in:  {state_file}  (mode 0600; used by `jit dev token`)")
    line(
        "Sample policy:     jwt credentials for https://demo.local, actions read/write "
        "(admin needs approval)\n"
    )
    line("Try, in another shell:\n")
    line(
        f"{_activate_hint()}{env}"
        "export JIT_TOKEN=$(jit dev token --sub ci-job-1)\n"
        "jit request --resource https://demo.local --action read --ttl 10m --task build-42\n"
        "jit leases\n"
        "jit task complete build-42\n"
        "jit request --resource https://demo.local --action admin   # waits for approval\n"
        "jit approvals list     # in a third shell: the pending request (as the dev approver)\n"
        "jit approve <APPROVAL_ID>\n"
        'jit policy explain --claims \'{"sub": "ci-job-1"}\' --resource https://demo.local '
        "--action admin"
    )
    line("\nOpenAPI: " + url + "/schema   Stop with Ctrl-C.")
    sys.stdout.flush()
