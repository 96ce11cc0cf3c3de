"""Configuration of a ``github`` issuer instance: strict parsing and the files it names.

Owns :class:`GitHubConfig` (the issuer type's ``config_type``: the ``config:`` mapping, unknown
keys refused; decoding it runs every rule that needs no file, so ``jit config check`` does too)
and :func:`load_settings`, which also reads the files (the App's private key, the token-store
keys) into :class:`Settings`. Every problem is a ``ConfigError`` naming the instance and the key;
no message ever contains file content.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import RSAKey

from broker.clock import format_duration, parse_duration
from broker.decoding import check_duration, decode
from broker.errors import ConfigError
from broker.urls import check_url

__all__ = [
    "GITHUB_TOKEN_LIFETIME",
    "GitHubConfig",
    "Settings",
    "load_settings",
    "parse_duration",
]

log = logging.getLogger("jit.issuers.github")

#: GitHub installation tokens live one hour; nobody can ask for less (or more).
GITHUB_TOKEN_LIFETIME: Final = timedelta(hours=1)

_CLIENT_ID: Final = re.compile(r"^Iv[0-9A-Za-z.]{4,60}$")
_OWNER: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,38}$")
_MIN_RSA_BITS: Final = 2048


class GitHubConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``config`` of a ``github`` issuer instance. Unknown keys are errors; decoding checks
    every rule that needs no file."""

    app_id: int | str  # the App's numeric id, or its client ID ("Iv23li...")
    private_key_file: str  # the App's PEM RSA private key, as GitHub hands it out
    installations: dict[str, int] = msgspec.field(default_factory=dict)  # owner -> id
    discover_installations: bool = False  # GET /repos/{owner}/{repo}/installation
    base_url: str = "https://api.github.com"  # GHES: https://HOST/api/v3
    web_url: str | None = None  # where repositories live; default derived from base_url
    state_key_file: str | None = None  # 32-byte AES key: encrypts the stored tokens
    previous_state_key_files: list[str] = msgspec.field(default_factory=list)
    max_ttl: timedelta = timedelta(hours=1)
    default_ttl: timedelta = timedelta(minutes=15)
    timeout: timedelta = timedelta(seconds=10)  # one HTTP exchange with GitHub
    connect_timeout: timedelta = timedelta(seconds=5)
    installation_cache_ttl: timedelta = timedelta(minutes=10)  # discovered installation ids
    ca_file: str | None = None  # PEM CA bundle for a GHES with a private CA

    def __post_init__(self) -> None:
        check_duration("max_ttl", self.max_ttl, at_least=timedelta(seconds=1))
        check_duration("default_ttl", self.default_ttl, at_least=timedelta(seconds=1))
        check_duration("timeout", self.timeout, at_least=timedelta(milliseconds=100))
        _checked(self, ValueError)


@dataclass(frozen=True, slots=True)
class _Checked:
    """What the file-free rules derive from a :class:`GitHubConfig`."""

    app_id: str
    base_url: str
    web_host: str
    installations: dict[str, int]


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """A validated configuration with its files read. ``repr`` shows no key material."""

    app_id: str
    signing_key: RSAKey
    installations: dict[str, int]  # lower-cased owner -> installation id
    discover_installations: bool
    base_url: str
    web_host: str
    state_keys: tuple[bytes, ...]  # the first encrypts; all decrypt
    ephemeral_state_key: bool  # generated in memory (dev only)
    max_ttl: timedelta
    default_ttl: timedelta
    timeout: timedelta
    connect_timeout: timedelta
    installation_cache_ttl: timedelta
    ca_file: str | None

    def __repr__(self) -> str:
        return f"Settings(app_id={self.app_id!r}, base_url={self.base_url!r})"


