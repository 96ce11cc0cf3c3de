"""Issuer discovery: only configured types load; anything wrong stops start-up with a message
naming the instance; a built-in type cannot be shadowed by another package."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from broker import registry
from broker.config import IssuerInstanceSettings
from broker.errors import ConfigError
from broker.issuer import IssuerContext
from broker.registry import available_types, load_issuers
from broker.testing import FakeClock, FakeIssuer

GROUP = "jit_broker.issuers"


def _module(name: str, **attrs: Any) -> None:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod


@pytest.fixture
def eps(monkeypatch: pytest.MonkeyPatch) -> list[EntryPoint]:
    found: list[EntryPoint] = []
    monkeypatch.setattr(registry, "entry_points", lambda group: [e for e in found])
    return found


def load(**instances: str) -> dict[str, Any]:
    return load_issuers(
        {n: IssuerInstanceSettings(type=t) for n, t in instances.items()},
        clock=FakeClock(),
        broker_url="http://127.0.0.1:8200",
    )


def test_only_configured_types_are_imported(eps: list[EntryPoint]) -> None:
    _module("jit_test_fake_ok", make=FakeIssuer.from_context)
    eps.append(EntryPoint("fake", "jit_test_fake_ok:make", GROUP))
    eps.append(EntryPoint("never", "jit_test_module_that_does_not_exist:X", GROUP))
    issuers = load(a="fake", b="fake")  # two instances of one type
    assert sorted(issuers) == ["a", "b"]
    assert issuers["a"].name == "a"
    assert "jit_test_module_that_does_not_exist" not in sys.modules


def test_an_unknown_type_names_the_instance_and_the_installed_types(
    eps: list[EntryPoint],
) -> None:
    eps.append(EntryPoint("jwt", "issuers.jwt:JWTIssuer", GROUP))
    with pytest.raises(ConfigError, match=r"issuer 'db': unknown type 'postgress'.*\['jwt'\]"):
        load(db="postgress")


def test_a_type_that_fails_to_import_stops_start_up(eps: list[EntryPoint]) -> None:
    eps.append(EntryPoint("broken", "jit_test_module_that_does_not_exist:X", GROUP))
    with pytest.raises(ConfigError, match="issuer 'x': type 'broken' needs the module"):
        load(x="broken")


def test_a_missing_extra_says_which_to_install(eps: list[EntryPoint]) -> None:
    eps.append(EntryPoint("postgres", "jit_test_no_psycopg_here:X", GROUP))
    with pytest.raises(ConfigError, match=r"pip install 'jit-broker\[postgres\]'"):
        load(pg="postgres")


def test_a_bad_instance_config_stops_start_up_naming_the_instance(
    eps: list[EntryPoint],
) -> None:
    _module("jit_test_fake_cfg", make=FakeIssuer.from_context)
    eps.append(EntryPoint("fake", "jit_test_fake_cfg:make", GROUP))
    with pytest.raises(ConfigError, match="issuer 'orders'"):
        load_issuers(
            {"orders": IssuerInstanceSettings(type="fake", config={"max_tll": 5})},
            clock=FakeClock(),
            broker_url="http://127.0.0.1:8200",
        )


def test_a_factory_that_crashes_or_returns_a_non_issuer_stops_start_up(
    eps: list[EntryPoint],
) -> None:
    def crash(context: IssuerContext) -> Any:
        raise RuntimeError("boom")

    _module("jit_test_crash", crash=crash, notissuer=lambda context: object())
    eps.append(EntryPoint("crash", "jit_test_crash:crash", GROUP))
    eps.append(EntryPoint("odd", "jit_test_crash:notissuer", GROUP))
    with pytest.raises(ConfigError, match="issuer 'c' \\(crash\\) failed to start: RuntimeError"):
        load(c="crash")
    with pytest.raises(ConfigError, match="does not implement Issuer"):
        load(o="odd")


def test_a_built_in_type_cannot_be_shadowed(eps: list[EntryPoint]) -> None:
    eps.append(EntryPoint("jwt", "issuers.jwt:JWTIssuer", GROUP))
    eps.append(EntryPoint("jwt", "evil_package:JWTIssuer", GROUP))
    with pytest.raises(ConfigError, match="registered by more than one package"):
        load(jwt="jwt")
    with pytest.raises(ConfigError):
        available_types()


def test_the_installed_distribution_registers_the_built_in_issuers() -> None:
    assert {"jwt", "postgres", "redis", "ssh", "x509", "aws", "github"} <= set(available_types())
