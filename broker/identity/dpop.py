"""DPoP (RFC 9449): verify a proof of possession and name the key it proves.

Owns the checks of RFC 9449 §4.3 and their order, the RFC 7638 thumbprint (``jkt``) of a proof's
key, the replay caches that make each proof single-use, and :func:`check_bound`, the binding
check a resource server makes between an introspected token and a proof. No litestar here: the
API layer reads the ``DPoP`` header(s), calls :meth:`DPoPVerifier.verify` and passes the
returned ``jkt`` on as ``MintRequest.cnf = {"jkt": jkt}``.

:meth:`DPoPVerifier.verify` checks, cheapest first, and fails with
:class:`~broker.errors.AuthenticationError` (``oauth_error="invalid_dpop_proof"``; a missing or
wrong server nonce is ``"use_dpop_nonce"``, RFC 9449 §8) whose message names the reason and
never echoes the proof or an access token:

1. exactly one proof: one header value of at most :data:`MAX_PROOF_BYTES`, no comma (two
   headers folded into one), three base64url parts (not a JWE, not an unencoded payload);
2. header: ``typ`` is exactly ``dpop+jwt``; ``alg`` is on the verifier's allow-list, which can
   never hold ``none`` or ``HS*``; no ``crit``;
3. ``jwk``: a public EC, OKP or RSA key (any private member — ``d``, ``p``, ``q``, ``dp``,
   ``dq``, ``qi``, ``oth``, ``k`` — is refused) that fits ``alg`` (curve, at least 2048-bit RSA,
   the key's own ``alg``/``use`` if it states them);
4. signature: valid under that key, verified by joserfc with the same explicit allow-list;
5. claims: ``jti`` a non-empty string; ``htm`` equal to the request method; ``htu`` equal to the
   request URL without query and fragment, both compared after RFC 3986 §6 normalisation
   (scheme and host case, default port, empty path, percent-encoding, dot segments); ``iat``
   within ``[now - max_age - leeway, now + leeway]``; ``nonce`` equal to the server's nonce when
   one is required; ``ath`` equal to ``base64url(sha256(access_token))`` when an access token is
   presented (resource-server use). Secret-bearing comparisons are constant-time;
6. replay, last (so a proof that fails any other check never takes a slot): the ``jti`` is
   claimed in a :class:`ReplayCache` for as long as the proof could still be accepted, scoped
   to the key and the target URI (RFC 9449 §11.1). A second use is refused.

Only a replay cache outage raises something else: :class:`~broker.errors.StoreUnavailable`
(503), because the broker cannot tell a fresh proof from a replayed one without it (fail
closed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import ExceededSizeError, JoseError
from joserfc.jwk import ECKey, JWKRegistry, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from broker.clock import Clock
from broker.errors import AuthenticationError, ConfigError, StoreUnavailable
from broker.identity.algorithms import AllowListRegistry, ParseRegistry, is_forbidden
from broker.identity.messages import shown

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DPOP_TYP",
    "MAX_PROOF_BYTES",
    "DPoPVerifier",
    "MemoryReplayCache",
    "RedisReplayCache",
    "ReplayCache",
    "access_token_hash",
    "check_bound",
    "normalize_htu",
    "thumbprint",
]

DPOP_TYP: Final = "dpop+jwt"  # RFC 9449 §4.2
DEFAULT_ALGORITHMS: Final = ("ES256", "EdDSA", "RS256", "PS256")
#: A proof with an RSA-4096 key in its header is about 2 KiB; anything past this is not a proof.
MAX_PROOF_BYTES: Final = 8 * 1024
MAX_JTI_LENGTH: Final = 256
INVALID_PROOF: Final = "invalid_dpop_proof"
USE_NONCE: Final = "use_dpop_nonce"
MIN_RSA_BITS: Final = 2048

_PARSE = ParseRegistry()
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
#: Members that only a private (or symmetric) JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: The members RFC 7638 §3.2 hashes, per key type, besides ``kty``.
_THUMBPRINT_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
    "RSA": ("e", "n"),
}
#: Which key each algorithm needs: key type and, for EC/OKP, the curves that fit.
_KEY_FOR_ALG: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "ES256K": ("EC", frozenset({"secp256k1"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": ("OKP", frozenset({"Ed25519"})),
    "Ed448": ("OKP", frozenset({"Ed448"})),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _invalid(reason: str) -> AuthenticationError:
    return AuthenticationError(f"invalid DPoP proof: {reason}", oauth_error=INVALID_PROOF)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two strings (any characters, even lone surrogates that JSON
    can smuggle in)."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


# -- pure helpers -----------------------------------------------------------------------------


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public EC, OKP or RSA JWK, base64url without
    padding: the ``jkt`` of RFC 9449 §6.1.

    Only the required members take part (``crv kty x y``, ``crv kty x`` or ``e kty n``), in
    lexicographic order, serialised without whitespace; everything else in ``jwk`` is ignored.
    Raises ValueError for another key type or a missing or non-string member."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _THUMBPRINT_MEMBERS:
        raise ValueError(f"kty must be one of {sorted(_THUMBPRINT_MEMBERS)}, got {shown(kty)}")
    members: dict[str, str] = {"kty": kty}
    for name in _THUMBPRINT_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"a {kty} JWK needs a string {name!r} member")
        members[name] = value
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim for ``access_token``: base64url(SHA-256(ASCII bytes)), RFC 9449 §4.2.

    Raises ValueError for a token that is not ASCII (no access token is)."""
    try:
        raw = access_token.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("an access token is ASCII") from None
    return _b64url(hashlib.sha256(raw).digest())


