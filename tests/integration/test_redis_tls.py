"""Redis over TLS as ``redis_client`` connects: the certificate is checked against the CA in
``redis.ca_file`` and against the host name in the address, on a real TLS-only redis-server.

The server's certificate names only ``localhost``. Reached as 127.0.0.1 it must be refused:
without the host-name check, any certificate the CA signed (another tenant's, a test server's)
would be accepted for any address."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from broker.config import RedisSettings
from broker.state.connect import redis_client

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("openssl") is None,
    reason="redis-server and openssl are installed by tests/run.sh",
)

PORT = 7390  # a port of its own: other Redis servers of the suite are on 6379 and 71xx-73xx


def _openssl(work: Path, *argv: str) -> None:
    subprocess.run(["openssl", *argv], cwd=work, check=True, capture_output=True, timeout=30)


def _issue(work: Path, name: str, san: str) -> None:
    """A P-256 server certificate ``name``.crt for ``san``, signed by ca.crt."""
    (work / f"{name}.san").write_text(f"subjectAltName={san}\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(work, "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=r")
    _openssl(
        work,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.san"),
    )


def _ca(work: Path, name: str) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]
    _openssl(
        work,
        "req",
        "-x509",
        *ec,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-subj",
        f"/CN={name}",
    )


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two CAs; a redis-server serving on TLS only with a certificate for ``localhost``."""
    work = tmp_path_factory.mktemp("redis-tls")
    _ca(work, "ca")
    _ca(work, "other-ca")
    _issue(work, "server", "DNS:localhost")
    conf = (
        f"port 0\nbind 127.0.0.1\ntls-port {PORT}\nsave ''\nappendonly no\ndir {work}\n"
        f"tls-cert-file {work / 'server.crt'}\ntls-key-file {work / 'server.key'}\n"
        f"tls-ca-cert-file {work / 'ca.crt'}\ntls-auth-clients no\n"
    )
    (work / "redis.conf").write_text(conf)
    proc = subprocess.Popen(
        ["redis-server", str(work / "redis.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the TLS redis-server did not start") from None
                time.sleep(0.05)
        yield work
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _tls_settings(host: str, ca: Path) -> RedisSettings:
    """The TLS server reached as ``host``, trusting ``ca``."""
    return RedisSettings(
        url=f"redis://{host}:{PORT}/0", tls=True, ca_file=str(ca), timeout=timedelta(seconds=2)
    )


async def _ping(settings: RedisSettings) -> Any:
    client = redis_client(settings)
    try:
        return await client.ping()
    finally:
        await client.aclose()


async def test_a_certificate_for_another_name_is_refused(tls_dir: Path) -> None:
    """127.0.0.1 is not in the certificate (it names localhost only): refused."""
    settings = _tls_settings("127.0.0.1", tls_dir / "ca.crt")
    with pytest.raises(redis.exceptions.ConnectionError, match="IP address mismatch"):
        await _ping(settings)


async def test_a_certificate_from_another_ca_is_refused(tls_dir: Path) -> None:
    settings = _tls_settings("localhost", tls_dir / "other-ca.crt")
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        await _ping(settings)


async def test_the_name_in_the_certificate_and_its_ca_connect(tls_dir: Path) -> None:
    """The control: the same server reached by the name its certificate carries."""
    settings = _tls_settings("localhost", tls_dir / "ca.crt")
    assert await _ping(settings) is True


@pytest.mark.parametrize("mode", ["sentinel", "cluster"])
async def test_sentinel_and_cluster_clients_check_the_name_too(tls_dir: Path, mode: str) -> None:
    """Their connections are made later (by the sentinels' answer, by the cluster's slots), so
    what is checked here is what each connection will be made with."""
    ca = str(tls_dir / "ca.crt")
    if mode == "sentinel":
        settings = RedisSettings(
            mode="sentinel", sentinels=["127.0.0.1:1"], master_name="m", tls=True, ca_file=ca
        )
        client = redis_client(settings)
        kwargs = dict(client.connection_pool.connection_kwargs)
    else:
        settings = RedisSettings(mode="cluster", nodes=["127.0.0.1:1"], tls=True, ca_file=ca)
        client = redis_client(settings)
        kwargs = dict(client.nodes_manager.connection_kwargs)
    try:
        assert kwargs["ssl_check_hostname"] is True
        assert kwargs["ssl_cert_reqs"] in ("required", ssl.CERT_REQUIRED)
        assert kwargs["ssl_ca_certs"] == ca
    finally:
        await client.aclose()
