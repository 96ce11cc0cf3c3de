"""Configuration of the ``aws`` issuer type: the strict schema, its validation, and the broker's
own credentials file.

Owns everything an operator writes under ``issuers: {<name>: {type: aws, config: {...}}}`` and
turns it into a frozen :class:`Settings`. Decoding :class:`AWSConfig` (the issuer type's
``config_type``) runs every rule that needs no file, so ``jit config check`` does too;
:func:`load_settings` adds reading ``credentials_file``. Anything wrong raises ``ConfigError``
naming the instance and the key; nothing here talks to AWS. See docs/issuers/aws.md.
"""

from __future__ import annotations

import configparser
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import msgspec

from broker.clock import parse_duration
from broker.decoding import check_duration, check_ttls, decode
from broker.errors import ConfigError
from broker.types import Secret
from broker.urls import check_url

__all__ = [
    "MAX_POLICY_CHARS",
    "MAX_SESSION",
    "MIN_TTL",
    "STS_MIN_SESSION",
    "AWSConfig",
    "BrokerCredentials",
    "ResourceConfig",
    "Settings",
    "Target",
    "load_settings",
    "parse_duration",
    "read_credentials_file",
    "session_policy",
]

#: AWS STS refuses ``DurationSeconds`` below 15 minutes.
STS_MIN_SESSION: Final = timedelta(minutes=15)
#: The longest role session AWS allows (a role's ``MaxSessionDuration`` is at most 12 hours).
MAX_SESSION: Final = timedelta(hours=12)
#: The shortest lease this issuer accepts: STS's 15-minute floor plus headroom for the broker's
#: own work between choosing ``not_after`` and calling STS, and for ``latency_margin`` (at most
#: 30 s). The session is sized to the time *left* when STS is called, never longer.
MIN_TTL: Final = timedelta(minutes=16)
#: AWS's limit on the plaintext of an inline session policy.
MAX_POLICY_CHARS: Final = 2048

_REGION = re.compile(r"^[a-z]{2,4}(?:-[a-z]+)+-\d{1,2}$")
_PARTITION = r"aws(?:-[a-z]+)*"
_ROLE_ARN = re.compile(rf"^arn:{_PARTITION}:iam::\d{{12}}:role/[\w+=,.@/-]{{1,512}}$")
_ARN = re.compile(rf"^arn:{_PARTITION}:[a-z0-9-]+:[a-z0-9-]*:(?:\d{{12}}|aws)?:[^\s]+$")
_IAM_ACTION = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9*?]+$")
_ACTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
_PROFILE = re.compile(r"^[\w.+@-]{1,64}$")
_MAX_MARGIN: Final = timedelta(seconds=30)
_ONE_SECOND: Final = timedelta(seconds=1)
_ONE_MINUTE: Final = timedelta(minutes=1)


class ResourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One scope resource: the role to assume and what each scope action allows."""

    role_arn: str
    actions: dict[str, list[str]]  # scope action -> IAM actions, e.g. read: [s3:GetObject]
    resources: list[str]  # the IAM resource ARNs the session policy grants them on
    external_id: str | None = None  # overrides the instance's external_id for this role


class AWSConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``config`` of an ``aws`` issuer instance. Unknown keys are errors; decoding checks
    every rule that needs no file."""

    region: str
    resources: dict[str, ResourceConfig]
    endpoint_url: str | None = None  # e.g. a VPC endpoint; http only on loopback (tests)
    credentials_file: str | None = None  # a shared-credentials (INI) file; default: boto3's chain
    profile: str | None = None  # the section of credentials_file (default "default")
    external_id: str | None = None  # sent as ExternalId (AWS: not a secret)
    max_ttl: timedelta = timedelta(hours=1)
    default_ttl: timedelta = timedelta(minutes=30)
    timeout: timedelta = timedelta(seconds=5)  # one STS call, retries included
    max_attempts: int = 3  # botocore "standard" retries: total attempts per call
    latency_margin: timedelta = timedelta(seconds=1)  # how long STS may take to answer (see docs)

    def __post_init__(self) -> None:
        check_ttls(self.max_ttl, self.default_ttl, at_least=MIN_TTL, at_most=MAX_SESSION)
        check_duration("timeout", self.timeout, at_least=_ONE_SECOND, at_most=_ONE_MINUTE)
        check_duration(
            "latency_margin", self.latency_margin, at_least=timedelta(0), at_most=_MAX_MARGIN
        )
        _settings(self, ValueError)


