"""The reference issuer: short-lived JWT access tokens (RFC 9068) signed by the broker.

Owns the ``jwt`` issuer type: its configuration, the tokens it mints, how it recognises them for
introspection, and the public keys it publishes. Keys live in :mod:`issuers.jwt.keys`.

- A token is a JWS with header ``alg`` (``EdDSA`` or ``ES256``), ``kid`` and ``typ: at+jwt``,
  and the claims ``iss sub aud iat nbf exp jti task_id scope client_id authorization_details``
  (RFC 9396), plus ``act`` (RFC 8693 §4.1) for a delegated credential. ``jti`` is the lease
  id and ``exp`` is ``not_after`` rounded down to the second, so a token never outlives its
  lease.
- Revocation is enforced by the broker's lease state at introspection (ADR 0003): ``revoke()``
  has nothing to call. The token itself stays cryptographically valid until ``exp``, so a
  resource server that needs revocation to bite must introspect; everyone else relies on short
  TTLs.
- A request bound to a DPoP key (``MintRequest.cnf = {"jkt": ...}``, RFC 9449) gets a token
  with the ``cnf`` claim (RFC 7800) and ``token_type`` ``DPoP``; any other confirmation method
  is refused (ScopeNotSupported). Unbound requests are unchanged.
- ``EdDSA`` is signed and verified on purpose although RFC 9864 deprecates the name (ADR 0002);
  the issuer's registry (:class:`broker.jws.JWSAllowList`, exactly its configured algorithm)
  looks it up without joserfc's warning.
"""

from __future__ import annotations

import functools
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

import msgspec
from joserfc import jwt
from joserfc.jwk import ECKey, GuestProtocol, OKPKey

from broker.clock import parse_duration
from broker.decoding import check_ttls, decode
from broker.errors import ConfigError, InvalidRequest, IssuerUnavailable, ScopeNotSupported
from broker.issuer import Capabilities, Exports, ExportSource, IssuerContext
from broker.jws import JWSAllowList
from broker.types import Credential, Lease, MintRequest, Scope, Secret, act_claim
from issuers.jwt.keys import KeyRing

__all__ = ["JWTConfig", "JWTIssuer", "parse_duration"]

log = logging.getLogger("jit.issuers.jwt")

AT_JWT_TYP: Final = "at+jwt"  # RFC 9068 §2.1
#: Longer strings are never one of our tokens; refuse them before any parsing.
MAX_TOKEN_LENGTH: Final = 16 * 1024
_MAX_URI_LENGTH: Final = 2048

#: An RFC 7638 SHA-256 thumbprint, base64url without padding: 32 bytes are 43 characters.
_JKT = re.compile(r"^[A-Za-z0-9_-]{43}$")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
# A scope token in ASCII: printable, no space, no quote, no backslash (the common case, at C
# speed); anything else is checked character by character (_scope_token).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _scope_token(action: str) -> bool:
    return not any(c.isspace() or not c.isprintable() or c in '"\\' for c in action)


class JWTConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``config`` of a ``jwt`` issuer instance. Unknown keys are errors; every check that
    needs no file runs here (``jit config check`` runs it too)."""

    algorithm: Literal["EdDSA", "ES256"] = "EdDSA"
    keys_dir: str | None = None  # directory of PEM private keys; may be omitted only in dev
    issuer: str | None = None  # the ``iss`` claim; default: the broker's public URL
    max_ttl: timedelta = timedelta(hours=1)
    default_ttl: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        check_ttls(self.max_ttl, self.default_ttl)
        if self.issuer is not None and not self.issuer:
            raise ValueError("issuer: must not be empty")
        if self.keys_dir is not None and not self.keys_dir:
            raise ValueError("keys_dir: must not be empty")


class _UnknownKey(ValueError):
    """The token names a key that is not in the ring."""


def _config_error(name: str, message: str) -> ConfigError:
    return ConfigError(f"jwt issuer {name!r}: {message}")


@functools.lru_cache(maxsize=1024)  # a pure check; the same few resources come back all day
def _is_absolute_uri(value: str) -> bool:
    """An absolute URI without a fragment (RFC 3986 §4.3, as RFC 8707 asks of resources)."""
    if not value or len(value) > _MAX_URI_LENGTH:
        return False
    if any(c.isspace() or not c.isprintable() for c in value):
        return False
    scheme, sep, rest = value.partition(":")
    if not sep or not rest or not _SCHEME.match(scheme):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.fragment or "#" in value:
        return False
    if scheme.lower() in ("http", "https"):
        return bool(parts.hostname)
    return True


def _check_action(action: object) -> None:
    if not isinstance(action, str) or not action:
        raise ScopeNotSupported("every action must be a non-empty string")
    if not (_SCOPE_TOKEN.fullmatch(action) or (not action.isascii() and _scope_token(action))):
        raise ScopeNotSupported(
            f"action {action!r} cannot be a scope token (no spaces, quotes or backslashes)"
        )


def _confirmation(cnf: dict[str, str] | None) -> dict[str, str] | None:
    """The ``cnf`` claim (RFC 7800) for a bound request, or None for an unbound one.

    This issuer binds to a DPoP key only (RFC 9449 §6.1: ``{"jkt": <thumbprint>}``); any other
    confirmation method, or a ``jkt`` that is not a SHA-256 thumbprint, is refused rather than
    minting a token that would look bound to something no resource server checks."""
    if cnf is None:
        return None
    if set(cnf) != {"jkt"}:
        raise ScopeNotSupported(
            f"the jwt issuer can bind a token only to a DPoP key (cnf jkt), not {sorted(cnf)}"
        )
    jkt = cnf["jkt"]
    if not isinstance(jkt, str) or not _JKT.match(jkt):
        raise ScopeNotSupported("cnf jkt must be a base64url SHA-256 JWK thumbprint (RFC 7638)")
    return {"jkt": jkt}


class JWTIssuer:
    """Mints broker-signed JWT access tokens. Implements ``Issuer``, ``PublishesKeys`` and
    ``Introspectable``.

    Raises ConfigError at construction for invalid config, a missing or empty ``keys_dir``
    (outside development mode), or an unusable key file."""

    #: The RFC 7800 confirmation members ``mint()`` can bind a token to (``MintRequest.cnf``):
    #: a DPoP key thumbprint (RFC 9449 §6.1). Lets the broker refuse a bound request to an
    #: issuer that cannot bind before it writes a lease.
    confirmation_methods: ClassVar[frozenset[str]] = frozenset({"jkt"})
    #: The ``config:`` of an instance, checked by the broker before construction.
    config_type: ClassVar[type[JWTConfig]] = JWTConfig

    def __init__(self, context: IssuerContext) -> None:
        self.name: str = context.name
        self._clock = context.clock
        try:
            config = decode(context.config, JWTConfig)
        except ConfigError as exc:
            raise _config_error(self.name, exc.message) from None
        self.config = config
        self.capabilities: Capabilities = Capabilities(
            max_ttl=config.max_ttl,
            default_ttl=config.default_ttl,
            revocable=True,
            renewable=False,
        )
        issuer = config.issuer if config.issuer is not None else context.broker_url
        if not issuer:
            raise _config_error(self.name, "issuer: must not be empty")
        self.issuer: str = issuer
        self.algorithm: str = config.algorithm
        if config.keys_dir is not None:
            try:
                self._ring = KeyRing.load(
                    Path(config.keys_dir), algorithm=self.algorithm, clock=self._clock
                )
            except ConfigError as exc:
                raise _config_error(self.name, f"keys_dir: {exc.message}") from None
        elif context.dev:
            self._ring = KeyRing.generate(self.algorithm, clock=self._clock)
            log.warning(
                "jwt issuer %r: development mode, signing with an in-memory key (kid %s) that "
                "is lost on restart",
                self.name,
                self._ring.signing.kid,
            )
        else:
            raise _config_error(
                self.name,
                "keys_dir: required (create a key with `jit keys rotate --dir /etc/jit/keys "
                f"--algorithm {self.algorithm}` and set keys_dir to that directory)",
            )
        self._registry = JWSAllowList([self.algorithm])

    def __repr__(self) -> str:
        return f"JWTIssuer(name={self.name!r}, algorithm={self.algorithm!r}, ring={self._ring!r})"

    @property
    def ring(self) -> KeyRing:
        """The keys this issuer signs and verifies with."""
        return self._ring

    # -- Issuer ----------------------------------------------------------------------------

    def check_scope(self, requested: Scope) -> None:
        """The resource must be an absolute URI (it becomes ``aud``) and there must be at least
        one action, each usable as an OAuth scope token."""
        if requested.issuer != self.name:
            raise ScopeNotSupported(f"scope is for issuer {requested.issuer!r}, not {self.name!r}")
        if not _is_absolute_uri(requested.resource):
            raise ScopeNotSupported(
                "resource must be an absolute URI without a fragment, such as "
                "https://api.example.com (it becomes the token's aud)"
            )
        if not requested.actions:
            raise ScopeNotSupported("at least one action is required")
        for action in requested.actions:
            _check_action(action)

    async def mint(self, request: MintRequest) -> Credential:
        """A signed access token for ``request.scope`` that expires at ``request.not_after``
        (rounded down to the second). When ``request.cnf`` names a DPoP key (``jkt``), the
        token carries it as its ``cnf`` claim and the credential's ``token_type`` is ``DPoP``."""
        scope = request.scope
        self.check_scope(scope)
        if request.params:
            raise InvalidRequest(
                f"jwt issuer {self.name!r} takes no params (got {sorted(request.params)[:10]})"
            )
        cnf = _confirmation(request.cnf)
        self._ring.refresh()
        key = self._ring.signing
        iat = int(request.issued_at.timestamp())
        exp = int(request.not_after.timestamp())  # floor: never later than not_after
        actions = list(scope.actions)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": request.principal.id,
            "aud": scope.resource,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": request.lease_id,
            "task_id": request.task_id,
            "scope": " ".join(actions),
            "client_id": request.principal.id,
            "authorization_details": [
                {"type": scope.issuer, "locations": [scope.resource], "actions": actions}
            ],
        }
        act = act_claim(request.actors)
        if act is not None:
            claims["act"] = act  # RFC 8693 §4.1: who acts for sub, current actor outermost
        if cnf is not None:
            claims["cnf"] = cnf  # RFC 7800 / RFC 9449 §6.1: usable only with that key's proofs
        header = {"alg": key.algorithm, "kid": key.kid, "typ": AT_JWT_TYP}
        try:
            token = jwt.encode(header, claims, key.private, registry=self._registry)
        except Exception as exc:  # signing in-process failed: report it without any detail
            raise IssuerUnavailable(
                f"jwt issuer {self.name!r} could not sign ({exc.__class__.__name__})"
            ) from None
        return Credential(
            secret=Secret(token),
            expires_at=datetime.fromtimestamp(exp, UTC),
            token_type="DPoP" if cnf is not None else "Bearer",  # RFC 9449 §5
            # Revocation needs nothing from the issuer (the lease's state is what introspection
            # reads), so the handle is empty: 66 bytes less per live lease in Redis. The signing
            # key is in the metadata, which the lease.minted audit record keeps.
            handle={},
            metadata={"kid": key.kid},
        )

    async def revoke(self, lease: Lease) -> None:
        """Nothing to call: the broker marks the lease revoked and introspection then reports
        the token inactive. Idempotent; any lease (unknown, expired, empty handle) is fine.

        The JWT itself stays cryptographically valid until its ``exp``: resource servers that
        must honour revocation introspect it (or rely on short TTLs)."""
        log.debug(
            "jwt issuer %r: lease %s revoked (enforced at introspection)", self.name, lease.id
        )

    def exports(self, credential: Credential, request: MintRequest) -> Exports:
        """``JIT_ACCESS_TOKEN``: the token (``jit exec``; docs/helpers.md)."""
        return Exports(env={"JIT_ACCESS_TOKEN": ExportSource(secret=True)})

    async def check_health(self) -> None:
        """Healthy while the ring has a signing key and the keys directory is usable."""
        self._ring.refresh()
        if self._ring.error is not None:
            raise IssuerUnavailable(
                f"jwt issuer {self.name!r}: keys directory unusable, still signing with "
                f"{self._ring.signing.kid}: {self._ring.error}"
            )

    async def aclose(self) -> None:
        """Nothing to release: keys are in memory and no connection is held."""

    # -- PublishesKeys ---------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """The public JWK (kid, alg, use "sig") of every key in the ring."""
        self._ring.refresh()
        return self._ring.jwks()

    # -- Introspectable --------------------------------------------------------------------

    def identify(self, token: str, now: datetime) -> str | None:
        """The lease id (``jti``) of ``token`` if one of this ring's keys signed it with the
        configured algorithm, ``typ`` is ``at+jwt``, ``iss`` is ours and ``exp`` is after
        ``now``; otherwise None. Never raises for malformed input."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            return None
        try:
            self._ring.refresh()
            decoded = jwt.decode(token, self._verification_key, registry=self._registry)
        except Exception:  # garbage, a bad signature, an unknown kid or algorithm: not ours
            return None
        if decoded.header.get("typ") != AT_JWT_TYP:
            return None
        claims = decoded.claims
        exp = claims.get("exp")
        jti = claims.get("jti")
        if claims.get("iss") != self.issuer:
            return None
        if not isinstance(exp, int) or isinstance(exp, bool) or exp <= now.timestamp():
            return None
        if not isinstance(jti, str) or not jti:
            return None
        return jti

    def _verification_key(self, obj: GuestProtocol) -> OKPKey | ECKey:
        kid = obj.headers().get("kid")
        key = self._ring.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise _UnknownKey("unknown kid")
        return key.public
