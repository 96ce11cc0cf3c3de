"""Real Redis topologies on loopback for the chart's smoke tests (ports 7300-7319):

- Sentinel: a master (7300) and its replica (7301) watched by three sentinels (7302-7304) that
  call it ``jit``; the data servers have an ACL user ``jit`` and a default-user password, the
  sentinels their own password (Sentinel's ``requirepass``).
- Cluster: three masters (7310-7312), no replicas (they would add start-up time and prove
  nothing about the chart), with a default-user password.
- TLS: one server on a TLS port only (7315), its certificate (for 127.0.0.1) signed by a CA made
  here with openssl; clients are not asked for certificates.

redis-server from Debian's package runs both (``--sentinel`` is what the redis-sentinel
package's binary does). Every process is started here and stopped here, by its own pid.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

SENTINEL_MASTER, SENTINEL_REPLICA = 7300, 7301
SENTINELS = (7302, 7303, 7304)
CLUSTER = (7310, 7311, 7312)
TLS = 7315
MASTER_NAME = "jit"
ACL_USER = "jit"


@dataclass
class Farm:
    root: Path
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    sentinel_password: str = field(default_factory=lambda: secrets.token_hex(16))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _start(self, name: str, lines: list[str], *extra: str) -> None:
        work = self.root / name
        work.mkdir(parents=True)
        conf = work / "redis.conf"  # a file: Sentinel and Cluster rewrite their config
        conf.write_text("\n".join([*lines, f"dir {work}", 'save ""', "appendonly no"]) + "\n")
        log = (work / "log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [REDIS_SERVER, str(conf), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )

    def _data_server(self, port: int, *more: str) -> list[str]:
        return [
            f"port {port}",
            "bind 127.0.0.1",
            f"requirepass {self.password}",
            f"masterauth {self.password}",
            f"user {ACL_USER} on >{self.password} ~* &* +@all",
            "repl-diskless-sync-delay 0",
            *more,
        ]

    def client(self, port: int, password: str | None = None, db: int = 0) -> redis.Redis:
        return redis.Redis(port=port, password=password or self.password, db=db, socket_timeout=5)

    def _wait(self, what: str, check: object, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a Redis process exited ({p.args}) waiting for {what}")
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"gave up waiting for {what} (last error: {last})")

    # -- Sentinel ---------------------------------------------------------------------------

    def start_sentinel(self) -> None:
        self._start("master", self._data_server(SENTINEL_MASTER))
        self._start(
            "replica",
            self._data_server(SENTINEL_REPLICA, f"replicaof 127.0.0.1 {SENTINEL_MASTER}"),
        )
        for port in SENTINELS:
            self._start(
                f"sentinel-{port}",
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"requirepass {self.sentinel_password}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {SENTINEL_MASTER} 2",
                    f"sentinel auth-pass {MASTER_NAME} {self.password}",
                    f"sentinel sentinel-pass {self.sentinel_password}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} 5000",
                ],
                "--sentinel",
            )
        self._wait(
            "the replica to sync",
            lambda: self.client(SENTINEL_REPLICA).info("replication")["master_link_status"] == "up",
        )
        for port in SENTINELS:
            self._wait(
                f"sentinel {port}",
                lambda port=port: self.client(port, self.sentinel_password).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                ),
            )

    # -- TLS ------------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.crt"

    def start_tls(self) -> None:
        work = self.root / "tls"
        work.mkdir(parents=True)
        (work / "san").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]
        ca = ["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=jit chart test CA"]
        csr = ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]
        sign = ["-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
        for argv in (
            ["req", "-x509", *ec, *ca],
            ["req", *ec, *csr],
            ["x509", "-req", *sign, "-out", "server.crt", "-days", "1", "-extfile", "san"],
        ):
            subprocess.run(
                ["openssl", *argv], cwd=work, check=True, capture_output=True, timeout=30
            )
        self._start(
            "tls-server",
            [
                *self._data_server(0),
                f"tls-port {TLS}",
                f"tls-cert-file {work / 'server.crt'}",
                f"tls-key-file {work / 'server.key'}",
                f"tls-ca-cert-file {work / 'ca.crt'}",
                "tls-auth-clients no",
            ],
        )
        self._wait("the TLS server", lambda: self.tls_client().ping())

    def tls_client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            port=TLS,
            password=self.password,
            db=db,
            ssl=True,
            ssl_ca_certs=str(self.ca_file),
            socket_timeout=5,
        )

    # -- Cluster ----------------------------------------------------------------------------

    def start_cluster(self) -> None:
        for port in CLUSTER:
            self._start(
                f"cluster-{port}",
                self._data_server(
                    port,
                    "cluster-enabled yes",
                    f"cluster-config-file nodes-{port}.conf",
                    "cluster-node-timeout 5000",
                ),
            )
        for port in CLUSTER:
            self._wait(f"node {port}", lambda port=port: self.client(port).ping())
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in CLUSTER),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            env={"REDISCLI_AUTH": self.password, "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        for port in CLUSTER:
            self._wait(
                f"cluster state ok at {port}",
                lambda port=port: self.client(port).cluster("info")["cluster_state"] == "ok",
            )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


@contextmanager
def farm(root: Path) -> Iterator[Farm]:
    f = Farm(root)
    try:
        yield f
    finally:
        f.stop()
