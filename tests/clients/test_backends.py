"""Credentials of real backends through the clients: `jit exec` runs the real psql against a
real PostgreSQL (password authentication: the exported PGPASSWORD is really checked), and
boto3 reads S3 on moto's server through an AWS profile whose credential_process is `jit aws
credential-process`. One `jit serve` with the postgres and aws issuers for the module."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.clients.support import Provider, Serve, jit_env, serve
from tests.e2e.conftest import JIT
from tests.issuers.aws_support import REGION, MotoAWS, World
from tests.issuers.postgres_support import Env, private_cluster

pytestmark = pytest.mark.e2e

AWS_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_S3",
)  # fmt: skip


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoAWS]:
    """moto's server with IAM authentication on (tests/issuers/aws_support.py)."""
    home = tmp_path_factory.mktemp("aws-home")
    with pytest.MonkeyPatch.context() as mp:
        for var in AWS_ENV:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")  # moto's set-up calls, before auth is on
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("moto", "werkzeug"):
            logging.getLogger(name).setLevel(logging.WARNING)
        aws = MotoAWS()
        try:
            aws.setup()
            yield aws
        finally:
            aws.teardown()


@pytest.fixture(scope="module")
def world(moto: MotoAWS) -> Iterator[World]:
    w = moto.create_world()
    yield w
    moto.delete_world(w)


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A private PostgreSQL cluster that checks passwords (scram-sha-256)."""
    with private_cluster() as cluster:
        env = Env(cluster, tmp_path_factory.mktemp("pg"))
        env.setup()
        try:
            yield env
        finally:
            env.teardown()


@pytest.fixture(scope="module")
def backends(
    provider: Provider,
    moto: MotoAWS,
    world: World,
    pg: Env,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("backends")
    assert moto.broker is not None
    creds = tmp / "aws-credentials"
    creds.write_text(moto.broker.credentials_file())
    creds.chmod(0o600)
    issuers: dict[str, Any] = {
        "pg": {"type": "postgres", "config": pg.config(pg.next_prefix())},
        "aws": {
            "type": "aws",
            "config": {
                "region": REGION,
                "endpoint_url": moto.url,
                "credentials_file": str(creds),
                "max_attempts": 1,
                "resources": {
                    world.bucket_arn: {
                        "role_arn": world.role_arn,
                        "actions": {
                            "read": ["s3:GetObject", "s3:ListBucket"],
                            "write": ["s3:PutObject"],
                        },
                        "resources": [world.bucket_arn, f"{world.bucket_arn}/*"],
                    }
                },
            },
        },
    }
    policy = f"""
owner: platform-data
workloads:
  - issuer: workloads
    claims:
      sub: {{glob: "job-*"}}
grants:
  - name: orders-db
    issuer: pg
    resource: "{pg.resource}"
    actions: [read, write]
    max_ttl: 30m
    approval: none
  - name: bucket
    issuer: aws
    resource: "{world.bucket_arn}"
    actions: [read]
    max_ttl: 30m
    approval: none
