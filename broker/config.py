"""Strict settings: a YAML or JSON file, then ``JIT_*`` environment overrides.

Unknown keys anywhere are errors (fail closed), each message naming the key. Durations are
written as ``"200ms"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"1h30m"`` or a number of seconds
(decoding is :func:`broker.decoding.decode`, shared with every issuer's config). An environment
override that is not a valid value is an error naming the variable. An issuer instance's
``config`` is kept raw here: :func:`broker.registry.validate_issuer_configs` checks it against
its type. :func:`json_schema` is what ``jit config schema`` prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

from broker import decoding
from broker.clock import parse_duration
from broker.errors import ConfigError

__all__ = [
    "ApprovalSettings",
    "AuditSettings",
    "ClientSettings",
    "IdentityIssuerSettings",
    "IssuerInstanceSettings",
    "LimitsSettings",
    "LoggingSettings",
    "MetricsSettings",
    "PersonSettings",
    "QuotaLimit",
    "QuotaSettings",
    "ReaperSettings",
    "RedisSettings",
    "Settings",
    "ShutdownSettings",
    "SlackSettings",
    "SsfReceiverSettings",
    "SsfSettings",
    "WebhookSinkSettings",
    "json_schema",
    "load_settings",
    "parse_duration",
    "redis_settings",
    "settings_from_mapping",
]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class IdentityIssuerSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A trusted OIDC issuer whose tokens identify workloads."""

    name: str  # short name used in policies and in Principal.id ("github", "gitlab", "k8s")
    issuer: str  # the exact ``iss`` value
    audiences: list[str]  # accepted ``aud`` values (at least one)
    preset: Literal["generic", "github", "gitlab", "kubernetes"] = "generic"
    jwks_uri: str | None = None  # None: discover from <issuer>/.well-known/openid-configuration
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    leeway: timedelta = timedelta(seconds=30)
    jwks_min_refresh_interval: timedelta = timedelta(seconds=30)
    jwks_cache_ttl: timedelta = timedelta(minutes=10)
    max_token_lifetime: timedelta = timedelta(hours=24)


class IssuerInstanceSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    type: str  # entry-point name in the ``jit_broker.issuers`` group
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class ClientSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An OAuth client (a resource server) that authenticates with client credentials."""

    client_id: str
    secret_file: str  # file holding the client secret (never in the config itself)
    permissions: list[Literal["introspect", "revoke", "report"]] = msgspec.field(
        default_factory=lambda: ["introspect"]
    )
    # The resources (audiences) this client serves, exactly as credentials name them. A usage
    # report by lease id (without the token) counts only for credentials for one of these.
    resources: list[str] = msgspec.field(default_factory=list)


class PersonSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A human who may approve requests, and how to recognise them."""

    slack: str | None = None  # Slack user id (U0123ABC)
    identities: list[str] = msgspec.field(default_factory=list)  # Principal ids ("okta:alice@x")
    github: str | None = None  # GitHub login (matched against actor / triggering_actor)
    gitlab: str | None = None  # GitLab username (matched against user_login)


class SlackSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bot_token_file: str  # xoxb- token, in a file (never in the config)
    signing_secret_file: str  # the app's signing secret, in a file
    api_url: str = "https://slack.com/api/"  # tests point this at a local fake
    default_channel: str | None = None  # channel id when a grant names none
    timeout: timedelta = timedelta(seconds=10)


class ApprovalSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    people: dict[str, PersonSettings] = msgspec.field(default_factory=dict)
    groups: dict[str, list[str]] = msgspec.field(default_factory=dict)  # name -> people
    default_approvers: list[str] = msgspec.field(default_factory=list)  # for `approval: required`
    default_expiry: timedelta = timedelta(minutes=15)
    max_pending_per_workload: int = 10
    max_wait: timedelta = timedelta(seconds=60)  # longest ?wait= long-poll
    slack: SlackSettings | None = None


class ReaperSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    poll_interval: timedelta = timedelta(milliseconds=200)
    batch_size: int = 200
    concurrency: int = 32
    visibility_timeout: timedelta = timedelta(seconds=30)
    mint_grace: timedelta = timedelta(seconds=60)  # a `minting` lease older than this is reaped
    backoff_base: timedelta = timedelta(seconds=1)
    backoff_cap: timedelta = timedelta(minutes=5)
    overdue_after_attempts: int = 8
    # ... or when revocation has kept failing this long, whichever comes first
    overdue_after: timedelta = timedelta(seconds=60)
    health_interval: timedelta = timedelta(seconds=10)  # issuer health checks while healthy
    health_retry_interval: timedelta = timedelta(seconds=2)  # ... and while degraded
    # Revoke what a backend holds that no live lease owns (docs/revocation.md): at start, then
    # this often, one replica at a time.
    reconcile_interval: timedelta = timedelta(minutes=10)
    # Shards of the due index (docs/revocation.md "Keys"); change only on an empty store.
    due_shards: int = 1024
    state_check_interval: timedelta = timedelta(seconds=5)  # detecting a Redis that lost its data
    retention: timedelta = timedelta(hours=24)  # how long revoked lease records stay readable
    issuer_timeout: timedelta = timedelta(seconds=10)  # one mint or revoke call at an issuer


class LimitsSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_body_bytes: int = 64 * 1024
    max_ttl: timedelta = timedelta(hours=12)  # hard ceiling whatever a policy says
    default_task_ttl: timedelta = timedelta(hours=12)  # a task's life when it declares none
    max_task_ttl: timedelta = timedelta(hours=24)  # the longest life a task may declare


class ShutdownSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a replica stops on SIGTERM (docs/deploy.md "Several replicas and draining"): /readyz
    answers 503 at once; it keeps serving for ``drain_delay``, then stops accepting and gives
    requests in flight up to ``drain_timeout`` to finish."""

    drain_delay: timedelta = timedelta(0)  # the chart's preStop sleep usually does this job
    drain_timeout: timedelta = timedelta(seconds=65)  # > approvals.max_wait (60 s long-polls)


class WebhookSinkSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An HTTP endpoint that receives audit records in batches (JSON array), retried until it
    answers 2xx; the Redis stream is the buffer, so nothing is dropped during an outage."""

    name: str
    url: str
    token_file: str | None = None  # bearer token for the endpoint, in a file
    batch_size: int = 100
    timeout: timedelta = timedelta(seconds=10)


class AuditSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    file: str | None = None  # JSON-lines file; None: only the Redis stream and the log
    stream_maxlen: int = 1_000_000
    # Ed25519 private key (PEM) that signs chain checkpoints; dev: generated in memory.
    signing_key_file: str | None = None
    # Key for the keyed HMACs of sensitive identifiers (tokens) in records; dev: generated.
    hmac_key_file: str | None = None
    checkpoint_every: int = 1000  # records between signed checkpoints
    checkpoint_interval: timedelta = timedelta(minutes=1)  # or this long, whichever first
    webhooks: list[WebhookSinkSettings] = msgspec.field(default_factory=list)


class SsfReceiverSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A Shared Signals receiver (a resource server): revocations are pushed to it (RFC 8935)."""

    name: str
    endpoint: str  # the push endpoint URL
    audience: str  # the SET ``aud``
    token_file: str | None = None  # bearer token the receiver expects, in a file
    timeout: timedelta = timedelta(seconds=10)


class SsfSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Private key (PEM; Ed25519 or P-256) that signs Security Event Tokens; dev: generated.
    signing_key_file: str | None = None
    receivers: list[SsfReceiverSettings] = msgspec.field(default_factory=list)


class MetricsSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Bearer token that a scraper must send to GET /metrics, in a file. Without it, /metrics is
    # off under `jit serve` (it is open under `jit dev`).
    token_file: str | None = None


class QuotaLimit(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """None: no limit."""

    live_leases: int | None = None  # live (minting, active, revoking) leases at once
    mints_per_minute: int | None = None  # credentials requested per calendar minute


class QuotaSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Quotas enforced atomically in Redis across replicas (docs/configuration.md "quotas")."""

    workload: QuotaLimit = msgspec.field(default_factory=QuotaLimit)  # each workload (principal)
    owner: QuotaLimit = msgspec.field(default_factory=QuotaLimit)  # each policy owner's grants
    owners: dict[str, QuotaLimit] = msgspec.field(default_factory=dict)  # per policy owner


class RedisSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where Redis is and how to reach it (docs/configuration.md "redis"); credentials come from
    files only. Mode-specific keys (url; sentinels, master_name; nodes) are refused in another
    mode."""

    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    url: str | None = None  # standalone only; no password in it (password_file)
    sentinels: list[str] | None = None  # sentinel only: "host:port" of each sentinel
    master_name: str | None = None  # sentinel only
    nodes: list[str] | None = None  # cluster only: "host:port" seed nodes
    db: int | None = None  # standalone/sentinel (default 0); cluster: 0 only
    username: str | None = None  # ACL user
    password_file: str | None = None  # read at start, one trailing newline stripped
    sentinel_username: str | None = None  # sentinel only
    sentinel_password_file: str | None = None  # sentinel only
    tls: bool = False
    ca_file: str | None = None  # with tls only
    max_connections: int = 64  # per replica (per node in cluster mode)
    timeout: timedelta = timedelta(seconds=5)  # connect, socket and pool wait
    wait_replicas: int = 0  # >0: WAIT this many replicas after the write-ahead and the commit
    wait_timeout: timedelta = timedelta(milliseconds=100)


_DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class LoggingSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: Literal["json", "text"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    public_url: str = "http://127.0.0.1:8200"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8200
    redis_url: str = _DEFAULT_REDIS_URL  # standalone shorthand for ``redis: {url: ...}``
    redis: RedisSettings | None = None
    key_prefix: str = "jit"
    policy_dir: str = "policies"
    identity: list[IdentityIssuerSettings] = msgspec.field(default_factory=list)
    issuers: dict[str, IssuerInstanceSettings] = msgspec.field(default_factory=dict)
    clients: list[ClientSettings] = msgspec.field(default_factory=list)
    reaper: ReaperSettings = msgspec.field(default_factory=ReaperSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    shutdown: ShutdownSettings = msgspec.field(default_factory=ShutdownSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    approvals: ApprovalSettings = msgspec.field(default_factory=ApprovalSettings)
    ssf: SsfSettings = msgspec.field(default_factory=SsfSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    quotas: QuotaSettings = msgspec.field(default_factory=QuotaSettings)
    broker_audience: str = "jit-broker"  # the ``aud`` workload tokens must carry for the broker


_ENV_OVERRIDES = {
    "JIT_REDIS_URL": "redis_url",
    "JIT_PUBLIC_URL": "public_url",
    "JIT_HOST": "host",
    "JIT_PORT": "port",
    "JIT_POLICY_DIR": "policy_dir",
    "JIT_KEY_PREFIX": "key_prefix",
}


def settings_from_mapping(data: Any, *, source: str = "<config>") -> Settings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        settings = decoding.decode(data, Settings, strict=False)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    _check(settings, source)
    return settings


def _env_value(var: str, key: str, text: str) -> Any:
    if key == "port":
        digits = text.strip()
        if not (digits.isascii() and digits.isdigit() and 1 <= int(digits) <= 65535):
            raise ConfigError(f"{var}: not a port number (1 to 65535)")
        return int(digits)
    return text


def _check(s: Settings, source: str) -> None:
    names = [i.name for i in s.identity]
    if len(names) != len(set(names)):
        raise ConfigError(f"{source}: identity issuer names must be unique")
    for ident in s.identity:
        if not ident.audiences:
            raise ConfigError(f"{source}: identity issuer {ident.name!r} needs an audience")
        bad = [a for a in ident.algorithms if a.upper() == "NONE" or a.upper().startswith("HS")]
        if bad:
            raise ConfigError(
                f"{source}: identity issuer {ident.name!r}: algorithms {bad} are not allowed "
                "(only asymmetric algorithms verify third-party tokens)"
            )
    a = s.approvals
    for group, members in a.groups.items():
        unknown = sorted(set(members) - set(a.people))
        if unknown:
            raise ConfigError(f"{source}: approvals.groups.{group}: unknown people {unknown}")
    for name in a.default_approvers:
        if name.removeprefix("group:") not in (a.groups if name.startswith("group:") else a.people):
            raise ConfigError(f"{source}: approvals.default_approvers: unknown {name!r}")
    r = s.reaper
    if not 1 <= r.due_shards <= 65536:
        raise ConfigError(f"{source}: reaper.due_shards must be between 1 and 65536")
    if r.batch_size < 1 or r.concurrency < 1 or r.overdue_after_attempts < 1:
        raise ConfigError(
            f"{source}: reaper.batch_size, concurrency and overdue_after_attempts must be >= 1"
        )
    if r.issuer_timeout * 2 > r.visibility_timeout:
        raise ConfigError(
            f"{source}: reaper.visibility_timeout must be at least twice reaper.issuer_timeout "
            "(a claimed revocation must finish before another replica may take it over)"
        )
    for where, q in [
        ("workload", s.quotas.workload),
        ("owner", s.quotas.owner),
        *((f"owners.{k}", v) for k, v in s.quotas.owners.items()),
    ]:
        for name, value in (
            ("live_leases", q.live_leases),
            ("mints_per_minute", q.mints_per_minute),
        ):
            if value is not None and value < 1:
                raise ConfigError(
                    f"{source}: quotas.{where}.{name} must be at least 1 (or omitted)"
                )
    if s.limits.max_body_bytes < 1024:
        raise ConfigError(f"{source}: limits.max_body_bytes must be at least 1024")
    try:
        decoding.check_duration(
            "shutdown.drain_delay", s.shutdown.drain_delay, at_most=timedelta(minutes=10)
        )
        decoding.check_duration(
            "shutdown.drain_timeout",
            s.shutdown.drain_timeout,
            at_least=timedelta(seconds=1),
            at_most=timedelta(minutes=30),
        )
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_redis(s, source)


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)


def _check_redis(s: Settings, source: str) -> None:
    r = s.redis
    if r is None:
        return
    where = f"{source}: redis"
    if s.redis_url != _DEFAULT_REDIS_URL:
        raise ConfigError(
            f"{source}: redis_url and a redis: block are both set; keep one (redis.url is the "
            "standalone form)"
        )
    given = {
        "url": r.url is not None,
        "sentinels": r.sentinels is not None,
        "master_name": r.master_name is not None,
        "sentinel_username": r.sentinel_username is not None,
        "sentinel_password_file": r.sentinel_password_file is not None,
        "nodes": r.nodes is not None,
    }
    allowed = {
        "standalone": {"url"},
        "sentinel": {"sentinels", "master_name", "sentinel_username", "sentinel_password_file"},
        "cluster": {"nodes"},
    }[r.mode]
    for key, present in given.items():
        if present and key not in allowed:
            raise ConfigError(f"{where}.{key}: not used in mode {r.mode} (remove it)")
    if r.mode == "standalone" and r.url is not None:
        parts = urlsplit(r.url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"{where}.url: the scheme must be redis://, rediss:// or unix:// in mode "
                "standalone (sentinel and cluster have their own mode)"
            )
        if r.tls and parts.scheme == "unix":
            raise ConfigError(f"{where}.tls: not with a unix:// url")
        if parts.password is not None or "password=" in parts.query:
            raise ConfigError(
                f"{where}.url: a password in the URL is refused (use redis.password_file)"
            )
        if parts.username is not None and r.username is not None:
            raise ConfigError(f"{where}.username: the url names a user too; keep one")
        path_db = parts.path.strip("/")
        if r.db is not None and path_db and path_db != str(r.db):
            raise ConfigError(f"{where}.db: the url names database {path_db}; keep one")
    if r.mode == "sentinel":
        if not r.sentinels:
            raise ConfigError(f"{where}.sentinels: mode sentinel needs at least one sentinel")
        if not r.master_name:
            raise ConfigError(f"{where}.master_name: mode sentinel needs the master's name")
    if r.mode == "cluster" and not r.nodes:
        raise ConfigError(f"{where}.nodes: mode cluster needs at least one seed node")
    for key, addrs in (("sentinels", r.sentinels), ("nodes", r.nodes)):
        for addr in addrs or ():
            if not _host_port(addr):
                raise ConfigError(f"{where}.{key}: {addr!r} is not host:port")
    if r.db is not None:
        if r.db < 0:
            raise ConfigError(f"{where}.db: must be >= 0")
        if r.mode == "cluster" and r.db != 0:
            raise ConfigError(f"{where}.db: a cluster has database 0 only")
    if r.ca_file is not None and not r.tls:
        raise ConfigError(f"{where}.ca_file: only with tls: true")
    if r.max_connections < 1:
        raise ConfigError(f"{where}.max_connections: must be >= 1")
    if r.timeout <= timedelta(0):
        raise ConfigError(f"{where}.timeout: must be positive")
    if r.wait_replicas < 0:
        raise ConfigError(f"{where}.wait_replicas: must be >= 0")
    if r.wait_replicas and r.mode == "cluster":
        raise ConfigError(
            f"{where}.wait_replicas: not available in mode cluster (a cluster relies on "
            'asynchronous replication and AOF; docs/deploy.md "Redis topologies")'
        )
    if r.wait_replicas and r.wait_timeout <= timedelta(0):
        raise ConfigError(f"{where}.wait_timeout: must be positive with wait_replicas")
    if r.wait_replicas and r.wait_timeout >= r.timeout:
        raise ConfigError(
            f"{where}.wait_timeout: must be shorter than redis.timeout (a batch's replies, "
            "WAIT's included, are read within timeout)"
        )


def redis_settings(s: Settings) -> RedisSettings:
    """The ``redis:`` block, or the standalone one ``redis_url`` stands for."""
    if s.redis is not None:
        return s.redis
    return RedisSettings(mode="standalone", url=s.redis_url)


def load_settings(path: str | Path, env: dict[str, str] | None = None) -> Settings:
    """Load a config file (YAML or JSON), apply ``JIT_*`` overrides, validate strictly."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML/JSON: {exc}") from None
    env = dict(os.environ) if env is None else env
    if isinstance(data, dict):
        for var, key in _ENV_OVERRIDES.items():
            if var in env:
                data[key] = _env_value(var, key, env[var])
    settings = settings_from_mapping(data, source=str(p))
    base = p.parent
    # Relative paths in the config are relative to the config file.
    if not Path(settings.policy_dir).is_absolute():
        settings = msgspec.structs.replace(settings, policy_dir=str(base / settings.policy_dir))
    return settings


