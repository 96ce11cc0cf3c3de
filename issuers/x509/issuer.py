"""The ``x509`` issuer: short-lived X.509 client certificates for mTLS, signed by a CA the broker
holds.

Owns the ``x509`` issuer type: its configuration, the certificates it signs, the CRL it
publishes and what revoke does. The profile (SPIFFE ID, serial, scope extension, key policy) is
in :mod:`issuers.x509.profile`, the CA in :mod:`issuers.x509.ca`, the shared serial state in
:mod:`issuers.x509.state`.

- The workload sends a public key (``params["public_key"]``, PEM SubjectPublicKeyInfo) or a
  CSR (``params["csr"]``, PEM, signature verified); its private key never leaves it.
- The leaf: subject ``CN=<lease id>``; one URI SAN, the principal's SPIFFE ID; EKU clientAuth
  only; KeyUsage digitalSignature (critical); BasicConstraints CA:FALSE (critical); validity
  ``issued_at - not_before_skew`` .. ``not_after`` (rounded down to the second, never after the
  CA's own expiry); serial derived from the lease id; the jit-broker scope extension (resource,
  actions, lease and task ids); a CRL distribution point at the broker when it has a URL.
- ``revoke()`` adds the serial to the instance's CRL (shared through Redis), published with the
  CA certificate through ``documents()``. Relying parties must fetch the CRL to see it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import quote

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.clock import from_ms, parse_duration, to_ms
from broker.decoding import check_duration, check_ttls, decode
from broker.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    IssuerUnavailable,
    ScopeNotSupported,
)
from broker.issuer import Capabilities, Exports, ExportSource, IssuerContext
from broker.types import Credential, Lease, MintRequest, Scope, Secret
from issuers.x509.ca import CAError, CertificateAuthority, generate_ca, load_ca
from issuers.x509.profile import (
    SCOPE_OID,
    CertificateScope,
    check_trust_domain,
    check_workload_key,
    encode_scope,
    serial_for,
    serial_hex,
    spiffe_id,
)
from issuers.x509.state import MemorySerialState, RedisSerialState, SerialState

__all__ = ["PARAMS", "ResourceConfig", "X509Config", "X509Issuer", "parse_duration"]

log = logging.getLogger("jit.issuers.x509")

#: The ``MintRequest.params`` this issuer accepts (exactly one of them).
PARAMS: Final = frozenset({"public_key", "csr"})
#: Longest PEM accepted in a param (an RSA-8192 CSR is about 2.5 KiB).
MAX_PARAM_LENGTH: Final = 16 * 1024
#: Revoked and issued serials stay recorded this long after their certificate expired, for
#: relying parties whose clocks lag behind the broker's.
PRUNE_GRACE: Final = timedelta(minutes=10)
#: A signed CRL is reused (unchanged content) for at most this long.
CRL_REUSE: Final = timedelta(seconds=30)
DEV_CA_LIFETIME: Final = timedelta(days=365)
TOKEN_TYPE: Final = "x509-certificate"  # noqa: S105 (a credential type, not a password)

_ACTION_FORBIDDEN: Final = frozenset('"\\')
_MAX_NAME: Final = 1024


class ResourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One service that certificates may be minted for, and the actions it understands."""

    actions: tuple[str, ...] = ("connect",)


