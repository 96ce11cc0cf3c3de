"""The SSF transmitter: revocations in, signed SETs pushed to every receiver (RFC 8935).

Owns the receivers' configuration checks, the push (one SET per POST), the per-receiver delivery
rounds (lock, read after the cursor, POST in order, acknowledge or back off) and the loop that
runs them, the ``/.well-known/ssf-configuration`` document and the JWKS. The outbox and its Lua
scripts are :mod:`broker.ssf.outbox`; the SET claims are :mod:`broker.ssf.set`.

Delivery guarantees (docs/ssf.md): each SET reaches each receiver in outbox order; a failure
(connection refused, timeout, any answer but ``202 Accepted`` — including a ``400`` with an
RFC 8935 §2.3 error) is retried with capped exponential backoff and jitter, forever, and holds
back the SETs after it: an outage delays, never drops. Only the holder of a receiver's lock
delivers to it; the cursor moves only after a ``202``. If a replica dies (or loses its lock)
between a receiver's ``202`` and the cursor write, that one SET is sent again with the same
``jti``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from broker.audit import AuditEvent, AuditLog
from broker.clock import Clock, to_ms
from broker.config import SsfReceiverSettings, SsfSettings
from broker.errors import ConfigError
from broker.retry import backoff
from broker.ssf.keys import SetSigner
from broker.ssf.outbox import Cursor, Outbox, Record
from broker.ssf.set import (
    PUSH_DELIVERY,
    SESSION_REVOKED,
    SET_CONTENT_TYPE,
    SPEC_VERSION,
    OutboxEntry,
    Revocation,
    set_claims,
)
from broker.types import Secret
from broker.urls import check_url

__all__ = ["JWKS_PATH", "ReceiverStatus", "SsfSink", "SsfTransmitter"]

log = logging.getLogger("jit.ssf")

#: Where the broker serves the SET verification keys, relative to the issuer URL.
JWKS_PATH: Final = "/ssf/jwks.json"
#: RFC 8935 §2.3 error codes; anything else a receiver sends is reported as ``other``.
_RFC8935_ERRORS: Final = frozenset(
    {
        "invalid_request",
        "invalid_key",
        "invalid_issuer",
        "invalid_audience",
        "authentication_failed",
        "access_denied",
    }
)
_MAX_BODY: Final = 4096  # bytes of a receiver's answer we read (for the §2.3 error)
_NAME_OK: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_LOCK_MARGIN: Final = timedelta(seconds=5)


class ReceiverStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One receiver's delivery state, for health and metrics."""

    lag: int  # SETs published and not yet acknowledged by this receiver
    attempts: int = 0  # failed deliveries of the SET at the head of its queue (0: healthy)
    next_attempt_ms: int | None = None  # clock ms of the next try while backing off
    last_error: str | None = None  # e.g. "HTTP 503", "ConnectError", "HTTP 400 invalid_key"


class _Token:
    """The bearer token a receiver expects, read from its ``token_file`` and read again when the
    file changes (so a rotated token reaches a running broker). Never logged."""

    def __init__(self, path: str, receiver: str) -> None:
        self.path = Path(path)
        self.receiver = receiver
        self._stamp: tuple[int, int] | None = None
        self._value: Secret | None = None
        self._load(fail_closed=True)

    def _load(self, *, fail_closed: bool) -> None:
        where = f"ssf receiver {self.receiver!r}: token_file {self.path}"
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8").strip()
            if not text or any(not (0x21 <= ord(c) <= 0x7E) for c in text):
                raise ConfigError(f"{where}: must hold one token of printable ASCII without spaces")
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            message = (
                exc.message if isinstance(exc, ConfigError) else f"{where}: cannot read ({reason})"
            )
            if fail_closed:
                raise ConfigError(message) from None
            log.warning("%s; still using the token read before", message)
            return
        self._stamp, self._value = stamp, Secret(text)

    def get(self) -> Secret:
        self._load(fail_closed=False)
        assert self._value is not None  # loaded (fail closed) in __init__
        return self._value


def _check_url(url: str, what: str, *, allow_http: bool, allow_query: bool) -> str:
    try:
        check_url(url, allow_http=allow_http, allow_query=allow_query)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return url


def _check_receivers(receivers: Sequence[SsfReceiverSettings]) -> None:
    names: set[str] = set()
    for r in receivers:
        if not r.name or len(r.name) > 64 or not set(r.name) <= _NAME_OK:
            raise ConfigError(
                f"ssf receiver {r.name!r}: name must be 1-64 characters of [A-Za-z0-9_.-]"
            )
        if r.name in names:
            raise ConfigError(f"ssf receiver {r.name!r}: receiver names must be unique")
        names.add(r.name)
        where = f"ssf receiver {r.name!r}"
        _check_url(r.endpoint, f"{where}: endpoint", allow_http=False, allow_query=True)
        if not r.audience.strip():
            raise ConfigError(f"{where}: audience must not be empty")
        if r.timeout <= timedelta(0):
            raise ConfigError(f"{where}: timeout must be positive")


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _clean(text: str, limit: int = 200) -> str:
    """A receiver's free text, safe for one log line."""
    out = "".join(c if c.isprintable() else "?" for c in text)
    return out[:limit] + ("..." if len(out) > limit else "")