def json_schema(issuer_types: Mapping[str, type | None] | None = None) -> dict[str, Any]:
    """The JSON Schema of the config file.

    ``issuer_types`` maps each installed issuer type to its ``config_type`` (None when it
    declares none, or cannot be imported); given, ``issuers.<name>`` is a ``oneOf`` over them,
    each ``{type: <const>, config: <that type's schema>}``. Without it, ``config`` is any
    mapping."""
    declared = {name: t for name, t in (issuer_types or {}).items() if t is not None}
    names = sorted(declared)
    schemas, defs = decoding.json_schema([Settings, *(declared[n] for n in names)])
    by_type = dict(zip(names, schemas[1:], strict=True))
    if issuer_types:
        variants = []
        for name in sorted(issuer_types):
            config: dict[str, Any] = by_type.get(name) or {
                "type": "object",
                "description": "not described by its issuer type; checked when it starts",
            }
            required = ["type"]
            if name in declared and any(f.required for f in msgspec.structs.fields(declared[name])):
                required.append("config")
            variants.append(
                {
                    "title": f"issuer type {name}",
                    "type": "object",
                    "properties": {"type": {"const": name}, "config": config},
                    "required": required,
                    "additionalProperties": False,
                }
            )
        defs["Settings"]["properties"]["issuers"] = {
            "type": "object",
            "additionalProperties": {"oneOf": variants},
        }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schemas[0], "$defs": defs}
