"""The GitLab CI/CD component (templates/jit-credential.yml) end to end: the component is read
as GitLab reads it (spec inputs interpolated into the job, variables expanded, `extends:`
merged), and its before_script + script run in one bash and its after_script in another, as
the GitLab runner does, with GitLab-shaped CI variables and an `id_tokens` JWT, against a real
`jit serve` with the `gitlab` preset. The `jit` on PATH is this repository's."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import yaml

from tests.e2e.ci_support import OidcProvider, Serve, jit_serve, verify_credential

pytestmark = pytest.mark.e2e

COMPONENT = Path(__file__).resolve().parents[2] / "templates" / "jit-credential.yml"
INPUT = re.compile(r"\$\[\[\s*inputs\.([A-Za-z0-9_-]+)\s*\]\]")
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def load_component(inputs: dict[str, Any]) -> dict[str, Any]:
    """The component's jobs with `inputs` interpolated, checked the way GitLab checks them:
    unknown inputs, missing required ones and values outside `options` are errors."""
    spec_doc, jobs_doc = yaml.safe_load_all(COMPONENT.read_text())
    spec = spec_doc["spec"]["inputs"]
    unknown = set(inputs) - set(spec)
    assert not unknown, f"unknown inputs {unknown}"
    values: dict[str, Any] = {}
    for name, rules in spec.items():
        rules = rules or {}
        assert name in inputs or "default" in rules, f"input {name} is required"
        value = inputs.get(name, rules.get("default"))
        if "options" in rules:
            assert value in rules["options"], f"{name}: {value!r} not in {rules['options']}"
        kind = rules.get("type", "string")
        assert isinstance(value, {"string": str, "array": list, "boolean": bool}[kind]), name
        values[name] = value

    def interpolate(node: Any) -> Any:
        if isinstance(node, str):
            whole = INPUT.fullmatch(node.strip())
            if whole:
                return copy.deepcopy(values[whole.group(1)])
            return INPUT.sub(lambda m: str(values[m.group(1)]), node)
        if isinstance(node, list):
            return [interpolate(n) for n in node]
        if isinstance(node, dict):
            return {interpolate(k): interpolate(v) for k, v in node.items()}
        return node

    jobs = interpolate(jobs_doc)
    assert isinstance(jobs, dict)
    return jobs


def resolve(jobs: dict[str, Any], name: str) -> dict[str, Any]:
    """A job with its `extends:` merged in: hashes merge deeply, anything else is replaced."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out

    job = jobs[name]
    parents = job.get("extends", [])
    for parent in [parents] if isinstance(parents, str) else parents:
        job = merge(resolve(jobs, parent), job)
    job.pop("extends", None)
    return job


def script_lines(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(line) for line in value]


@dataclass
class JobRun:
    code: int
    after_code: int
    log: str
    credential: str | None


