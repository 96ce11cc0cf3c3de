"""Workload token verification: a compact JWT in, a :class:`~broker.types.Principal` out.

Owns the order and the rules of the checks, every one of which fails with a 401
(:class:`~broker.errors.AuthenticationError`) whose message names the reason and never echoes
the token:

1. shape: a string of at most 16 KiB, three base64url parts, JSON header and payload objects
   (encrypted JWE tokens and RFC 7797 unencoded payloads are refused);
2. issuer: the unverified ``iss`` selects the configured identity issuer (exact match; when two
   issuers share an ``iss``, the one whose audiences the token names); unknown → untrusted;
3. algorithm: the header ``alg`` must be on that issuer's allow-list and is never ``none`` or
   ``HS*``; joserfc gets the same explicit allow-list (a per-issuer registry built once);
4. key: by ``kid`` from the issuer's JWKS cache (:mod:`broker.identity.jwks`); the key's type,
   curve and ``alg`` must fit the header ``alg``;
5. signature, then claims with joserfc's ``JWTClaimsRegistry`` on the injected clock: ``iss``
   exact, ``aud`` one of the accepted audiences, ``exp`` required and in the future, ``nbf`` and
   ``iat`` not in the future (all with the issuer's leeway), and lifetime ``exp - iat`` at most
   ``max_token_lifetime``;
6. the issuer's preset (:mod:`broker.identity.presets`) maps the claims to a Principal.

Everything that can be prepared is prepared in ``__init__`` (registries, claim rules); keys are
parsed once per fetch by the cache. A verification is parsing plus one signature check.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import (
    ExceededSizeError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key, KeySet
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from broker.clock import Clock
from broker.config import IdentityIssuerSettings
from broker.errors import AuthenticationError, ConfigError
from broker.identity import presets
from broker.identity.algorithms import AllowListRegistry, ParseRegistry, is_forbidden
from broker.identity.jwks import JWKSCache
from broker.identity.messages import shown
from broker.types import Principal

__all__ = ["MAX_TOKEN_BYTES", "TokenVerifier"]

#: Longer tokens are refused before any parsing (real workload tokens are 1-2 KiB).
MAX_TOKEN_BYTES = 16 * 1024

_PARSE = ParseRegistry()


def _malformed(reason: str) -> AuthenticationError:
    return AuthenticationError(f"malformed token: {reason}")


@dataclass(frozen=True)
class _Issuer:
    """One configured identity issuer, with everything verification needs prepared."""

    settings: IdentityIssuerSettings
    registry: AllowListRegistry
    claims: JWTClaimsRegistry
    audiences: frozenset[str]
    max_lifetime: float

    @property
    def name(self) -> str:
        return self.settings.name


#: Verified tokens remembered at most (least recently used ones go first).
_VERIFIED_MAX = 4096


class TokenVerifier:
    """Verifies workload identity tokens from the configured issuers.

    ``static_keys`` maps an identity-issuer name to a KeySet used instead of fetching its JWKS
    (the development issuer). ``http`` is the client for JWKS and discovery requests (tests pass
    one on ``httpx.MockTransport``); it is not closed by :meth:`aclose`.

    Raises ConfigError for a configuration that could never verify anything safely.
    """

    def __init__(
        self,
        issuers: Sequence[IdentityIssuerSettings],
        clock: Clock,
        *,
        http: httpx.AsyncClient | None = None,
        static_keys: Mapping[str, KeySet] | None = None,
    ) -> None:
        self._clock = clock
        self._issuers: dict[str, _Issuer] = {}
        self._by_iss: dict[str, list[_Issuer]] = {}
        for settings in issuers:
            issuer = self._prepare(settings)
            if settings.name in self._issuers:
                raise ConfigError(f"identity issuer name {settings.name!r} is used twice")
            self._issuers[settings.name] = issuer
            self._by_iss.setdefault(settings.issuer, []).append(issuer)
        unknown = sorted(set(static_keys or {}) - set(self._issuers))
        if unknown:
            raise ConfigError(f"static keys given for unconfigured identity issuers {unknown}")
        self._keys = JWKSCache(issuers, clock, http=http, static_keys=static_keys)
        # Tokens verified already, by SHA-256 digest: (principal, valid until, issuer name).
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def _prepare(self, settings: IdentityIssuerSettings) -> _Issuer:
        where = f"identity issuer {settings.name!r}"
        forbidden = [a for a in settings.algorithms if is_forbidden(a)]
        if forbidden:
            raise ConfigError(f"{where}: algorithms {forbidden} are not allowed")
        unknown = [a for a in settings.algorithms if a not in JWSRegistry.algorithms]
        if unknown:
            raise ConfigError(f"{where}: unknown algorithms {unknown}")
        if not settings.algorithms:
            raise ConfigError(f"{where}: needs at least one algorithm")
        if not settings.audiences:
            raise ConfigError(f"{where}: needs an audience")
        if settings.preset not in presets.PRESETS:
            raise ConfigError(f"{where}: unknown preset {settings.preset!r}")
        clock = self._clock
        claims = JWTClaimsRegistry(
            now=lambda: int(clock.now().timestamp()),
            leeway=int(settings.leeway.total_seconds()),
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "values": list(settings.audiences)},
            exp={"essential": True},
        )
        return _Issuer(
            settings=settings,
            registry=AllowListRegistry(settings.algorithms),
            claims=claims,
            audiences=frozenset(settings.audiences),
            max_lifetime=settings.max_token_lifetime.total_seconds(),
        )

    # -- public API -----------------------------------------------------------------------------

    async def verify(self, token: str) -> Principal:
        """Verify a compact JWT and map it to a Principal. Raises AuthenticationError.

        A token that verified is remembered by its SHA-256 digest (never the token) until its
        ``exp`` plus the issuer's leeway, or for ``jwks_cache_ttl`` at most (so a key the IdP
        withdrew stops counting as soon as a refetch would have noticed): a workload presenting
        the same token again costs a hash, not a signature check (docs/identity.md)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = self._verified.get(digest)
        if found is not None:
            principal, until = found
            if self._clock.now().timestamp() < until:
                self._verified.move_to_end(digest)
                return principal
            del self._verified[digest]
        principal, until = await self._verify(token)
        self._verified[digest] = (principal, until)
        if len(self._verified) > _VERIFIED_MAX:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        obj, header, claims = _parse(token)
        issuer = self._select(claims)
        alg = header["alg"]
        if (
            not isinstance(alg, str)
            or is_forbidden(alg)
            or alg not in issuer.registry.allowed_algorithms
        ):
            raise AuthenticationError(
                f"algorithm {shown(alg)} not allowed for issuer {issuer.name}"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed("kid is not a string")
        key = await self._keys.key(issuer.name, kid)
        _check_signature(obj, key, issuer, alg, kid)
        self._check_claims(claims, issuer)
        principal = presets.principal_from_claims(issuer.settings, claims)
        settings = issuer.settings
        until = min(
            float(claims["exp"]) + settings.leeway.total_seconds(),
            self._clock.now().timestamp() + settings.jwks_cache_ttl.total_seconds(),
        )
        return principal, until

    def known_claims(self) -> dict[str, set[str] | None]:
        """Identity-issuer name → the claim names its preset puts in ``Principal.claims``
        (None: any claim), for policy lint."""
        return {name: presets.known_claims(i.settings.preset) for name, i in self._issuers.items()}

    async def aclose(self) -> None:
        await self._keys.aclose()

    # -- steps ----------------------------------------------------------------------------------

    def _select(self, claims: Mapping[str, Any]) -> _Issuer:
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise AuthenticationError("token has no iss claim")
        candidates = self._by_iss.get(iss)
        if not candidates:
            raise AuthenticationError(f"untrusted issuer {shown(iss)}")
        if len(candidates) > 1:
            aud = claims.get("aud")
            listed = aud if isinstance(aud, list) else [aud]
            auds = {a for a in listed if isinstance(a, str)}
            for candidate in candidates:
                if candidate.audiences & auds:
                    return candidate
        return candidates[0]

    def _check_claims(self, claims: dict[str, Any], issuer: _Issuer) -> None:
        try:
            issuer.claims.validate(claims)
        except ExpiredTokenError:
            raise AuthenticationError("token expired") from None
        except MissingClaimError as exc:
            raise AuthenticationError(f"token has no {exc.claim} claim") from None
        except InvalidClaimError as exc:
            raise AuthenticationError(_invalid_claim(exc.claim, claims.get(exc.claim))) from None
        except JoseError as exc:  # any other claim rule joserfc adds
            raise AuthenticationError(f"token claims rejected ({exc.error})") from None
        exp = claims["exp"]
        start = claims.get("iat", claims.get("nbf"))
        if start is None:
            start = self._clock.now().timestamp()
        lifetime = exp - start
        if lifetime > issuer.max_lifetime:
            raise AuthenticationError(
                f"token lifetime {int(lifetime)}s exceeds the {int(issuer.max_lifetime)}s "
                f"allowed for issuer {issuer.name}"
            )


def _parse(token: str) -> tuple[jws.CompactSignature, dict[str, Any], dict[str, Any]]:
    """Split and decode without verifying anything. Returns (jws object, header, claims)."""
    if not isinstance(token, str) or not token:
        raise AuthenticationError("missing token")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationError(f"token is too large (over {MAX_TOKEN_BYTES} bytes)")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise _malformed("not ASCII") from None
    dots = raw.count(b".")
    if dots == 4:
        raise AuthenticationError("encrypted tokens (JWE) are not accepted")
    if dots != 2:
        raise _malformed("a JWT has three dot-separated parts")
    try:
        obj = jws.extract_compact(raw, registry=_PARSE)
    except ExceededSizeError:
        raise AuthenticationError(f"token is too large (over {MAX_TOKEN_BYTES} bytes)") from None
    except (JoseError, ValueError, TypeError):
        raise _malformed("header or payload is not base64url-encoded JSON with an alg") from None
    header = obj.headers()
    if not isinstance(header, dict):
        raise _malformed("header is not a JSON object")
    if "b64" in header:
        raise _malformed("unencoded payloads (b64) are not accepted")
    try:
        _PARSE.check_header(header)
    except (JoseError, ValueError, TypeError) as exc:
        raise AuthenticationError(f"token header rejected ({_header_problem(exc)})") from None
    try:
        claims = json.loads(obj.payload)
    except (ValueError, RecursionError):
        raise _malformed("payload is not JSON") from None
    if not isinstance(claims, dict):
        raise _malformed("payload is not a JSON object")
    return obj, header, claims


def _header_problem(exc: Exception) -> str:
    if isinstance(exc, JoseError) and exc.description:
        return exc.description
    return type(exc).__name__


def _check_signature(
    obj: jws.CompactSignature, key: Key, issuer: _Issuer, alg: str, kid: str | None
) -> None:
    try:
        ok = jws.validate_compact(obj, key, registry=issuer.registry)
    except (JoseError, ValueError, TypeError):
        # Wrong key type, curve, or a key whose own "alg" differs from the header's.
        raise AuthenticationError(
            f"signing key kid={shown(kid)} of issuer {issuer.name} cannot verify {alg} tokens"
        ) from None
    if not ok:
        raise AuthenticationError("token signature does not verify")


def _invalid_claim(claim: str, value: Any) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if claim == "aud":
        return "audience not accepted"
    if claim == "iss":
        return "issuer does not match"
    if claim == "nbf" and numeric:
        return "token not yet valid (nbf is in the future)"
    if claim == "iat" and numeric:
        return "token issued in the future (iat)"
    return f"invalid {claim} claim"
