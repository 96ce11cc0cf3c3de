"""Configuration of the ``ssh`` issuer type: the msgspec schema and its validation.

Owns every rule about what an operator may write under ``config:`` and turns it into
:class:`Settings`, the checked form the issuer uses. None of them needs a file: decoding
:class:`SSHConfig` (the issuer type's ``config_type``) runs them all, so ``jit config check``
does too; the CA key file is read by the issuer. Anything wrong raises ``ConfigError`` naming
the instance and the key; unknown keys are errors (a typo must stop start-up).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import msgspec

from broker.clock import format_duration, parse_duration
from broker.decoding import check_ttls, decode
from broker.errors import ConfigError

__all__ = [
    "EXTENSIONS",
    "ResourceSettings",
    "SSHConfig",
    "Settings",
    "config_error",
    "is_resource",
    "load_settings",
    "parse_duration",
    "parse_networks",
    "within",
]

#: The certificate extensions an operator may enable (OpenSSH PROTOCOL.certkeys). Only
#: ``permit-pty`` is on unless a resource says otherwise.
EXTENSIONS: Final = frozenset(
    {
        "permit-pty",
        "permit-user-rc",
        "permit-agent-forwarding",
        "permit-port-forwarding",
        "permit-X11-forwarding",
    }
)
DEFAULT_EXTENSIONS: Final = ("permit-pty",)

#: Longest clock skew allowed: a certificate valid long before it was asked for is a smell.
MAX_CLOCK_SKEW: Final = timedelta(minutes=10)
MAX_NETWORKS: Final = 32

# ssh://host, ssh://host:port, ssh://[v6]; ``*`` is a wildcard in configured patterns only.
_RESOURCE = re.compile(
    r"^ssh://(?:\[[0-9A-Fa-f:.*]{1,64}\]|[A-Za-z0-9*._-]{1,253})(?::[0-9]{1,5})?$"
)
_LOGIN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Principals are matched literally by sshd (AuthorizedPrincipalsFile, or the user name): no
# commas, spaces or wildcards, which would be ambiguous in the files that list them.
_PRINCIPAL = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")


def is_resource(text: str) -> bool:
    """True for ``ssh://<host>[:<port>]`` (``*`` allowed: it is a wildcard in patterns)."""
    return _RESOURCE.match(text) is not None


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma-separated list of addresses or CIDR networks (``10.0.0.0/8,192.0.2.7``), as the
    ``source-address`` critical option takes it. Host bits must be zero (sshd refuses them).
    Raises ValueError naming the bad entry."""
    entries = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not entry for entry in entries):
        raise ValueError("expected a comma-separated list of addresses or CIDR networks")
    if len(entries) > MAX_NETWORKS:
        raise ValueError(f"at most {MAX_NETWORKS} networks")
    networks = []
    for entry in entries:
        if len(entry) > 64 or not entry.isprintable():
            raise ValueError("not an address or CIDR network")
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an address or a CIDR network with zero host bits"
            ) from None
    return tuple(networks)


def within(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> bool:
    """True when ``network`` lies inside one of ``allowed`` (same IP version)."""
    for outer in allowed:
        if isinstance(network, ipaddress.IPv4Network):
            inside = isinstance(outer, ipaddress.IPv4Network) and network.subnet_of(outer)
        else:
            inside = isinstance(outer, ipaddress.IPv6Network) and network.subnet_of(outer)
        if inside:
            return True
    return False


class ResourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of ``resources``: the logins a scope on this resource may ask for."""

    # ``[deploy, backup]`` (action ``login:deploy`` -> principal ``deploy``) or
    # ``{deploy: [web-deploy]}`` (action ``login:deploy`` -> principal ``web-deploy``).
    logins: list[str] | dict[str, list[str]]
    source_address: list[str] | None = None  # certificates are bound to (within) these networks
    extensions: list[str] | None = None  # default: permit-pty only
    force_command: str | None = None


class SSHConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``config`` of an ``ssh`` issuer instance. Unknown keys are errors; decoding checks
    every rule."""

    resources: dict[str, ResourceConfig]
    ca_key_file: str | None = None  # OpenSSH private key; may be omitted only in dev
    max_ttl: timedelta = timedelta(hours=1)
    default_ttl: timedelta = timedelta(minutes=15)
    clock_skew: timedelta = timedelta(seconds=30)  # valid_after = issued_at - clock_skew
    min_rsa_bits: int = 2048
    revocable: bool = True  # false: hosts do not fetch the KRL; the broker caps TTLs to the task

    def __post_init__(self) -> None:
        check_ttls(self.max_ttl, self.default_ttl)
        if self.clock_skew > MAX_CLOCK_SKEW:
            raise ValueError(f"clock_skew: at most {format_duration(MAX_CLOCK_SKEW)}")
        for key in ("max_ttl", "default_ttl", "clock_skew"):
            value: timedelta = getattr(self, key)
            if value % timedelta(seconds=1):  # certificate times are whole seconds
                raise ValueError(
                    f"{key}: must be a whole number of seconds, got {format_duration(value)}"
                )
        _settings(self, ValueError)


@dataclass(frozen=True, kw_only=True)
class ResourceSettings:
    """A checked resource: its pattern, logins, and what every certificate for it carries."""

    pattern: str
    logins: dict[str, tuple[str, ...]]  # login name (action ``login:<name>``) -> principals
    source_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None
    extensions: tuple[str, ...]
    force_command: str | None
    regex: re.Pattern[str]  # fullmatch against a requested resource

    @property
    def is_pattern(self) -> bool:
        return "*" in self.pattern

    def matches(self, resource: str) -> bool:
        return self.regex.fullmatch(resource) is not None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The checked configuration of one instance."""

    resources: dict[str, ResourceSettings]
    ca_key_file: str | None
    max_ttl: timedelta
    default_ttl: timedelta
    clock_skew: timedelta
    min_rsa_bits: int
    revocable: bool


def config_error(name: str, message: str) -> ConfigError:
    return ConfigError(f"ssh issuer {name!r}: {message}")


_FailFn = Callable[[str], Exception]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches any run of characters within the host (never ``/``); nothing else is
    special."""
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")))


def _resource(pattern: str, raw: ResourceConfig, fail: _FailFn) -> ResourceSettings:
    where = f"resources[{pattern!r}]"
    if not _RESOURCE.match(pattern):
        raise fail(
            f"{where}: must be ssh://<host>[:<port>] (a host name, an address in [] for IPv6, "
            "or a pattern with *)",
        )
    if isinstance(raw.logins, list):
        logins: Mapping[str, list[str]] = {login: [login] for login in raw.logins}
        if len(logins) != len(raw.logins):
            raise fail(f"{where}.logins: duplicate login")
    else:
        logins = raw.logins
    if not logins:
        raise fail(f"{where}.logins: at least one login is required")
    checked: dict[str, tuple[str, ...]] = {}
    for login, principals in logins.items():
        if not _LOGIN.match(login):
            raise fail(f"{where}.logins: {login!r} must match {_LOGIN.pattern}")
        if not principals:
            # A certificate without principals is valid for every user: never mint one.
            raise fail(f"{where}.logins.{login}: at least one principal")
        for principal in principals:
            if not _PRINCIPAL.match(principal):
                raise fail(
                    f"{where}.logins.{login}: principal {principal!r} must match "
                    f"{_PRINCIPAL.pattern}",
                )
        checked[login] = tuple(sorted(set(principals)))
    networks = None
    if raw.source_address is not None:
        try:
            networks = parse_networks(",".join(raw.source_address))
        except ValueError as exc:
            raise fail(f"{where}.source_address: {exc}") from None
    extensions = DEFAULT_EXTENSIONS if raw.extensions is None else tuple(raw.extensions)
    unknown = sorted(set(extensions) - EXTENSIONS)
    if unknown:
        raise fail(f"{where}.extensions: unknown {unknown} (choose from {sorted(EXTENSIONS)})")
    if raw.force_command is not None and (
        not raw.force_command.strip() or not raw.force_command.isprintable()
    ):
        raise fail(f"{where}.force_command: must be a non-empty single line")
    return ResourceSettings(
        pattern=pattern,
        logins=checked,
        source_networks=networks,
        extensions=tuple(sorted(set(extensions))),
        force_command=raw.force_command,
        regex=_pattern_regex(pattern),
    )


def load_settings(name: str, raw: Any) -> Settings:
    """Validate the raw ``config`` mapping. Raises ConfigError naming the instance and key."""
    try:
        config = decode(raw, SSHConfig)
    except ConfigError as exc:
        raise config_error(name, exc.message) from None
    return _settings(config, lambda message: config_error(name, message))


def _settings(config: SSHConfig, fail: _FailFn) -> Settings:
    """The rules beyond the durations (``__post_init__`` checks those first), and the checked
    form."""
    if config.min_rsa_bits < 2048:
        raise fail("min_rsa_bits: must be at least 2048")
    if not config.resources:
        raise fail("resources: at least one resource is required")
    resources = {
        pattern: _resource(pattern, raw_resource, fail)
        for pattern, raw_resource in config.resources.items()
    }
    if config.ca_key_file is not None and not config.ca_key_file.strip():
        raise fail("ca_key_file: must not be empty")
    return Settings(
        resources=resources,
        ca_key_file=config.ca_key_file,
        max_ttl=config.max_ttl,
        default_ttl=config.default_ttl,
        clock_skew=config.clock_skew,
        min_rsa_bits=config.min_rsa_bits,
        revocable=config.revocable,
    )
