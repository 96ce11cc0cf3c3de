"""Configuration of a ``postgres`` issuer instance: the strict schema and its validation.

Owns turning the raw ``config`` mapping into :class:`Settings` (validated, typed values) and the
rules behind it. :class:`PostgresConfig` is the issuer type's ``config_type``: decoding it runs
every rule that needs neither a file nor the server (``jit config check`` runs them too);
:func:`load_settings` adds the one that reads a file. Every problem raises
:class:`broker.errors.ConfigError` naming the instance and the key; unknown keys are errors. The
admin password is never in the mapping: ``password_file`` names a file, read by
:func:`read_password_file`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Final

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from broker.clock import parse_duration
from broker.decoding import check_duration, check_ttls, decode
from broker.errors import ConfigError

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "MAX_ROLE_PREFIX",
    "PostgresConfig",
    "Resource",
    "ResourceConfig",
    "Settings",
    "load_settings",
    "parse_duration",
    "read_password_file",
]

#: PostgreSQL truncates identifiers to NAMEDATALEN - 1 = 63 bytes; we refuse longer ones.
MAX_IDENTIFIER_BYTES: Final = 63
#: A role name is the prefix plus 49 characters derived from the lease id (see issuer.role_name).
MAX_ROLE_PREFIX: Final = MAX_IDENTIFIER_BYTES - 49

_ROLE_PREFIX = re.compile(rf"^[a-z][a-z0-9_]{{0,{MAX_ROLE_PREFIX - 1}}}$")
_ACTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_MAX_RESOURCE_LENGTH: Final = 2048


class ResourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of ``resources``: a database and what each action grants there."""

    database: str
    # action -> existing NOLOGIN group roles the minted login role becomes a member of
    actions: dict[str, list[str]]


class PostgresConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``config`` of a ``postgres`` issuer instance. Unknown keys are errors; decoding
    checks every rule that needs no file and no server."""

    dsn: str  # libpq conninfo or URI of the admin connection, WITHOUT a password
    resources: dict[str, ResourceConfig]
    password_file: str | None = None  # the admin role's password; absent: libpq's own sources
    role_prefix: str = "jit_"
    connection_limit: int = 5
    max_ttl: timedelta = timedelta(hours=1)
    default_ttl: timedelta = timedelta(minutes=15)
    timeout: timedelta = timedelta(seconds=10)  # connect, statement and lock timeout of admin work
    max_admin_connections: int = 4
    client_host: str | None = None  # what clients connect to (metadata); default: dsn's host
    client_port: int | None = None  # default: dsn's port, else 5432

    def __post_init__(self) -> None:
        check_ttls(self.max_ttl, self.default_ttl)
        check_duration("timeout", self.timeout, at_least=timedelta(seconds=1))
        _settings(self, ValueError)


class Resource(msgspec.Struct, frozen=True, kw_only=True):
    """A validated resource: its database and, per action, the sorted group roles."""

    database: str
    actions: dict[str, tuple[str, ...]]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Validated configuration."""

    dsn: str
    password_file: Path | None
    resources: dict[str, Resource]
    role_prefix: str
    connection_limit: int
    max_ttl: timedelta
    default_ttl: timedelta
    timeout: timedelta
    max_admin_connections: int
    admin_user: str | None  # from the dsn, for messages; None: libpq's default
    client_host: str
    client_port: int


def read_password_file(path: Path) -> str:
    """The password in ``path``: its content without the trailing newline.

    Raises OSError (unreadable) or ValueError (empty, or more than one line)."""
    text = path.read_text(encoding="utf-8")
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ValueError("the file is empty")
    if "\n" in password or "\r" in password or "\0" in password:
        raise ValueError("the file must hold one line: the password")
    return password


