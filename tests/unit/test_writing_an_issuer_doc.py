"""docs/writing-an-issuer.md, executed as published: the example issuer passes the conformance
kit with the example test class, and its declared ``config_type`` lets the broker check the
documented config without constructing the issuer (no token file read) and refuse a typo with
the documented message."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker import registry
from broker.config import IssuerInstanceSettings
from broker.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "writing-an-issuer.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC, re.M | re.S)


def example_module() -> str:
    (module,) = [b for b in blocks("python") if "class AcmeIssuer" in b]
    return module


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("acme_jit")
    exec(compile(example_module(), "acme_jit.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "acme_jit", module)
    entry = EntryPoint("acme", "acme_jit:AcmeIssuer", "jit_broker.issuers")
    monkeypatch.setattr(registry, "entry_points", lambda group: [entry])
    return module


def documented_instances() -> dict[str, IssuerInstanceSettings]:
    (config,) = [yaml.safe_load(b) for b in blocks("yaml") if "type: acme" in b]
    return {name: IssuerInstanceSettings(**entry) for name, entry in config["issuers"].items()}


def test_the_documented_config_is_checked_without_constructing_the_issuer(
    acme: types.ModuleType,
) -> None:
    instances = documented_instances()
    token_file = instances["acme-prod"].config["token_file"]
    assert not Path(token_file).exists()  # so constructing it would fail
    assert registry.validate_issuer_configs(instances) == {"acme-prod": acme.AcmeIssuer}


def test_a_typo_gets_the_documented_message(acme: types.ModuleType) -> None:
    (shown,) = re.findall(r"^Error: (issuer 'acme-prod' .*)$", DOC, re.M)
    instances = documented_instances()
    config: dict[str, Any] = {**instances["acme-prod"].config, "max_tll": "1h"}
    with pytest.raises(ConfigError) as caught:
        registry.validate_issuer_configs(
            {"acme-prod": IssuerInstanceSettings(type="acme", config=config)}
        )
    assert caught.value.message == shown


def test_the_example_issuer_passes_the_conformance_kit_as_published(tmp_path: Path) -> None:
    (kit_test,) = [b for b in blocks("python") if "class TestAcmeIssuer" in b]
    (tmp_path / "acme_jit.py").write_text(example_module())
    (tmp_path / "test_acme.py").write_text(kit_test)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"),
            *("--rootdir", str(tmp_path), str(tmp_path)),
        ],
        cwd=tmp_path,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed is not None, result.stdout
    assert int(passed.group(1)) >= 15, result.stdout
    assert " failed" not in result.stdout