def load_settings(name: str, raw: dict[str, Any], *, dev: bool) -> Settings:
    """Validate ``raw`` (the instance's ``config:``) and read the files it names."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"github issuer {name!r}: {message}")

    try:
        config = decode(raw, GitHubConfig)
    except ConfigError as exc:
        raise fail(exc.message) from None
    checked = _checked(config, fail)  # cannot fail: decoding ran the same checks

    signing_key = _private_key(config.private_key_file, fail)
    state_keys, ephemeral = _state_keys(config, dev, fail)
    if config.ca_file is not None and not Path(config.ca_file).is_file():
        raise fail(f"ca_file: {config.ca_file} is not a readable file")

    return Settings(
        app_id=checked.app_id,
        signing_key=signing_key,
        installations=checked.installations,
        discover_installations=config.discover_installations,
        base_url=checked.base_url,
        web_host=checked.web_host,
        state_keys=state_keys,
        ephemeral_state_key=ephemeral,
        max_ttl=config.max_ttl,
        default_ttl=config.default_ttl,
        timeout=config.timeout,
        connect_timeout=config.connect_timeout,
        installation_cache_ttl=config.installation_cache_ttl,
        ca_file=config.ca_file,
    )


def _checked(config: GitHubConfig, fail: Any) -> _Checked:
    """The rules that need no file beyond the duration bounds (``__post_init__`` checks those
    first), and the values derived from them."""
    app_id = _app_id(config.app_id, fail)
    base_url, host = _base_url(config.base_url, fail)
    web_host = _web_host(config.web_url, host, fail)

    installations: dict[str, int] = {}
    for owner, installation_id in config.installations.items():
        if not _OWNER.match(owner):
            raise fail(f"installations: {owner!r} is not a GitHub account name")
        if installation_id <= 0:
            raise fail(f"installations.{owner}: must be a positive installation id")
        if owner.lower() in installations:
            raise fail(f"installations: {owner!r} is listed twice (names are case-insensitive)")
        installations[owner.lower()] = installation_id
    if not installations and not config.discover_installations:
        raise fail(
            "installations: name at least one owner's installation id, or set "
            "discover_installations: true"
        )

    if config.max_ttl > GITHUB_TOKEN_LIFETIME:
        raise fail(
            "max_ttl: GitHub installation tokens live 1h at most, got "
            f"{format_duration(config.max_ttl)}"
        )
    if config.default_ttl > config.max_ttl:
        raise fail(
            f"default_ttl: {format_duration(config.default_ttl)} exceeds max_ttl "
            f"{format_duration(config.max_ttl)}"
        )
    if config.connect_timeout <= timedelta(0):
        raise fail("connect_timeout: must be positive")
    if config.previous_state_key_files and config.state_key_file is None:
        raise fail("previous_state_key_files: needs state_key_file")
    return _Checked(
        app_id=app_id, base_url=base_url, web_host=web_host, installations=installations
    )


def _app_id(value: int | str, fail: Any) -> str:
    if isinstance(value, bool):
        raise fail("app_id: must be the App's numeric id or its client ID")
    if isinstance(value, int):
        if value <= 0:
            raise fail("app_id: must be a positive number")
        return str(value)
    text = value.strip()
    if text.isascii() and text.isdigit() and int(text) > 0:
        return str(int(text))
    if _CLIENT_ID.match(text):
        return text
    raise fail(f"app_id: {value!r} is neither an App id (digits) nor a client ID (Iv...)")


def _base_url(value: str, fail: Any) -> tuple[str, str]:
    try:
        host = check_url(value).hostname or ""
    except ValueError as exc:
        raise fail(f"base_url: {exc}") from None
    return value.rstrip("/"), host


def _web_host(web_url: str | None, api_host: str, fail: Any) -> str:
    if web_url is None:
        # api.github.com -> github.com; api.<sub>.ghe.com -> <sub>.ghe.com; GHES serves the API
        # under https://HOST/api/v3 on the host its repositories live on.
        return api_host[4:] if api_host.startswith("api.") else api_host
    try:
        parts = urlsplit(web_url)
        host = parts.hostname
    except ValueError:
        raise fail(f"web_url: not a URL: {web_url!r}") from None
    if parts.scheme != "https" or not host or parts.path.strip("/") or parts.query:
        raise fail(f"web_url: must be https://HOST, got {web_url!r}")
    return parts.netloc


def _private_key(path: str, fail: Any) -> RSAKey:
    try:
        pem = Path(path).read_bytes()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise fail(f"private_key_file: cannot read {path} ({exc.strerror})") from None
    if mode & 0o077:
        log.warning(
            "github App private key %s is accessible to group or others (mode %o); it should "
            "be 0600",
            path,
            mode & 0o777,
        )
    try:
        raw = _load_rsa(pem)
    except (ValueError, TypeError) as exc:
        raise fail(
            f"private_key_file: {path} is not an unencrypted PEM private key "
            f"({exc.__class__.__name__})"
        ) from None
    if raw is None:
        raise fail(f"private_key_file: {path} is not an RSA key (GitHub Apps sign with RS256)")
    if raw.key_size < _MIN_RSA_BITS:
        raise fail(f"private_key_file: {path} is a {raw.key_size}-bit key; at least 2048 bits")
    return RSAKey.import_key(raw)


@functools.lru_cache(maxsize=16)
def _load_rsa(pem: bytes) -> rsa.RSAPrivateKey | None:
    """Parse (and validate, which costs ~0.1 s for RSA) a PEM key once per content: issuer
    instances of one process that share a key file share the parsed key."""
    raw = load_pem_private_key(pem, password=None)
    return raw if isinstance(raw, rsa.RSAPrivateKey) else None


def _state_keys(config: GitHubConfig, dev: bool, fail: Any) -> tuple[tuple[bytes, ...], bool]:
    if config.state_key_file is None:
        if config.previous_state_key_files:
            raise fail("previous_state_key_files: needs state_key_file")
        if not dev:
            raise fail(
                "state_key_file: required (a file holding 32 random bytes, base64 or hex; "
                "create one with `openssl rand -base64 32`)"
            )
        log.warning(
            "github issuer: no state_key_file; encrypting stored tokens with an in-memory key "
            "(dev only: tokens minted before a restart cannot be revoked early)"
        )
        return (os.urandom(32),), True
    keys = [_read_state_key("state_key_file", config.state_key_file, fail)]
    for i, path in enumerate(config.previous_state_key_files):
        keys.append(_read_state_key(f"previous_state_key_files[{i}]", path, fail))
    if len(set(keys)) != len(keys):
        raise fail("previous_state_key_files: a key is listed twice")
    return tuple(keys), False


def _read_state_key(key: str, path: str, fail: Any) -> bytes:
    try:
        data = Path(path).read_bytes()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise fail(f"{key}: cannot read {path} ({exc.strerror})") from None
    if mode & 0o077:
        log.warning(
            "github state key %s is accessible to group or others (mode %o); it should be 0600",
            path,
            mode & 0o777,
        )
    text = data.strip()
    decoded: bytes | None = None
    try:
        if re.fullmatch(rb"[0-9a-fA-F]{64}", text):
            decoded = bytes.fromhex(text.decode())
        elif re.fullmatch(rb"[A-Za-z0-9+/_-]+={0,2}", text) and not (
            re.search(rb"[+/]", text) and re.search(rb"[_-]", text)
        ):
            bare = text.rstrip(b"=")
            padded = bare + b"=" * (-len(bare) % 4)
            altchars = b"-_" if re.search(rb"[_-]", bare) else b"+/"
            decoded = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        decoded = None
    if decoded is None or len(decoded) != 32:
        raise fail(
            f"{key}: {path} must hold 32 random bytes as base64 or 64 hex digits "
            "(`openssl rand -base64 32`)"
        )
    return decoded
