"""What the SDK raises: one tree under :class:`ClientError`.

::

    ClientError                  every error broker.client raises on purpose
    ├── IdentityUnavailable      no identity token could be had (no source, unreadable, refused)
    ├── BrokerUnavailable        unreachable, or 503, after the retries ran out
    ├── ProtocolError            an answer the SDK cannot read (not the broker? a proxy page?)
    ├── InvalidRequest     400   malformed or unsupported input (also 413)
    │   └── IdempotencyKeyReused 422  the same Idempotency-Key with another body
    ├── Unauthenticated    401   the identity token was refused
    ├── Denied             403   policy says no; ``reasons`` says why, grant by grant
    │   ├── ApprovalRequired 403 a grant covers it but needs approval (token exchange, no wait)
    │   └── ApprovalDenied       an approver denied the approval request
    ├── ApprovalExpired          the approval request expired (or was cancelled) undecided
    ├── ApprovalTimeout          still pending when the caller's ``timeout`` ran out
    ├── NotFound           404   no such lease, task or approval (or not yours)
    ├── Conflict           409   e.g. the task is completed, or past its deadline
    └── IssuerFailed       502   the issuer failed (not retried: 503s are)

Messages are the broker's (problem+json ``detail``) and never hold a secret.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalRequired",
    "ApprovalTimeout",
    "BrokerUnavailable",
    "ClientError",
    "Conflict",
    "Denied",
    "IdempotencyKeyReused",
    "IdentityUnavailable",
    "InvalidRequest",
    "IssuerFailed",
    "NotFound",
    "ProtocolError",
    "Unauthenticated",
]


class ClientError(Exception):
    """Every error broker.client raises on purpose. ``status`` (HTTP), ``code`` (the
    problem ``type`` suffix, e.g. ``denied``), ``title`` and ``request_id`` are set when the
    broker answered."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.title = title
        self.request_id = request_id


class IdentityUnavailable(ClientError):
    """No workload identity token: no source found, a file unreadable, the CI platform's
    token endpoint refused."""


class BrokerUnavailable(ClientError):
    """The broker could not be reached, or answered 503, until the retry budget ran out."""


class ProtocolError(ClientError):
    """An answer the SDK cannot read (a proxy's error page, a wrong URL)."""


class InvalidRequest(ClientError):
    pass


class IdempotencyKeyReused(InvalidRequest):
    pass


class Unauthenticated(ClientError):
    pass


class Denied(ClientError):
    """The policy (or an approver) said no. ``reasons``: every reason, as the broker gave it."""

    def __init__(self, message: str, reasons: Sequence[str] = (), **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]  # the keywords above
        self.reasons: tuple[str, ...] = tuple(reasons)


class ApprovalRequired(Denied):
    """A grant covers the request but needs a human approval (``approval_id`` when the broker
    opened one). Raised where the SDK does not wait: ``wait=False`` and token exchange."""

    def __init__(
        self,
        message: str,
        reasons: Sequence[str] = (),
        *,
        grant: str | None = None,
        approval_id: str | None = None,
        **kw: object,
    ) -> None:
        super().__init__(message, reasons, **kw)
        self.grant = grant
        self.approval_id = approval_id


class ApprovalDenied(Denied):
    """An approver denied the request; ``reasons`` are ``"<person>: <reason>"``."""

    def __init__(self, message: str, reasons: Sequence[str] = (), *, approval_id: str) -> None:
        super().__init__(message, reasons)
        self.approval_id = approval_id


class ApprovalExpired(ClientError):
    """The approval request ended undecided: ``state`` is ``expired`` or ``cancelled``."""

    def __init__(self, message: str, *, approval_id: str, state: str = "expired") -> None:
        super().__init__(message)
        self.approval_id = approval_id
        self.state = state


class ApprovalTimeout(ClientError):
    """The caller's ``timeout`` ran out; the approval request is still pending (collect it
    later with ``Client.wait_for_approval(approval_id)``, or cancel it)."""

    def __init__(self, message: str, *, approval_id: str) -> None:
        super().__init__(message)
        self.approval_id = approval_id


class NotFound(ClientError):
    pass


class Conflict(ClientError):
    pass


class IssuerFailed(ClientError):
    pass
