"""The signing-key cache: each identity issuer's JWKS, fetched, parsed once and kept.

Owns where keys come from and how often the IdP is asked:

- keys come from the issuer's ``jwks_uri``, or from OIDC discovery
  (``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``, whose ``issuer`` must match)
  when it is not configured; or, for the development issuer, from a static :class:`KeySet`;
- a fetched JWKS is parsed once into joserfc key objects indexed by ``kid`` and served from
  memory for ``jwks_cache_ttl`` — verification never parses a key;
- a token whose ``kid`` is unknown triggers a refresh (key rotation), at most one per
  ``jwks_min_refresh_interval`` per issuer, so a flood of tokens with random ``kid`` values costs
  the IdP one request per interval; concurrent refreshes share one in-flight fetch;
- a failed fetch keeps the keys already cached (they keep verifying) and is not retried for
  ``jwks_min_refresh_interval``; with no keys at all the caller gets a 401
  ("cannot fetch signing keys for issuer X"), never a crash.

Intervals are measured on ``Clock.monotonic()``. HTTP goes through one ``httpx.AsyncClient``
(injectable: tests use ``httpx.MockTransport``) with short timeouts and a response size cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import JWKRegistry, Key, KeySet, OctKey, RSAKey

from broker.clock import Clock
from broker.config import IdentityIssuerSettings
from broker.errors import AuthenticationError
from broker.identity.messages import shown

__all__ = ["DEFAULT_TIMEOUT", "MAX_DOCUMENT_BYTES", "JWKSCache", "KeyIndex", "parse_jwks"]

log = logging.getLogger(__name__)

#: Connect/read/write/pool timeouts for the IdP: a slow IdP must not hold requests for long.
DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
#: A JWKS or discovery document larger than this is refused (real ones are a few KiB).
MAX_DOCUMENT_BYTES = 256 * 1024
#: RSA keys shorter than this are ignored (RFC 7518 §3.3 requires 2048 bits).
MIN_RSA_BITS = 2048


class _FetchError(Exception):
    """A fetch failed; the message is logged (never shown to callers: it may name URLs)."""


@dataclass(frozen=True)
class KeyIndex:
    """Parsed verification keys of one issuer, by ``kid``."""

    by_kid: Mapping[str, Key]

    @classmethod
    def of(cls, keyset: KeySet) -> KeyIndex:
        by_kid: dict[str, Key] = {}
        for key in keyset:  # KeySet gives every key a kid (RFC 7638 thumbprint when missing)
            kid = key.kid
            if kid is not None and kid not in by_kid:
                by_kid[kid] = key
        return cls(by_kid)

    def find(self, kid: str | None) -> Key | None:
        if kid is None:
            # A token without a kid is accepted only when the issuer publishes exactly one key.
            if len(self.by_kid) == 1:
                return next(iter(self.by_kid.values()))
            return None
        return self.by_kid.get(kid)


def parse_jwks(document: Any) -> KeySet:
    """A JWKS document → a KeySet of its usable public signature keys.

    Skipped (and logged): keys of an unknown or symmetric type, keys whose ``use`` is not
    ``sig``, keys that carry private material, RSA keys under 2048 bits, keys that do not parse.
    Raises ValueError when the document is not a JWKS or nothing usable is left."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: list[Key] = []
    for i, data in enumerate(document["keys"]):
        if not isinstance(data, dict):
            log.warning("jwks: entry %d is not an object; ignored", i)
            continue
        kty = data.get("kty")
        if kty == OctKey.key_type or kty not in JWKRegistry.key_types:
            log.warning("jwks: entry %d has unusable kty %r; ignored", i, kty)
            continue
        if data.get("use", "sig") != "sig":
            continue
        if "d" in data:
            log.error("jwks: entry %d carries a private key; ignored", i)
            continue
        try:
            with warnings.catch_warnings():
                # joserfc warns about short RSA keys; they are refused just below instead.
                warnings.simplefilter("ignore", SecurityWarning)
                key = JWKRegistry.import_key(data)
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("jwks: entry %d does not parse (%s); ignored", i, type(exc).__name__)
            continue
        if isinstance(key, RSAKey) and key.public_key.key_size < MIN_RSA_BITS:
            log.warning("jwks: entry %d is an RSA key under %d bits; ignored", i, MIN_RSA_BITS)
            continue
        keys.append(key)
    if not keys:
        raise ValueError("the JWKS holds no usable signature key")
    return KeySet(keys)


@dataclass
class _IssuerKeys:
    """Per-issuer cache state. Times are ``Clock.monotonic()`` seconds."""

    settings: IdentityIssuerSettings
    static: bool = False
    index: KeyIndex | None = None
    fetched_at: float = 0.0
    last_attempt: float | None = None
    last_failed: bool = False
    last_forced: float | None = None  # last refresh triggered by an unknown kid
    discovered_jwks_uri: str | None = None
    inflight: asyncio.Task[None] | None = field(default=None, repr=False)


