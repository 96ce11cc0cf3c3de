"""Signing keys of the JWT issuer: a directory of PEM files and the ring built from it.

Owns the on-disk layout and every operation on it:

- one file per key, ``<created_unix>-<kid>.pem``: an unencrypted PKCS#8 PEM private key, mode
  0600, written atomically (temporary file, then rename); ``kid`` is the key's RFC 7638
  thumbprint, checked against the file's content when it is loaded;
- the newest key (largest ``created_unix``) signs; every key in the directory verifies; a key is
  *retired* when a newer one exists, at that key's ``created_at``;
- :func:`generate_key`, :func:`list_keys` and :func:`prune_keys` back ``jit keys
  rotate/list/prune``;
- :class:`KeyRing` is what the issuer signs and verifies with. It parses every key once, and
  re-reads the directory when it changes (checked at most once per :data:`RELOAD_INTERVAL`
  seconds of ``clock.monotonic()``), so a rotation reaches a running broker without a restart.
  A directory that stops being usable (emptied, a bad file, a key of another algorithm) never
  replaces a good ring: the ring keeps its keys and reports the problem in :attr:`KeyRing.error`.

Supported algorithms: ``EdDSA`` (an Ed25519 key; signed as ``alg: EdDSA``, see ADR 0002) and
``ES256`` (a P-256 key). Private key material never appears in a log line, repr or exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import ECKey, OKPKey

from broker.clock import Clock
from broker.errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "RELOAD_INTERVAL",
    "KeyInfo",
    "KeyRing",
    "SigningKey",
    "generate_key",
    "list_keys",
    "prune_keys",
]

log = logging.getLogger("jit.issuers.jwt.keys")

#: The JWS algorithms a key ring can hold.
ALGORITHMS: Final = ("EdDSA", "ES256")
#: Seconds (of ``clock.monotonic()``) between two looks at the key directory.
RELOAD_INTERVAL: Final = 1.0

_FILE = re.compile(r"^(?P<created>[0-9]{1,12})-(?P<kid>[A-Za-z0-9_-]{1,128})\.pem$")


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One key file, as ``jit keys list`` shows it. Holds no key material."""

    kid: str
    algorithm: str
    created_at: datetime
    path: Path
    retired_at: datetime | None  # created_at of the next newer key; None for the active key
    active: bool  # the newest key: the one that signs


class SigningKey:
    """A parsed key: the private key that signs and its public JWK. ``repr`` shows only the kid."""

    __slots__ = ("algorithm", "created_at", "kid", "private", "public", "public_jwk")

    def __init__(self, pem: bytes, *, created_at: datetime, where: str) -> None:
        algorithm, private = _parse_pem(pem, where)
        self.algorithm: str = algorithm
        self.created_at: datetime = created_at
        self.private: OKPKey | ECKey = private
        self.kid: str = private.thumbprint()
        jwk: dict[str, Any] = dict(private.as_dict(private=False))
        jwk.pop("d", None)  # as_dict(private=False) never has it; belt and braces
        jwk.update(kid=self.kid, alg=algorithm, use="sig")
        self.public_jwk: dict[str, Any] = jwk
        self.public: OKPKey | ECKey = type(private).import_key(jwk)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, algorithm={self.algorithm!r})"


def _parse_pem(pem: bytes, where: str) -> tuple[str, OKPKey | ECKey]:
    """The algorithm and joserfc key of a PKCS#8 PEM private key. Error messages name ``where``
    and the problem, never the content."""
    try:
        raw = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{where}: not an unencrypted PEM private key ({exc.__class__.__name__})"
        ) from None
    if isinstance(raw, Ed25519PrivateKey):
        return "EdDSA", OKPKey.import_key(pem, parameters={"alg": "EdDSA", "use": "sig"})
    if isinstance(raw, ec.EllipticCurvePrivateKey) and isinstance(raw.curve, ec.SECP256R1):
        return "ES256", ECKey.import_key(pem, parameters={"alg": "ES256", "use": "sig"})
    raise ConfigError(f"{where}: unsupported key type (use Ed25519 for EdDSA or P-256 for ES256)")


