"""The ``aws`` issuer: short-lived AWS credentials from STS ``AssumeRole``, narrowed per lease.

Owns the calls to STS and the credential it returns. For a lease on a configured resource it
assumes that resource's role with:

- ``RoleSessionName`` ``jit-<lease id>`` and session tags ``jit:lease``, ``jit:task``,
  ``jit:principal`` (:mod:`issuers.aws.session`), so CloudTrail leads back to the lease;
- an inline session ``Policy`` allowing exactly the IAM actions of the requested scope actions
  on the resource's ARNs (:func:`issuers.aws.config.session_policy`); AWS grants the
  intersection of the role's own policies and this one, never more than either;
- ``DurationSeconds`` = the whole seconds left until ``not_after`` when STS is called, minus
  ``latency_margin``. STS starts the clock when it receives the call, so the session ends no
  later than ``not_after`` as long as STS answers within the margin; if it took longer, the
  credential is discarded (nobody ever holds it) and mint raises ``IssuerUnavailable``.

STS cannot end a session early: the issuer is expiry-only (``revocable=False``) and
``revoke()`` is a no-op. The broker therefore never grants it a TTL longer than the task's time
left. docs/issuers/aws.md describes the limits and the emergency deny-policy option.

boto3's engine, botocore, is synchronous: every call runs in a worker thread
(``asyncio.to_thread``) under an overall deadline (``timeout``). botocore's DEBUG logs of wire
traffic would carry the minted credentials and the broker's own session token, so those three
loggers drop DEBUG records once an aws issuer is constructed (:func:`guard_botocore_logs`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeVar

import botocore.loaders  # type: ignore[import-untyped,unused-ignore]  # botocore: untyped
import botocore.session  # type: ignore[import-untyped,unused-ignore]  # (the same)
from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]  # (the same)
from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]  # (the same)
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from broker.errors import (
    BrokerError,
    InvalidRequest,
    IssuerError,
    IssuerUnavailable,
    ScopeNotSupported,
)
from broker.issuer import Capabilities, Exports, ExportSource, IssuerContext
from broker.types import Credential, Lease, MintRequest, Scope, Secret
from issuers.aws.config import (
    MIN_TTL,
    STS_MIN_SESSION,
    AWSConfig,
    Settings,
    load_settings,
    read_credentials_file,
    session_policy,
)
from issuers.aws.session import session_name, session_tags

__all__ = ["AWSIssuer", "guard_botocore_logs"]

log = logging.getLogger("jit.issuers.aws")

T = TypeVar("T")

#: botocore loggers whose DEBUG records hold wire content: response bodies (``parsers``: the
#: minted SecretAccessKey and SessionToken), the prepared request with its headers
#: (``endpoint``) and the canonical request (``auth``), both with the broker's own
#: X-Amz-Security-Token when it runs on temporary credentials.
WIRE_LOGGERS: Final = ("botocore.parsers", "botocore.endpoint", "botocore.auth")

#: Error codes that mean "try again later", whatever the HTTP status.
_RETRYABLE: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "IDPCommunicationError",
    }
)
_BROKER_IDENTITY_REFUSED: Final = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "IncompleteSignature",
        "InvalidAccessKeyId",
    }
)
_CODE_CHARS = re.compile(r"[^A-Za-z0-9.]")


class _NoWireDebug(logging.Filter):
    """Drops DEBUG records (botocore's wire dumps); keeps INFO and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def guard_botocore_logs() -> None:
    """Make botocore's wire loggers drop DEBUG records, process-wide. Idempotent."""
    for name in WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(type(f).__name__ == _NoWireDebug.__name__ for f in logger.filters):
            logger.addFilter(_NoWireDebug())


class AWSIssuer:
    """Mints AWS STS role sessions narrowed to a lease's scope. Implements ``Issuer``.

    Raises ConfigError at construction for invalid config or an unusable
    ``credentials_file``; it does not call AWS until ``check_health()`` or ``mint()``."""

    #: The ``config:`` of an instance, checked by the broker before construction.
    config_type: ClassVar[type[AWSConfig]] = AWSConfig

    def __init__(self, context: IssuerContext) -> None:
        self.name: str = context.name
        self._clock = context.clock
        self.settings: Settings = load_settings(self.name, context.config)
        self.capabilities: Capabilities = Capabilities(
            max_ttl=self.settings.max_ttl,
            default_ttl=self.settings.default_ttl,
            min_ttl=MIN_TTL,
            revocable=False,  # STS has no per-session revocation: expiry-only
            renewable=False,
        )
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_stamp: tuple[int, int, int] | None = None
        self._closed = False
        guard_botocore_logs()

    def __repr__(self) -> str:
        return (
            f"AWSIssuer(name={self.name!r}, region={self.settings.region!r}, "
            f"resources={len(self.settings.targets)})"
        )

    # -- Issuer ----------------------------------------------------------------------------

    def check_scope(self, requested: Scope) -> None:
        """The resource must be configured and every action one of its configured actions."""
        if requested.issuer != self.name:
            raise ScopeNotSupported(f"scope is for issuer {requested.issuer!r}, not {self.name!r}")
        target = self.settings.targets.get(requested.resource)
        if target is None:
            known = sorted(self.settings.targets)
            shown = ", ".join(repr(r) for r in known[:5]) + (", ..." if len(known) > 5 else "")
            raise ScopeNotSupported(
                f"aws issuer {self.name!r} has no resource {requested.resource!r} "
                f"(configured: {shown})"
            )
        if not requested.actions:
            raise ScopeNotSupported("at least one action is required")
        unknown = [a for a in requested.actions if a not in target.actions]
        if unknown:
            raise ScopeNotSupported(
                f"aws issuer {self.name!r}: resource {requested.resource!r} has no action "
                f"{', '.join(repr(a) for a in unknown)} "
                f"(it has {', '.join(sorted(target.actions))})"
            )

    async def mint(self, request: MintRequest) -> Credential:
        """AssumeRole for ``request.scope``, ending no later than ``request.not_after``."""
        self.check_scope(request.scope)
        if request.params:
            names = ", ".join(sorted(request.params)[:10])
            raise InvalidRequest(f"aws issuer {self.name!r} takes no params (got: {names})")
        s = self.settings
        target = s.targets[request.scope.resource]
        margin = s.latency_margin
        if request.not_after - request.issued_at < STS_MIN_SESSION + margin:
            raise InvalidRequest(
                f"aws issuer {self.name!r}: a ttl of "
                f"{_secs(request.not_after - request.issued_at)} is too short: AWS STS sessions "
                f"last at least {_secs(STS_MIN_SESSION)} (the minimum TTL is {_secs(MIN_TTL)})"
            )
        sent = self._clock.now()
        seconds = min(
            math.floor((request.not_after - sent - margin).total_seconds()),
            int(s.max_ttl.total_seconds()),
        )
        if seconds < STS_MIN_SESSION.total_seconds():
            raise IssuerError(
                f"aws issuer {self.name!r}: only {_secs(request.not_after - sent)} were left "
                f"before the lease's not_after when STS was to be called, less than STS's "
                f"minimum session of {_secs(STS_MIN_SESSION)}"
            )
        role_arn = target.role_arn
        session = session_name(request.lease_id)
        params: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": session,
            "Policy": session_policy(target, request.scope.actions),
            "DurationSeconds": seconds,
            "Tags": session_tags(request),
        }
        if target.external_id is not None:
            params["ExternalId"] = target.external_id
        response = await self._call(
            "AssumeRole", lambda sts: sts.assume_role(**params), role_arn=role_arn, seconds=seconds
        )
        received = self._clock.now()
        expires_at = received + timedelta(seconds=seconds)  # STS started counting before this
        if expires_at > request.not_after:
            raise IssuerUnavailable(
                f"aws issuer {self.name!r}: STS took {_secs(received - sent)} to answer, longer "
                f"than latency_margin ({_secs(margin)}); the session could have outlived the "
                "lease, so it was discarded unused"
            )
        creds = response.get("Credentials") if isinstance(response, dict) else None
        fields = _credential_fields(creds)
        if fields is None:
            raise IssuerError(
                f"aws issuer {self.name!r}: STS answered AssumeRole on {role_arn} without "
                "usable credentials"
            )
        key_id, secret_key, token, expiration = fields
        stated = _iso(expiration)
        secret = json.dumps(
            {
                "Version": 1,  # the credential_process format: usable by every AWS SDK
                "AccessKeyId": key_id,
                "SecretAccessKey": secret_key,
                "SessionToken": token,
                "Expiration": stated,
            },
            separators=(",", ":"),
        )
        metadata = {
            "access_key_id": key_id,
            "expiration": stated,
            "role_arn": role_arn,
            "session": session,
            "region": s.region,
        }
        user = response.get("AssumedRoleUser")
        if isinstance(user, dict) and isinstance(user.get("Arn"), str):
            metadata["assumed_role_arn"] = user["Arn"]
        return Credential(
            secret=Secret(secret),
            expires_at=expires_at,
            token_type="aws-sts",  # noqa: S106 (a type name, not a secret)
            handle={"access_key_id": key_id, "session": session, "role_arn": role_arn},
            metadata=metadata,
        )

    async def revoke(self, lease: Lease) -> None:
        """Nothing to call: STS cannot end one role session early, so the credential lives
        until its expiry (at most ``not_after``). Always succeeds; idempotent.

        For an emergency, an operator can cut every session of the role issued before a
        moment with a deny statement on ``aws:TokenIssueTime`` (the console's "Revoke active
        sessions"); see docs/issuers/aws.md. This issuer does not do that itself."""
        log.debug(
            "aws issuer %r: lease %s ended; its STS session expires by itself", self.name, lease.id
        )

    def exports(self, credential: Credential, request: MintRequest) -> Exports:
        """The AWS SDKs' variables (botocore reads ``AWS_CREDENTIAL_EXPIRATION`` too)."""
        return Exports(
            env={
                "AWS_ACCESS_KEY_ID": ExportSource(member="AccessKeyId"),
                "AWS_SECRET_ACCESS_KEY": ExportSource(member="SecretAccessKey"),
                "AWS_SESSION_TOKEN": ExportSource(member="SessionToken"),
                "AWS_CREDENTIAL_EXPIRATION": ExportSource(member="Expiration"),
                "AWS_REGION": ExportSource(metadata="region"),
                "AWS_DEFAULT_REGION": ExportSource(metadata="region"),
            }
        )

    async def check_health(self) -> None:
        """``sts:GetCallerIdentity`` with the broker's own credentials (needs no permission)."""
        await self._call("GetCallerIdentity", lambda sts: sts.get_caller_identity())

    async def aclose(self) -> None:
        """Close the HTTP connections; later calls raise IssuerUnavailable."""
        self._closed = True
        with self._lock:
            client, self._client, self._client_stamp = self._client, None, None
        if client is not None:
            client.close()

    # -- calling STS -----------------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        call: Callable[[Any], T],
        *,
        role_arn: str | None = None,
        seconds: int | None = None,
    ) -> T:
        if self._closed:
            raise IssuerUnavailable(f"aws issuer {self.name!r} is closed")
        deadline = self.settings.timeout.total_seconds()
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._run, call), deadline)
        except TimeoutError:
            raise IssuerUnavailable(
                f"aws issuer {self.name!r}: STS {operation} did not answer within "
                f"{_secs(self.settings.timeout)}"
            ) from None
        except BrokerError:
            raise
        except ClientError as exc:
            raise self._refused(operation, exc, role_arn, seconds) from None
        except BotoCoreError as exc:
            raise self._failed(operation, exc) from None
        except Exception as exc:  # anything else from the SDK: name it, show nothing of it
            raise IssuerError(
                f"aws issuer {self.name!r}: STS {operation} failed ({exc.__class__.__name__})"
            ) from None

    def _run(self, call: Callable[[Any], T]) -> T:
        return call(self._sts())

    def _sts(self) -> Any:
        """The STS client; rebuilt when ``credentials_file`` changes (rotation). In a worker
        thread."""
        with self._lock:
            if self._closed:
                raise IssuerUnavailable(f"aws issuer {self.name!r} is closed")
            stamp = self._file_stamp()
            if self._client is None or stamp != self._client_stamp:
                self._client = self._new_client()
                self._client_stamp = stamp
            return self._client

    def _file_stamp(self) -> tuple[int, int, int] | None:
        path = self.settings.credentials_file
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError as exc:
            raise IssuerUnavailable(
                f"aws issuer {self.name!r}: credentials_file is not readable "
                f"({exc.__class__.__name__})"
            ) from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _new_client(self) -> Any:
        s = self.settings
        credentials: dict[str, Any] = {}
        if s.credentials_file is not None:
            try:
                creds = read_credentials_file(s.credentials_file, s.profile)
            except ValueError as exc:
                raise IssuerUnavailable(
                    f"aws issuer {self.name!r}: credentials_file: {exc}"
                ) from None
            credentials = {
                "aws_access_key_id": creds.access_key_id,
                "aws_secret_access_key": creds.secret_access_key.reveal(),
                "aws_session_token": creds.session_token.reveal() if creds.session_token else None,
            }
        # Without credentials_file: boto3's default chain (environment, shared files, SSO, web
        # identity, container and instance metadata), which refreshes temporary credentials.
        session = botocore.session.Session()
        session.register_component("data_loader", _loader())
        timeout = s.timeout.total_seconds()
        config = Config(
            region_name=s.region,
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": s.max_attempts},
            user_agent_extra="jit-broker",
        )
        return session.create_client(
            "sts", region_name=s.region, endpoint_url=s.endpoint_url, config=config, **credentials
        )

    # -- errors ----------------------------------------------------------------------------

    def _refused(
        self, operation: str, exc: Any, role_arn: str | None, seconds: int | None
    ) -> IssuerError:
        """A typed error for an STS error answer: the code and status, never AWS's message
        (it can quote request details)."""
        error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc.response, dict) else {}
        code = _CODE_CHARS.sub("", str(error.get("Code", "")))[:64] or "Unknown"
        status = meta.get("HTTPStatusCode")
        status_text = f"HTTP {status}" if isinstance(status, int) else "no status"
        where = f" on {role_arn}" if role_arn else ""
        head = f"aws issuer {self.name!r}: STS {operation}{where} refused: {code} ({status_text})"
        if code in _RETRYABLE or (isinstance(status, int) and status >= 500):
            return IssuerUnavailable(f"{head}; retry later")
        if code in _BROKER_IDENTITY_REFUSED:
            hint = "the broker's own AWS credentials were not accepted"
        elif code == "AccessDenied":
            hint = (
                "the broker's identity may not assume this role: the role's trust policy must "
                "allow sts:AssumeRole and sts:TagSession for it (with the configured "
                "external_id, if the trust policy asks for one), and the broker's own policy "
                "must allow them on the role"
            )
        elif code in ("MalformedPolicyDocument", "PackedPolicyTooLarge"):
            hint = (
                "STS refused the session policy or tags; use fewer IAM actions or resource "
                "ARNs for this resource"
            )
        elif code == "ValidationError" and seconds is not None:
            hint = (
                f"the session of {seconds}s may exceed the role's MaxSessionDuration (raise it, "
                "or lower max_ttl), or the broker runs on a role session itself (role chaining "
                "is limited to 1h)"
            )
        elif code == "RegionDisabledException":
            hint = f"STS is not activated in {self.settings.region} for this account"
        else:
            hint = ""
        return IssuerError(f"{head}: {hint}" if hint else head)

    def _failed(self, operation: str, exc: BaseException) -> IssuerError:
        kind = exc.__class__.__name__
        head = f"aws issuer {self.name!r}: STS {operation} failed ({kind})"
        if isinstance(exc, BotoConnectionError | HTTPClientError | ConnectionClosedError):
            return IssuerUnavailable(f"{head}: STS is unreachable")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
            return IssuerUnavailable(
                f"{head}: no usable credentials for the broker's own identity (boto3's chain "
                "or credentials_file)"
            )
        if isinstance(exc, ParamValidationError):
            return IssuerError(f"{head}: the request was invalid")
        return IssuerUnavailable(head)


@functools.cache
def _loader() -> Any:
    """One botocore data loader for every instance: service models are parsed once."""
    return botocore.loaders.create_loader()


def _credential_fields(creds: object) -> tuple[str, str, str, datetime] | None:
    if not isinstance(creds, dict):
        return None
    key_id = creds.get("AccessKeyId")
    secret_key = creds.get("SecretAccessKey")
    token = creds.get("SessionToken")
    expiration = creds.get("Expiration")
    if not (isinstance(key_id, str) and isinstance(secret_key, str) and isinstance(token, str)):
        return None
    if not (key_id and secret_key and token) or not isinstance(expiration, datetime):
        return None
    return key_id, secret_key, token, expiration


def _iso(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, rounded down to the second."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _secs(d: timedelta) -> str:
    return f"{d.total_seconds():g}s"