class JWKSCache:
    """Verification keys for every configured identity issuer.

    ``static_keys`` maps an identity-issuer name to a KeySet used instead of fetching (the
    development issuer). ``http`` is used as given and not closed by :meth:`aclose`; without it
    the cache makes (and closes) its own client.
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
        self._own_http = http is None
        self._http = http
        static_keys = static_keys or {}
        self._issuers: dict[str, _IssuerKeys] = {}
        for settings in issuers:
            state = _IssuerKeys(settings)
            if settings.name in static_keys:
                state.static = True
                state.index = KeyIndex.of(static_keys[settings.name])
            self._issuers[settings.name] = state

    # -- lookups --------------------------------------------------------------------------------

    async def key(self, issuer: str, kid: str | None) -> Key:
        """The key that signed a token of ``issuer`` with header ``kid``.

        Raises AuthenticationError when keys cannot be fetched or the kid stays unknown."""
        state = self._issuers[issuer]
        if state.static:
            return _found(state, kid)
        ttl = state.settings.jwks_cache_ttl.total_seconds()
        if state.index is None or self._clock.monotonic() - state.fetched_at >= ttl:
            if state.inflight is not None or self._may_retry(state):
                await self._refresh(state)
            if state.index is None:
                raise AuthenticationError(f"cannot fetch signing keys for issuer {issuer}")
        key = state.index.find(kid)
        if key is not None:
            return key
        if kid is not None and (state.inflight is not None or self._may_force(state)):
            if state.inflight is None:
                state.last_forced = self._clock.monotonic()
            await self._refresh(state)
        return _found(state, kid)

    # -- refresh --------------------------------------------------------------------------------

    def _interval(self, state: _IssuerKeys) -> float:
        return state.settings.jwks_min_refresh_interval.total_seconds()

    def _may_retry(self, state: _IssuerKeys) -> bool:
        """After a failed fetch, wait one min-refresh interval before asking the IdP again."""
        if not state.last_failed or state.last_attempt is None:
            return True
        return self._clock.monotonic() - state.last_attempt >= self._interval(state)

    def _may_force(self, state: _IssuerKeys) -> bool:
        """An unknown kid may trigger one refresh per min-refresh interval per issuer."""
        if not self._may_retry(state):
            return False
        if state.last_forced is None:
            return True
        return self._clock.monotonic() - state.last_forced >= self._interval(state)

    async def _refresh(self, state: _IssuerKeys) -> None:
        """Fetch the issuer's keys, or wait for the fetch already in flight. Never raises
        (except on cancellation): a failure is recorded and logged."""
        if state.inflight is None:
            state.inflight = asyncio.get_running_loop().create_task(
                self._fetch(state), name=f"jwks-refresh-{state.settings.name}"
            )
        # shield: one cancelled caller must not cancel the fetch others are waiting for.
        await asyncio.shield(state.inflight)

    async def _fetch(self, state: _IssuerKeys) -> None:
        name = state.settings.name
        state.last_attempt = self._clock.monotonic()
        try:
            uri = state.settings.jwks_uri or state.discovered_jwks_uri
            if uri is None:
                uri = await self._discover(state.settings)
                state.discovered_jwks_uri = uri
            try:
                keyset = parse_jwks(await self._get_json(uri))
            except ValueError as exc:
                raise _FetchError(f"{uri}: {exc}") from None
        except (_FetchError, httpx.HTTPError) as exc:
            self._failed(state, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug or an odd library error must not crash verification
            log.exception("identity issuer %s: unexpected error fetching keys", name)
            self._failed(state, type(exc).__name__)
        else:
            state.index = KeyIndex.of(keyset)
            state.fetched_at = self._clock.monotonic()
            state.last_failed = False
            log.info("identity issuer %s: %d signing key(s) loaded", name, len(state.index.by_kid))
        finally:
            state.inflight = None

    def _failed(self, state: _IssuerKeys, detail: str) -> None:
        state.last_failed = True
        state.discovered_jwks_uri = None  # rediscover next time: the document may have moved
        name = state.settings.name
        if state.index is None:
            log.error("identity issuer %s: cannot fetch signing keys: %s", name, detail)
        else:
            log.warning(
                "identity issuer %s: key refresh failed, keeping the cached keys: %s", name, detail
            )

    async def _discover(self, settings: IdentityIssuerSettings) -> str:
        url = settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._get_json(url)
        if not isinstance(doc, dict):
            raise _FetchError(f"{url}: not a JSON object")
        if doc.get("issuer") != settings.issuer:
            # OpenID Connect Discovery §4.3: the document must name the same issuer.
            raise _FetchError(f"{url}: issuer {doc.get('issuer')!r} does not match")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise _FetchError(f"{url}: no usable jwks_uri")
        return uri

    async def _get_json(self, url: str) -> Any:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, follow_redirects=False)
        async with self._http.stream(
            "GET",
            url,
            headers={"Accept": "application/json"},
            timeout=DEFAULT_TIMEOUT,
            follow_redirects=False,  # a redirect could downgrade to http or leave the IdP
        ) as resp:
            if resp.status_code != 200:
                raise _FetchError(f"{url}: HTTP {resp.status_code}")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise _FetchError(f"{url}: response larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise _FetchError(f"{url}: not JSON") from None

    async def aclose(self) -> None:
        tasks = [s.inflight for s in self._issuers.values() if s.inflight is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None


def _found(state: _IssuerKeys, kid: str | None) -> Key:
    key = state.index.find(kid) if state.index is not None else None
    if key is not None:
        return key
    name = state.settings.name
    if kid is None:
        raise AuthenticationError(
            f"token header has no kid and issuer {name} publishes more than one signing key"
        )
    raise AuthenticationError(f"unknown signing key kid={shown(kid)} for issuer {name}")
