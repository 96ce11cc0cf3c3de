"""The ``ssh`` issuer: short-lived OpenSSH user certificates signed by a CA the broker holds.

Owns the certificates it mints, the scope model that maps onto them, revocation through a KRL,
and the public documents hosts fetch (``ca.pub``, ``revoked.krl``). Configuration lives in
:mod:`issuers.ssh.config`, key handling in :mod:`issuers.ssh.keys`, the KRL format in
:mod:`issuers.ssh.krl` and the shared revoked-serial set in :mod:`issuers.ssh.state`.

- Scope: ``resource`` is ``ssh://<host>`` (or a configured pattern such as
  ``ssh://*.prod.example``) and every action is ``login:<name>`` for a login the resource
  configures; each login maps to one or more certificate principals.
- The workload sends its public key in ``params["public_key"]``; its private key never leaves
  it. ``params["source_address"]`` (a CIDR list) narrows the ``source-address`` critical option.
- A certificate: type user, serial = the first 8 bytes of SHA-256(lease id) (so a crashed mint
  is revocable from the lease id alone), key id ``jit lease=<id> task=<task> principal=<id>``,
  ``valid_after`` = ``issued_at`` - ``clock_skew``, ``valid_before`` = ``not_after`` rounded
  down to the second, extensions ``permit-pty`` unless configured.
- ``revoke()`` adds the serial to the shared revoked set; ``documents()["revoked.krl"]`` is
  built from it. Hosts enforce it once they have fetched the KRL (``RevokedKeys``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

from broker.errors import InvalidRequest, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, Exports, ExportSource, IssuerContext
from broker.types import Credential, Lease, MintRequest, Scope, Secret
from issuers.ssh.config import (
    ResourceSettings,
    Settings,
    SSHConfig,
    config_error,
    is_resource,
    load_settings,
    parse_networks,
    within,
)
from issuers.ssh.keys import (
    CAKey,
    fingerprint,
    load_ca_key,
    parse_public_key,
    public_blob,
)
from issuers.ssh.krl import build_krl
from issuers.ssh.state import (
    RETENTION_GRACE,
    MemoryRevocations,
    RedisRevocations,
    Revocations,
)

__all__ = ["ACTION_PREFIX", "PARAMS", "SSHIssuer", "serial_for"]

log = logging.getLogger("jit.issuers.ssh")

ACTION_PREFIX: Final = "login:"
#: The params a workload may send; any other name is an InvalidRequest.
PARAMS: Final = frozenset({"public_key", "source_address"})
_MAX_KEY_ID_PART: Final = 128


def serial_for(lease_id: str) -> int:
    """The certificate serial of a lease: the first 8 bytes of SHA-256(lease id), big endian.
    Never 0 (OpenSSH cannot revoke serial 0)."""
    serial = int.from_bytes(hashlib.sha256(lease_id.encode()).digest()[:8], "big")
    return serial or 1


def _key_id_part(value: str) -> str:
    """Printable ASCII without spaces (so ``key=value`` pairs stay parseable in sshd logs)."""
    cleaned = "".join(c if "!" <= c <= "~" else "_" for c in value)
    return cleaned[:_MAX_KEY_ID_PART] or "_"


def _uint64(text: str) -> int | None:
    """A decimal uint64 from a handle, or None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None
    value = int(text)
    return value if value < 2**64 else None


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class SSHIssuer:
    """Mints OpenSSH user certificates. Implements ``Issuer`` and ``PublishesDocuments``.

    Raises ConfigError at construction for invalid config, or a missing, unreadable or
    unacceptable ``ca_key_file`` (it may be omitted only in development mode)."""

    #: The ``config:`` of an instance, checked by the broker before construction.
    config_type: ClassVar[type[SSHConfig]] = SSHConfig

    def __init__(self, context: IssuerContext) -> None:
        self.name: str = context.name
        self._clock = context.clock
        self.settings: Settings = load_settings(self.name, context.config)
        s = self.settings
        self.capabilities: Capabilities = Capabilities(
            max_ttl=s.max_ttl,
            default_ttl=s.default_ttl,
            revocable=s.revocable,
            renewable=False,
        )
        self._ca: CAKey = self._load_ca(context)
        self._ca_blob = public_blob(self._ca.public_key())
        self.ca_fingerprint: str = fingerprint(self._ca.public_key())
        self._revocations: Revocations
        if context.redis is not None:
            prefix = context.state_prefix or f"jit:issuer:{self.name}"
            self._revocations = RedisRevocations(
                context.redis, f"{prefix}:{{krl}}:revoked", issuer=self.name
            )
        else:
            self._revocations = MemoryRevocations()

    def _load_ca(self, context: IssuerContext) -> CAKey:
        path = self.settings.ca_key_file
        if path is None:
            if not context.dev:
                raise config_error(
                    self.name,
                    "ca_key_file: required (create one with `ssh-keygen -t ed25519 -N '' "
                    "-C jit-ssh-ca -f /etc/jit/ssh-ca` and set ca_key_file to it)",
                )
            generated = Ed25519PrivateKey.generate()
            log.warning(
                "ssh issuer %r: development mode, signing with an in-memory CA key (%s) that "
                "is lost on restart",
                self.name,
                fingerprint(generated.public_key()),
            )
            return generated
        try:
            data = Path(path).read_bytes()
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise config_error(self.name, f"ca_key_file: {exc.strerror or 'unreadable'}") from None
        try:
            key = load_ca_key(data, min_rsa_bits=self.settings.min_rsa_bits)
        except ValueError as exc:
            raise config_error(self.name, f"ca_key_file: {exc}") from None
        if stat.S_IMODE(mode) & 0o077:
            log.warning(
                "ssh issuer %r: ca_key_file is readable by group or others (mode %o); "
                "restrict it to the broker (0600)",
                self.name,
                stat.S_IMODE(mode),
            )
        return key

    def __repr__(self) -> str:
        return f"SSHIssuer(name={self.name!r}, ca={self.ca_fingerprint!r})"

    # -- scope -----------------------------------------------------------------------------

    def _resource(self, resource: str) -> ResourceSettings:
        """The configured resource for a requested one: an exact entry, else the one pattern
        that matches a concrete host. Raises ScopeNotSupported."""
        exact = self.settings.resources.get(resource)
        if exact is not None:
            return exact
        if not is_resource(resource) or "*" in resource:
            raise ScopeNotSupported(
                "resource must be ssh://<host>[:<port>] and match a configured resource"
            )
        matches = [
            r for r in self.settings.resources.values() if r.is_pattern and r.matches(resource)
        ]
        if not matches:
            raise ScopeNotSupported(f"resource {resource!r} is not configured for this issuer")
        if len(matches) > 1:
            raise ScopeNotSupported(
                f"resource {resource!r} matches several configured patterns "
                f"({sorted(r.pattern for r in matches)}); ask for one of them"
            )
        return matches[0]

    def _principals(self, scope: Scope) -> tuple[ResourceSettings, tuple[str, ...]]:
        if scope.issuer != self.name:
            raise ScopeNotSupported(f"scope is for issuer {scope.issuer!r}, not {self.name!r}")
        resource = self._resource(scope.resource)
        if not scope.actions:
            raise ScopeNotSupported("at least one action (login:<name>) is required")
        principals: set[str] = set()
        for action in scope.actions:
            login = action.removeprefix(ACTION_PREFIX) if action.startswith(ACTION_PREFIX) else None
            if login is None or login not in resource.logins:
                raise ScopeNotSupported(
                    f"action {action!r} is not one of "
                    f"{sorted(ACTION_PREFIX + name for name in resource.logins)}"
                )
            principals.update(resource.logins[login])
        return resource, tuple(sorted(principals))

    def check_scope(self, requested: Scope) -> None:
        """The resource must be configured (exactly, or a concrete host matching one pattern)
        and every action must be ``login:<name>`` for one of its logins."""
        self._principals(requested)

    def principals_for(self, scope: Scope) -> tuple[str, ...]:
        """The certificate principals a scope maps to (sorted). Raises ScopeNotSupported."""
        return self._principals(scope)[1]

    # -- mint ------------------------------------------------------------------------------

    def _source_address(self, resource: ResourceSettings, requested: str | None) -> str | None:
        allowed = resource.source_networks
        if requested is None:
            return None if allowed is None else ",".join(str(n) for n in allowed)
        try:
            networks = parse_networks(requested)
        except ValueError as exc:
            raise InvalidRequest(f"params.source_address: {exc}") from None
        if allowed is not None:
            for network in networks:
                if not within(network, allowed):
                    raise InvalidRequest(
                        f"params.source_address: {network} is outside the networks this "
                        "resource allows"
                    )
        return ",".join(str(n) for n in networks)

    async def mint(self, request: MintRequest) -> Credential:
        """A user certificate for ``params["public_key"]`` with the scope's principals, valid
        until ``request.not_after`` (rounded down to the second)."""
        resource, principals = self._principals(request.scope)
        if not principals:  # never reached (config requires principals); never mint for all
            raise ScopeNotSupported("the scope maps to no principal")
        unknown = sorted(set(request.params) - PARAMS)
        if unknown:
            raise InvalidRequest(f"unknown params {unknown} (accepted: {sorted(PARAMS)})")
        if "public_key" not in request.params:
            raise InvalidRequest("params.public_key: required (an OpenSSH public key line)")
        key = parse_public_key(
            request.params["public_key"], min_rsa_bits=self.settings.min_rsa_bits
        )
        if public_blob(key) == self._ca_blob:
            raise InvalidRequest("params.public_key: refusing to certify the CA's own key")
        source = self._source_address(resource, request.params.get("source_address"))

        issued = math.floor(request.issued_at.timestamp())
        valid_before = math.floor(request.not_after.timestamp())  # never after not_after
        valid_after = max(0, issued - int(self.settings.clock_skew.total_seconds()))
        if _utc(valid_before) <= request.issued_at:
            raise InvalidRequest("ttl too short for a certificate (at least one second)")
        serial = serial_for(request.lease_id)
        key_id = (
            f"jit lease={_key_id_part(request.lease_id)} task={_key_id_part(request.task_id)} "
            f"principal={_key_id_part(request.principal.id)}"
        )
        # Fail closed: a certificate is only issued while its revocation could be recorded.
        await self._revocations.prune(math.floor(self._clock.now().timestamp()))

        builder = (
            SSHCertificateBuilder()
            .public_key(key)
            .type(SSHCertificateType.USER)
            .serial(serial)
            .key_id(key_id.encode())
            .valid_principals([p.encode() for p in principals])
            .valid_after(valid_after)
            .valid_before(valid_before)
        )
        if resource.force_command is not None:
            builder = builder.add_critical_option(b"force-command", resource.force_command.encode())
        if source is not None:
            builder = builder.add_critical_option(b"source-address", source.encode())
        for extension in resource.extensions:
            builder = builder.add_extension(extension.encode(), b"")
        try:
            certificate = builder.sign(self._ca)
        except Exception as exc:  # in-process signing failed: report it without detail
            raise IssuerUnavailable(
                f"ssh issuer {self.name!r} could not sign ({exc.__class__.__name__})"
            ) from None
        log.info(
            "ssh issuer %r: certificate serial %d for lease %s, principals %s",
            self.name,
            serial,
            request.lease_id,
            ",".join(principals),
        )
        metadata = {
            "serial": str(serial),
            "key_id": key_id,
            "principals": ",".join(principals),
            "valid_after": _utc(valid_after).isoformat(),
            "valid_before": _utc(valid_before).isoformat(),
            "ca_fingerprint": self.ca_fingerprint,
            "public_key_fingerprint": fingerprint(key),
        }
        if source is not None:
            metadata["source_address"] = source
        return Credential(
            secret=Secret(certificate.public_bytes().decode()),
            expires_at=_utc(valid_before),
            token_type="ssh-certificate",  # noqa: S106 (a credential type, not a password)
            handle={"serial": str(serial), "valid_before": str(valid_before)},
            metadata=metadata,
        )

    # -- revoke ----------------------------------------------------------------------------

    async def revoke(self, lease: Lease) -> None:
        """Add the certificate's serial to the shared revoked set (and so to the KRL) until it
        expires. Works from the lease id alone (empty handle); idempotent; a lease whose
        certificate expired long enough ago is a no-op."""
        serial = serial_for(lease.id)
        valid_before = math.ceil(lease.not_after.timestamp())
        recorded = _uint64(lease.handle.get("valid_before", ""))
        if recorded is not None:
            valid_before = max(valid_before, recorded)
        now = math.floor(self._clock.now().timestamp())
        if valid_before <= now - int(RETENTION_GRACE.total_seconds()):
            log.debug("ssh issuer %r: lease %s expired, nothing to revoke", self.name, lease.id)
            return
        handle_serial = _uint64(lease.handle.get("serial", ""))
        if handle_serial and handle_serial != serial:
            # This issuer wrote the handle, so this never happens; revoke both anyway.
            log.warning("ssh issuer %r: lease %s handle serial differs", self.name, lease.id)
            await self._revocations.add(handle_serial, valid_before, now)
        await self._revocations.add(serial, valid_before, now)
        log.info("ssh issuer %r: serial %d of lease %s revoked", self.name, serial, lease.id)

    # -- health ----------------------------------------------------------------------------

    def exports(self, credential: Credential, request: MintRequest) -> Exports:
        """The workload's key (generated where it runs) and the certificate beside it, named
        the way OpenSSH pairs them (``ssh -i "$JIT_SSH_KEY"`` and ``ssh-add`` load
        ``<key>-cert.pub`` too)."""
        return Exports(
            files={"id": ExportSource(private_key=True), "id-cert.pub": ExportSource(secret=True)},
            env={
                "JIT_SSH_KEY": ExportSource(file="id"),
                "JIT_SSH_CERT": ExportSource(file="id-cert.pub"),
            },
        )

    async def check_health(self) -> None:
        """The CA key is loaded at construction; the revoked set must be reachable."""
        await self._revocations.ping()

    async def aclose(self) -> None:
        """Nothing to release: the Redis client belongs to the broker."""

    # -- PublishesDocuments ----------------------------------------------------------------

    def ca_public_key(self) -> str:
        """The CA public key line for ``TrustedUserCAKeys``."""
        line = self._ca.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return f"{line.decode()} jit-ssh-ca:{_key_id_part(self.name)}\n"

    async def krl(self) -> bytes:
        """The KRL of every revoked certificate not yet expired (plus a grace), for
        ``RevokedKeys``."""
        now = math.floor(self._clock.now().timestamp())
        serials = await self._revocations.live(now)
        return build_krl(
            self._ca_blob,
            serials,
            version=now,
            generated=now,
            comment=f"jit-broker ssh issuer {_key_id_part(self.name)}",
        )

    async def documents(self) -> dict[str, tuple[str, bytes]]:
        """``ca.pub`` (text/plain) and ``revoked.krl`` (application/octet-stream)."""
        return {
            "ca.pub": ("text/plain; charset=utf-8", self.ca_public_key().encode()),
            "revoked.krl": ("application/octet-stream", await self.krl()),
        }