def _normalize_percent(part: str) -> str:
    """RFC 3986 §6.2.2.1-2: upper-case percent-escapes, decode the unreserved ones."""

    def fix(m: re.Match[str]) -> str:
        byte = int(m.group(1), 16)
        return chr(byte) if byte in _UNRESERVED else f"%{m.group(1).upper()}"

    return _PERCENT.sub(fix, part)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    result = "/".join(out)
    if path.endswith(("/.", "/..")):
        result += "/"
    if not result.startswith("/"):
        result = "/" + result
    return result


def normalize_htu(url: str) -> str:
    """``url`` as DPoP compares it (RFC 9449 §4.3 step 9): no query or fragment; scheme and host
    lower-cased; the default port dropped; an empty path is ``/``; percent-escapes normalised;
    dot segments removed (RFC 3986 §6.2.2-6.2.3).

    Raises ValueError for anything but an absolute ``http``/``https`` URL with a host and no
    user information."""
    if not isinstance(url, str) or not url or len(url) > 4096:
        raise ValueError("not a URL")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("a URL has no whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError("only http and https URLs")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL carries user information")
    host = _normalize_percent(host).lower()
    if ":" in host:  # an IPv6 literal (urlsplit removed its brackets)
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(_normalize_percent(parts.path)) if parts.path else "/"
    return f"{scheme}://{netloc}{path}"


def check_bound(introspection: Mapping[str, Any], proof_jkt: str) -> bool:
    """True when an RFC 7662 introspection response says the token is bound (``cnf.jkt``,
    RFC 9449 §6.2) to the key whose thumbprint is ``proof_jkt`` — the ``jkt`` returned by
    :meth:`DPoPVerifier.verify` for the proof that came with the token. Constant-time.

    False for an unbound token (no ``cnf``), a token bound otherwise, or any malformed input.
    This checks the binding only: the caller still checks ``active`` and everything else."""
    if not isinstance(introspection, Mapping) or not isinstance(proof_jkt, str) or not proof_jkt:
        return False
    cnf = introspection.get("cnf")
    if not isinstance(cnf, Mapping):
        return False
    jkt = cnf.get("jkt")
    if not isinstance(jkt, str) or not jkt:
        return False
    return _same(jkt, proof_jkt)


# -- replay caches ----------------------------------------------------------------------------


@runtime_checkable
class ReplayCache(Protocol):
    """Remembers proof identifiers for a while. ``key`` is an opaque hex digest chosen by the
    verifier (it holds nothing secret)."""

    async def first_use(self, key: str, ttl: timedelta) -> bool:
        """Record ``key`` for ``ttl`` and return True, or return False when it is already
        recorded. Atomic: of two concurrent calls with one key, exactly one gets True. Raises
        StoreUnavailable when it cannot tell."""
        ...


