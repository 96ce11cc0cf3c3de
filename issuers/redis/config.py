"""Configuration of the ``redis`` issuer type, and the pure mapping from a scope to ACL rules.

Owns: the strict ``config`` schema (:class:`RedisConfig`, the issuer type's ``config_type``, and
:class:`ResourceConfig`), the validation of every ACL rule an operator may write, the ACL
username derived from a lease id, and :func:`acl_rules` — the exact ``ACL SETUSER`` arguments
for a granted scope. Decoding :class:`RedisConfig` runs every rule that needs no file (``jit
config check`` runs them too); :func:`load_settings` adds reading ``password_file`` and checking
that ``ca_file`` exists, the only I/O here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urlsplit

import msgspec

from broker.clock import parse_duration
from broker.decoding import check_duration, check_ttls, decode
from broker.errors import ConfigError
from broker.types import Secret

__all__ = [
    "DEFAULT_DENY",
    "GUARD",
    "RedisConfig",
    "ResourceConfig",
    "Settings",
    "acl_rules",
    "load_settings",
    "parse_duration",
    "username_for",
]

#: Appended last unless a resource sets ``allow_dangerous``: whatever a category such as
#: ``@read`` or ``@write`` brings in that Redis classes as admin or dangerous (KEYS, FLUSHDB,
#: FLUSHALL, SWAPDB, MIGRATE, RESTORE, SORT, CONFIG, CLIENT, ACL, DEBUG ...) is taken out again.
GUARD: Final = ("-@admin", "-@dangerous")

#: The default ``deny`` of a resource: commands that ignore key patterns. SCAN, RANDOMKEY and
#: DBSIZE would show a credential scoped to ``orders:*`` the names or number of every key in the
#: database; FUNCTION (LOAD, DELETE, FLUSH, RESTORE are in ``@write``) changes the server-wide
#: function libraries. An operator may override it (``deny: []`` grants them back).
DEFAULT_DENY: Final = ("-scan", "-randomkey", "-dbsize", "-function")

#: Categories that may only be granted with ``allow_dangerous: true``.
_PRIVILEGED_CATEGORIES: Final = frozenset({"@all", "@admin", "@dangerous"})

# +@category, -@category, +command, -command, +command|subcommand, -command|subcommand.
_RULE = re.compile(
    r"^[+-](?:@[a-z][a-z_-]{0,63}|[a-z][a-z0-9_-]{0,63}(?:\|[a-z][a-z0-9_-]{0,63})?)$"
)
_ACTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}$")
_USERNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_LEASE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_MAX_PATTERN = 512

_FailFn = Callable[[str], Exception]


class ResourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One resource a scope can name: its key and channel patterns and its actions."""

    actions: dict[str, list[str]]  # action name -> ACL command rules ("+@read", "+get")
    keys: list[str] = msgspec.field(default_factory=list)  # key patterns ("orders:*")
    channels: list[str] = msgspec.field(default_factory=list)  # Pub/Sub channel patterns
    deny: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_DENY))  # "-scan"
    allow_dangerous: bool = False  # permit +@admin/+@dangerous/+@all and drop the guard


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``config`` of a ``redis`` issuer instance. Unknown keys are errors; decoding checks
    every rule that needs no file."""

    url: str  # the admin connection, without credentials: redis://host:6379/0
    resources: dict[str, ResourceConfig]
    username: str | None = None  # the admin ACL user (default: Redis's default user)
    password_file: str | None = None  # the admin password, in a file
    ca_file: str | None = None  # PEM CA bundle to verify a rediss:// server (default: system)
    user_prefix: str = "jit_"  # ACL users are named <user_prefix><lease id>
    max_ttl: timedelta = timedelta(minutes=15)
    default_ttl: timedelta = timedelta(minutes=5)
    timeout: timedelta = timedelta(seconds=5)  # one call to Redis, connecting included

    def __post_init__(self) -> None:
        check_ttls(self.max_ttl, self.default_ttl)
        check_duration("timeout", self.timeout, at_least=timedelta(seconds=1))
        _resources(self, ValueError)


@dataclass(frozen=True)
class Resource:
    """A validated resource: rules lower-cased and checked."""

    keys: tuple[str, ...]
    channels: tuple[str, ...]
    actions: dict[str, tuple[str, ...]]
    deny: tuple[str, ...]
    allow_dangerous: bool


@dataclass(frozen=True)
class Settings:
    """A validated configuration, ready to use."""

    url: str
    username: str | None
    password: Secret | None
    ca_file: str | None
    user_prefix: str
    max_ttl: timedelta
    default_ttl: timedelta
    timeout: timedelta
    resources: dict[str, Resource]


def username_for(prefix: str, lease_id: str) -> str:
    """The ACL user of a lease: ``<prefix><lease id>``. Deterministic, so revoke finds it from
    the lease id alone. A lease id that is not a plain token is hashed instead."""
    if _LEASE_ID.match(lease_id):
        return f"{prefix}{lease_id}"
    return f"{prefix}h{hashlib.sha256(lease_id.encode()).hexdigest()[:40]}"


def acl_rules(resource: Resource, actions: Iterable[str], password_sha256: str) -> list[str]:
    """The ``ACL SETUSER`` arguments for ``actions`` on ``resource``.

    Start from nothing (``reset``, then ``resetkeys resetchannels -@all`` spelled out), enable
    the user with the password's SHA-256 (the password itself never reaches Redis), add the key
    and channel patterns, each granted action's command rules (in sorted action order), then the
    resource's ``deny`` rules, then the guard against admin and dangerous commands."""
    rules = ["reset", "on", f"#{password_sha256}", "resetkeys", "resetchannels", "-@all"]
    rules += [f"~{k}" for k in resource.keys]
    rules += [f"&{c}" for c in resource.channels]
    for action in sorted(set(actions)):
        rules += resource.actions[action]
    rules += resource.deny
    if not resource.allow_dangerous:
        rules += GUARD
    return rules


