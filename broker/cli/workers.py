"""``jit serve --workers N``: N broker processes behind one listening socket (docs/deploy.md).

One Python process uses one core. The parent binds the socket once (so a port in use is one
clear error), forks N workers that each build a complete broker (its own replica id, Redis
connections, reaper and background loops: they coordinate through Redis exactly as replicas in
separate pods do) and serve the inherited socket, then supervises them:

- SIGTERM or SIGINT: forwarded once, as SIGTERM, to every worker; each drains as a single
  ``jit serve`` does; the parent exits 0 when all exited 0, else 1.
- SIGHUP: forwarded (every worker reloads its policy directory).
- A worker that dies on its own is started again, after a pause that doubles while workers keep
  dying within a minute of their start (1 s up to 30 s); a worker that cannot start at all
  (exit code 3: bad config, backend it needs at start-up) stops the whole server, since its
  siblings would fail the same way.
- Workers sit in their own process group, so a terminal's Ctrl-C reaches the parent only and is
  forwarded once (uvicorn takes a second signal as "exit now, skip the drain"). On Linux a worker
  also gets SIGTERM if the parent dies (``PR_SET_PDEATHSIG``), so no worker outlives it.

Counters and histograms of all workers are summed at every ``/metrics`` scrape through
prometheus_client's multiprocess mode: each worker writes its values to files in a private
directory that the parent creates and deletes (broker/metrics.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["MULTIPROC_ENV", "START_FAILED", "listen", "supervise"]

log = logging.getLogger("jit")

#: A worker's exit code when it could not build its broker (the parent then stops them all).
START_FAILED = 3
#: prometheus_client's multiprocess directory variable (set in the workers' environment).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_PR_SET_PDEATHSIG = 1
_MAX_PAUSE = 30.0


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every worker inherits. OSError (port in use …) for the caller."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def supervise(sock: socket.socket, workers: int, run_worker: Callable[[int], int]) -> int:
    """Fork ``workers`` processes running ``run_worker(index)`` (its return value is the
    worker's exit code) and supervise them until a stop signal. Returns the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="jit-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    parent = os.getpid()
    children: dict[int, int] = {}  # pid -> worker index
    started: dict[int, float] = {}  # worker index -> monotonic start time
    pause = 1.0
    stopping = False
    failed = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.setpgid(0, 0)
                # Stopped before it serves (still building its broker): a clean exit. Once it
                # serves, uvicorn's own handlers drain it.
                signal.signal(signal.SIGTERM, _exit_now)
                signal.signal(signal.SIGINT, _exit_now)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                _die_with_parent(parent)
                code = run_worker(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index
        started[index] = time.monotonic()

    def forward(sig: int) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("stopping %d workers (signal %d)", len(children), signum)
            forward(signal.SIGTERM)

    def on_hup(signum: int, frame: FrameType | None) -> None:
        forward(signal.SIGHUP)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGTERM, on_stop),
            (signal.SIGINT, on_stop),
            (signal.SIGHUP, on_hup),
        )
    }
    try:
        for index in range(workers):
            spawn(index)
        log.info("jit serve: %d workers (pids %s)", workers, " ".join(map(str, children)))
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                if code != 0:
                    log.error("worker %d (pid %d) exited with %d while stopping", index, pid, code)
                    failed = True
                continue
            if code == START_FAILED:
                log.error("worker %d could not start; stopping the others", index)
                failed = True
                on_stop(signal.SIGTERM, None)
                continue
            lived = time.monotonic() - started.get(index, 0.0)
            pause = min(pause * 2, _MAX_PAUSE) if lived < 60 else 1.0
            log.error(
                "worker %d (pid %d) exited with %d; restarting in %.0fs", index, pid, code, pause
            )
            deadline = time.monotonic() + pause
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            if not stopping:
                spawn(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0