class RedisReplayCache:
    """The production replay cache: one ``SET key 1 NX PX ttl`` per proof, so it is atomic
    across every replica and the key expires on its own.

    Keys are ``<prefix>:{dpop:<digest>}``: each key is its own hash tag, so the keys spread over
    a Redis Cluster's slots (no single hot slot) and a single-key command never crosses one.
    Nothing stored is secret: the digest of (key thumbprint, target URI, ``jti``) and ``1``."""

    def __init__(self, redis: Any, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} "):
            raise ConfigError(f"invalid DPoP replay key prefix {prefix!r}")
        self._redis = redis
        self.prefix = prefix

    def key(self, digest: str) -> str:
        return f"{self.prefix}:{{dpop:{digest}}}"

    async def first_use(self, key: str, ttl: timedelta) -> bool:
        px = max(1, math.ceil(ttl.total_seconds() * 1000))
        try:
            created = await self._redis.set(self.key(key), b"1", nx=True, px=px)
        except Exception as exc:  # redis.RedisError, OSError, timeouts: we cannot tell
            raise StoreUnavailable(
                f"DPoP replay cache unavailable ({exc.__class__.__name__}); refusing the proof"
            ) from None
        return bool(created)


class MemoryReplayCache:
    """An in-process replay cache on the injected clock, for tests and single-process use.

    It is not shared between processes or replicas (a proof could be replayed at another
    one): production uses :class:`RedisReplayCache`. Expired entries are swept when the cache
    fills; if it is still full, it refuses (StoreUnavailable) rather than forget a live entry."""

    def __init__(self, clock: Clock, *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ConfigError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def first_use(self, key: str, ttl: timedelta) -> bool:
        now = self._clock.now()
        expires = self._entries.get(key)
        if expires is not None and expires > now:
            return False
        if expires is None and len(self._entries) >= self._max:
            self._entries = {k: t for k, t in self._entries.items() if t > now}
            if len(self._entries) >= self._max:
                raise StoreUnavailable("DPoP replay cache is full; refusing the proof")
        self._entries[key] = now + ttl
        return True


# -- the verifier -----------------------------------------------------------------------------


class DPoPVerifier:
    """Verifies DPoP proofs (RFC 9449 §4.3) and returns the proof key's ``jkt``.

    ``algorithms`` is the allow-list (joserfc gets the same list); ``max_age`` is how old a
    proof's ``iat`` may be; ``leeway`` the clock skew tolerated on both sides. The broker uses
    one verifier for every endpoint; a resource server can use it too (pass ``access_token``).

    Raises ConfigError at construction for an allow-list holding ``none``, an ``HS*`` or an
    unknown algorithm, an empty one, or a non-positive ``max_age`` / negative ``leeway``."""

    def __init__(
        self,
        clock: Clock,
        replay: ReplayCache,
        *,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        max_age: timedelta = timedelta(seconds=300),
        leeway: timedelta = timedelta(seconds=30),
    ) -> None:
        if isinstance(algorithms, str):
            raise ConfigError("DPoP algorithms must be a list of names, not a string")
        algs = tuple(algorithms)
        forbidden = [a for a in algs if is_forbidden(a)]
        if forbidden:
            raise ConfigError(
                f"DPoP algorithms {forbidden} are not allowed: proofs must be signed with an "
                "asymmetric key"
            )
        unknown = [a for a in algs if a not in _KEY_FOR_ALG or a not in JWSRegistry.algorithms]
        if unknown:
            raise ConfigError(f"unknown DPoP algorithms {unknown} (known: {sorted(_KEY_FOR_ALG)})")
        if not algs:
            raise ConfigError("DPoP needs at least one algorithm")
        if max_age <= timedelta(0):
            raise ConfigError("DPoP max_age must be positive")
        if leeway < timedelta(0):
            raise ConfigError("DPoP leeway must not be negative")
        self._clock = clock
        self._replay = replay
        self.algorithms: tuple[str, ...] = algs
        self.max_age = max_age
        self.leeway = leeway
        self._registry = AllowListRegistry(algs)

    def __repr__(self) -> str:
        return (
            f"DPoPVerifier(algorithms={list(self.algorithms)!r}, max_age={self.max_age!r}, "
            f"leeway={self.leeway!r})"
        )

    async def verify(
        self,
        proof: str | Sequence[str],
        *,
        method: str,
        url: str,
        access_token: str | None = None,
        nonce: str | None = None,
    ) -> str:
        """Verify the proof sent with a request to ``method url`` and return its key's ``jkt``.

        ``proof`` is the ``DPoP`` header value, or every ``DPoP`` header value of the request
        (exactly one is accepted). ``url`` is the request URL as the client addressed it — build
        it from the broker's public URL and the request path, never from a ``Host`` header.
        ``access_token``: the token presented with the proof (``Authorization: DPoP <token>``),
        whose hash ``ath`` must carry. ``nonce``: the server-provided nonce the proof must
        carry, if the server requires one.

        Raises AuthenticationError (``invalid_dpop_proof``; ``use_dpop_nonce`` for the nonce)
        or, when the replay cache is down, StoreUnavailable."""
        expected_htu = normalize_htu(url)  # the server's own URL: a ValueError is a bug
        obj, header, claims = _parse(_single(proof))

        alg = self._check_alg(header)
        key, jkt = self._check_jwk(header, alg)
        try:
            ok = jws.validate_compact(obj, key, registry=self._registry)
        except (JoseError, ValueError, TypeError):
            raise _invalid(f"the jwk header's key cannot verify {alg} signatures") from None
        if not ok:
            raise _invalid("signature does not verify with the key in the jwk header")

        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise _invalid("jti claim missing or not a string")
        if len(jti) > MAX_JTI_LENGTH:
            raise _invalid(f"jti longer than {MAX_JTI_LENGTH} characters")
        htm = claims.get("htm")
        if not isinstance(htm, str):
            raise _invalid("htm claim missing or not a string")
        if htm != method:
            raise _invalid(f"htm {shown(htm)} does not match the request method {shown(method)}")
        self._check_htu(claims.get("htu"), expected_htu)
        iat = self._check_iat(claims.get("iat"))
        if nonce is not None:
            given = claims.get("nonce")
            if not isinstance(given, str) or not _same(given, nonce):
                raise AuthenticationError(
                    "DPoP proof must carry the nonce the server provided (DPoP-Nonce)",
                    oauth_error=USE_NONCE,
                )
        if access_token is not None:
            self._check_ath(claims.get("ath"), access_token)

        # Last: only a proof that passed everything else may take a replay slot. It stays
        # taken for as long as this proof could still be accepted (until iat + max_age + leeway).
        remaining = iat + self.max_age + self.leeway - self._clock.now()
        digest = hashlib.sha256(
            json.dumps([jkt, expected_htu, jti], separators=(",", ":")).encode()
        ).hexdigest()
        if not await self._replay.first_use(digest, max(remaining, timedelta(milliseconds=1))):
            raise _invalid("jti has already been used (replayed proof)")
        return jkt

    # -- steps ----------------------------------------------------------------------------

    def _check_alg(self, header: Mapping[str, Any]) -> str:
        typ = header.get("typ")
        if typ != DPOP_TYP:
            raise _invalid(f"typ must be {DPOP_TYP!r}, got {shown(typ)}")
        alg = header.get("alg")
        if not isinstance(alg, str) or is_forbidden(alg):
            raise _invalid(
                f"alg {shown(alg)} is not allowed: proofs must be signed with an asymmetric key"
            )
        if alg not in self.algorithms:
            raise _invalid(f"alg {shown(alg)} is not allowed (allowed: {list(self.algorithms)})")
        return alg

    def _check_jwk(self, header: Mapping[str, Any], alg: str) -> tuple[Key, str]:
        jwk = header.get("jwk")
        if jwk is None:
            raise _invalid("no jwk header (the public key the proof is signed with)")
        if not isinstance(jwk, dict):
            raise _invalid("the jwk header is not a JSON object")
        private = sorted(_PRIVATE_MEMBERS & jwk.keys())
        if private:
            raise _invalid(
                f"the jwk header holds private key material ({', '.join(private)}); send only "
                "the public key"
            )
        kty = jwk.get("kty")
        want_kty, curves = _KEY_FOR_ALG[alg]
        if kty != want_kty:
            raise _invalid(f"alg {alg} needs a {want_kty} key, the jwk header has {shown(kty)}")
        crv = jwk.get("crv")
        if curves is not None and (not isinstance(crv, str) or crv not in curves):
            raise _invalid(f"alg {alg} needs a key on {sorted(curves)}, got {shown(crv)}")
        if "alg" in jwk and jwk["alg"] != alg:
            raise _invalid(f"the jwk header's key is for alg {shown(jwk['alg'])}, not {alg}")
        if "use" in jwk and jwk["use"] != "sig":
            raise _invalid("the jwk header's key is not a signing key (use)")
        try:
            jkt = thumbprint(jwk)
            if any(not _B64URL.match(jwk[m]) for m in _THUMBPRINT_MEMBERS[want_kty]):
                raise ValueError("not base64url")
        except ValueError:
            raise _invalid("the jwk header is not a valid public key") from None
        # Before the import, which would warn (once per request) about a short RSA key.
        if want_kty == "RSA":
            try:
                bits = _rsa_bits(jwk["n"])
            except ValueError:  # binascii.Error: a length no base64 string has
                raise _invalid("the jwk header is not a valid public key") from None
            if bits < MIN_RSA_BITS:
                raise _invalid(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        try:
            key = JWKRegistry.import_key(jwk)
        except Exception:  # hostile input: whatever the key import trips on, it is no key
            raise _invalid("the jwk header is not a valid public key") from None
        if not isinstance(key, ECKey | OKPKey | RSAKey) or key.is_private:
            raise _invalid("the jwk header is not a public key")
        return key, jkt

    def _check_htu(self, htu: object, expected: str) -> None:
        if not isinstance(htu, str):
            raise _invalid("htu claim missing or not a string")
        try:
            given = normalize_htu(htu)
        except ValueError as exc:
            raise _invalid(f"htu is not an http(s) URL ({exc})") from None
        if given != expected:
            raise _invalid(f"htu does not match the request URL {shown(expected)}")

    def _check_iat(self, iat: object) -> datetime:
        if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat):
            raise _invalid("iat claim missing or not a number")
        now = self._clock.now()
        try:
            issued = datetime.fromtimestamp(iat, now.tzinfo)
        except (OverflowError, OSError, ValueError):
            raise _invalid("iat is out of range") from None
        if issued > now + self.leeway:
            raise _invalid("iat is in the future (check the client's clock)")
        if issued < now - self.max_age - self.leeway:
            raise _invalid(
                f"proof is too old (iat more than {int(self.max_age.total_seconds())}s ago)"
            )
        return issued

    @staticmethod
    def _check_ath(ath: object, access_token: str) -> None:
        if not isinstance(ath, str) or not ath:
            raise _invalid("ath claim missing (the proof must be made for this access token)")
        try:
            expected = access_token_hash(access_token)
        except ValueError:
            raise _invalid("ath does not match the access token") from None
        if not _same(ath, expected):
            raise _invalid("ath does not match the access token")


def _rsa_bits(n: str) -> int:
    """The size of an RSA modulus given as base64url (already checked to be base64url)."""
    raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    return int.from_bytes(raw, "big").bit_length()


def _single(proof: str | Sequence[str]) -> str:
    if isinstance(proof, str):
        values = [proof]
    elif isinstance(proof, Sequence):
        values = list(proof)
    else:
        raise _invalid("no DPoP header")
    if not values:
        raise _invalid("no DPoP header")
    if len(values) > 1:
        raise _invalid("more than one DPoP header")
    value = values[0]
    if not isinstance(value, str) or not value.strip():
        raise _invalid("the DPoP header is empty")
    if "," in value:
        raise _invalid("more than one DPoP proof in the header")
    return value.strip()


def _parse(proof: str) -> tuple[jws.CompactSignature, dict[str, Any], dict[str, Any]]:
    """Split and decode without verifying anything. Returns (jws object, header, claims)."""
    if len(proof) > MAX_PROOF_BYTES:
        raise _invalid(f"proof is too large (over {MAX_PROOF_BYTES} bytes)")
    try:
        raw = proof.encode("ascii")
    except UnicodeEncodeError:
        raise _invalid("not ASCII") from None
    dots = raw.count(b".")
    if dots == 4:
        raise _invalid("an encrypted JWT (JWE) is not a proof")
    if dots != 2:
        raise _invalid("a DPoP proof is a JWT of three dot-separated parts")
    try:
        obj = jws.extract_compact(raw, registry=_PARSE)
    except ExceededSizeError:
        raise _invalid(f"proof is too large (over {MAX_PROOF_BYTES} bytes)") from None
    except (JoseError, ValueError, TypeError):
        raise _invalid("header or payload is not base64url-encoded JSON with an alg") from None
    header = obj.headers()
    if not isinstance(header, dict):
        raise _invalid("header is not a JSON object")
    if "b64" in header:
        raise _invalid("unencoded payloads (b64) are not accepted")
    if "crit" in header:
        raise _invalid("critical header extensions (crit) are not supported")
    try:
        _PARSE.check_header(header)
    except (JoseError, ValueError, TypeError) as exc:
        detail = exc.description if isinstance(exc, JoseError) and exc.description else ""
        raise _invalid(f"header rejected ({detail or type(exc).__name__})") from None
    try:
        claims = json.loads(obj.payload)
    except (ValueError, RecursionError):
        raise _invalid("payload is not JSON") from None
    if not isinstance(claims, dict):
        raise _invalid("payload is not a JSON object")
    return obj, header, claims
