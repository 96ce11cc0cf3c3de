"""Issuer discovery: only configured types load; anything wrong stops start-up with a message
naming the instance; a built-in type cannot be shadowed by another package."""

from __future__ import annotations

import sys
import types
from datetime import timedelta
from importlib.metadata import EntryPoint
from typing import Any

import msgspec
import pytest

from broker import registry
from broker.config import IssuerInstanceSettings
from broker.errors import ConfigError
from broker.issuer import IssuerContext
from broker.registry import (
    available_types,
    issuer_config_types,
    load_issuers,
    validate_issuer_configs,
)
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


# -- validation without construction -------------------------------------------------------------


class _TinyConfig(msgspec.Struct, frozen=True, kw_only=True):
    ttl: timedelta = timedelta(minutes=1)

    def __post_init__(self) -> None:
        if self.ttl < timedelta(seconds=1):
            raise ValueError("ttl: must be at least 1s")


class _Declares:
    """An issuer type that declares its config and must never be constructed by validation."""

    config_type = _TinyConfig
    constructed = 0

    def __init__(self, context: IssuerContext) -> None:
        type(self).constructed += 1
        self._inner = FakeIssuer.from_context(context)


def test_validation_reads_each_config_without_constructing_anything(
    eps: list[EntryPoint],
) -> None:
    _module("jit_test_declares", Declares=_Declares)
    eps.append(EntryPoint("tiny", "jit_test_declares:Declares", GROUP))
    _Declares.constructed = 0
    factories = validate_issuer_configs(
        {"a": IssuerInstanceSettings(type="tiny", config={"ttl": "90s"})}
    )
    assert factories == {"a": _Declares}
    assert _Declares.constructed == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"tll": "1m"}, "issuer 'a' (tiny): config.tll: unknown key", id="a typo"),
        pytest.param({"ttl": "soon"}, "issuer 'a' (tiny): config.ttl: not a duration", id="bad"),
        pytest.param({"ttl": "0s"}, "issuer 'a' (tiny): config: ttl: must be at least 1s", id="0"),
    ],
)
def test_a_bad_config_is_refused_before_any_issuer_is_constructed(
    eps: list[EntryPoint], config: dict[str, Any], message: str
) -> None:
    _module("jit_test_declares2", Declares=_Declares)
    eps.append(EntryPoint("tiny", "jit_test_declares2:Declares", GROUP))
    _Declares.constructed = 0
    configured = {
        "first": IssuerInstanceSettings(type="tiny"),  # good, and listed first
        "a": IssuerInstanceSettings(type="tiny", config=config),
    }
    for attempt in (
        validate_issuer_configs,
        lambda c: load_issuers(c, clock=FakeClock(), broker_url="http://x"),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt(configured)
        assert caught.value.message.startswith(message)
    assert _Declares.constructed == 0


def test_a_type_without_config_type_is_checked_only_when_constructed(
    eps: list[EntryPoint],
) -> None:
    _module("jit_test_fake_plain", make=FakeIssuer.from_context)
    eps.append(EntryPoint("plain", "jit_test_fake_plain:make", GROUP))
    bad = {"x": IssuerInstanceSettings(type="plain", config={"max_tll": 5})}
    assert list(validate_issuer_configs(bad)) == ["x"]
    with pytest.raises(ConfigError, match="issuer 'x'"):
        load_issuers(bad, clock=FakeClock(), broker_url="http://127.0.0.1:8200")


def test_validation_names_unknown_types_and_missing_extras(eps: list[EntryPoint]) -> None:
    eps.append(EntryPoint("postgres", "jit_test_no_psycopg_here:X", GROUP))
    with pytest.raises(
        ConfigError,
        match=r"issuer 'pg': type 'postgres' needs the module .*"
        r"pip install 'jit-broker\[postgres\]'",
    ):
        validate_issuer_configs({"pg": IssuerInstanceSettings(type="postgres")})
    with pytest.raises(ConfigError, match=r"issuer 'q': unknown type 'nope' \(installed types"):
        validate_issuer_configs({"q": IssuerInstanceSettings(type="nope")})


def test_a_config_type_that_is_not_a_struct_is_refused(eps: list[EntryPoint]) -> None:
    class Odd:
        config_type = dict

    _module("jit_test_odd_config", Odd=Odd)
    eps.append(EntryPoint("odd", "jit_test_odd_config:Odd", GROUP))
    with pytest.raises(ConfigError, match=r"config_type must be a msgspec\.Struct subclass"):
        validate_issuer_configs({"o": IssuerInstanceSettings(type="odd")})


def test_every_built_in_issuer_type_declares_its_config() -> None:
    types = issuer_config_types()
    builtin = {"jwt", "postgres", "redis", "ssh", "x509", "aws", "github"}
    assert builtin <= set(types)
    assert all(types[name] is not None for name in builtin)
