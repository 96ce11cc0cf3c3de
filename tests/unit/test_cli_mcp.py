"""`jit mcp` without the optional extra says what to install; without a token it says how to
give one. (The server itself: tests/integration/test_jit_mcp.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.cli.main import main


def test_without_the_mcp_extra_jit_mcp_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "mcp" or m.startswith(("mcp.", "broker.mcp."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mcp", None)  # what a missing package looks like
    result = CliRunner().invoke(main, ["mcp", "--token", "x"])
    assert result.exit_code == 1
    assert "pip install 'jit-broker[mcp]'" in result.output


def test_jit_starts_without_the_mcp_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "mcp" or m.startswith(("mcp.", "broker.mcp."))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mcp", None)
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "mcp" in result.output


def test_without_a_token_jit_mcp_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JIT_TOKEN", raising=False)
    monkeypatch.delenv("JIT_TOKEN_FILE", raising=False)
    result = CliRunner().invoke(main, ["mcp"])
    assert result.exit_code == 2
    assert "JIT_TOKEN" in result.output


def test_jit_mcp_refuses_plain_http_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity token would travel in clear text: the SDK's rule (broker/urls.py)."""
    monkeypatch.delenv("JIT_TOKEN_FILE", raising=False)
    result = CliRunner().invoke(
        main, ["mcp", "--url", "http://broker.example:8200", "--token", "a-token"]
    )
    assert result.exit_code == 2
    assert "--url" in result.output
    assert "https" in result.output


@pytest.mark.parametrize("token", ["   ", "\n"])
def test_jit_mcp_refuses_a_blank_token(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.delenv("JIT_TOKEN_FILE", raising=False)
    monkeypatch.setenv("JIT_TOKEN", token)
    result = CliRunner().invoke(main, ["mcp"])
    assert result.exit_code == 2
    assert "blank" in result.output
    result = CliRunner().invoke(main, ["mcp", "--token", token])
    assert result.exit_code == 2
    assert "blank" in result.output


def test_jit_mcp_refuses_an_empty_or_missing_token_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JIT_TOKEN", raising=False)
    empty = tmp_path / "token"
    empty.write_text("\n")
    result = CliRunner().invoke(main, ["mcp", "--token-file", str(empty)])
    assert result.exit_code == 2
    assert "is empty" in result.output
    result = CliRunner().invoke(main, ["mcp", "--token-file", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "cannot read" in result.output