def _new_pem(algorithm: str) -> bytes:
    if algorithm == "EdDSA":
        private: Ed25519PrivateKey | ec.EllipticCurvePrivateKey = Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unsupported algorithm {algorithm!r} (choose from {list(ALGORITHMS)})")
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _key_files(directory: Path) -> list[tuple[int, str, Path]]:
    """``(created_unix, kid, path)`` of every key file, oldest first. Hidden files (temporary
    files, Kubernetes' ``..data``) and files not ending in ``.pem`` are ignored; a ``.pem`` file
    with any other name is an error, so a misplaced key is never silently skipped."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        raise ConfigError(
            f"keys directory {directory} does not exist (create a key: "
            f"`jit keys rotate --dir {directory}`)"
        ) from None
    except NotADirectoryError:
        raise ConfigError(f"keys directory {directory} is not a directory") from None
    except PermissionError:
        raise ConfigError(f"keys directory {directory} is not readable") from None
    found: list[tuple[int, str, Path]] = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".pem"):
            continue
        m = _FILE.match(entry.name)
        if m is None:
            raise ConfigError(
                f"{entry.path}: a key file must be named <created_unix>-<kid>.pem "
                "(create keys with `jit keys rotate`)"
            )
        found.append((int(m["created"]), m["kid"], Path(entry.path)))
    found.sort()
    return found


def _load_file(created: int, kid: str, path: Path) -> SigningKey:
    try:
        st = path.stat()
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if st.st_mode & 0o077:
        log.warning(
            "key file %s is accessible to group or others (mode %o); it should be 0600",
            path,
            st.st_mode & 0o777,
        )
    key = SigningKey(pem, created_at=_utc(created), where=str(path))
    if key.kid != kid:
        raise ConfigError(
            f"{path}: the file name says kid {kid!r} but the key's RFC 7638 thumbprint is "
            f"{key.kid!r}"
        )
    return key


def _load_directory(directory: Path) -> list[SigningKey]:
    return [_load_file(created, kid, path) for created, kid, path in _key_files(directory)]


def _infos(keys: Sequence[SigningKey], paths: Sequence[Path]) -> list[KeyInfo]:
    out: list[KeyInfo] = []
    for i, (key, path) in enumerate(zip(keys, paths, strict=True)):
        newer = keys[i + 1] if i + 1 < len(keys) else None
        out.append(
            KeyInfo(
                kid=key.kid,
                algorithm=key.algorithm,
                created_at=key.created_at,
                path=path,
                retired_at=newer.created_at if newer is not None else None,
                active=newer is None,
            )
        )
    return out


def generate_key(dir: Path, algorithm: str, now: datetime) -> KeyInfo:
    """Rotate: write a new signing key into ``dir``. Older keys stay and keep verifying.

    The file is created with mode 0600 under a temporary name and renamed into place, so a
    broker reading the directory never sees half a key. ``created_unix`` is ``now`` in whole
    seconds, or one second after the newest existing key if that is later, so the new key is
    always the newest. Raises ValueError for an unknown algorithm."""
    pem = _new_pem(algorithm)
    dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = _key_files(dir)
    created = int(now.timestamp())
    if existing and existing[-1][0] >= created:
        created = existing[-1][0] + 1
    key = SigningKey(pem, created_at=_utc(created), where="generated key")
    final = dir / f"{created}-{key.kid}.pem"
    tmp = dir / f".{created}-{key.kid}.pem.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # whatever the umask did
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(dir)
    log.info("generated signing key %s (%s) in %s", key.kid, algorithm, dir)
    return KeyInfo(
        kid=key.kid,
        algorithm=key.algorithm,
        created_at=key.created_at,
        path=final,
        retired_at=None,
        active=True,
    )


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def list_keys(dir: Path) -> list[KeyInfo]:
    """Every key in ``dir``, oldest first; the last one is active. Raises ConfigError for a
    missing directory or a bad key file."""
    files = _key_files(dir)
    keys = [_load_file(created, kid, path) for created, kid, path in files]
    return _infos(keys, [path for _, _, path in files])


def prune_keys(
    dir: Path,
    *,
    max_token_lifetime: timedelta,
    now: datetime,
) -> list[KeyInfo]:
    """Delete the keys retired more than ``max_token_lifetime`` ago: every token they signed
    has expired. The active key is never deleted. Returns the deleted keys.

    ``max_token_lifetime`` must cover the longest TTL of any issuer using this directory, plus
    the time a rotation takes to reach every broker replica."""
    if max_token_lifetime < timedelta(0):
        raise ValueError("max_token_lifetime must not be negative")
    removed: list[KeyInfo] = []
    for info in list_keys(dir):
        if info.active or info.retired_at is None:
            continue
        if now - info.retired_at > max_token_lifetime:
            info.path.unlink(missing_ok=True)
            removed.append(info)
            log.info("pruned key %s (retired %s)", info.kid, info.retired_at.isoformat())
    if removed:
        _fsync_dir(dir)
    return removed


class _Snapshot:
    """An immutable view of the ring's keys: the one that signs and a kid → key index."""

    __slots__ = ("by_kid", "jwks", "keys", "signing")

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.keys: tuple[SigningKey, ...] = tuple(keys)
        self.signing: SigningKey = self.keys[-1]
        self.by_kid: dict[str, SigningKey] = {k.kid: k for k in self.keys}
        self.jwks: tuple[dict[str, Any], ...] = tuple(k.public_jwk for k in self.keys)


