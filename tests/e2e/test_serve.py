"""`jit serve` as an operator runs it: a config file, the real Redis, signing keys from files,
policies from a directory and a trusted OIDC issuer (a small IdP on loopback). Bad configs stop
start-up with a message naming the problem."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest
import redis

from tests.e2e.conftest import JIT, free_port
from tests.e2e.serve_support import POLICY, IdP, serve, write_config

pytestmark = pytest.mark.e2e


def test_jit_serve_issues_verifiable_credentials_from_files_and_redis(
    tmp_path: Path, idp: IdP
) -> None:
    port = free_port()
    prefix = f"jittest-serve-{uuid.uuid4().hex[:8]}"
    (tmp_path / "metrics.token").write_text("scrape-token-0123456789abcdef")
    config = write_config(
        tmp_path, idp, port, prefix, metrics={"token_file": str(tmp_path / "metrics.token")}
    )
    proc = subprocess.Popen(
        [JIT, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        assert httpx.get(f"{url}/metrics").status_code == 401
        scraped = httpx.get(
            f"{url}/metrics", headers={"Authorization": "Bearer scrape-token-0123456789abcdef"}
        )
        assert scraped.status_code == 200
        assert "jit_build_info" in scraped.text
        env = {**os.environ, "JIT_URL": url, "JIT_TOKEN": idp.token("repo:acme/app")}
        out = subprocess.run(
            [
                JIT,
                "request",
                "--resource",
                "https://orders.internal",
                "--action",
                "read",
                "--task",
                "deploy-1",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, out.stderr
        issued = json.loads(out.stdout)
        token = issued["credential"]["secret"]
        jwks = pyjwt.PyJWKClient(f"{url}/.well-known/jwks.json")
        claims = pyjwt.decode(
            token,
            jwks.get_signing_key_from_jwt(token).key,
            algorithms=["EdDSA"],
            audience="https://orders.internal",
            issuer=url,
        )
        assert claims["sub"] == "ci:repo:acme/app"
        assert claims["jti"] == issued["lease_id"]
        # The lease lives in the real Redis under the configured prefix.
        r = redis.Redis()
        task_key, suffix = issued["lease_id"].split(".")
        assert r.hget(f"{prefix}:{{t:{task_key}}}", suffix) == b"a"  # active
        shard = int(suffix, 16) % 1024
        assert r.zscore(f"{prefix}:{{due:{shard}}}", issued["lease_id"]) is not None
        # A workload the policy does not trust is refused with the reason.
        env["JIT_TOKEN"] = idp.token("repo:evil/app")
        denied = subprocess.run(
            [JIT, "request", "--resource", "https://orders.internal", "--action", "read"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert denied.returncode != 0
        assert "Forbidden (403)" in denied.stderr
        # The audit chain: export it from Redis, verify it, and read the credential's receipt.
        chain = tmp_path / "chain.jsonl"
        subprocess.run(
            [
                JIT,
                "audit",
                "export",
                "--redis-url",
                "redis://127.0.0.1:6379/0",
                "--prefix",
                prefix,
                "--out",
                str(chain),
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        ok = subprocess.run(
            [JIT, "audit", "verify", str(chain), "--key", str(tmp_path / "audit-jwks.json")],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        receipt = subprocess.run(
            [JIT, "audit", "show", "--lease", issued["lease_id"], str(chain), "--json"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert receipt.returncode == 0, receipt.stderr
        stages = [s["stage"] for s in json.loads(receipt.stdout)["steps"]]
        assert "mint" in " ".join(stages)
        lines = chain.read_text().splitlines()
        tampered = json.loads(lines[1])
        tampered["time"] = "2000-01-01T00:00:00Z"  # one altered field in one record
        lines[1] = json.dumps(tampered)
        chain.write_text("\n".join(lines) + "\n")
        bad = subprocess.run(
            [JIT, "audit", "verify", str(chain)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert bad.returncode == 1
        assert "line 2" in bad.stdout + bad.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        r = redis.Redis()
        for key in r.scan_iter(match=f"{prefix}:*"):
            r.unlink(key)


def test_an_unknown_config_key_stops_start_up_naming_it(tmp_path: Path, idp: IdP) -> None:
    config = write_config(tmp_path, idp, free_port(), "jittest-x", listen_adress="0.0.0.0")
    result = serve(config)
    assert result.returncode != 0
    assert "listen_adress" in result.stderr


def test_a_missing_config_file_stops_start_up_naming_it(tmp_path: Path) -> None:
    result = serve(tmp_path / "nope.yaml")
    assert result.returncode != 0
    assert "nope.yaml" in result.stderr


def test_an_unreachable_redis_stops_start_up_naming_it(tmp_path: Path, idp: IdP) -> None:
    port = free_port()  # nothing listens there
    config = write_config(
        tmp_path, idp, free_port(), "jittest-x", redis_url=f"redis://127.0.0.1:{port}/0"
    )
    result = serve(config)
    assert result.returncode != 0
    assert f"Redis at redis://127.0.0.1:{port}/0 is not answering" in result.stderr


def test_a_broken_policy_stops_start_up_with_file_and_line(tmp_path: Path, idp: IdP) -> None:
    config = write_config(tmp_path, idp, free_port(), "jittest-x")
    (tmp_path / "policies" / "broken.yaml").write_text(
        "owner: x\nworkloads:\n  - issuer: ci\ngrants:\n  - name: g\n    issuer: jwt\n"
        "    resource: https://a\n    actions: [read]\n    max_tll: 1h\n"
    )
    result = serve(config)
    assert result.returncode != 0
    assert "broken.yaml:" in result.stderr
    assert "max_tll" in result.stderr


def test_policy_lint_reports_file_line_and_reason(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "p.yaml").write_text(POLICY.replace("issuer: ci", "issuer: dev"))
    ok = subprocess.run(
        [JIT, "policy", "lint", str(good)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "p.yaml").write_text(POLICY + "    unknown_key: 1\n")
    lint = subprocess.run(
        [JIT, "policy", "lint", str(bad)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert lint.returncode != 0
    out = lint.stdout + lint.stderr
    assert "p.yaml:" in out
    assert "unknown_key" in out
