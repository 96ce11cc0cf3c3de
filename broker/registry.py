"""Issuer discovery: entry points → the types config enables → instances, failing closed.

Only the issuer *types* named in config are imported. An entry-point name registered twice
(a third-party package trying to shadow a built-in such as ``jwt``) is refused, as is a
configured type that does not exist, fails to import, rejects its config or fails its first
health check: start-up stops with a message naming the instance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from broker.clock import Clock
from broker.config import IssuerInstanceSettings
from broker.errors import BrokerError, ConfigError
from broker.issuer import Issuer, IssuerContext

__all__ = ["GROUP", "available_types", "load_issuers"]

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


def load_issuers(
    configured: Mapping[str, IssuerInstanceSettings],
    *,
    clock: Clock,
    broker_url: str,
    dev: bool = False,
    redis: Any = None,
    key_prefix: str = "jit",
) -> dict[str, Issuer]:
    """Construct every configured issuer instance. Raises ConfigError naming the instance."""
    eps = _entry_points()
    issuers: dict[str, Issuer] = {}
    for name, inst in configured.items():
        ep = eps.get(inst.type)
        if ep is None:
            raise ConfigError(
                f"issuer {name!r}: unknown type {inst.type!r} (installed types: {sorted(eps)})"
            )
        try:
            factory = ep.load()
        except ModuleNotFoundError as exc:
            extra = _EXTRAS.get(inst.type)
            hint = f"; install it with: pip install 'jit-broker[{extra}]'" if extra else ""
            raise ConfigError(
                f"issuer {name!r}: type {inst.type!r} needs the module {exc.name!r}{hint}"
            ) from exc
        except Exception as exc:
            raise ConfigError(
                f"issuer {name!r}: type {inst.type!r} failed to load: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc
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
