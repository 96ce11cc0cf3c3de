"""The SDK's pure parts: which identity source an environment offers, how answers become typed
errors, Retry-After, key pairs, exports written as 0600 files, the git credential protocol."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from broker.cli.helpers import git_resource, read_git_attributes
from broker.client import errors
from broker.client.environment import materialise
from broker.client.identity import (
    GitHubActions,
    GitLabCI,
    KubernetesToken,
    StaticToken,
    TokenFile,
    detect,
    from_name,
    jwt_expiry,
)
from broker.client.keys import generate
from broker.client.models import Credential, Exports, ExportSource
from broker.client.transport import error_from, retry_after
from broker.issuer import Exports as ContractExports
from broker.issuer import ExportSource as ContractSource
from broker.types import Secret

GH = {"ACTIONS_ID_TOKEN_REQUEST_URL": "https://x/token", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "r"}


@pytest.mark.parametrize(
    ("case", "env", "expected"),
    [
        (
            "github actions comes first",
            {**GH, "JIT_ID_TOKEN": "g", "JIT_TOKEN": "t"},
            GitHubActions,
        ),
        ("then the gitlab id_tokens variable", {"JIT_ID_TOKEN": "g", "JIT_TOKEN": "t"}, GitLabCI),
        ("then a kubernetes token file", {"K8S": "yes", "JIT_TOKEN": "t"}, KubernetesToken),
        ("then JIT_TOKEN", {"JIT_TOKEN": "t", "JIT_TOKEN_FILE": "/f"}, StaticToken),
        ("JIT_TOKEN_FILE last", {"JIT_TOKEN_FILE": "/f"}, TokenFile),
        (
            "github needs both variables",
            {"ACTIONS_ID_TOKEN_REQUEST_URL": "u", "JIT_TOKEN": "t"},
            StaticToken,
        ),
    ],
)
def test_detect_tries_the_sources_in_order(
    case: str, env: dict[str, str], expected: type, tmp_path: Path
) -> None:
    k8s = tmp_path / "token"
    if env.pop("K8S", None):
        k8s.write_text("x")
    env["JIT_KUBERNETES_TOKEN_FILE"] = str(k8s)
    assert type(detect(env)) is expected


def test_detect_with_nothing_names_every_source_it_tried(tmp_path: Path) -> None:
    with pytest.raises(errors.IdentityUnavailable) as exc:
        detect({"JIT_KUBERNETES_TOKEN_FILE": str(tmp_path / "none")})
    for hint in ("id-token: write", "JIT_ID_TOKEN", "Kubernetes", "JIT_TOKEN"):
        assert hint in exc.value.message


def test_a_source_is_chosen_by_name() -> None:
    assert isinstance(from_name("gitlab", variable="X", environ={}), GitLabCI)
    assert isinstance(from_name("token", token="abc", environ={}), StaticToken)
    assert isinstance(from_name("github", audience="aud", environ={}), GitHubActions)
    with pytest.raises(errors.IdentityUnavailable):
        from_name("token", environ={})
    with pytest.raises(ValueError, match="unknown identity source"):
        from_name("ldap", environ={})


def test_jwt_expiry_reads_exp_without_verifying() -> None:
    payload = "eyJleHAiOjEyM30"  # {"exp":123}
    assert jwt_expiry(f"h.{payload}.s") == 123
    assert jwt_expiry("not-a-jwt") is None


def test_static_tokens_never_show_in_a_repr() -> None:
    assert "secret-value" not in repr(StaticToken("secret-value"))


def answer(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json=body,
        headers=headers,
        request=httpx.Request("POST", "http://127.0.0.1/v1/credentials"),
    )


def problem(status: int, code: str, **extra: Any) -> dict[str, Any]:
    return {"type": f"https://jit-broker.dev/problems/{code}", "title": "T", "status": status,
            "detail": "d", **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("case", "status", "body", "error"),
    [
        ("a policy denial", 403, problem(403, "denied", reasons=["r1"]), errors.Denied),
        (
            "approval required",
            403,
            problem(403, "approval-required", grant="g"),
            errors.ApprovalRequired,
        ),
        ("a bad request", 400, problem(400, "invalid-request"), errors.InvalidRequest),
        ("a reused key", 422, problem(422, "idempotency-key-reused"), errors.IdempotencyKeyReused),
        ("a bad token", 401, problem(401, "unauthenticated"), errors.Unauthenticated),
        ("nothing there", 404, problem(404, "not-found"), errors.NotFound),
        ("a completed task", 409, problem(409, "conflict"), errors.Conflict),
        ("a failed issuer", 502, problem(502, "issuer"), errors.IssuerFailed),
        ("redis down", 503, problem(503, "store-unavailable"), errors.BrokerUnavailable),
        ("a proxy's page", 502, None, errors.BrokerUnavailable),
        (
            "an oauth denial",
            400,
            {"error": "invalid_scope", "error_description": "no", "reasons": ["r"]},
            errors.Denied,
        ),
        (
            "an oauth bad subject",
            400,
            {"error": "invalid_grant", "error_description": "no"},
            errors.Unauthenticated,
        ),
    ],
)
def test_answers_become_typed_errors(
    case: str, status: int, body: Any, error: type[errors.ClientError]
) -> None:
    resp = (
        answer(status, body)
        if body is not None
        else httpx.Response(
            status, text="<html>bad gateway</html>", request=httpx.Request("GET", "http://x/")
        )
    )
    exc = error_from(resp)
    assert type(exc) is error
    assert isinstance(exc, errors.ClientError)
    if isinstance(exc, errors.Denied) and body and body.get("reasons"):
        assert exc.reasons == tuple(body["reasons"])
    if isinstance(exc, errors.ApprovalRequired):
        assert exc.grant == "g"


@pytest.mark.parametrize(
    ("value", "seconds"), [("2", 2.0), ("0", 0.0), ("600", 30.0), ("soon", None), ("", None)]
)
def test_retry_after_is_seconds_capped_at_thirty(value: str, seconds: float | None) -> None:
    resp = httpx.Response(503, headers={"Retry-After": value} if value else {})
    assert retry_after(resp) == seconds


def test_an_ssh_key_pair_is_made_here_and_only_its_public_half_is_sent() -> None:
    public, private = generate("ssh")
    assert public.startswith("ssh-ed25519 ")
    key = serialization.load_ssh_private_key(private.reveal().encode(), password=None)
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert public.startswith(line.decode())
    assert private.reveal() not in repr(private)


def test_a_pem_key_pair_is_p256_with_a_pkcs8_private_key() -> None:
    public, private = generate("pem")
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    assert private.reveal().startswith("-----BEGIN PRIVATE KEY-----")


def credential(exports: Exports | None, secret: str = "s3cr3t-value", **over: Any) -> Credential:
    from datetime import UTC, datetime

    fields: dict[str, Any] = {
        "lease_id": "l1",
        "task_id": "t1",
        "issuer": "ssh",
        "resource": "r",
        "actions": ("a",),
        "expires_at": datetime.now(UTC),
        "token_type": "x",
        "secret": Secret(secret),
        "metadata": {"username": "jit_l1"},
        "exports": exports,
        **over,
    }
    return Credential(**fields)


async def no_document(issuer: str, name: str) -> bytes:
    return f"{issuer}/{name} document".encode()


async def test_exports_become_env_vars_and_0600_files_in_a_0700_directory(tmp_path: Path) -> None:
    exports = Exports(
        files={
            "id": ExportSource(private_key=True),
            "id-cert.pub": ExportSource(secret=True),
            "ca.pem": ExportSource(document="ca.pem"),
        },
        env={
            "KEY": ExportSource(file="id"),
            "USER": ExportSource(metadata="username"),
            "PASS": ExportSource(secret=True),
            "MODE": ExportSource(value="strict"),
        },
    )
    cred = credential(exports, private_key=Secret("PRIVATE KEY"))
    env = await materialise(cred, tmp_path / "d", no_document, prefix="P_")
    d = tmp_path / "d"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert env == {
        "P_KEY": str(d / "id"),
        "P_USER": "jit_l1",
        "P_PASS": "s3cr3t-value",
        "P_MODE": "strict",
    }
    for name, content in (("id", "PRIVATE KEY"), ("id-cert.pub", "s3cr3t-value"),
                          ("ca.pem", "ssh/ca.pem document")):  # fmt: skip
        assert (d / name).read_text() == content
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600


async def test_a_key_not_generated_here_leaves_its_file_and_path_out(tmp_path: Path) -> None:
    exports = Exports(
        files={"id": ExportSource(private_key=True)}, env={"KEY": ExportSource(file="id")}
    )
    assert await materialise(credential(exports), tmp_path / "d", no_document) == {}
    assert not (tmp_path / "d" / "id").exists()


async def test_a_json_secret_member_and_a_credential_without_exports(tmp_path: Path) -> None:
    aws = Exports(env={"AWS_SECRET_ACCESS_KEY": ExportSource(member="SecretAccessKey")})
    secret = json.dumps({"Version": 1, "SecretAccessKey": "abc"})
    assert await materialise(credential(aws, secret), tmp_path, no_document) == {
        "AWS_SECRET_ACCESS_KEY": "abc"
    }
    assert await materialise(credential(None), tmp_path, no_document) == {
        "JIT_CREDENTIAL": "s3cr3t-value"
    }


def test_the_wire_form_of_exports_decodes_into_the_sdk_types() -> None:
    import msgspec

    sent = ContractExports(
        env={"PGPASSWORD": ContractSource(secret=True), "PGUSER": ContractSource(metadata="u")},
        files={"k": ContractSource(private_key=True)},
    )
    wire = msgspec.json.encode(sent)
    assert b"private_key" in wire
    assert b"member" not in wire  # omit_defaults: compact
    got = msgspec.json.decode(wire, type=Exports)
    assert got.env["PGUSER"] == ExportSource(metadata="u")
    assert got.files["k"].private_key


@pytest.mark.parametrize(
    ("case", "wire", "problem_text"),
    [
        ("two origins", {"env": {"A": {"secret": True, "metadata": "x"}}}, "exactly one"),
        ("no origin", {"env": {"A": {}}}, "exactly one"),
        ("a lower-case variable", {"env": {"path": {"secret": True}}}, "variable name"),
        ("a file name with a slash", {"files": {"a/b": {"secret": True}}}, "plain file"),
        ("a path to a file not exported", {"env": {"A": {"file": "x"}}}, "not exported"),
    ],
)
def test_the_contract_refuses_malformed_exports(
    case: str, wire: dict[str, Any], problem_text: str
) -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match=problem_text):
        msgspec.convert(wire, ContractExports)


def test_git_attributes_and_the_resource_git_asks_for() -> None:
    attrs = read_git_attributes(io.StringIO("protocol=https\nhost=git.example\npath=a/b.git\n\n"))
    assert attrs == {"protocol": "https", "host": "git.example", "path": "a/b.git"}
    assert git_resource(attrs) == "https://git.example/a/b.git"
    assert git_resource({"protocol": "http", "host": "127.0.0.1:8080"}) == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("https://jit.example.com/", "https://jit.example.com"),
        ("http://0.0.0.0:8200", "http://127.0.0.1:8200"),  # jit dev --host 0.0.0.0
        ("http://127.0.0.1:8200", "http://127.0.0.1:8200"),
    ],
)
def test_the_cli_reaches_a_broker_listening_everywhere_on_loopback(given: str, used: str) -> None:
    from broker.cli.client import resolve_url

    assert resolve_url(given) == used
