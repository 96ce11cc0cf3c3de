"""Every identity source, end to end: the SDK finds the token the way each platform hands it
over (the GitHub Actions OIDC endpoint, a GitLab id_tokens variable, a Kubernetes projected
token file, JIT_TOKEN / JIT_TOKEN_FILE) and the real broker accepts it with the right preset."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from broker.client import (
    Client,
    GitHubActions,
    GitLabCI,
    IdentityUnavailable,
    KubernetesToken,
    StaticToken,
    TokenFile,
    detect,
)
from broker.client.identity import IdentitySource, jwt_expiry
from tests.clients.support import Provider, Serve

pytestmark = pytest.mark.e2e

ORDERS = "https://orders.internal"


def actions_env(provider: Provider, request_token: str) -> dict[str, str]:
    return {
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{provider.url}/github/idtoken?api-version=2.0",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": request_token,
    }


async def owner_of_a_credential(broker: Serve, source: IdentitySource, resource: str) -> str:
    async with Client(broker.url, source) as client, client.task() as task:
        cred = await task.credential(resource=resource, actions="read")
        return (await client.lease_info(cred.lease_id)).owner


async def test_github_actions_fetches_the_job_token_for_the_audience(
    broker: Serve, provider: Provider
) -> None:
    env = actions_env(provider, provider.github_job())
    source = detect(env)
    assert isinstance(source, GitHubActions)
    assert source.audience == "jit-broker"
    owner = await owner_of_a_credential(broker, source, ORDERS)
    assert owner == "github:repo:acme/orders:ref:refs/heads/main"


async def test_github_actions_fetches_again_only_near_expiry(provider: Provider) -> None:
    env = actions_env(provider, provider.github_job())
    now = [0.0]
    source = GitHubActions("jit-broker", environ=env, now=lambda: now[0])
    async with httpx.AsyncClient() as http:
        first = await source.token(http)
        exp = jwt_expiry(first)
        assert exp is not None
        before = provider.id_token_requests
        now[0] = exp - 120  # two minutes left: still good
        assert await source.token(http) == first
        assert provider.id_token_requests == before
        now[0] = exp - 30  # within a minute of expiry: fetched again
        await source.token(http)
        assert provider.id_token_requests == before + 1
        await source.token(http, refresh=True)  # the broker refused it: fetched again
        assert provider.id_token_requests == before + 2


async def test_github_actions_without_the_permission_says_what_to_do(provider: Provider) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(IdentityUnavailable, match="id-token: write"):
            await GitHubActions(environ={}).token(http)
        bad = GitHubActions(environ=actions_env(provider, "not-a-registered-job"))
        with pytest.raises(IdentityUnavailable, match="answered 401"):
            await bad.token(http)


async def test_gitlab_ci_reads_the_id_tokens_variable(broker: Serve, provider: Provider) -> None:
    env = {"GITLAB_CI": "true", "JIT_ID_TOKEN": provider.gitlab_token()}
    source = detect(env)
    assert isinstance(source, GitLabCI)
    owner = await owner_of_a_credential(broker, source, ORDERS)
    assert owner == "gitlab:project_path:acme/orders:ref_type:branch:ref:main"
    custom = GitLabCI("ORDERS_ID_TOKEN", environ={"ORDERS_ID_TOKEN": provider.gitlab_token()})
    assert await owner_of_a_credential(broker, custom, ORDERS) == owner


async def test_a_kubernetes_token_file_is_read_again_when_the_kubelet_rotates_it(
    broker: Serve, provider: Provider, tmp_path: Path
) -> None:
    mounted = tmp_path / "token"
    mounted.write_text(provider.kubernetes_token("ci", "builder"))
    source = detect({"JIT_KUBERNETES_TOKEN_FILE": str(mounted)})
    assert isinstance(source, KubernetesToken)
    api = "https://api.internal"
    assert await owner_of_a_credential(broker, source, api) == (
        "kubernetes:system:serviceaccount:ci:builder"
    )
    rotated = tmp_path / ".token.new"  # the kubelet swaps the file atomically
    rotated.write_text(provider.kubernetes_token("ci", "deployer"))
    os.replace(rotated, mounted)
    assert await owner_of_a_credential(broker, source, api) == (
        "kubernetes:system:serviceaccount:ci:deployer"
    )


async def test_jit_token_and_jit_token_file_are_the_last_resort(
    broker: Serve, provider: Provider, tmp_path: Path
) -> None:
    token = provider.workload_token("job-from-env")
    source = detect({"JIT_TOKEN": token, "JIT_KUBERNETES_TOKEN_FILE": str(tmp_path / "none")})
    assert isinstance(source, StaticToken)
    assert await owner_of_a_credential(broker, source, "https://api.internal") == (
        "workloads:job-from-env"
    )
    (tmp_path / "jit-token").write_text(provider.workload_token("job-from-file") + "\n")
    source = detect({"JIT_TOKEN_FILE": str(tmp_path / "jit-token")})
    assert isinstance(source, TokenFile)
    assert await owner_of_a_credential(broker, source, "https://api.internal") == (
        "workloads:job-from-file"
    )
