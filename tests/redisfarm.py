"""Real Redis topologies for the tests, on loopback ports 7100-7139 in a temp dir.

One :class:`Farm` per pytest session (the ``redis_farm`` fixture in tests/conftest.py); each
topology starts on first use and everything stops at the end of the session:

- standalone: one redis-server with AOF, port 7100; ACL user ``jit``.
- sentinel: a master (7110), a replica (7111), three sentinels (7115-7117), service
  ``mymaster``; the data nodes require a password (``requirepass`` for the default user, which
  replication and the sentinels use; ACL user ``jit`` for the broker); the sentinels require
  their own password (``requirepass``).
- cluster: three masters, each with one replica (7120-7125); ACL user ``jit``.

Each start waits for real readiness: every replica's initial sync done
(``master_link_status:up``, ``master_sync_in_progress:0``), the sentinels seeing the replica
and each other, ``cluster_state:ok`` on every node. Passwords are random per session and live
in files (the broker reads credentials from files only).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from broker.config import RedisSettings

__all__ = ["Farm"]

STANDALONE = 7100
SENTINEL_MASTER, SENTINEL_REPLICA = 7110, 7111
SENTINELS = (7115, 7116, 7117)
CLUSTER = tuple(range(7120, 7126))
SERVICE = "mymaster"
USER = "jit"
_TIMEOUT = 30.0


def _wait(what: str, ok: Callable[[], bool], timeout: float = _TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"redis farm: {what} not ready after {timeout}s ({last!r})")


class Farm:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.admin_password = secrets.token_hex(16)  # the default user (replication, sentinels)
        self.password = secrets.token_hex(16)  # ACL user ``jit`` (the broker)
        self.sentinel_password = secrets.token_hex(16)
        self.password_file = base / "redis.password"
        self.password_file.write_text(self.password + "\n")
        self.sentinel_password_file = base / "sentinel.password"
        self.sentinel_password_file.write_text(self.sentinel_password + "\n")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: set[str] = set()

    # -- settings the broker is given ------------------------------------------------------

    def settings(self, mode: str, **over: Any) -> RedisSettings:
        self.start(mode)
        common: dict[str, Any] = {
            "username": USER,
            "password_file": str(self.password_file),
            "max_connections": 64,
        }
        if mode == "standalone":
            return RedisSettings(url=f"redis://127.0.0.1:{STANDALONE}/0", **common, **over)
        if mode == "sentinel":
            return RedisSettings(
                mode="sentinel",
                sentinels=[f"127.0.0.1:{p}" for p in SENTINELS],
                master_name=SERVICE,
                sentinel_password_file=str(self.sentinel_password_file),
                **common,
                **over,
            )
        return RedisSettings(
            mode="cluster", nodes=[f"127.0.0.1:{p}" for p in CLUSTER[:3]], **common, **over
        )

    def admin(self, port: int) -> redis.Redis:
        """A plain client on one node as the default (admin) user."""
        password = self.sentinel_password if port in SENTINELS else self.admin_password
        return redis.Redis(port=port, password=password, socket_timeout=5)

    # -- processes -------------------------------------------------------------------------

    def start(self, mode: str) -> None:
        if mode in self.started:
            return
        {"standalone": self._standalone, "sentinel": self._sentinel, "cluster": self._cluster}[
            mode
        ]()
        self.started.add(mode)

    def _conf(self, port: int, extra: str = "") -> Path:
        d = self.base / str(port)
        d.mkdir(exist_ok=True)
        conf = d / "redis.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode yes\ndir {d}\ndaemonize no\n"
            "save ''\nappendonly yes\nappendfsync everysec\nlogfile redis.log\n"
            f"requirepass {self.admin_password}\nmasterauth {self.admin_password}\n"
            f"user {USER} on >{self.password} ~* &* +@all\n" + extra
        )
        return conf

    def _spawn(self, port: int, conf: Path, *extra: str) -> None:
        binary = "redis-sentinel" if "--sentinel" in extra else "redis-server"
        exe = shutil.which(binary) or binary
        args = [exe, str(conf)]
        self.procs[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=conf.parent
        )

    def _ping(self, port: int) -> None:
        _wait(f"redis on {port}", lambda: bool(self.admin(port).ping()))

    def _synced(self, replica: int) -> None:
        def ok() -> bool:
            info = self.admin(replica).info("replication")
            return bool(
                info.get("role") == "slave"
                and info.get("master_link_status") == "up"
                and int(info.get("master_sync_in_progress", 1)) == 0
            )

        _wait(f"replica {replica} initial sync", ok)

    def _standalone(self) -> None:
        self._spawn(STANDALONE, self._conf(STANDALONE))
        self._ping(STANDALONE)

    def _sentinel(self) -> None:
        self._spawn(SENTINEL_MASTER, self._conf(SENTINEL_MASTER))
        self._spawn(
            SENTINEL_REPLICA,
            self._conf(SENTINEL_REPLICA, f"replicaof 127.0.0.1 {SENTINEL_MASTER}\n"),
        )
        # Each sentinel is told its peers and the replica up front: discovering them (hello
        # messages, the master's INFO every 10 s) would take ~10 s.
        ids = {port: secrets.token_hex(20) for port in SENTINELS}
        for port in SENTINELS:
            known = "".join(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[other]}\n"
                for other in SENTINELS
                if other != port
            )
            d = self.base / str(port)
            d.mkdir(exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\ndaemonize no\nlogfile sentinel.log\n"
                f"requirepass {self.sentinel_password}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {SENTINEL_MASTER} 2\n"
                f"sentinel auth-pass {SERVICE} {self.admin_password}\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                f"sentinel myid {ids[port]}\n"
                f"sentinel known-replica {SERVICE} 127.0.0.1 {SENTINEL_REPLICA}\n" + known
            )
            self._spawn(port, conf, "--sentinel")
        for port in (SENTINEL_MASTER, SENTINEL_REPLICA):
            self._ping(port)
        self._synced(SENTINEL_REPLICA)
        self.sentinel_ready()

    def sentinel_master(self) -> int:
        _host, port = self.admin(SENTINELS[0]).sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def sentinel_ready(self) -> None:
        """Every sentinel agrees on the master, sees one replica and the two other sentinels;
        the replica's sync is done."""

        def ok() -> bool:
            masters = set()
            for port in SENTINELS:
                m = self.admin(port).sentinel_master(SERVICE)
                if (
                    int(m["num-slaves"]) < 1
                    or int(m["num-other-sentinels"]) != 2
                    or "s_down" in str(m["flags"])
                    or "o_down" in str(m["flags"])
                ):
                    return False
                replicas = self.admin(port).sentinel_slaves(SERVICE)
                if not any(
                    r.get("master-link-status") == "ok" and "s_down" not in str(r["flags"])
                    for r in replicas
                ):
                    return False
                masters.add(int(m["port"]))
            return len(masters) == 1

        _wait("sentinels", ok, timeout=60)
        master = self.sentinel_master()
        replica = SENTINEL_REPLICA if master == SENTINEL_MASTER else SENTINEL_MASTER
        self._synced(replica)

    def kill(self, port: int) -> None:
        """SIGKILL one node."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again with its config (a sentinel rewrote it to follow the new
        master when it was demoted)."""
        self._spawn(port, self.base / str(port) / "redis.conf")
        self._ping(port)

    def _cluster(self) -> None:
        extra = (
            "cluster-enabled yes\ncluster-config-file nodes.conf\n"
            "cluster-node-timeout 2000\ncluster-require-full-coverage yes\n"
        )
        for port in CLUSTER:
            self._spawn(port, self._conf(port, extra))
        for port in CLUSTER:
            self._ping(port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in CLUSTER),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"REDISCLI_AUTH": self.admin_password, "PATH": "/usr/bin:/bin"},
            timeout=60,
        )

        def ok() -> bool:
            for port in CLUSTER:
                info = self.admin(port).cluster("info")
                if info.get("cluster_state") != "ok" or int(info["cluster_known_nodes"]) != 6:
                    return False
            return True

        _wait("cluster state ok", ok, timeout=60)
        for port in CLUSTER:
            if self.admin(port).info("replication").get("role") == "slave":
                self._synced(port)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