"""
    b = serve(tmp / "broker", provider, issuers=issuers, policies={"data": policy})
    try:
        yield b
    finally:
        b.cleanup()


def run_exec(broker: Serve, token: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JIT, "exec", *args],
        env=jit_env(broker, token, OUT=str(out)),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def psql(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-c", command],
        env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


# -- PostgreSQL --------------------------------------------------------------------------------


def test_jit_exec_runs_psql_with_the_minted_role_and_drops_it_afterwards(
    backends: Serve, provider: Provider, pg: Env, tmp_path: Path
) -> None:
    job = provider.workload_token("job-psql")
    script = (
        'psql -X -q -A -t -w -v ON_ERROR_STOP=1 -c "select count(*) from app.orders" '
        '> "$OUT/count" 2> "$OUT/psql-err"; rc=$?; '
        'printf "%s\\n%s\\n%s\\n%s\\n%s" "$PGHOST" "$PGPORT" "$PGUSER" "$PGDATABASE" "$PGPASSWORD"'
        ' > "$OUT/pg"; exit $rc'
    )
    out = run_exec(
        backends, job, tmp_path, "--task", "db-1", "--issuer", "pg", "--resource", pg.resource,
        "--action", "read", "--ttl", "5m", "--", "sh", "-c", script,
    )  # fmt: skip
    assert out.returncode == 0, (out.stderr, (tmp_path / "psql-err").read_text())
    assert (tmp_path / "count").read_text().strip() == "3"
    host, port, user, database, password = (tmp_path / "pg").read_text().split("\n")
    assert (host, int(port), database) == (pg.cluster.host, pg.cluster.port, pg.orders)
    assert password not in out.stderr + out.stdout
    assert password not in backends.log.read_text()
    # The task is completed: the role is gone, and the same password logs in no more.
    assert pg.role(user) is None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=host, PGPORT=port, PGUSER=user, PGDATABASE=database, PGPASSWORD=password,
        PGCONNECT_TIMEOUT="5",
    )  # fmt: skip
    again = psql("select 1", env)
    assert again.returncode != 0
    assert "password authentication failed" in again.stderr


def test_a_read_credential_cannot_write(
    backends: Serve, provider: Provider, pg: Env, tmp_path: Path
) -> None:
    job = provider.workload_token("job-psql-ro")
    out = run_exec(
        backends, job, tmp_path, "--issuer", "pg", "--resource", pg.resource, "--action", "read",
        "--", "psql", "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1",
        "-c", "insert into app.orders values (9, 'x')",
    )  # fmt: skip
    assert out.returncode != 0
    assert "permission denied" in out.stderr


# -- AWS credential_process --------------------------------------------------------------------


def aws_profile(tmp: Path, world: World) -> Path:
    config = tmp / "aws-config"
    config.write_text(
        "[profile jit]\n"
        f"credential_process = {JIT} aws credential-process --issuer aws "
        f"--resource {world.bucket_arn} --action read --task aws-1 --ttl 16m\n"
        f"region = {REGION}\n"
    )
    return config


@pytest.fixture
def profile_env(
    backends: Serve,
    provider: Provider,
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The test process's environment, as a job's shell would have it: the broker and the
    workload identity for the credential_process, an AWS config with the profile, and no
    other AWS credentials."""
    job = provider.workload_token("job-aws")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("JIT_URL", backends.url)
    monkeypatch.setenv("JIT_TOKEN", job)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_profile(tmp_path, world)))
    return job


def test_credential_process_prints_version_1_json_with_expiration(
    backends: Serve, provider: Provider, world: World
) -> None:
    job = provider.workload_token("job-aws-json")
    out = subprocess.run(
        [JIT, "aws", "credential-process", "--issuer", "aws", "--resource", world.bucket_arn,
         "--action", "read"],
        env=jit_env(backends, job), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["Version"] == 1
    assert set(doc) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    expires = datetime.fromisoformat(doc["Expiration"].replace("Z", "+00:00"))
    assert timedelta(minutes=14) < expires - datetime.now(UTC) <= timedelta(minutes=16)
    assert out.stderr == ""  # nothing for the AWS SDK to show the user


def test_boto3_reads_the_bucket_through_the_profile_and_refreshes_before_expiry(
    backends: Serve, moto: MotoAWS, world: World, profile_env: str
) -> None:
    session = boto3.Session(profile_name="jit")
    s3 = session.client("s3", endpoint_url=moto.url, config=Config(s3={"addressing_style": "path"}))
    body = s3.get_object(Bucket=world.bucket, Key=world.key)["Body"].read()
    assert body == b"hello"
    with pytest.raises(ClientError) as denied:  # the session policy: read only
        s3.put_object(Bucket=world.bucket, Key="new.txt", Body=b"x")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    creds = session.get_credentials()
    first = creds.get_frozen_credentials().access_key
    expiry = creds._expiry_time  # botocore read our Expiration
    assert timedelta(minutes=14) < expiry - datetime.now(UTC) <= timedelta(minutes=16)
    # botocore refreshes 15 minutes before expiry ("advisory"). Its clock is a parameter of
    # its credentials object: move it past that point (the broker and moto keep real time).
    creds._time_fetcher = lambda: datetime.now(UTC) + timedelta(minutes=1, seconds=5)
    s3.list_objects_v2(Bucket=world.bucket)
    second = creds.get_frozen_credentials().access_key
    assert second != first  # the credential_process ran again, before the old one expired
    task = subprocess.run(
        [JIT, "task", "show", "aws-1", "--json"],
        env=jit_env(backends, profile_env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    leases = json.loads(task.stdout)["leases"]
    assert len(leases) >= 2  # one lease per run (botocore, on its moved clock, refreshes eagerly)
    oldest = min(leases, key=lambda le: le["issued_at"])
    assert oldest["state"] == "active"  # the first had not expired when it was replaced
