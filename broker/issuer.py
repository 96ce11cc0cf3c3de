"""THE issuer plugin contract, and nothing else. A contract module.

An issuer mints short-lived credentials against one backend and revokes them for real. Issuers
are discovered through the ``jit_broker.issuers`` entry-point group; the broker configures
*instances* (``issuers: {pg-orders: {type: postgres, config: {...}}}``), constructs each with an
:class:`IssuerContext` and calls ``check_health()`` before it serves.

Rules every issuer follows (checked by ``broker.testing.IssuerConformance``):

- ``mint()`` honours ``request.not_after``: the credential must stop working by then.
- It grants exactly ``request.scope`` (least privilege), never more.
- ``Credential.handle`` holds only non-secret facts; the broker stores it in Redis.
- Name what you create after ``request.lease_id`` so ``revoke()`` can find it even if the broker
  crashed before it recorded the handle (``revoke()`` may be called with an empty handle).
- ``revoke()`` is idempotent; an unknown or already-expired lease is a no-op.
- ``mint()`` refuses any ``request.params`` name it does not define with
  :class:`broker.errors.InvalidRequest` (never silently ignored).
- A backend outage raises :class:`broker.errors.IssuerUnavailable`; a scope the backend cannot
  express raises :class:`broker.errors.ScopeNotSupported` from ``check_scope()``.

Configuration: an issuer class may declare ``config_type``, a msgspec Struct describing its
``config:`` mapping (durations as ``timedelta`` fields). The broker then checks every configured
instance against it *without constructing the issuer* — ``jit config check`` and ``jit serve``
alike, before any issuer starts — and ``jit config schema`` describes it. Decoding is
:func:`broker.decoding.decode` (unknown keys refused, the broker's one duration syntax); checks
that need no file and no network belong in the Struct's ``__post_init__`` (raise ``ValueError``
naming the key) so that they run there too. Whatever needs a file or the backend stays in the
constructor. An issuer without ``config_type`` is checked only when it is constructed.

Optional protocols: :class:`PublishesKeys`, :class:`PublishesDocuments`, :class:`Introspectable`
and :class:`ExportsEnvironment` (how a credential maps onto a process: environment variables and
files, for ``jit exec``; docs/adr/0031).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from broker.clock import Clock
from broker.types import Credential, Lease, MintRequest, Scope

__all__ = [
    "Capabilities",
    "ExportSource",
    "Exports",
    "ExportsEnvironment",
    "Introspectable",
    "Inventoried",
    "Issuer",
    "IssuerContext",
    "IssuerFactory",
    "PublishesDocuments",
    "PublishesKeys",
    "config_type_of",
]


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    max_ttl: timedelta
    default_ttl: timedelta
    min_ttl: timedelta = timedelta(seconds=1)
    revocable: bool = True  # False: expiry-only; the broker caps the TTL to the task
    renewable: bool = False


class IssuerContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the broker hands an issuer at construction."""

    name: str  # the instance name from config ("jwt", "pg-orders")
    config: dict[str, Any]  # the instance's raw config; the issuer validates it strictly
    clock: Clock
    broker_url: str  # the broker's public URL (e.g. the ``iss`` of tokens it signs)
    dev: bool = False  # running under ``jit dev``: generate keys in memory, etc.
    # Shared state for issuers that need it across replicas (e.g. an SSH KRL's revoked serials).
    # Use only keys under ``state_prefix`` and hash-tag them (``{state_prefix}:{krl}``); never
    # store a secret there in the clear (the github issuer keeps AES-GCM-sealed copies of its
    # tokens under a key only the broker reads: ADR 0006). None in unit tests.
    redis: Any = None  # redis.asyncio.Redis
    state_prefix: str = ""  # "<broker key prefix>:issuer:<instance name>"


@runtime_checkable
class Issuer(Protocol):
    name: str
    capabilities: Capabilities

    def check_scope(self, requested: Scope) -> None:
        """Raise ScopeNotSupported for anything this backend cannot express."""
        ...

    async def mint(self, request: MintRequest) -> Credential: ...

    async def revoke(self, lease: Lease) -> None:
        """Idempotent. ``lease.handle`` may be empty after a crash mid-mint."""
        ...

    async def check_health(self) -> None: ...

    async def aclose(self) -> None: ...


class IssuerFactory(Protocol):
    """What an entry point resolves to: usually the issuer class itself."""

    def __call__(self, context: IssuerContext) -> Issuer: ...


@runtime_checkable
class PublishesKeys(Protocol):
    """An issuer whose credentials are verified with public keys the broker publishes at
    ``/.well-known/jwks.json``."""

    def jwks(self) -> dict[str, Any]: ...


@runtime_checkable
class PublishesDocuments(Protocol):
    """An issuer with public documents that relying parties fetch: a CA certificate or public
    key, a certificate or key revocation list. Served without authentication at
    ``GET /v1/issuers/<instance>/<name>``; the content must never be secret."""

    async def documents(self) -> dict[str, tuple[str, bytes]]:
        """``name -> (content type, body)``; names are ``[a-z0-9._-]+``."""
        ...


