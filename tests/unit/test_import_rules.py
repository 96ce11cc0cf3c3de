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


# broker/client (the SDK) runs inside workloads: it talks HTTP only and never pulls in the
# server. Allowed: the contract modules (minus the issuer contract), the pure backoff rule
# (broker.retry: no I/O, imports nothing from broker), the package root (its version) and
# its own modules.
CLIENT_ALLOWED = {
    "broker",
    "broker.types",
    "broker.errors",
    "broker.clock",
    "broker.urls",
    "broker.retry",
}
SERVER_ONLY = {"litestar", "redis", "fakeredis", "uvicorn", "slack_sdk", "prometheus_client", "cel"}


def test_the_sdk_imports_only_the_contract_modules_and_itself() -> None:
    files = py_files("broker", "client")
    assert files
    for path in files:
        rel = path.relative_to(ROOT)
        mods = imports_of(path)
        bad = {
            m
            for m in mods
            if m.startswith("broker")
            and m not in CLIENT_ALLOWED
            and not m.startswith("broker.client")
        }
        assert not bad, f"{rel} imports {bad}"
        server = {m for m in mods if m.split(".")[0] in SERVER_ONLY}
        assert not server, f"{rel} imports {server}"


def test_importing_the_sdk_loads_no_server_module() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, broker.client; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(SERVER_ONLY)!r} or m.startswith(('broker.service', 'broker.api', "
        "'broker.leases', 'broker.identity', 'broker.policy', 'broker.approvals', "
        "'broker.audit', 'broker.issuer', 'issuers'))); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