class X509Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``config`` of an ``x509`` issuer instance. Unknown keys are errors; decoding checks
    every rule that needs no file (the CA files are read by the issuer)."""

    trust_domain: str
    # service name or URL -> its actions; a plain list means each allows only ``connect``
    resources: dict[str, ResourceConfig] | list[str]
    ca_cert_file: str | None = None  # PEM: the issuing CA certificate, then its chain
    ca_key_file: str | None = None  # PEM, unencrypted; both may be omitted only under jit dev
    max_ttl: timedelta = timedelta(hours=1)
    default_ttl: timedelta = timedelta(minutes=15)
    not_before_skew: timedelta = timedelta(seconds=30)
    crl: bool = True  # publish a CRL and make revoke() real (revocable); else expiry-only
    crl_validity: timedelta = timedelta(minutes=10)  # the CRL's nextUpdate = thisUpdate + this
    min_rsa_bits: int = 2048

    def __post_init__(self) -> None:
        try:
            check_trust_domain(self.trust_domain)
        except ValueError as exc:
            raise ValueError(f"trust_domain: {exc}") from None
        _resources(self)
        check_ttls(self.max_ttl, self.default_ttl)
        check_duration("not_before_skew", self.not_before_skew, at_most=timedelta(hours=1))
        check_duration("crl_validity", self.crl_validity, at_least=timedelta(seconds=1))
        if not 2048 <= self.min_rsa_bits <= 8192:
            raise ValueError("min_rsa_bits: must be between 2048 and 8192")


def _resources(config: X509Config) -> dict[str, frozenset[str]]:
    """The configured services and their actions; ValueError naming the bad entry."""
    items: dict[str, tuple[str, ...]]
    if isinstance(config.resources, list):
        items = {r: ("connect",) for r in config.resources}
    else:
        items = {r: rc.actions for r, rc in config.resources.items()}
    if not items:
        raise ValueError("resources: name at least one service")
    out: dict[str, frozenset[str]] = {}
    for resource, actions in items.items():
        try:
            _check_label("resource", resource)
            if not actions:
                raise ValueError(f"resource {resource!r}: actions must not be empty")
            for action in actions:
                _check_label("action", action)
        except ValueError as exc:
            raise ValueError(f"resources: {exc}") from None
        out[resource] = frozenset(actions)
    return out


def _floor_second(t: datetime) -> datetime:
    return t.replace(microsecond=0)


def _check_label(kind: str, value: str) -> None:
    if not value or len(value) > _MAX_NAME:
        raise ValueError(f"{kind} must be 1-{_MAX_NAME} characters")
    if any(c.isspace() or not c.isprintable() or c in _ACTION_FORBIDDEN for c in value):
        raise ValueError(f"{kind} {value!r} must be printable, without spaces, quotes or '\\'")


class X509Issuer:
    """Mints short-lived mTLS client certificates. Implements ``Issuer`` and
    ``PublishesDocuments`` (``ca.pem``, and ``crl.pem``/``crl.der`` when ``crl`` is on).

    Raises ConfigError at construction for invalid config or unusable CA files."""

    #: The ``config:`` of an instance, checked by the broker before construction.
    config_type: ClassVar[type[X509Config]] = X509Config

    def __init__(self, context: IssuerContext) -> None:
        self.name: str = context.name
        self._clock = context.clock
        label = f"x509 issuer {self.name!r}"
        self._label = label
        try:
            config = decode(context.config, X509Config)
        except ConfigError as exc:
            raise self._config_error(exc.message) from None
        self.config = config
        self.trust_domain: str = config.trust_domain
        self.resources: dict[str, frozenset[str]] = _resources(config)
        max_ttl, default_ttl = config.max_ttl, config.default_ttl
        self._skew = config.not_before_skew
        self._crl_validity = config.crl_validity
        self.crl_enabled: bool = config.crl
        self.capabilities: Capabilities = Capabilities(
            max_ttl=max_ttl,
            default_ttl=default_ttl,
            min_ttl=timedelta(seconds=1),
            revocable=config.crl,
            renewable=False,
        )
        self._ca = self._load_ca(config, context)
        now = self._clock.now()
        if not self._ca.not_before <= now < self._ca.not_after:
            raise self._config_error("ca_cert_file: the CA certificate is not valid now")
        if self._ca.not_after < now + max_ttl:
            log.warning(
                "%s: the CA certificate expires at %s, within max_ttl: certificates will be "
                "cut short; rotate the CA",
                label,
                self._ca.not_after.isoformat(),
            )
        grace_ms = int(PRUNE_GRACE.total_seconds() * 1000)
        self._state: SerialState
        if context.redis is not None:
            prefix = context.state_prefix or f"jit:issuer:{self.name}"
            self._state = RedisSerialState(
                context.redis,
                prefix=prefix,
                tag=f"x509:{self.name}",
                grace_ms=grace_ms,
                label=label,
            )
        else:
            log.warning("%s: no Redis given; revocations are kept in this process only", label)
            self._state = MemorySerialState(grace_ms=grace_ms)
        self._crl_url: str | None = None
        if config.crl and context.broker_url:
            base = context.broker_url.rstrip("/")
            self._crl_url = f"{base}/v1/issuers/{quote(self.name, safe='')}/crl.der"
        self._crl_cache: (
            tuple[tuple[tuple[str, int], ...], datetime, x509.CertificateRevocationList] | None
        ) = None

    def __repr__(self) -> str:
        return (
            f"X509Issuer(name={self.name!r}, trust_domain={self.trust_domain!r}, "
            f"ca={self._ca!r}, crl={self.crl_enabled})"
        )

    # -- construction helpers --------------------------------------------------------------

    def _config_error(self, message: str) -> ConfigError:
        return ConfigError(f"{self._label}: {message}")

    def _load_ca(self, config: X509Config, context: IssuerContext) -> CertificateAuthority:
        cert_file, key_file = config.ca_cert_file, config.ca_key_file
        if cert_file is None and key_file is None:
            if not context.dev:
                raise self._config_error(
                    "ca_cert_file and ca_key_file: required (a PEM CA certificate and its "
                    "unencrypted private key); only `jit dev` may generate a CA in memory"
                )
            ca = generate_ca(f"jit-broker dev CA {self.name}", self._clock.now(), DEV_CA_LIFETIME)
            log.warning(
                "%s: development mode, signing with an in-memory CA (%s) that is lost on "
                "restart; fetch it from /v1/issuers/%s/ca.pem",
                self._label,
                ca.certificate.subject.rfc4514_string(),
                self.name,
            )
            return ca
        if not cert_file or not key_file:
            missing = "ca_key_file" if cert_file else "ca_cert_file"
            raise self._config_error(f"{missing}: required with the other CA file")
        try:
            return load_ca(Path(cert_file), Path(key_file), crl=config.crl)
        except CAError as exc:
            raise self._config_error(str(exc)) from None

    # -- public properties -----------------------------------------------------------------

    @property
    def ca(self) -> x509.Certificate:
        """The issuing CA certificate (public)."""
        return self._ca.certificate

    def spiffe_id_of(self, principal_issuer: str, subject: str) -> str:
        """The SPIFFE ID this instance puts in the SAN of a principal's certificates."""
        return spiffe_id(self.trust_domain, principal_issuer, subject)

    # -- Issuer ----------------------------------------------------------------------------

    def check_scope(self, requested: Scope) -> None:
        """The resource must be one of the configured services and the actions a non-empty
        subset of the actions configured for it."""
        if requested.issuer != self.name:
            raise ScopeNotSupported(f"scope is for issuer {requested.issuer!r}, not {self.name!r}")
        allowed = self.resources.get(requested.resource)
        if allowed is None:
            raise ScopeNotSupported(
                f"resource {requested.resource!r} is not a service configured for {self.name!r}"
            )
        if not requested.actions:
            raise ScopeNotSupported("at least one action is required")
        unknown = sorted(set(requested.actions) - allowed)
        if unknown:
            raise ScopeNotSupported(
                f"actions {unknown} are not configured for {requested.resource!r} "
                f"(configured: {sorted(allowed)})"
            )

    async def mint(self, request: MintRequest) -> Credential:
        """A client certificate for the workload's key, valid until ``request.not_after``
        (rounded down to the second). Raises InvalidRequest for bad params,
        ScopeNotSupported, Conflict if this lease already has a certificate or was revoked,
        IssuerUnavailable if the CA is out of its validity or the serial state unreachable."""
        self.check_scope(request.scope)
        public_key = self._workload_key(request.params)
        principal = request.principal
        try:
            uri = spiffe_id(self.trust_domain, principal.issuer, principal.subject)
        except ValueError as exc:
            raise InvalidRequest(f"{self._label}: no SPIFFE ID for the principal: {exc}") from None
        if not 1 <= len(request.lease_id) <= 64:
            raise InvalidRequest(f"{self._label}: a lease id must be 1-64 characters")
        ca = self._ca
        now = self._clock.now()
        if not ca.not_before <= now < ca.not_after:
            raise IssuerUnavailable(f"{self._label}: the CA certificate is not valid now")
        not_before = max(_floor_second(request.issued_at - self._skew), ca.not_before)
        not_after = _floor_second(min(request.not_after, ca.not_after))
        if not_after <= request.issued_at:
            raise InvalidRequest(f"{self._label}: the lease is too short for a certificate")
        serial = serial_for(request.lease_id)
        serial_text = serial_hex(serial)
        claimed = await self._state.claim(serial_text, to_ms(not_after), to_ms(now))
        if claimed == "duplicate":
            raise Conflict(f"{self._label}: lease {request.lease_id} already has a certificate")
        if claimed == "revoked":
            raise Conflict(f"{self._label}: lease {request.lease_id} was revoked before mint")
        scope = CertificateScope(
            resource=request.scope.resource,
            actions=tuple(sorted(request.scope.actions)),
            lease_id=request.lease_id,
            task_id=request.task_id,
        )
        try:
            certificate = self._sign(
                public_key, request.lease_id, uri, serial, not_before, not_after, scope
            )
        except Exception as exc:  # signing in-process failed: report it without any detail
            raise IssuerUnavailable(
                f"{self._label}: could not sign ({exc.__class__.__name__})"
            ) from None
        pem = certificate.public_bytes(serialization.Encoding.PEM) + ca.presented_chain()
        return Credential(
            secret=Secret(pem.decode("ascii")),
            expires_at=not_after,
            token_type=TOKEN_TYPE,
            handle={"serial": serial_text},
            metadata={
                "serial": serial_text,
                "spiffe_id": uri,
                "subject": certificate.subject.rfc4514_string(),
                "not_before": not_before.isoformat(),
                "not_after": not_after.isoformat(),
            },
        )

    async def revoke(self, lease: Lease) -> None:
        """Add the lease's certificate serial to the CRL (derived from the lease id, so an
        empty handle works). Idempotent; an unknown lease only adds a serial that no
        certificate has; an expired one adds nothing. Without ``crl`` this is a no-op (the
        certificate lives until it expires). Raises IssuerUnavailable if Redis is down."""
        if not self.crl_enabled:
            return
        serials = {serial_hex(serial_for(lease.id))}
        recorded = lease.handle.get("serial", "")
        if recorded and len(recorded) == 32 and all(c in "0123456789abcdef" for c in recorded):
            serials.add(recorded)
        now_ms = to_ms(self._clock.now())
        for serial in sorted(serials):
            await self._state.revoke(serial, to_ms(lease.not_after), now_ms)
        self._crl_cache = None
        log.debug("%s: lease %s revoked (serial added to the CRL)", self._label, lease.id)

    def exports(self, credential: Credential, request: MintRequest) -> Exports:
        """PEM files: the certificate, the workload's key (generated where it runs) and the
        CA chain (this issuer's public ``ca.pem``), with their paths in the environment."""
        return Exports(
            files={
                "cert.pem": ExportSource(secret=True),
                "key.pem": ExportSource(private_key=True),
                "ca.pem": ExportSource(document="ca.pem"),
            },
            env={
                "JIT_TLS_CERT_FILE": ExportSource(file="cert.pem"),
                "JIT_TLS_KEY_FILE": ExportSource(file="key.pem"),
                "JIT_TLS_CA_FILE": ExportSource(file="ca.pem"),
            },
        )

    async def check_health(self) -> None:
        """Healthy while the CA certificate is within its validity and the serial state in
        Redis answers."""
        now = self._clock.now()
        if not self._ca.not_before <= now < self._ca.not_after:
            raise IssuerUnavailable(f"{self._label}: the CA certificate is not valid now")
        await self._state.ping()

    async def aclose(self) -> None:
        """Nothing to release: the Redis client belongs to the broker."""

    # -- PublishesDocuments ----------------------------------------------------------------

    async def documents(self) -> dict[str, tuple[str, bytes]]:
        """``ca.pem`` (the CA certificate and its chain) and, with ``crl``, ``crl.pem`` and
        ``crl.der`` (the current CRL). Raises IssuerUnavailable when the revoked serials
        cannot be read: a CRL without them would be a lie."""
        docs: dict[str, tuple[str, bytes]] = {"ca.pem": ("application/x-pem-file", self._ca.pem())}
        if self.crl_enabled:
            crl = await self.current_crl()
            docs["crl.der"] = ("application/pkix-crl", crl.public_bytes(serialization.Encoding.DER))
            docs["crl.pem"] = (
                "application/x-pem-file",
                crl.public_bytes(serialization.Encoding.PEM),
            )
        return docs

    async def current_crl(self) -> x509.CertificateRevocationList:
        """The CRL listing every revoked serial that has not expired (plus a grace), signed by
        the CA, valid for ``crl_validity``. Reused for up to 30 s while nothing changes."""
        now = self._clock.now()
        entries = tuple(await self._state.revoked(to_ms(now)))
        cached = self._crl_cache
        if (
            cached is not None
            and cached[0] == entries
            and cached[1] <= now < cached[1] + min(CRL_REUSE, self._crl_validity / 4)
        ):
            return cached[2]
        crl = self._sign_crl(entries, now)
        self._crl_cache = (entries, now, crl)
        return crl

    # -- internals -------------------------------------------------------------------------

    def _workload_key(self, params: dict[str, str]) -> CertificatePublicKeyTypes:
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise InvalidRequest(
                f"{self._label}: unknown params {unknown} (accepted: public_key or csr)"
            )
        given = [name for name in ("public_key", "csr") if name in params]
        if len(given) != 1:
            raise InvalidRequest(
                f"{self._label}: give exactly one of params public_key (a PEM public key) or "
                "csr (a PEM certificate signing request)"
            )
        which = given[0]
        text = params[which]
        if not isinstance(text, str) or not text or len(text) > MAX_PARAM_LENGTH:
            raise InvalidRequest(f"{self._label}: param {which} must be 1-16384 characters")
        data = text.encode("utf-8", "replace")
        key: Any
        if which == "public_key":
            if b"-----BEGIN PUBLIC KEY-----" not in data:
                raise InvalidRequest(
                    f"{self._label}: param public_key must be a PEM SubjectPublicKeyInfo "
                    "('-----BEGIN PUBLIC KEY-----')"
                )
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, UnsupportedAlgorithm):
                raise InvalidRequest(
                    f"{self._label}: param public_key is not a valid key"
                ) from None
        else:
            try:
                csr = x509.load_pem_x509_csr(data)
            except ValueError:
                raise InvalidRequest(f"{self._label}: param csr is not a PEM CSR") from None
            try:
                algorithm = csr.signature_hash_algorithm
                key = csr.public_key()
                valid = csr.is_signature_valid
            except (ValueError, UnsupportedAlgorithm):
                raise InvalidRequest(
                    f"{self._label}: param csr uses an unsupported algorithm"
                ) from None
            if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
                raise InvalidRequest(f"{self._label}: param csr is signed with a weak hash")
            if not valid:
                raise InvalidRequest(f"{self._label}: param csr has an invalid signature")
        try:
            check_workload_key(key, min_rsa_bits=self.config.min_rsa_bits)
        except ValueError as exc:
            raise InvalidRequest(f"{self._label}: param {which}: {exc}") from None
        public: CertificatePublicKeyTypes = key
        return public

    def _sign(
        self,
        public_key: CertificatePublicKeyTypes,
        lease_id: str,
        uri: str,
        serial: int,
        not_before: datetime,
        not_after: datetime,
        scope: CertificateScope,
    ) -> x509.Certificate:
        ca = self._ca
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, lease_id)]))
            .issuer_name(ca.certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(ca.key_identifier(), critical=False)
            .add_extension(
                x509.UnrecognizedExtension(SCOPE_OID, encode_scope(scope)), critical=False
            )
        )
        if self._crl_url is not None:
            builder = builder.add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier(self._crl_url)],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        )
                    ]
                ),
                critical=False,
            )
        return builder.sign(ca.key, ca.hash_algorithm)

    def _sign_crl(
        self, entries: tuple[tuple[str, int], ...], now: datetime
    ) -> x509.CertificateRevocationList:
        ca = self._ca
        # Backdated like certificates, for relying parties whose clocks lag; revocation dates
        # are backdated by the same skew, so none is later than the lastUpdate of a CRL that
        # lists it, and each stays the same from one CRL to the next.
        this_update = max(_floor_second(now - self._skew), ca.not_before)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.certificate.subject)
            .last_update(this_update)
            .next_update(_floor_second(now + self._crl_validity))
            .add_extension(x509.CRLNumber(to_ms(now)), critical=False)
            .add_extension(ca.key_identifier(), critical=False)
        )
        for serial, revoked_at_ms in entries:
            revoked_at = min(from_ms(revoked_at_ms) - self._skew, this_update)
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(_floor_second(revoked_at))
                .build()
            )
        try:
            return builder.sign(ca.key, ca.hash_algorithm)
        except Exception as exc:  # signing in-process failed: no detail
            raise IssuerUnavailable(
                f"{self._label}: could not sign the CRL ({exc.__class__.__name__})"
            ) from None