@dataclass(frozen=True, slots=True)
class Target:
    """A validated resource entry."""

    role_arn: str
    actions: Mapping[str, tuple[str, ...]]
    arns: tuple[str, ...]
    external_id: str | None


@dataclass(frozen=True, slots=True)
class Settings:
    """A validated instance configuration."""

    region: str
    endpoint_url: str | None
    credentials_file: Path | None
    profile: str
    max_ttl: timedelta
    default_ttl: timedelta
    timeout: timedelta
    max_attempts: int
    latency_margin: timedelta
    targets: Mapping[str, Target]


@dataclass(frozen=True, slots=True, repr=False)
class BrokerCredentials:
    """The broker's own static AWS credentials, read from ``credentials_file``."""

    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None

    def __repr__(self) -> str:
        return f"BrokerCredentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


def session_policy(target: Target, actions: tuple[str, ...]) -> str:
    """The inline session policy for ``actions`` (scope action names) of ``target``: one Allow
    statement with exactly their IAM actions (sorted, without duplicates) on the target's
    resource ARNs. Compact JSON, the same bytes for the same input."""
    iam_actions = sorted({a for name in actions for a in target.actions[name]})
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": iam_actions, "Resource": list(target.arns)}],
    }
    return json.dumps(document, separators=(",", ":"))