# -- loading ---------------------------------------------------------------------------------


def load_settings(name: str, raw: object) -> Settings:
    """Validate ``raw`` (an instance's ``config`` mapping) strictly and read the files it names.
    Raises ConfigError naming the instance and the key; never echoes a URL or a file's
    content."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"redis issuer {name!r}: {message}")

    try:
        config = decode(raw, RedisConfig)
    except ConfigError as exc:
        raise fail(exc.message) from None
    resources = _resources(config, fail)  # cannot fail: decoding ran the same checks
    password = _read_password(config.password_file, fail)
    if config.ca_file is not None and not Path(config.ca_file).is_file():
        raise fail("ca_file: not a readable file")
    return Settings(
        url=config.url,
        username=config.username,
        password=password,
        ca_file=config.ca_file,
        user_prefix=config.user_prefix,
        max_ttl=config.max_ttl,
        default_ttl=config.default_ttl,
        timeout=config.timeout,
        resources=resources,
    )


def _resources(config: RedisConfig, fail: _FailFn) -> dict[str, Resource]:
    """The rules that need no file beyond the durations (``__post_init__`` checks those first);
    the checked resources."""
    _check_url(config.url, fail)
    if config.username is not None and not _USERNAME.match(config.username):
        raise fail("username: 1-128 characters among letters, digits and _ . : @ -")
    if not _PREFIX.match(config.user_prefix):
        raise fail(
            "user_prefix: 1-32 characters among letters, digits and _ . : -, "
            "starting with a letter or digit"
        )
    if config.username is not None and config.username.startswith(config.user_prefix):
        # The prefix marks the users the issuer creates and deletes; never the admin user.
        raise fail("username: the admin user must not start with user_prefix")
    if config.password_file is not None and not config.password_file:
        raise fail("password_file: must not be empty")
    if config.ca_file is not None and urlsplit(config.url).scheme != "rediss":
        raise fail("ca_file: only for a rediss:// url")
    if not config.resources:
        raise fail("resources: at least one resource is required")
    return {rname: _resource(rname, rconf, fail) for rname, rconf in config.resources.items()}


def _check_url(url: str, fail: _FailFn) -> None:
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        has_userinfo = "@" in parts.netloc
    except ValueError:
        raise fail("url: not a valid URL") from None
    if parts.scheme not in _SCHEMES:
        raise fail("url: the scheme must be redis://, rediss:// or unix://")
    if has_userinfo or {"password", "username"} & {k.lower() for k in query}:
        raise fail("url: must not contain credentials; use the username and password_file keys")
    if set(query) - {"db"}:
        raise fail("url: the only query parameter accepted is db; use the issuer's config keys")
    if parts.scheme != "unix" and not parts.hostname:
        raise fail("url: a host is required")


def _read_password(path: str | None, fail: _FailFn) -> Secret | None:
    if path is None:
        return None
    if not path:
        raise fail("password_file: must not be empty")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"password_file: cannot read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise fail("password_file: not UTF-8 text") from None
    password = text.rstrip("\r\n")
    if not password:
        raise fail("password_file: the file is empty")
    return Secret(password)


def _pattern(where: str, value: str, fail: _FailFn) -> str:
    if not value or len(value) > _MAX_PATTERN:
        raise fail(f"{where}: a pattern must be 1-{_MAX_PATTERN} characters")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise fail(f"{where}: a pattern must not contain whitespace or control characters")
    return value


def _rules(
    where: str, rules: list[str], sign: str, allow_dangerous: bool, fail: _FailFn
) -> tuple[str, ...]:
    out: list[str] = []
    for raw in rules:
        rule = raw.strip().lower()
        if not _RULE.match(rule) or not rule.startswith(sign):
            kind = (
                "+@category, +command or +command|subcommand"
                if sign == "+"
                else ("-@category, -command or -command|subcommand")
            )
            raise fail(f"{where}: {raw!r} is not a rule of the form {kind}")
        if sign == "+" and rule[1:] in _PRIVILEGED_CATEGORIES and not allow_dangerous:
            raise fail(
                f"{where}: {raw!r} grants admin or dangerous commands; set allow_dangerous: "
                "true on the resource to allow it"
            )
        out.append(rule)
    return tuple(out)


def _resource(rname: str, conf: ResourceConfig, fail: _FailFn) -> Resource:
    where = f"resources[{rname!r}]"
    if not rname or len(rname) > 512 or any(c.isspace() or not c.isprintable() for c in rname):
        raise fail(f"{where}: a resource name must be 1-512 printable characters, no spaces")
    keys = tuple(_pattern(f"{where}.keys", k, fail) for k in conf.keys)
    channels = tuple(_pattern(f"{where}.channels", c, fail) for c in conf.channels)
    if not conf.actions:
        raise fail(f"{where}.actions: at least one action is required")
    actions: dict[str, tuple[str, ...]] = {}
    for action, rules in conf.actions.items():
        if not _ACTION.match(action):
            raise fail(
                f"{where}.actions: {action!r} is not an action name (1-64 characters among "
                "letters, digits and _ . : -)"
            )
        if not rules:
            raise fail(f"{where}.actions.{action}: at least one rule is required")
        actions[action] = _rules(
            f"{where}.actions.{action}", rules, "+", conf.allow_dangerous, fail
        )
    deny = _rules(f"{where}.deny", conf.deny, "-", conf.allow_dangerous, fail)
    return Resource(
        keys=keys,
        channels=channels,
        actions=actions,
        deny=deny,
        allow_dangerous=conf.allow_dangerous,
    )
