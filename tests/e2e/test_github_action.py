"""The GitHub Action (actions/credential) end to end: its node tests run the bundled main and
post steps as real node processes against a real `jit serve` with the `github` preset, which
trusts a loopback fake of the Actions OIDC endpoint. This test starts both and runs
`node --test`; the cases themselves are in actions/credential/test/action.test.mjs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.ci_support import OidcProvider, jit_serve

pytestmark = pytest.mark.e2e

ACTION = Path(__file__).resolve().parents[2] / "actions" / "credential"


@pytest.fixture
def oidc() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    yield provider
    provider.close()


def test_the_action_passes_its_node_tests_against_jit_serve(
    tmp_path: Path, oidc: OidcProvider
) -> None:
    node = shutil.which("node")
    assert node, "node is not installed (tests/run.sh installs it)"
    assert (ACTION / "node_modules").is_dir(), (
        "run `npm ci` in actions/credential (tests/run.sh does)"
    )
    with jit_serve(tmp_path, oidc) as broker:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JIT_", "ACTIONS_", "GITHUB_", "INPUT_", "STATE_", "RUNNER_"))
        }
        env.update(
            {
                "JIT_E2E_BROKER_URL": broker.url,
                "JIT_E2E_ID_TOKEN_URL": f"{oidc.url}/github/idtoken?api-version=2.0",
                "JIT_E2E_REQUEST_TOKEN": oidc.github_job(),
                "JIT_E2E_APPROVER_TOKEN": oidc.human_token(),
                "NO_COLOR": "1",
            }
        )
        files = sorted(str(p.relative_to(ACTION)) for p in (ACTION / "test").glob("*.test.mjs"))
        out = tmp_path / "node-test.tap"
        with out.open("w") as sink:
            code = subprocess.run(
                [node, "--test", "--test-reporter=tap", "--test-timeout=60000", *files],
                cwd=ACTION,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=300,
                stdin=subprocess.DEVNULL,
            ).returncode
        report = out.read_text()
        assert code == 0, report + "\n--- jit serve ---\n" + broker.log.read_text()
    # Every case ran and passed: none skipped (they skip only without this test's broker).
    cases = sum(len(re.findall(r"^\s*test\(", (ACTION / f).read_text(), re.M)) for f in files)
    assert "# SKIP" not in report, report
    assert re.search(r"^# fail 0$", report, re.M), report
    assert re.search(rf"^# pass {cases}$", report, re.M), report
    # The broker saw the Actions tokens the fake minted for the action's main and post steps.
    assert oidc.id_token_requests > 0