@runtime_checkable
class Inventoried(Protocol):
    """An issuer whose backend can list what it minted (Redis ACL users, PostgreSQL roles).

    Reconciliation (``jit reconcile``, also run at start and periodically) revokes every listed
    credential that no live lease owns: after Redis lost its data, a credential that only the
    reaper would ever have removed must not live on unnoticed. Issuers whose credentials
    expire by themselves (signed tokens, certificates, STS sessions) need not implement it."""

    async def inventory(self) -> list[str]:
        """The lease ids of every credential this issuer made that the backend still holds
        (derived from the names the issuer gave them). Raises IssuerUnavailable when the
        backend cannot be listed."""
        ...


@runtime_checkable
class Introspectable(Protocol):
    """An issuer that can recognise its own tokens for RFC 7662 introspection."""

    def identify(self, token: str, now: datetime) -> str | None:
        """The lease id of ``token`` if this issuer signed it and it verifies (signature and
        expiry); otherwise None. The broker then checks the lease's state."""
        ...


def config_type_of(factory: object) -> type[msgspec.Struct] | None:
    """The ``config_type`` an issuer factory (usually the issuer class) declares, or None.

    Raises TypeError when it declares something that is not a msgspec Struct type."""
    declared = getattr(factory, "config_type", None)
    if declared is None:
        return None
    if not (isinstance(declared, type) and issubclass(declared, msgspec.Struct)):
        raise TypeError(f"config_type must be a msgspec.Struct subclass, not {declared!r}")
    return declared


#: Environment variable names an issuer may export (POSIX portable names, upper case).
ENV_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]{0,127}", re.ASCII)
#: File names an issuer may export: one path component, no leading dot.
FILE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", re.ASCII)


class ExportSource(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """Where one exported value comes from: exactly one field is set. It *names* a part of the
    credential the client already holds; it never carries a secret value itself, so the
    exports travel (and are kept, sealed, for idempotent replays) beside the secret without
    copying it."""

    secret: bool = False  # the credential's secret, whole
    member: str | None = None  # one string member of the secret, which is a JSON object (aws)
    metadata: str | None = None  # one entry of the credential's metadata
    value: str | None = None  # a literal, non-secret value
    file: str | None = None  # env only: the path of one of the exported files
    private_key: bool = False  # the private key the client generated for params["public_key"]
    document: str | None = None  # a public document of the issuer (GET /v1/issuers/<i>/<name>)

    def __post_init__(self) -> None:
        chosen = [
            name
            for name, set_ in (
                ("secret", self.secret),
                ("member", self.member is not None),
                ("metadata", self.metadata is not None),
                ("value", self.value is not None),
                ("file", self.file is not None),
                ("private_key", self.private_key),
                ("document", self.document is not None),
            )
            if set_
        ]
        if len(chosen) != 1:
            raise ValueError(f"an export source names exactly one origin, not {chosen or 'none'}")


class Exports(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """How a credential maps onto a process: environment variables and files. The client
    writes each file with mode 0600 into a private (0700) directory it removes afterwards, and
    an ``ExportSource(file=...)`` in ``env`` is that file's path."""

    env: dict[str, ExportSource] = msgspec.field(default_factory=dict)
    files: dict[str, ExportSource] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.env:
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"exports: {name!r} is not an environment variable name")
        for name, source in self.files.items():
            if not FILE_NAME.fullmatch(name):
                raise ValueError(f"exports: {name!r} is not a plain file name")
            if source.file is not None:
                raise ValueError(f"exports: file {name!r} cannot be the path of another file")
        for name, source in self.env.items():
            if source.file is not None and source.file not in self.files:
                raise ValueError(f"exports: {name} names file {source.file!r}, not exported")

    def check(self, credential: Credential) -> None:
        """Raise ValueError unless every source can be resolved from ``credential`` (and a
        generated key or a public document): metadata entries exist, the secret is a JSON
        object with the named string members, and no literal value contains the secret."""
        secret = credential.secret.reveal()
        for where, source in [*self.env.items(), *self.files.items()]:
            if source.metadata is not None and source.metadata not in credential.metadata:
                raise ValueError(f"exports: {where} names metadata {source.metadata!r}, absent")
            if source.member is not None:
                try:
                    member = json.loads(secret).get(source.member)
                except (ValueError, AttributeError):
                    member = None
                if not isinstance(member, str):
                    raise ValueError(
                        f"exports: {where} names secret member {source.member!r}, absent"
                    )
            if source.value is not None and secret and secret in source.value:
                raise ValueError(f"exports: {where} copies the secret into a literal value")


@runtime_checkable
class ExportsEnvironment(Protocol):
    """An issuer that says how its credentials map onto a process environment (``jit exec``,
    ``Client.environment()``). Called by the broker right after ``mint()``; the result goes to
    the workload with the credential. Pure: no I/O, no secret copied (see :class:`Exports`)."""

    def exports(self, credential: Credential, request: MintRequest) -> Exports: ...
