"""Fixtures of the client tests: one loopback OIDC provider and one real `jit serve` (jwt and
ssh issuers, the real Redis) for the whole session; tokens for its workloads and approvers."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.clients.support import Provider, Serve, serve
from tests.issuers.ssh_support import login_user


@pytest.fixture(scope="session")
def provider() -> Iterator[Provider]:
    oidc = Provider()
    yield oidc
    oidc.close()


@pytest.fixture(scope="session")
def broker(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("clients-broker")
    ca = tmp / "ssh-ca"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "jit-test-ca", "-f", str(ca)],
        check=True,
        capture_output=True,
    )
    user = login_user()
    ssh = {
        "type": "ssh",
        "config": {
            "ca_key_file": str(ca),
            "resources": {"ssh://127.0.0.1": {"logins": [user]}},
        },
    }
    policy_ssh = f"""
owner: platform-ssh
workloads:
  - issuer: workloads
    claims:
      sub: {{glob: "job-*"}}
grants:
  - name: ssh
    issuer: ssh
    resource: ssh://127.0.0.1
    actions: ["login:{user}"]
    max_ttl: 30m
    approval: none
"""
    from tests.clients import support

    policies = {
        "workloads": support.POLICY_WORKLOADS,
        "github": support.POLICY_GITHUB,
        "gitlab": support.POLICY_GITLAB,
        "kubernetes": support.POLICY_KUBERNETES,
        "ssh": policy_ssh,
    }
    b = serve(tmp / "broker", provider, issuers={"ssh": ssh}, policies=policies)
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def job(provider: Provider, request: pytest.FixtureRequest) -> str:
    """A workload identity token of its own for each test (``job-<test name>``)."""
    name = request.node.name.replace("[", "-").replace("]", "")[:80]
    return provider.workload_token(f"job-{name}")


@pytest.fixture
def alice(provider: Provider) -> str:
    """The approver's human identity token."""
    return provider.human_token("alice@example.com")
