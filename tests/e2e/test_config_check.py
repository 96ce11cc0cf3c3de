"""`jit config check` refuses what `jit serve` refuses, with the same words: unknown issuer
types, bad keys and durations in an issuer's config, bad environment overrides. Exit status 1,
no traceback. Both commands run as an operator runs them (subprocesses; serve reaches the real
Redis before it gets to the issuers)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from issuers.jwt.keys import generate_key
from tests.e2e.conftest import JIT, free_port
from tests.e2e.serve_support import POLICY

pytestmark = pytest.mark.e2e


def write_config(tmp: Path, **over: Any) -> Path:
    keys = tmp / "keys"
    if not keys.exists():
        generate_key(keys, "EdDSA", datetime.now(UTC))
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "platform.yaml").write_text(POLICY)
    config: dict[str, Any] = {
        "port": free_port(),
        "redis_url": "redis://127.0.0.1:6379/0",
        "key_prefix": f"jittest-check-{uuid.uuid4().hex[:8]}",
        "policy_dir": "policies",
        # Never fetched: the commands stop (or, for check, end) before any token arrives.
        "identity": [{"name": "ci", "issuer": "https://idp.invalid", "audiences": ["jit-broker"]}],
        "issuers": {"jwt": {"type": "jwt", "config": {"keys_dir": str(keys)}}},
    }
    config.update(over)
    path = tmp / "jit.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def run_both(config: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], ...]:
    """`jit config check` and `jit serve` on the same config, side by side."""
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("JIT_")}, **env}
    procs = [
        subprocess.Popen(
            args,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for args in ([JIT, "config", "check", str(config)], [JIT, "serve", "--config", str(config)])
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return tuple(results)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def jwt_config(tmp: Path, **config: Any) -> dict[str, Any]:
    return {"jwt": {"type": "jwt", "config": {"keys_dir": str(tmp / "keys"), **config}}}


CASES = [
    pytest.param(
        lambda tmp: {"issuers": {"x": {"type": "doesnotexist"}}},
        {},
        "issuer 'x': unknown type 'doesnotexist' (installed types: [",
        id="an unknown issuer type",
    ),
    pytest.param(
        lambda tmp: {"issuers": jwt_config(tmp, max_tll="1h")},
        {},
        "issuer 'jwt' (jwt): config.max_tll: unknown key; did you mean 'max_ttl'?",
        id="an unknown key in an issuer's config",
    ),
    pytest.param(
        lambda tmp: {"issuers": jwt_config(tmp, max_ttl="soon")},
        {},
        "issuer 'jwt' (jwt): config.max_ttl: not a duration: 'soon'",
        id="a bad duration in an issuer's config",
    ),
    pytest.param(
        lambda tmp: {"issuers": jwt_config(tmp, max_ttl="5m", default_ttl="1h")},
        {},
        "issuer 'jwt' (jwt): config: default_ttl must not exceed max_ttl",
        id="a rule an issuer checks without files",
    ),
    pytest.param(
        lambda tmp: {},
        {"JIT_PORT": "abc"},
        "Error: JIT_PORT: not a port number (1 to 65535)",
        id="a port override that is not a number",
    ),
]


@pytest.mark.parametrize(("change", "env", "message"), CASES)
def test_config_check_refuses_what_serve_refuses_in_the_same_words(
    tmp_path: Path, change: Any, env: dict[str, str], message: str
) -> None:
    check, serve = run_both(write_config(tmp_path, **change(tmp_path)), env)
    assert (check.returncode, serve.returncode) == (1, 1), (check.stderr, serve.stderr)
    for result in (check, serve):
        assert "Traceback" not in result.stderr + result.stdout
    assert error_line(check) == error_line(serve)
    assert message in error_line(check)


def test_config_check_passes_a_good_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [JIT, "config", "check", str(write_config(tmp_path))],
        env={k: v for k, v in os.environ.items() if not k.startswith("JIT_")},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": ok")