@dataclass
class Runner:
    """The GitLab runner's part: predefined variables, the job's variables and ID token, one
    shell for before_script + script, another for after_script."""

    broker: Serve
    oidc: OidcProvider
    tmp: Path
    job_id: int = 5005
    tokens: list[str] = field(default_factory=list)

    def run(
        self,
        job: dict[str, Any],
        on_output: Callable[[str], None] | None = None,
    ) -> JobRun:
        self.job_id += 1
        out = self.tmp / f"job-{self.job_id}"
        out.mkdir()
        predefined = {
            "CI": "true",
            "GITLAB_CI": "true",
            "CI_SERVER_URL": "https://gitlab.example.com",
            "CI_SERVER_FQDN": "gitlab.example.com",
            "CI_PROJECT_ID": "42",
            "CI_PROJECT_PATH": "acme/orders",
            "CI_COMMIT_REF_NAME": "main",
            "CI_COMMIT_REF_PROTECTED": "true",
            "CI_PIPELINE_ID": "1001",
            "CI_PIPELINE_SOURCE": "push",
            "CI_JOB_ID": str(self.job_id),
            "CI_JOB_NAME": "deploy",
            "CI_JOB_STAGE": str(job.get("stage", "test")),
            "GITLAB_USER_LOGIN": "octocat",
        }
        env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.tmp),
            "JOB_OUT": str(out),  # where the test's job script leaves what the test checks
            **predefined,
        }
        for name, value in (job.get("variables") or {}).items():
            assert isinstance(value, str), f"variable {name} must be a string, not {value!r}"
            env[name] = VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)
        for name, spec in (job.get("id_tokens") or {}).items():
            token = self.oidc.gitlab_token(
                aud=spec["aud"], job_id=str(self.job_id), pipeline_id=predefined["CI_PIPELINE_ID"]
            )
            self.tokens.append(token)
            env[name] = token
        main = [
            "set -eo pipefail",
            *script_lines(job.get("before_script")),
            *script_lines(job.get("script")),
        ]
        after = ["set -eo pipefail", *script_lines(job.get("after_script"))]
        log: list[str] = []

        def shell(lines: list[str]) -> int:
            proc = subprocess.Popen(
                ["bash", "-c", "\n".join(lines)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.append(line)
                if on_output is not None:
                    on_output(line)
            return proc.wait(timeout=120)

        code = shell(main)
        after_code = shell(after)
        cred = out / "credential"
        return JobRun(
            code=code,
            after_code=after_code,
            log="".join(log),
            credential=cred.read_text() if cred.exists() else None,
        )

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        token = self.oidc.gitlab_token()
        return httpx.request(
            method,
            f"{self.broker.url}{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            **kwargs,
        )

    def assert_revoked(self, credential: str) -> None:
        lease_id = pyjwt.decode(credential, options={"verify_signature": False})["jti"]
        assert self.api("POST", "/oauth/introspect", data={"token": credential}).json() == {
            "active": False
        }
        assert self.api("GET", f"/v1/leases/{lease_id}").json()["state"] == "revoked"


# The job script the tests give the component: it checks, as a job would, that the credential
# is a 0600 file that the broker says is live (the secret goes to curl from the file, never on
# a command line), and leaves a copy for the test to verify.
CHECK_CREDENTIAL = [
    'test "$(stat -c %a "$JIT_CREDENTIAL_FILE")" = 600',
    'curl -sf -H "Authorization: Bearer $JIT_ID_TOKEN"'
    ' --data-urlencode "token@$JIT_CREDENTIAL_FILE" "$JIT_URL/oauth/introspect"'
    " | grep -q '\"active\":true'",
    'cp "$JIT_CREDENTIAL_FILE" "$JOB_OUT/credential"',
    'echo "job sees lease $JIT_LEASE_ID"',
]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    oidc = OidcProvider()
    tmp = tmp_path_factory.mktemp("gitlab")
    (tmp / "broker").mkdir()
    try:
        with jit_serve(tmp / "broker", oidc) as broker:
            yield Runner(broker=broker, oidc=oidc, tmp=tmp)
    finally:
        oidc.close()


def inputs(runner: Runner, **over: Any) -> dict[str, Any]:
    return {
        "broker-url": runner.broker.url,
        "resource": "https://orders.internal",
        "actions": "read write",
        "purpose": "deploy orders",
        "script": CHECK_CREDENTIAL,
        **over,
    }


def assert_secret_never_logged(run: JobRun, runner: Runner) -> None:
    """Not in the job's log, nor in the broker's."""
    assert run.credential
    assert run.credential not in run.log
    assert run.credential not in runner.broker.log.read_text()


def test_the_job_script_gets_a_working_credential_and_after_script_revokes_it(
    runner: Runner,
) -> None:
    jobs = load_component(inputs(runner, ttl="10m"))
    assert list(jobs) == ["jit-credential"]
    job = resolve(jobs, "jit-credential")
    assert job["id_tokens"] == {"JIT_ID_TOKEN": {"aud": "jit-broker"}}
    run = runner.run(job)
    assert run.code == 0, run.log
    assert run.credential
    claims = verify_credential(runner.broker.url, run.credential, "https://orders.internal")
    assert claims["scope"] == "read write"
    assert claims["task_id"] == f"1001-{runner.job_id}"  # $CI_PIPELINE_ID-$CI_JOB_ID
    assert f"job sees lease {claims['jti']}" in run.log
    assert f"jit-broker: task 1001-{runner.job_id} completed" in run.log
    assert run.after_code == 0
    assert_secret_never_logged(run, runner)
    assert not (runner.tmp / f"jit-credential-{runner.job_id}").exists()
    runner.assert_revoked(run.credential)


def test_after_script_revokes_the_credential_when_the_script_fails(runner: Runner) -> None:
    jobs = load_component(inputs(runner, script=[*CHECK_CREDENTIAL, "exit 3"]))
    run = runner.run(resolve(jobs, "jit-credential"))
    assert run.code == 3, run.log
    assert run.credential
    verify_credential(runner.broker.url, run.credential, "https://orders.internal")
    assert f"jit-broker: task 1001-{runner.job_id} completed" in run.log
    runner.assert_revoked(run.credential)


def test_a_hidden_jit_credential_job_extended_by_a_job_exports_the_credential_on_request(
    runner: Runner,
) -> None:
    jobs = load_component(inputs(runner, **{"job-name": ".jit-credential", "export-env": "true"}))
    assert list(jobs) == [".jit-credential"]  # hidden: it runs only through `extends:`
    jobs["deploy"] = {
        "extends": ".jit-credential",
        "variables": {"DEPLOY_ENV": "production"},
        "script": [
            '[ "$JIT_CREDENTIAL" = "$(cat "$JIT_CREDENTIAL_FILE")" ]',
            '[ "$DEPLOY_ENV" = production ]',
            *CHECK_CREDENTIAL,
        ],
    }
    run = runner.run(resolve(jobs, "deploy"))
    assert run.code == 0, run.log
    assert run.credential
    verify_credential(runner.broker.url, run.credential, "https://orders.internal")
    assert_secret_never_logged(run, runner)
    runner.assert_revoked(run.credential)


def test_a_policy_denial_fails_the_job_before_its_script_with_the_reasons(runner: Runner) -> None:
    jobs = load_component(inputs(runner, actions="delete", script=["echo the script ran"]))
    run = runner.run(resolve(jobs, "jit-credential"))
    assert run.code != 0
    assert "Forbidden (403)" in run.log
    assert "platform-gitlab/orders: actions not allowed: delete" in run.log
    assert "the script ran" not in run.log
    assert f"jit-broker: task 1001-{runner.job_id} was not completed" in run.log
    assert run.after_code == 0


def test_a_grant_that_needs_approval_waits_and_says_which_request_to_approve(
    runner: Runner,
) -> None:
    jobs = load_component(
        inputs(runner, resource="https://prod.internal", actions="deploy")
        | {"script": ['cp "$JIT_CREDENTIAL_FILE" "$JOB_OUT/credential"']}
    )
    asked: list[str] = []
    approved: list[int] = []
    human = {"Authorization": f"Bearer {runner.oidc.human_token()}"}
    url = runner.broker.url

    def approve_when_asked(line: str) -> None:
        m = re.search(r"waiting for approval request ([0-9a-f]{32}) \((\S+)\); (.*)$", line)
        if m:
            aid = m.group(1)
            asked.append(aid)
            assert m.group(2) == f"{url}/v1/approvals/{aid}"
            assert m.group(3) == f"an approver runs: jit approve {aid}"

            def decide() -> None:  # another thread: the job's output keeps being read
                r = httpx.post(f"{url}/v1/approvals/{aid}/approve", headers=human, json={})
                approved.append(r.status_code)

            threading.Thread(target=decide).start()

    run = runner.run(resolve(jobs, "jit-credential"), on_output=approve_when_asked)
    assert len(asked) == 1, run.log
    assert approved == [200], run.log
    assert run.code == 0, run.log
    assert run.credential
    claims = verify_credential(url, run.credential, "https://prod.internal")
    assert claims["scope"] == "deploy"
    decided = httpx.get(f"{url}/v1/approvals/{asked[0]}", headers=human).json()
    assert (decided["state"], decided["lease_id"]) == ("approved", claims["jti"])
    assert_secret_never_logged(run, runner)
    runner.assert_revoked(run.credential)


def test_a_denied_approval_fails_the_job_before_its_script_with_the_reason(
    runner: Runner,
) -> None:
    jobs = load_component(
        inputs(runner, resource="https://prod.internal", actions="deploy")
        | {"script": ["echo the script ran"]}
    )
    human = {"Authorization": f"Bearer {runner.oidc.human_token()}"}
    url = runner.broker.url
    denied: list[int] = []

    def deny_when_asked(line: str) -> None:
        m = re.search(r"waiting for approval request ([0-9a-f]{32})", line)
        if m:
            aid = m.group(1)

            def decide() -> None:
                body = {"reason": "change freeze"}
                r = httpx.post(f"{url}/v1/approvals/{aid}/deny", headers=human, json=body)
                denied.append(r.status_code)

            threading.Thread(target=decide).start()

    run = runner.run(resolve(jobs, "jit-credential"), on_output=deny_when_asked)
    assert denied == [200], run.log
    assert run.code != 0
    assert "alice: change freeze" in run.log
    assert "the script ran" not in run.log
    assert run.after_code == 0