class _Outcome(msgspec.Struct, frozen=True):
    ok: bool
    error: str = ""  # short, ours: "HTTP 503", "ConnectError", "HTTP 400 invalid_key"
    status: int | None = None
    err: str | None = None  # the RFC 8935 §2.3 error code, for a 400
    description: str | None = None  # the receiver's description (cleaned), for the log only


class SsfTransmitter:
    """Pushes a signed SET per revocation to every configured receiver.

    ``publish`` enqueues (one Redis round trip); ``run`` delivers until stopped (every replica
    may run it); ``run_once`` is one delivery round (tests drive it with a FakeClock)."""

    def __init__(
        self,
        settings: SsfSettings,
        redis: Redis,
        prefix: str,
        clock: Clock,
        *,
        issuer_url: str,
        dev: bool = False,
        audit: AuditLog | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        poll_interval: timedelta = timedelta(milliseconds=500),
        backoff_base: timedelta = timedelta(seconds=1),
        backoff_cap: timedelta = timedelta(minutes=5),
        batch_size: int = 100,
        forget_after: timedelta = timedelta(days=7),
        rand: Callable[[], float] = random.random,
    ) -> None:
        issuer = issuer_url.rstrip("/")
        _check_url(issuer, "ssf issuer (public_url)", allow_http=dev, allow_query=False)
        _check_receivers(settings.receivers)
        if batch_size < 1:
            raise ConfigError("ssf: batch_size must be >= 1")
        if backoff_base <= timedelta(0) or backoff_cap < backoff_base:
            raise ConfigError("ssf: backoff_base must be positive and at most backoff_cap")
        self.settings = settings
        self.issuer = issuer
        self.clock = clock
        self.audit = audit
        self.signer = SetSigner.from_settings(settings.signing_key_file, dev=dev)
        self.outbox = Outbox(redis, prefix)
        self.receivers: dict[str, SsfReceiverSettings] = {r.name: r for r in settings.receivers}
        self._tokens = {
            r.name: _Token(r.token_file, r.name) for r in settings.receivers if r.token_file
        }
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.batch_size = batch_size
        self.forget_after = forget_after
        self._rand = rand
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,  # a redirect must not carry the bearer token elsewhere
            headers={"User-Agent": "jit-broker-ssf"},
        )
        self._wake = asyncio.Event()

    # -- documents --------------------------------------------------------------------------

    def configuration(self) -> dict[str, Any]:
        """The ``/.well-known/ssf-configuration`` document (SSF 1.0 transmitter metadata)."""
        return {
            "spec_version": SPEC_VERSION,
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}{JWKS_PATH}",
            "delivery_methods_supported": [PUSH_DELIVERY],
            "default_subjects": "ALL",
            "events_supported": [SESSION_REVOKED],
        }

    def jwks(self) -> dict[str, Any]:
        """The public keys SETs are signed with (served at ``jwks_uri``)."""
        return self.signer.jwks()

    # -- publish ----------------------------------------------------------------------------

    async def publish(self, event: AuditEvent | Revocation) -> str | None:
        """Enqueue one revocation for every receiver (one Redis round trip). Returns the outbox
        stream id, or None when no receiver is configured. ValueError for an event that is not
        a well-formed ``lease.revoked``."""
        revocation = event if isinstance(event, Revocation) else Revocation.from_audit(event)
        if not self.receivers:
            return None
        now = self.clock.now()
        entry = OutboxEntry(
            txn=secrets.token_hex(16),
            published_at=int(now.timestamp()),
            revocation=revocation,
        )
        res = await self.outbox.append(entry, now_ms=to_ms(now), receivers=list(self.receivers))
        self._wake.set()
        return res[0] if res else None

    def sink(self) -> SsfSink:
        return SsfSink(self)

    # -- delivery ---------------------------------------------------------------------------

    async def register(self) -> None:
        """Create the cursors of receivers no replica knew yet (at the outbox's end)."""
        if self.receivers:
            await self.outbox.append(
                None, now_ms=to_ms(self.clock.now()), receivers=list(self.receivers)
            )

    async def run_once(self) -> int:
        """One delivery round for every receiver. Returns how many SETs were acknowledged.
        Raises the first Redis error after every receiver's round has ended (so that the loop
        reports an outage once, not once per receiver per round)."""
        results = await asyncio.gather(
            *(self.deliver(name) for name in self.receivers), return_exceptions=True
        )
        total = 0
        redis_error: BaseException | None = None
        for name, res in zip(self.receivers, results, strict=True):
            if isinstance(res, RedisError | RedisClusterException | OSError):
                redis_error = redis_error or res
            elif isinstance(res, BaseException):
                if not isinstance(res, Exception):
                    raise res
                log.error("ssf: delivery round for %s failed: %r", name, res)
            else:
                total += res
        if redis_error is not None:
            raise redis_error
        return total

    async def deliver(self, name: str) -> int:
        """One round for receiver ``name``: take its lock, push the SETs after its cursor in
        order until one fails or ``batch_size`` are done. Returns how many were acknowledged."""
        receiver = self.receivers[name]
        token = uuid.uuid4().hex
        lock_for = receiver.timeout * 2 + _LOCK_MARGIN
        now = self.clock.now()
        got = await self.outbox.acquire(
            name, token, now_ms=to_ms(now), until_ms=to_ms(now + lock_for)
        )
        if got.status != "ok" or got.cursor is None:
            return 0
        delivered = 0
        try:
            cursor: Cursor = got.cursor
            records = await self.outbox.read(cursor, self.batch_size)
            for record in records:
                if record.seq != cursor.seq + 1:
                    log.error(
                        "ssf: %d SET(s) for %s were removed from the outbox before delivery",
                        record.seq - cursor.seq - 1,
                        name,
                    )
                if not await self.outbox.renew(
                    name, token, until_ms=to_ms(self.clock.now() + lock_for)
                ):
                    break  # another replica took over
                if record.entry is None:
                    log.error("ssf: outbox entry %s cannot be decoded; skipped", record.id)
                    outcome = _Outcome(ok=True)
                else:
                    outcome = await self._push(receiver, record.entry)
                if not outcome.ok:
                    await self._failed(receiver, token, record, got.attempts + 1, outcome)
                    break
                status, cleared = await self.outbox.ack(
                    name,
                    token,
                    frm=cursor,
                    to=record,
                    forget_before_ms=to_ms(self.clock.now() - self.forget_after),
                )
                if status != "ok":
                    break
                if cleared is not None and cleared.attempts:
                    log.info(
                        "ssf: %s acknowledged again after %d failed attempt(s)",
                        name,
                        cleared.attempts,
                    )
                got = msgspec.structs.replace(got, attempts=0)
                cursor = Cursor(record.id, record.seq)
                delivered += 1
        finally:
            await self.outbox.release(name, token)
        return delivered

    async def _push(self, receiver: SsfReceiverSettings, entry: OutboxEntry) -> _Outcome:
        claims = set_claims(
            entry, issuer=self.issuer, receiver=receiver.name, audience=receiver.audience
        )
        body = self.signer.sign(claims).encode()
        headers = {"Content-Type": SET_CONTENT_TYPE, "Accept": "application/json"}
        token = self._tokens.get(receiver.name)
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get().reveal()}"
        try:
            async with asyncio.timeout(receiver.timeout.total_seconds()):
                async with self._client.stream(
                    "POST", receiver.endpoint, content=body, headers=headers
                ) as response:
                    status = response.status_code
                    raw = b""
                    if status != 202:
                        async for chunk in response.aiter_bytes():
                            raw += chunk
                            if len(raw) >= _MAX_BODY:
                                break
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return _Outcome(ok=False, error=type(exc).__name__)
        if status == 202:
            return _Outcome(ok=True, status=202)
        if 200 <= status < 300:
            return _Outcome(
                ok=False,
                status=status,
                error=f"HTTP {status} (RFC 8935 acknowledges with 202 Accepted only)",
            )
        err, description = None, None
        if status == 400:
            err, description = _rfc8935_error(raw[:_MAX_BODY])
        return _Outcome(
            ok=False,
            status=status,
            error=f"HTTP {status}" + (f" {err}" if err else ""),
            err=err,
            description=description,
        )

    async def _failed(
        self,
        receiver: SsfReceiverSettings,
        token: str,
        record: Record,
        attempts: int,
        outcome: _Outcome,
    ) -> None:
        delay = backoff(attempts, base=self.backoff_base, cap=self.backoff_cap, rand=self._rand)
        next_ms = to_ms(self.clock.now() + delay)
        if not await self.outbox.fail(
            receiver.name, token, attempts=attempts, next_ms=next_ms, error=outcome.error
        ):
            return  # the lock is another replica's now; it keeps its own count
        if not _power_of_two(attempts):
            return  # reported at attempts 1, 2, 4, 8, ...: an outage is not a log flood
        revocation = record.entry.revocation if record.entry is not None else None
        log.warning(
            "ssf: pushing a SET to %s failed (attempt %d, retry in %.1fs): %s%s",
            receiver.name,
            attempts,
            delay.total_seconds(),
            outcome.error,
            f" ({outcome.description})" if outcome.description else "",
        )
        if self.audit is not None:
            detail: dict[str, str | int | None] = {
                "receiver": receiver.name,
                "attempts": attempts,
                "retry_in_ms": int(delay.total_seconds() * 1000),
            }
            if outcome.status is not None:
                detail["status"] = outcome.status
            if outcome.err is not None:
                detail["err"] = outcome.err
            try:
                await self.audit.emit(
                    "ssf.delivery_failed",
                    outcome="error",
                    lease_id=revocation.lease_id if revocation else None,
                    task_id=revocation.task_id if revocation else None,
                    issuer=revocation.issuer if revocation else None,
                    reasons=[outcome.error],
                    detail=detail,
                )
            except Exception as exc:  # the audit log reports its own sink failures
                log.warning("ssf: could not audit a delivery failure: %s", type(exc).__name__)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set. Every replica may run this: per-receiver locks make
        one deliver at a time. A local ``publish`` wakes it at once; otherwise it looks every
        ``poll_interval``. Redis outages are logged and waited out."""
        if not self.receivers:
            await stop.wait()
            return
        registered = False
        redis_down = False
        while not stop.is_set():
            wait = self.poll_interval.total_seconds()
            try:
                if not registered:
                    await self.register()
                    registered = True
                self._wake.clear()
                delivered = await self.run_once()
                if redis_down:
                    log.info("ssf: Redis is answering again")
                    redis_down = False
                if delivered >= self.batch_size:
                    wait = 0.0  # a backlog: go on at once
            except (RedisError, RedisClusterException, OSError) as exc:
                if not redis_down:
                    log.warning("ssf: Redis unavailable (%s); retrying", type(exc).__name__)
                redis_down = True
                wait = max(wait, 1.0)
            except Exception:  # a bug must not end the loop: deliveries would stop silently
                log.exception("ssf: delivery round failed")
                wait = max(wait, 1.0)
            await self._sleep(stop, wait)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiters = {
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._wake.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            for w in waiters:
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    # -- observation ------------------------------------------------------------------------

    async def lag(self) -> dict[str, int]:
        """SETs published and not yet acknowledged, per configured receiver."""
        head, cursors = await self.outbox.cursors()
        return {
            name: max(0, head - cursors[name].seq) if name in cursors else 0
            for name in self.receivers
        }

    async def status(self) -> dict[str, ReceiverStatus]:
        lags = await self.lag()
        retry = await self.outbox.retry_states()
        out: dict[str, ReceiverStatus] = {}
        for name in self.receivers:
            r = retry.get(name)
            out[name] = ReceiverStatus(
                lag=lags[name],
                attempts=r.attempts if r else 0,
                next_attempt_ms=r.next_ms if r else None,
                last_error=r.error if r else None,
            )
        return out

    async def aclose(self) -> None:
        await self._client.aclose()


def _rfc8935_error(raw: bytes) -> tuple[str | None, str | None]:
    """The ``err`` code (only RFC 8935 §2.3 values; anything else is ``other``) and the cleaned
    ``description`` of a 400 answer, if it is the JSON object §2.3 describes."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    err = doc.get("err")
    description = doc.get("description")
    return (
        (err if err in _RFC8935_ERRORS else "other") if isinstance(err, str) else None,
        _clean(description) if isinstance(description, str) else None,
    )