class KeyRing:
    """The keys an issuer signs and verifies with: a directory of key files, or (in development)
    one key generated in memory.

    Construct with :meth:`load` or :meth:`generate`. Call :meth:`refresh` before using the ring;
    it is cheap (one ``clock.monotonic()`` call) except when it actually looks at the directory.
    """

    def __init__(
        self,
        keys: Sequence[SigningKey],
        *,
        algorithm: str,
        clock: Clock,
        directory: Path | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm {algorithm!r} is not one of {list(ALGORITHMS)}")
        _check_algorithms(keys, algorithm, directory)
        self.algorithm: str = algorithm
        self.directory: Path | None = directory
        self._clock = clock
        self._snapshot = _Snapshot(keys)
        self._checked_at = clock.monotonic()
        self._fingerprint = _fingerprint(directory) if directory is not None else None
        #: Why the directory's current content is not in use (None when it is).
        self.error: str | None = None

    @classmethod
    def load(cls, directory: Path, *, algorithm: str, clock: Clock) -> KeyRing:
        """The ring of every key in ``directory``. Raises ConfigError when it is missing or
        empty, holds a bad file, or holds a key of another algorithm."""
        keys = _load_directory(directory)
        if not keys:
            raise ConfigError(
                f"keys directory {directory} holds no keys (create one: "
                f"`jit keys rotate --dir {directory} --algorithm {algorithm}`)"
            )
        return cls(keys, algorithm=algorithm, clock=clock, directory=directory)

    @classmethod
    def generate(cls, algorithm: str, *, clock: Clock) -> KeyRing:
        """A ring of one fresh key that lives only in memory (development mode)."""
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm {algorithm!r} is not one of {list(ALGORITHMS)}")
        key = SigningKey(_new_pem(algorithm), created_at=clock.now(), where="generated key")
        return cls([key], algorithm=algorithm, clock=clock)

    def __repr__(self) -> str:
        where = str(self.directory) if self.directory is not None else "memory"
        return f"KeyRing({where}, signing kid={self.signing.kid!r}, keys={len(self.keys)})"

    @property
    def signing(self) -> SigningKey:
        """The newest key: it signs every new token."""
        return self._snapshot.signing

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every key, oldest first."""
        return self._snapshot.keys

    def get(self, kid: str) -> SigningKey | None:
        """The key with this kid, if it is in the ring."""
        return self._snapshot.by_kid.get(kid)

    def jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}``: the public JWK (kid, alg, use "sig") of every key."""
        return {"keys": [dict(jwk) for jwk in self._snapshot.jwks]}

    def refresh(self) -> bool:
        """Re-read the directory if it changed; look at most once per RELOAD_INTERVAL.

        Returns True when the ring's keys changed. Never raises: a directory that cannot be
        used leaves the ring as it was and sets :attr:`error`."""
        if self.directory is None:
            return False
        now = self._clock.monotonic()
        if now - self._checked_at < RELOAD_INTERVAL:
            return False
        self._checked_at = now
        fingerprint = _fingerprint(self.directory)
        if fingerprint == self._fingerprint and self.error is None:
            return False
        try:
            keys = _load_directory(self.directory)
            if not keys:
                raise ConfigError(f"keys directory {self.directory} holds no keys")
            _check_algorithms(keys, self.algorithm, self.directory)
        except ConfigError as exc:
            if self.error != exc.message:
                log.error(
                    "keys directory %s changed but cannot be used; still signing with %s: %s",
                    self.directory,
                    self.signing.kid,
                    exc.message,
                )
            self.error = exc.message
            return False
        except Exception as exc:  # never let a reload failure reach mint or identify
            message = f"reading {self.directory} failed: {exc.__class__.__name__}"
            log.error("%s; still signing with %s", message, self.signing.kid)
            self.error = message
            return False
        self._fingerprint = fingerprint
        old = self._snapshot
        self._snapshot = _Snapshot(keys)
        self.error = None
        changed = [k.kid for k in old.keys] != [k.kid for k in keys]
        if changed:
            log.info(
                "reloaded keys from %s: %d keys, signing with %s",
                self.directory,
                len(keys),
                self.signing.kid,
            )
        return changed


def _check_algorithms(keys: Iterable[SigningKey], algorithm: str, directory: Path | None) -> None:
    for key in keys:
        if key.algorithm != algorithm:
            where = f" in {directory}" if directory is not None else ""
            raise ConfigError(
                f"key {key.kid}{where} is {key.algorithm} but the issuer's algorithm is "
                f"{algorithm} (one directory holds keys of one algorithm)"
            )


def _fingerprint(directory: Path) -> tuple[int, tuple[str, ...]] | None:
    """What changes when a key is added, removed or replaced; None if unreadable."""
    try:
        mtime = directory.stat().st_mtime_ns
        names = tuple(sorted(e.name for e in os.scandir(directory) if e.name.endswith(".pem")))
    except OSError:
        return None
    return mtime, names