def load_settings(name: str, raw: Mapping[str, Any]) -> Settings:
    """Validate the raw ``config`` mapping of instance ``name`` and check its
    ``credentials_file``. Raises ConfigError."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"aws issuer {name!r}: {message}")

    if not isinstance(raw, Mapping):
        raise fail("config must be a mapping")
    try:
        config = decode(dict(raw), AWSConfig)
    except ConfigError as exc:
        raise fail(exc.message) from None
    settings = _settings(config, fail)  # cannot fail: decoding ran the same checks
    if settings.credentials_file is not None:
        try:
            read_credentials_file(settings.credentials_file, settings.profile)
        except ValueError as exc:
            raise fail(f"credentials_file: {exc}") from None
    return settings


def _settings(config: AWSConfig, fail: Callable[[str], Exception]) -> Settings:
    """The rules that need no file beyond the durations (``__post_init__`` checks those first),
    and the values derived from them."""
    if not _REGION.match(config.region):
        raise fail(f"region: not an AWS region name: {config.region!r}")
    endpoint = config.endpoint_url
    if endpoint is not None:
        problem = _endpoint_problem(endpoint)
        if problem:
            raise fail(f"endpoint_url: {problem}")
    credentials_file: Path | None = None
    if config.credentials_file is not None:
        if not config.credentials_file:
            raise fail("credentials_file: must not be empty")
        credentials_file = Path(config.credentials_file)
    if config.profile is not None:
        if credentials_file is None:
            raise fail("profile: only used with credentials_file (set AWS_PROFILE for the chain)")
        if not _PROFILE.match(config.profile):
            raise fail(f"profile: not a profile name: {config.profile!r}")
    profile = config.profile or "default"
    if config.external_id is not None and not _EXTERNAL_ID.match(config.external_id):
        raise fail("external_id: 2 to 1224 characters of letters, digits and _+=,.@:/-")

    if not 1 <= config.max_attempts <= 10:
        raise fail(f"max_attempts: must be between 1 and 10, got {config.max_attempts}")

    if not config.resources:
        raise fail("resources: at least one resource is required")
    targets: dict[str, Target] = {}
    for resource, entry in config.resources.items():
        where = f"resources[{resource!r}]"
        if not resource or len(resource) > 2048 or any(c.isspace() for c in resource):
            raise fail(f"{where}: a resource name is 1 to 2048 characters without whitespace")
        if not _ROLE_ARN.match(entry.role_arn):
            raise fail(f"{where}.role_arn: not an IAM role ARN: {entry.role_arn!r}")
        if not entry.actions:
            raise fail(f"{where}.actions: at least one action is required")
        actions: dict[str, tuple[str, ...]] = {}
        for action, iam_actions in entry.actions.items():
            if not _ACTION_NAME.match(action):
                raise fail(f"{where}.actions: not an action name: {action!r}")
            if not iam_actions:
                raise fail(f"{where}.actions.{action}: list at least one IAM action")
            for iam_action in iam_actions:
                if not _IAM_ACTION.match(iam_action):
                    raise fail(
                        f"{where}.actions.{action}: not an IAM action (service:Action): "
                        f"{iam_action!r}"
                    )
            actions[action] = tuple(dict.fromkeys(iam_actions))
        if not entry.resources:
            raise fail(f"{where}.resources: list at least one resource ARN")
        for arn in entry.resources:
            if not _ARN.match(arn) or len(arn) > 2048:
                raise fail(f"{where}.resources: not an ARN: {arn!r}")
        if entry.external_id is not None and not _EXTERNAL_ID.match(entry.external_id):
            raise fail(
                f"{where}.external_id: 2 to 1224 characters of letters, digits and _+=,.@:/-"
            )
        target = Target(
            role_arn=entry.role_arn,
            actions=actions,
            arns=tuple(dict.fromkeys(entry.resources)),
            external_id=entry.external_id or config.external_id,
        )
        size = len(session_policy(target, tuple(actions)))  # the largest policy it can need
        if size > MAX_POLICY_CHARS:
            raise fail(
                f"{where}: the session policy for all its actions is {size} characters, over "
                f"AWS's limit of {MAX_POLICY_CHARS}; use fewer resources or IAM actions"
            )
        targets[resource] = target

    return Settings(
        region=config.region,
        endpoint_url=endpoint,
        credentials_file=credentials_file,
        profile=profile,
        max_ttl=config.max_ttl,
        default_ttl=config.default_ttl,
        timeout=config.timeout,
        max_attempts=config.max_attempts,
        latency_margin=config.latency_margin,
        targets=targets,
    )


def read_credentials_file(path: Path, profile: str) -> BrokerCredentials:
    """The ``[profile]`` keys of an AWS shared-credentials file (``aws_access_key_id``,
    ``aws_secret_access_key``, optional ``aws_session_token``).

    Raises ValueError with a message that never holds a value from the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not readable ({exc.__class__.__name__})") from None
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text, source="<credentials_file>")
    except configparser.Error as exc:
        raise ValueError(
            f"{str(path)!r} is not an INI credentials file ({exc.__class__.__name__})"
        ) from None
    if not parser.has_section(profile):
        raise ValueError(f"{str(path)!r} has no [{profile}] section")
    section = parser[profile]
    unknown = sorted(
        set(section) - {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
    )
    if unknown:
        raise ValueError(f"[{profile}] has unexpected keys: {', '.join(unknown)}")
    key_id = section.get("aws_access_key_id", "").strip()
    secret = section.get("aws_secret_access_key", "").strip()
    token = section.get("aws_session_token", "").strip()
    if not key_id or not secret:
        raise ValueError(f"[{profile}] needs aws_access_key_id and aws_secret_access_key")
    if not re.fullmatch(r"[A-Z0-9]{16,128}", key_id):
        raise ValueError(f"[{profile}] aws_access_key_id is not an access key id")
    return BrokerCredentials(
        access_key_id=key_id,
        secret_access_key=Secret(secret),
        session_token=Secret(token) if token else None,
    )


def _endpoint_problem(url: str) -> str | None:
    try:
        check_url(url)
    except ValueError as exc:
        return str(exc)
    return None
