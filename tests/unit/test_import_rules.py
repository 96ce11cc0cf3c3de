"""The layering rules of ARCHITECTURE.md, checked on the source (not by convention)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = {
    "broker.types",
    "broker.errors",
    "broker.issuer",
    "broker.clock",
    "broker.urls",
    "broker.decoding",
    "broker.jws",
}
CORE = ["identity", "policy", "leases", "approvals", "audit", "ssf"]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def py_files(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_contract_modules_import_nothing_else_from_broker(module: str) -> None:
    path = ROOT / (module.replace(".", "/") + ".py")
    bad = {m for m in imports_of(path) if m.startswith("broker") and m not in CONTRACT}
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("package", CORE)
def test_core_packages_never_import_litestar(package: str) -> None:
    for path in py_files("broker", package):
        bad = {m for m in imports_of(path) if m.split(".")[0] == "litestar"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_broker_api_imports_litestar() -> None:
    for path in py_files("broker"):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] in (("broker", "api"), ("broker", "cli")):
            continue  # the CLI runs the server, so it may build the app through broker.api
        bad = {m for m in imports_of(path) if m.split(".")[0] == "litestar"}
        assert not bad, f"{rel} imports {bad}"


def test_issuers_import_only_the_contract_modules_from_broker() -> None:
    files = py_files("issuers")
    assert files
    for path in files:
        bad = {m for m in imports_of(path) if m.startswith("broker") and m not in CONTRACT}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_broker_mcp_imports_only_the_contract_modules_the_sdk_and_itself() -> None:
    """`jit mcp` is a workload-side program: it never imports the server side of the broker
    (it talks to the broker over the SDK's calls, ARCHITECTURE.md)."""
    files = py_files("broker", "mcp")
    assert files
    allowed = {"broker.types", "broker.errors", "broker.clock", "broker"}
    for path in files:
        bad = {
            m
            for m in imports_of(path)
            if m.startswith("broker")
            and m not in allowed
            and not m.startswith(("broker.mcp", "broker.client"))
        }
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_cli_imports_broker_mcp_only_inside_jit_mcp() -> None:
    """The MCP SDK is an optional extra: `jit` must start without it (broker.mcp.server and
    the adapter are imported inside the command only)."""
    tree = ast.parse((ROOT / "broker" / "cli" / "mcp.py").read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module is not None}
    assert "broker.mcp.server" not in top
    assert not any(m.split(".")[0] == "mcp" for m in top)
