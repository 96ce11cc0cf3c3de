"""Issuer discovery: entry points → the types config enables → instances, failing closed.

Only the issuer *types* named in config are imported. An entry-point name registered twice
(a third-party package trying to shadow a built-in such as ``jwt``) is refused, as is a
configured type that does not exist, fails to import (a missing extra is named with the
``pip install`` that brings it) or rejects its config: start-up stops with a message naming the
instance. (The first health check, after construction, is the caller's: ``build_broker``.)

:func:`validate_issuer_configs` checks every instance's ``config`` against the ``config_type``
its issuer type declares (see :mod:`broker.issuer`) without constructing anything: no backend
is contacted and no file is read. ``jit config check`` calls it, and :func:`load_issuers` calls
it before it constructs the first issuer, so both say the same thing about the same config.
:func:`issuer_config_types` feeds ``jit config schema``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec

from broker import decoding
from broker.clock import Clock
from broker.config import IssuerInstanceSettings
from broker.errors import BrokerError, ConfigError
from broker.issuer import Issuer, IssuerContext, IssuerFactory, config_type_of

__all__ = [
    "GROUP",
    "available_types",
    "issuer_config_types",
    "load_issuers",
    "validate_issuer_configs",
]

GROUP = "jit_broker.issuers"
BUILTIN_DISTRIBUTION = "jit-broker"
log = logging.getLogger("jit.registry")
# Built-in issuer types whose backend library is an optional extra (ADR 0005).
_EXTRAS = {"postgres": "postgres", "aws": "aws"}


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            dists = {_dist(found[ep.name]), _dist(ep)}
            raise ConfigError(
                f"issuer type {ep.name!r} is registered by more than one package ({sorted(dists)});"
                " refusing to guess which to load"
            )
        found[ep.name] = ep
    return found


def _dist(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def available_types() -> list[str]:
    return sorted(_entry_points())


def _load_type(name: str, type_name: str, eps: Mapping[str, EntryPoint]) -> IssuerFactory:
    ep = eps.get(type_name)
    if ep is None:
        raise ConfigError(
            f"issuer {name!r}: unknown type {type_name!r} (installed types: {sorted(eps)})"
        )
    try:
        factory: IssuerFactory = ep.load()
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(type_name)
        hint = f"; install it with: pip install 'jit-broker[{extra}]'" if extra else ""
        raise ConfigError(
            f"issuer {name!r}: type {type_name!r} needs the module {exc.name!r}{hint}"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"issuer {name!r}: type {type_name!r} failed to load: {exc.__class__.__name__}: {exc}"
        ) from exc
    return factory


def validate_issuer_configs(
    configured: Mapping[str, IssuerInstanceSettings],
) -> dict[str, IssuerFactory]:
    """Check each configured instance without constructing it: its type is installed and
    imports, and its ``config`` decodes into the type's ``config_type`` (when it declares one).

    Returns the factories by instance name. Raises ConfigError naming the instance (and the key,
    for a bad config): ``issuer 'pg' (postgres): config.max_ttl: not a duration: 'soon' ...``."""
    eps = _entry_points()
    factories: dict[str, IssuerFactory] = {}
    for name, inst in configured.items():
        factory = _load_type(name, inst.type, eps)
        try:
            config_type = config_type_of(factory)
        except TypeError as exc:
            raise ConfigError(f"issuer {name!r}: type {inst.type!r}: {exc}") from None
        if config_type is not None:
            try:
                decoding.decode(inst.config, config_type, at="config")
            except ConfigError as exc:
                raise ConfigError(f"issuer {name!r} ({inst.type}): {exc.message}") from None
        factories[name] = factory
    return factories


def issuer_config_types() -> dict[str, type[msgspec.Struct] | None]:
    """Every installed issuer type and the ``config_type`` it declares: None when it declares
    none or cannot be imported here (a missing extra). Imports every installed type."""
    types: dict[str, type[msgspec.Struct] | None] = {}
    for type_name, ep in _entry_points().items():
        try:
            types[type_name] = config_type_of(ep.load())
        except Exception as exc:
            log.info("issuer type %s: no config schema (%s)", type_name, exc.__class__.__name__)
            types[type_name] = None
    return types


def load_issuers(
    configured: Mapping[str, IssuerInstanceSettings],
    *,
    clock: Clock,
    broker_url: str,
    dev: bool = False,
    redis: Any = None,
    key_prefix: str = "jit",
) -> dict[str, Issuer]:
    """Construct every configured issuer instance, after :func:`validate_issuer_configs` has
    passed for all of them. Raises ConfigError naming the instance."""
    factories = validate_issuer_configs(configured)
    issuers: dict[str, Issuer] = {}
    for name, inst in configured.items():
        factory = factories[name]
        context = IssuerContext(
            name=name,
            config=dict(inst.config),
            clock=clock,
            broker_url=broker_url,
            dev=dev,
            redis=redis,
            state_prefix=f"{key_prefix}:issuer:{name}",
        )
        try:
            issuer = factory(context)
        except BrokerError as exc:
            raise ConfigError(f"issuer {name!r} ({inst.type}): {exc.message}") from exc
        except Exception as exc:
            raise ConfigError(
                f"issuer {name!r} ({inst.type}) failed to start: {exc.__class__.__name__}: {exc}"
            ) from exc
        if not isinstance(issuer, Issuer):
            raise ConfigError(f"issuer {name!r}: type {inst.type!r} does not implement Issuer")
        issuers[name] = issuer
        log.info("issuer %s (type %s) loaded", name, inst.type)
    return issuers