class SsfSink:
    """An audit sink (``AuditLog(clock, [..., transmitter.sink()])``) that publishes every
    ``lease.revoked`` event to the transmitter's outbox and ignores the rest.

    A failed write is retried twice at once; if Redis still refuses it the error is logged with
    the lease id and raised (the audit log reports sink failures and carries on): that one
    revocation is then not pushed. See docs/ssf.md, "Limits"."""

    def __init__(self, transmitter: SsfTransmitter, attempts: int = 3) -> None:
        self.transmitter = transmitter
        self.attempts = attempts

    async def write(self, events: Sequence[AuditEvent]) -> None:
        for event in events:
            if event.type != "lease.revoked":
                continue
            for attempt in range(1, self.attempts + 1):
                try:
                    await self.transmitter.publish(event)
                    break
                except ValueError as exc:
                    log.error(
                        "ssf: lease.revoked event for lease %s cannot be pushed: %s",
                        event.lease_id,
                        exc,
                    )
                    break
                except (RedisError, RedisClusterException, OSError) as exc:
                    if attempt == self.attempts:
                        log.error(
                            "ssf: revocation of lease %s could not be queued for receivers: %s",
                            event.lease_id,
                            type(exc).__name__,
                        )
                        raise

    async def aclose(self) -> None:
        return None
