"""The ``redis:`` block: each topology's keys, and every mistake named at start."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from broker.config import load_settings, redis_settings
from broker.errors import ConfigError
from broker.state.connect import read_secret_file, redact_url


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "jit.yaml"
    p.write_text(text)
    return p


def test_without_a_block_redis_url_is_the_standalone_shorthand(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "redis_url: redis://10.0.0.9:6380/2\n"), env={})
    r = redis_settings(s)
    assert (r.mode, r.url, r.wait_replicas) == ("standalone", "redis://10.0.0.9:6380/2", 0)


@pytest.mark.parametrize(
    "block",
    [
        pytest.param("mode: standalone\n  url: redis://127.0.0.1:6379/3\n  db: 3", id="standalone"),
        pytest.param(
            "mode: sentinel\n  sentinels: ['10.0.0.1:26379', '[::1]:26380']\n"
            "  master_name: mymaster\n  db: 1\n  sentinel_username: s\n"
            "  sentinel_password_file: /x\n  wait_replicas: 1\n  wait_timeout: 250ms",
            id="sentinel",
        ),
        pytest.param(
            "mode: cluster\n  nodes: ['10.0.0.1:6379']\n  db: 0\n  username: jit\n"
            "  password_file: /run/secrets/redis/password\n  tls: true\n  ca_file: /ca.pem",
            id="cluster",
        ),
    ],
)
def test_each_mode_loads(tmp_path: Path, block: str) -> None:
    s = load_settings(write(tmp_path, f"redis:\n  {block}\n  timeout: 2s\n"), env={})
    assert s.redis is not None
    assert redis_settings(s) is s.redis
    assert s.redis.timeout == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        pytest.param(
            "mode: standalone\n  nodes: ['a:1']",
            r"redis\.nodes: not used in mode standalone",
            id="nodes in standalone",
        ),
        pytest.param(
            "mode: standalone\n  master_name: m",
            r"redis\.master_name: not used",
            id="master_name in standalone",
        ),
        pytest.param(
            "mode: cluster\n  nodes: ['a:1']\n  url: redis://a:1/0",
            r"redis\.url: not used in mode cluster",
            id="url in cluster",
        ),
        pytest.param(
            "mode: cluster\n  nodes: ['a:1']\n  sentinels: ['a:2']",
            r"redis\.sentinels: not used",
            id="sentinels in cluster",
        ),
        pytest.param(
            "mode: sentinel\n  sentinels: ['a:1']\n  master_name: m\n  url: redis://a/0",
            r"redis\.url: not used in mode sentinel",
            id="url in sentinel",
        ),
        pytest.param(
            "mode: standalone\n  sentinel_password_file: /x",
            r"redis\.sentinel_password_file: not used",
            id="sentinel password in standalone",
        ),
        pytest.param(
            "mode: sentinel\n  master_name: m",
            r"redis\.sentinels: mode sentinel needs",
            id="no sentinels",
        ),
        pytest.param(
            "mode: sentinel\n  sentinels: []\n  master_name: m",
            r"redis\.sentinels: mode sentinel needs",
            id="empty sentinels",
        ),
        pytest.param(
            "mode: sentinel\n  sentinels: ['a:1']",
            r"redis\.master_name: mode sentinel needs",
            id="no master_name",
        ),
        pytest.param(
            "mode: cluster",
            r"redis\.nodes: mode cluster needs",
            id="no nodes",
        ),
        pytest.param(
            "mode: cluster\n  nodes: ['10.0.0.1']",
            r"redis\.nodes: '10\.0\.0\.1' is not host:port",
            id="node without a port",
        ),
        pytest.param(
            "mode: sentinel\n  sentinels: ['a:99999']\n  master_name: m",
            r"redis\.sentinels: 'a:99999' is not host:port",
            id="sentinel port out of range",
        ),
        pytest.param(
            "mode: cluster\n  nodes: ['a:1']\n  db: 2",
            r"redis\.db: a cluster has database 0 only",
            id="cluster db",
        ),
        pytest.param(
            "url: redis://:hunter2@a:6379/0",
            r"redis\.url: a password in the URL is refused",
            id="password in the url",
        ),
        pytest.param(
            "url: redis://u:hunter2@a:6379/0",
            r"redis\.url: a password in the URL is refused",
            id="user and password in the url",
        ),
        pytest.param(
            "url: redis://a:6379/0?password=hunter2",
            r"redis\.url: a password in the URL is refused",
            id="password in the query",
        ),
        pytest.param(
            "url: redis+sentinel://a:26379/m",
            r"redis\.url: the scheme must be",
            id="sentinel scheme",
        ),
        pytest.param(
            "url: redis://a:6379/1\n  db: 2",
            r"redis\.db: the url names database 1",
            id="two databases",
        ),
        pytest.param(
            "url: redis://u@a:6379/0\n  username: v",
            r"redis\.username: the url names a user",
            id="two users",
        ),
        pytest.param(
            "mode: replica",
            r"redis\.mode|mode",
            id="unknown mode",
        ),
        pytest.param(
            "mode: standalone\n  pasword_file: /x",
            "pasword_file",
            id="unknown key",
        ),
        pytest.param(
            "ca_file: /ca.pem",
            r"redis\.ca_file: only with tls",
            id="ca_file without tls",
        ),
        pytest.param(
            "max_connections: 0",
            r"redis\.max_connections",
            id="no connections",
        ),
        pytest.param(
            "timeout: 0s",
            r"redis\.timeout: must be positive",
            id="zero timeout",
        ),
        pytest.param(
            "timeout: soon",
            "duration",
            id="bad timeout",
        ),
        pytest.param(
            "wait_replicas: -1",
            r"redis\.wait_replicas: must be >= 0",
            id="negative wait",
        ),
        pytest.param(
            "wait_replicas: 1\n  wait_timeout: 0s",
            r"redis\.wait_timeout: must be positive",
            id="zero wait timeout",
        ),
        pytest.param(
            "wait_replicas: 1\n  wait_timeout: 5s\n  timeout: 5s",
            r"redis\.wait_timeout: must be shorter than redis\.timeout",
            id="wait as long as the batch timeout",
        ),
        pytest.param(
            "mode: cluster\n  nodes: ['a:1']\n  wait_replicas: 1",
            r"redis\.wait_replicas: not available in mode cluster",
            id="wait on a cluster",
        ),
        pytest.param(
            "db: -1",
            r"redis\.db: must be >= 0",
            id="negative db",
        ),
    ],
)
def test_a_bad_redis_block_is_named(tmp_path: Path, block: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        load_settings(write(tmp_path, f"redis:\n  {block}\n"), env={})
    assert "hunter2" not in caught.value.message


def test_redis_url_and_a_block_together_are_refused(tmp_path: Path) -> None:
    text = "redis_url: redis://a:6379/0\nredis:\n  mode: cluster\n  nodes: ['a:1']\n"
    with pytest.raises(ConfigError, match="redis_url and a redis: block"):
        load_settings(write(tmp_path, text), env={})


def test_the_environment_url_and_a_block_together_are_refused(tmp_path: Path) -> None:
    text = "redis:\n  mode: cluster\n  nodes: ['a:1']\n"
    with pytest.raises(ConfigError, match="redis_url and a redis: block"):
        load_settings(write(tmp_path, text), env={"JIT_REDIS_URL": "redis://b:6379/0"})


def test_a_password_file_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("s3cret \n\n")
    secret = read_secret_file(str(f), "redis.password_file")
    assert secret.reveal() == "s3cret \n"
    assert "s3cret" not in repr(secret)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "cannot read"), ("", "is empty"), ("\n", "is empty"), (b"\xff\xfe", "UTF-8")],
)
def test_an_unreadable_password_file_is_named(
    tmp_path: Path, content: str | bytes | None, needle: str
) -> None:
    f = tmp_path / "pw"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(ConfigError, match=f"redis.password_file: .*{needle}"):
        read_secret_file(str(f), "redis.password_file")


def test_redacted_urls_carry_no_password() -> None:
    assert redact_url("redis://u:hunter2@h:1/0?password=x") == "redis://u@h:1/0"
    assert "hunter2" not in redact_url("rediss://:hunter2@h/0")


@pytest.mark.parametrize(
    ("url", "tls"),
    [("redis://127.0.0.1:6379/0", True), ("rediss://127.0.0.1:6379/0", False)],
)
async def test_tls_in_standalone_mode_verifies_certificates(
    tmp_path: Path, url: str, tls: bool
) -> None:
    from redis.asyncio.connection import SSLConnection

    from broker.config import RedisSettings
    from broker.state.connect import redis_client

    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made\n")
    client = redis_client(RedisSettings(url=url, tls=tls, ca_file=str(ca) if tls else None))
    pool = client.connection_pool
    assert issubclass(pool.connection_class, SSLConnection)
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    if tls:
        assert pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    await client.aclose()


def test_tls_with_a_unix_socket_is_refused(tmp_path: Path) -> None:
    text = "redis:\n  url: unix:///run/redis.sock\n  tls: true\n"
    with pytest.raises(ConfigError, match=r"redis\.tls: not with a unix:// url"):
        load_settings(write(tmp_path, text), env={})
