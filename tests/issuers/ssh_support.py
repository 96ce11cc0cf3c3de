"""Helpers for the ssh issuer's tests: a real sshd on a free loopback port, the real ssh and
ssh-keygen clients, key pairs, and a TCP proxy in front of Redis that can simulate an outage.

Everything runs on 127.0.0.1 and in the test's own temporary directory; nothing here touches the
system's sshd or its configuration (only /run/sshd, the privilege-separation directory sshd
insists on when started as root, is created if it is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SSHD = "/usr/sbin/sshd"
SSH_OPTIONS = [
    "-F",
    "/dev/null",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "IdentityAgent=none",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=5",
]


def require_tools() -> None:
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install openssh-client)")
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} is not installed (apt-get install openssh-server)")


def login_user() -> str:
    """The user the test logs in as: whoever runs the tests (root in CI)."""
    return "root" if os.geteuid() == 0 else getpass.getuser()


# -- keys ----------------------------------------------------------------------------------


def new_private_key(
    kind: str = "ed25519",
) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind.removeprefix("rsa") or 3072))
    raise ValueError(kind)


def public_line(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def write_private_key(
    path: Path, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
) -> Path:
    """An unencrypted OpenSSH private key file, mode 0600 (ssh refuses looser modes)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def ssh_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ssh-keygen; times print in UTC (``-L`` shows validity in local time)."""
    return subprocess.run(
        ["ssh-keygen", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "TZ": "UTC"},
    )


def generate_ca_file(path: Path, kind: str, *, passphrase: str = "") -> Path:
    """A CA key written by the real ssh-keygen (``-t ed25519|ecdsa|rsa|dsa``), OpenSSH format."""
    args = ["-q", "-t", kind, "-N", passphrase, "-C", "jit-test-ca", "-f", str(path)]
    if kind == "rsa":
        args[1:1] = ["-b", "3072"]
    result = ssh_keygen(*args)
    if result.returncode != 0:
        pytest.fail(f"ssh-keygen -t {kind} failed: {result.stderr.strip()}")
    return path


def krl_revokes(krl: bytes, certificate: str, directory: Path) -> bool:
    """``ssh-keygen -Q``: does the KRL revoke this certificate? (exit 0: not revoked)"""
    krl_path = directory / f"check-{os.urandom(4).hex()}.krl"
    cert_path = directory / f"check-{os.urandom(4).hex()}-cert.pub"
    krl_path.write_bytes(krl)
    cert_path.write_text(certificate + "\n")
    try:
        result = ssh_keygen("-Q", "-f", str(krl_path), str(cert_path))
    finally:
        krl_path.unlink()
        cert_path.unlink()
    if result.returncode == 0 and ": ok" in result.stdout:
        return False
    if result.returncode == 1 and "REVOKED" in result.stdout:
        return True
    pytest.fail(f"ssh-keygen -Q failed (rc {result.returncode}): {result.stderr.strip()}")


def describe_certificate(certificate: str, directory: Path) -> str:
    """``ssh-keygen -L`` of a certificate."""
    path = directory / f"show-{os.urandom(4).hex()}-cert.pub"
    path.write_text(certificate + "\n")
    try:
        result = ssh_keygen("-L", "-f", str(path))
    finally:
        path.unlink()
    if result.returncode != 0:
        pytest.fail(f"ssh-keygen -L failed: {result.stderr.strip()}")
    return result.stdout


# -- sshd ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """A real sshd in the foreground (``-D -e``) on 127.0.0.1, configured to trust one user CA
    (``TrustedUserCAKeys``), to read ``RevokedKeys`` on every authentication, and to accept only
    the principals listed for each user (``AuthorizedPrincipalsFile``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_pub = self.dir / "ca.pub"
        self.krl = self.dir / "revoked.krl"
        self.principals_dir = self.dir / "principals"
        self.log = self.dir / "sshd.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def set_ca(self, ca_pub: bytes) -> None:
        self.ca_pub.write_bytes(ca_pub)

    def set_krl(self, krl: bytes) -> None:
        """Replace the KRL atomically: sshd reads it on each authentication, no restart."""
        tmp = self.dir / ".revoked.krl.tmp"
        tmp.write_bytes(krl)
        tmp.replace(self.krl)

    def set_principals(self, user: str, principals: Iterable[str]) -> None:
        self.principals_dir.mkdir(exist_ok=True)
        (self.principals_dir / user).write_text("".join(f"{p}\n" for p in principals))

    def _config(self) -> str:
        root_login = "PermitRootLogin prohibit-password\n" if os.geteuid() == 0 else ""
        return (
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.dir / 'host_ed25519'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            "AuthorizedKeysFile none\n"
            f"TrustedUserCAKeys {self.ca_pub}\n"
            f"RevokedKeys {self.krl}\n"
            f"AuthorizedPrincipalsFile {self.principals_dir}/%u\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "StrictModes no\n"
            "UsePAM no\n"
            f"{root_login}"
            "LogLevel VERBOSE\n"
        )

    def start(self) -> None:
        require_tools()
        if os.geteuid() == 0:
            # sshd refuses to start as root without its privilege-separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host_key = self.dir / "host_ed25519"
        if not host_key.exists():
            result = ssh_keygen("-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
            if result.returncode != 0:
                pytest.fail(f"ssh-keygen (host key) failed: {result.stderr.strip()}")
        if not self.krl.exists():
            pytest.fail("set_krl() before start(): sshd refuses every key without its KRL")
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            config = self.dir / "sshd_config"
            config.write_text(self._config())
            check = subprocess.run(
                [SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False
            )
            if check.returncode != 0:
                pytest.fail(f"sshd -t refused the test config: {check.stderr.strip()}")
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if self._wait_until_listening():
                return
            self.stop()
        pytest.fail(f"sshd did not start; its log:\n{self.log.read_text(errors='replace')}")

    def _wait_until_listening(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def ssh(
        self, key: Path, certificate: Path, user: str, *command: str
    ) -> subprocess.CompletedProcess[str]:
        """Log in with ``key`` and ``certificate`` and run ``command`` (default ``true``)."""
        return subprocess.run(
            [
                "ssh",
                *SSH_OPTIONS,
                "-i",
                str(key),
                "-o",
                f"CertificateFile={certificate}",
                "-p",
                str(self.port),
                f"{user}@127.0.0.1",
                *(command or ("true",)),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# -- a Redis outage ------------------------------------------------------------------------


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of Redis. ``outage()`` cuts every open connection and
    refuses new ones, the way a Redis that went away looks to its clients."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.down = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        self.down = True
        self._cut()
        try:
            yield
        finally:
            self.down = False

    async def close(self) -> None:
        self.down = True
        self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