def load_settings(name: str, raw: object) -> Settings:
    """Validate the raw ``config`` mapping of instance ``name`` and check that its
    ``password_file`` is readable. Raises ConfigError."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"postgres issuer {name!r}: {message}")

    try:
        config = decode(raw, PostgresConfig)
    except ConfigError as exc:
        raise fail(exc.message) from None
    settings = _settings(config, fail)  # cannot fail: decoding ran the same checks
    if settings.password_file is not None:
        try:
            read_password_file(settings.password_file)
        except OSError as exc:
            raise fail(f"password_file: {exc.strerror or type(exc).__name__}") from None
        except ValueError as exc:
            raise fail(f"password_file: {exc}") from None
    return settings


def _settings(config: PostgresConfig, fail: Callable[[str], Exception]) -> Settings:
    """The rules that need no file and no server beyond the durations (``__post_init__``
    checks those first), and the values derived from them."""
    # -- the admin connection --------------------------------------------------------------
    try:
        params = conninfo_to_dict(config.dsn)
    except psycopg.ProgrammingError as exc:
        # libpq's parse error names the bad option, never a value
        raise fail(f"dsn: {exc}") from None
    if "password" in params:
        raise fail("dsn: must not contain a password; put it in the file named by password_file")
    password_file: Path | None = None
    if config.password_file is not None:
        if not config.password_file:
            raise fail("password_file: must not be empty")
        password_file = Path(config.password_file)
    if not 1 <= config.max_admin_connections <= 64:
        raise fail("max_admin_connections: must be between 1 and 64")

    # -- what clients are told --------------------------------------------------------------
    client_host = config.client_host
    if client_host is None:
        host = str(params.get("host") or params.get("hostaddr") or "")
        if not host or host.startswith("/") or host.startswith("@") or "," in host:
            raise fail(
                "client_host: required when the dsn's host is not one network address "
                f"(it is {host or 'unset'!r}); set the address clients connect to"
            )
        client_host = host
    if not client_host or any(c.isspace() or c in "/@?#" for c in client_host):
        raise fail("client_host: must be a host name or an IP address")
    client_port = config.client_port
    if client_port is None:
        port = str(params.get("port") or "5432")
        if not (port.isascii() and port.isdigit()):
            raise fail(f"client_port: required when the dsn's port is not one port ({port!r})")
        client_port = int(port)
    if not 1 <= client_port <= 65535:
        raise fail("client_port: must be between 1 and 65535")

    # -- the minted roles -------------------------------------------------------------------
    if not _ROLE_PREFIX.match(config.role_prefix) or config.role_prefix.startswith("pg_"):
        raise fail(
            f"role_prefix: must match {_ROLE_PREFIX.pattern} (at most {MAX_ROLE_PREFIX} "
            "characters: lower-case letters, digits, '_') and not start with 'pg_'"
        )
    if not 1 <= config.connection_limit <= 10000:
        raise fail("connection_limit: must be between 1 and 10000")

    # -- resources ---------------------------------------------------------------------------
    if not config.resources:
        raise fail("resources: at least one resource is required")
    resources: dict[str, Resource] = {}
    for resource, rc in config.resources.items():
        where = f"resources[{resource!r}]"
        if (
            not resource
            or len(resource) > _MAX_RESOURCE_LENGTH
            or any(c.isspace() or not c.isprintable() for c in resource)
        ):
            raise fail(f"{where}: a resource must be a non-empty string without spaces")
        _identifier(fail, f"{where}.database", rc.database)
        if not rc.actions:
            raise fail(f"{where}.actions: at least one action is required")
        actions: dict[str, tuple[str, ...]] = {}
        for action, groups in rc.actions.items():
            if not _ACTION.match(action):
                raise fail(f"{where}.actions: {action!r} must match {_ACTION.pattern}")
            if not groups:
                raise fail(f"{where}.actions.{action}: name at least one group role")
            for group in groups:
                _identifier(fail, f"{where}.actions.{action}", group)
                if group.startswith("pg_"):
                    raise fail(
                        f"{where}.actions.{action}: {group!r} is a predefined role; grant it "
                        "to a group role of your own and name that one"
                    )
                if group.startswith(config.role_prefix):
                    raise fail(
                        f"{where}.actions.{action}: {group!r} starts with role_prefix "
                        f"{config.role_prefix!r}, which is reserved for minted roles"
                    )
            actions[action] = tuple(sorted(set(groups)))
        resources[resource] = Resource(database=rc.database, actions=actions)

    user = params.get("user")
    return Settings(
        dsn=config.dsn,
        password_file=password_file,
        resources=resources,
        role_prefix=config.role_prefix,
        connection_limit=config.connection_limit,
        max_ttl=config.max_ttl,
        default_ttl=config.default_ttl,
        timeout=config.timeout,
        max_admin_connections=config.max_admin_connections,
        admin_user=str(user) if user else None,
        client_host=client_host,
        client_port=client_port,
    )


def _identifier(fail: Callable[[str], Exception], where: str, value: str) -> None:
    if not value or "\0" in value or len(value.encode()) > MAX_IDENTIFIER_BYTES:
        raise fail(f"{where}: {value!r} is not a PostgreSQL identifier (1 to 63 bytes)")
