"""The broker's exception tree. A contract module: imports nothing else from ``broker``.

::

    BrokerError                      every error the broker raises on purpose
    ├── ConfigError                  bad configuration; start-up stops (fail closed)
    ├── PolicyError                  an invalid policy document (file, line, reason)
    ├── InvalidRequest       400     malformed or unknown input
    ├── AuthenticationError  401     the caller's token or credentials do not verify
    ├── PermissionDenied     403     policy says no; carries every reason
    │   └── ApprovalRequired 403     a grant covers it but needs human approval (names the grant)
    ├── NotFound             404     no such lease / task, or not the caller's
    ├── Conflict             409     e.g. a credential for a completed task
    ├── QuotaExceeded        429     a workload's or an owner's quota (names it; Retry-After)
    ├── IssuerError                  raised by issuer plugins
    │   ├── ScopeNotSupported 400    the backend cannot express the requested scope
    │   └── IssuerUnavailable 503    the backend is down or refused; retryable
    └── StoreUnavailable     503     Redis cannot be reached

Every class has an HTTP ``status``, a short ``code`` (used as the problem+json ``type`` suffix)
and the RFC 6749 ``oauth_error`` to use on the OAuth endpoints. Messages must never contain a
secret: they are shown to callers and written to logs and audit records.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ApprovalRequired",
    "AuthenticationError",
    "BrokerError",
    "ConfigError",
    "Conflict",
    "InvalidRequest",
    "IssuerError",
    "IssuerUnavailable",
    "NotFound",
    "PermissionDenied",
    "PolicyError",
    "QuotaExceeded",
    "ScopeNotSupported",
    "StoreUnavailable",
]


class BrokerError(Exception):
    status: int = 500
    code: str = "internal"
    oauth_error: str = "server_error"

    def __init__(self, message: str, *, oauth_error: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if oauth_error is not None:  # a more precise RFC 6749/8693/9396 code for this case
            self.oauth_error = oauth_error


class ConfigError(BrokerError):
    code = "config"


class PolicyError(BrokerError):
    """An invalid policy document. ``str()`` reads ``file:line: reason``."""

    code = "policy"

    def __init__(self, reason: str, *, file: str = "<policy>", line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {reason}")


class InvalidRequest(BrokerError):
    status = 400
    code = "invalid-request"
    oauth_error = "invalid_request"


class AuthenticationError(BrokerError):
    status = 401
    code = "unauthenticated"
    oauth_error = "invalid_grant"


class PermissionDenied(BrokerError):
    status = 403
    code = "denied"
    oauth_error = "invalid_scope"  # RFC 6749 §5.2: the scope exceeds what was granted

    def __init__(self, message: str, reasons: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reasons: tuple[str, ...] = tuple(reasons)


class ApprovalRequired(PermissionDenied):
    code = "approval-required"
    oauth_error = "approval_required"  # extension error code; names the grant

    def __init__(self, grant: str, reasons: Sequence[str] = ()) -> None:
        super().__init__(f"grant {grant!r} covers this request but requires approval", reasons)
        self.grant = grant


class NotFound(BrokerError):
    status = 404
    code = "not-found"
    oauth_error = "invalid_request"


class Conflict(BrokerError):
    status = 409
    code = "conflict"
    oauth_error = "invalid_request"


class QuotaExceeded(BrokerError):
    """A quota would be exceeded: ``quota`` names it (``workload.live_leases`` …) and
    ``retry_after`` says, in seconds, when asking again may succeed."""

    status = 429
    code = "quota-exceeded"
    oauth_error = "slow_down"

    def __init__(self, message: str, *, quota: str, retry_after: int) -> None:
        super().__init__(message)
        self.quota = quota
        self.retry_after = retry_after


class IssuerError(BrokerError):
    status = 502
    code = "issuer"
    oauth_error = "server_error"


class ScopeNotSupported(IssuerError):
    status = 400
    code = "scope-not-supported"
    oauth_error = "invalid_target"


class IssuerUnavailable(IssuerError):
    status = 503
    code = "issuer-unavailable"
    oauth_error = "temporarily_unavailable"


class StoreUnavailable(BrokerError):
    status = 503
    code = "store-unavailable"
    oauth_error = "temporarily_unavailable"
