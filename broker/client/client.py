"""The async :class:`Client`, its :class:`Task` and the lease context manager.

Cleanup is the point: ``async with client.task(...)`` completes the task on exit and ``async
with client.lease(...)`` revokes its lease on exit, whether the body returned, raised or was
cancelled. The cleanup call is shielded from cancellation (a second ``cancel()`` while it runs
does not stop it; the cancellation is delivered once it is done) and retried like any call.
If the body raised, a failed cleanup is added to that exception as a note and logged; if the
body returned, the failed cleanup raises.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import httpx
import msgspec

from broker.client import keys
from broker.client.environment import materialise
from broker.client.errors import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalRequired,
    ApprovalTimeout,
    ClientError,
    Conflict,
    InvalidRequest,
    NotFound,
    ProtocolError,
)
from broker.client.identity import DEFAULT_AUDIENCE, IdentitySource, detect
from broker.client.models import (
    Approval,
    ApprovalWire,
    Credential,
    CredentialWire,
    Explanation,
    LeaseInfo,
    TaskInfo,
)
from broker.client.transport import Http, RetryPolicy, error_from
from broker.clock import parse_duration
from broker.types import Secret
from broker.urls import check_url

__all__ = ["Client", "LeaseContext", "StatusCallback", "Task"]

log = logging.getLogger("broker.client")

T = TypeVar("T")
StatusCallback = Callable[[Approval], None]
#: How the caller hands the secret on, recorded in the audit (docs/agents.md): a 0600 file, a
#: process's environment, or an AI model (only where the grant has delivery.reveal_to_model).
Delivery = Literal["file", "env", "model"]

TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a URN)
#: The longest long-poll asked of the broker (``approvals.max_wait`` must allow it).
APPROVAL_POLL: Final = 20


def _actions(actions: Sequence[str] | str) -> list[str]:
    items = [actions] if isinstance(actions, str) else list(actions)
    return [a.strip() for item in items for a in item.split(",") if a.strip()]


def _seconds(ttl: str | int | float | None) -> int | None:
    if ttl is None:
        return None
    try:
        return int(parse_duration(ttl).total_seconds())
    except ValueError as exc:
        raise InvalidRequest(f"ttl: {exc}") from None


def _decode(resp: httpx.Response, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(resp.content, type=kind)
    except msgspec.DecodeError as exc:
        raise ProtocolError(
            f"unreadable answer from the broker (HTTP {resp.status_code}): {exc}",
            status=resp.status_code,
        ) from None


async def shielded(work: Awaitable[T]) -> T:
    """Run ``work`` to the end even if the caller is cancelled meanwhile; then deliver that
    cancellation."""
    inner = asyncio.ensure_future(work)
    interrupted = False
    while True:
        try:
            result = await asyncio.shield(inner)
            break
        except asyncio.CancelledError:
            if inner.done():
                raise
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return result


async def _cleanup(what: str, work: Awaitable[object], exc: BaseException | None) -> None:
    """Run a context manager's cleanup; see the module docstring for its failures."""
    try:
        await shielded(work)
    except ClientError as failed:
        if exc is None:
            raise
        log.warning("%s failed: %s", what, failed.message)
        exc.add_note(f"jit-broker: {what} failed too: {failed.message}")


class Client:
    """A workload's (or an approver's) connection to the broker.

    ``url`` defaults to ``$JIT_URL``; it must be https (plain http only to a loopback
    address: the identity token travels there). ``identity`` defaults to the first source
    :func:`broker.client.identity.detect` finds, resolved on first use. Use it as ``async
    with Client() as client:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        url: str | None = None,
        identity: IdentitySource | None = None,
        *,
        audience: str = DEFAULT_AUDIENCE,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        approval_poll: int = APPROVAL_POLL,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        url = url or env.get("JIT_URL")
        if not url:
            raise ClientError("no broker URL: pass url= or set JIT_URL")
        try:
            check_url(url)
        except ValueError as exc:
            raise ClientError(f"broker URL: {exc}") from None
        self.url = url.rstrip("/")
        self.approval_poll = approval_poll
        self._environ = env
        self._audience = audience
        self._identity = identity
        self._keys: dict[str, Secret] = {}  # keys generated for requests awaiting approval
        self._http = Http(
            self.url, _Lazy(self), timeout=timeout, retry=retry, transport=transport, verify=verify
        )

    @property
    def identity(self) -> IdentitySource:
        if self._identity is None:
            self._identity = detect(self._environ, audience=self._audience)
        return self._identity

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- tasks and credentials -----------------------------------------------------------

    def task(
        self,
        task_id: str | None = None,
        *,
        purpose: str = "",
        ttl: str | int | None = None,
        keep: bool = False,
    ) -> Task:
        """A task (``task_id`` default: a new one). ``async with`` it: on exit the task is
        completed, so every lease of it is revoked — or, with ``keep=True``, only the leases
        taken through this object are revoked and the task stays open. ``ttl``: how long the
        task may run (declared by its first request)."""
        return Task(
            self, task_id or f"task-{uuid.uuid4().hex}", purpose=purpose, ttl=ttl, keep=keep
        )

    async def request(
        self,
        *,
        resource: str,
        actions: Sequence[str] | str,
        issuer: str = "jwt",
        ttl: str | int | None = None,
        task: str | None = None,
        purpose: str = "",
        task_ttl: str | int | None = None,
        params: Mapping[str, str] | None = None,
        generate_key: keys.KeyKind | None = None,
        on_behalf_of: str | None = None,
        idempotency_key: str | None = None,
        delivery: Delivery | None = None,
    ) -> Credential | Approval:
        """Ask once: the credential, or the approval request a grant opened (see
        :meth:`wait_for_approval`). Retried safely under one ``Idempotency-Key``.
        ``generate_key`` (``"ssh"`` or ``"pem"``): make a key pair here and send its public
        half as ``params["public_key"]``; the private half is ``Credential.private_key``.
        ``delivery`` tells the broker how the secret is handed on (``"model"`` is refused
        unless the grant allows it); None: returned to the caller."""
        body: dict[str, Any] = {
            "issuer": issuer,
            "resource": resource,
            "actions": _actions(actions),
        }
        if ttl is not None:
            body["ttl"] = ttl
        if task is not None:
            body["task"] = {"id": task, "purpose": purpose}
            if task_ttl is not None:
                body["task"]["ttl"] = task_ttl
        elif purpose or task_ttl is not None:
            raise InvalidRequest("purpose and task_ttl need a task")
        private_key: Secret | None = None
        all_params = dict(params or {})
        if generate_key is not None:
            all_params["public_key"], private_key = keys.generate(generate_key)
        if all_params:
            body["params"] = all_params
        if on_behalf_of:
            body["on_behalf_of"] = on_behalf_of
        if delivery is not None:
            body["delivery"] = delivery
        key = idempotency_key or str(uuid.uuid4())
        resp = await self._http.send(
            "POST", "/v1/credentials", json=body, headers={"Idempotency-Key": key}
        )
        if resp.status_code == 201:
            replayed = resp.headers.get("idempotent-replayed") == "true"
            return _decode(resp, CredentialWire).value(private_key=private_key, replayed=replayed)
        if resp.status_code == 202:
            approval = _decode(resp, ApprovalWire)
            if private_key is not None:
                self._keys[approval.approval_id] = private_key
            return approval.view()
        raise error_from(resp)

    async def credential(
        self,
        *,
        resource: str,
        actions: Sequence[str] | str,
        issuer: str = "jwt",
        ttl: str | int | None = None,
        task: str | None = None,
        purpose: str = "",
        task_ttl: str | int | None = None,
        params: Mapping[str, str] | None = None,
        generate_key: keys.KeyKind | None = None,
        on_behalf_of: str | None = None,
        wait: bool = True,
        approval_timeout: float | None = None,
        on_status: StatusCallback | None = None,
        idempotency_key: str | None = None,
        delivery: Delivery | None = None,
    ) -> Credential:
        """A credential. If its grant needs approval, wait for the decision (``approval_timeout``
        seconds at most, None: until the request expires), calling ``on_status`` with the
        approval request when waiting starts and after every poll; ``wait=False`` raises
        :class:`ApprovalRequired` (with ``approval_id``) instead."""
        result = await self.request(
            resource=resource,
            actions=actions,
            issuer=issuer,
            ttl=ttl,
            task=task,
            purpose=purpose,
            task_ttl=task_ttl,
            params=params,
            generate_key=generate_key,
            on_behalf_of=on_behalf_of,
            idempotency_key=idempotency_key,
            delivery=delivery,
        )
        if isinstance(result, Credential):
            return result
        if not wait:
            raise ApprovalRequired(
                f"grant {result.grant} needs approval: request {result.approval_id}",
                grant=result.grant,
                approval_id=result.approval_id,
            )
        return await self.wait_for_approval(
            result, approval_timeout=approval_timeout, on_status=on_status
        )

    def lease(
        self,
        *,
        resource: str,
        actions: Sequence[str] | str,
        issuer: str = "jwt",
        **options: Any,
    ) -> LeaseContext:
        """``async with client.lease(...) as cred:`` — one credential (same arguments as
        :meth:`credential`), its lease revoked on exit."""
        return LeaseContext(
            self, {"resource": resource, "actions": actions, "issuer": issuer, **options}
        )

    async def wait_for_approval(
        self,
        approval: Approval | str,
        *,
        approval_timeout: float | None = None,
        on_status: StatusCallback | None = None,
        cancel_if_cancelled: bool = True,
    ) -> Credential:
        """Wait for an approval request of this workload; return the credential minted for
        it. Raises ApprovalDenied, ApprovalExpired (expired or cancelled), ApprovalTimeout
        (``approval_timeout`` ran out: the request stays pending). If the waiting task is
        cancelled, the request is cancelled too — unless ``cancel_if_cancelled=False`` (a
        caller that waits again later, such as ``jit mcp``): then it stays pending."""
        view = approval if isinstance(approval, Approval) else await self.approval(approval)
        aid = view.approval_id
        deadline = None if approval_timeout is None else time.monotonic() + approval_timeout
        try:
            while True:
                wire = view if isinstance(view, ApprovalWire) else None
                if on_status is not None:
                    on_status(wire.view() if wire is not None else view)
                if wire is not None and wire.credential is not None:
                    return wire.credential.value(
                        private_key=self._keys.pop(aid, None), approval_id=aid
                    )
                if view.state == "approved":
                    raise Conflict(
                        f"approval request {aid} was approved, but its credential was already "
                        f"collected (lease {view.lease_id})"
                    )
                if view.state == "denied":
                    reasons = [
                        f"{r.person}: {r.reason}" for r in view.reviews if r.decision == "deny"
                    ]
                    raise ApprovalDenied(
                        f"approval request {aid} was denied", reasons, approval_id=aid
                    )
                if view.state != "pending":
                    raise ApprovalExpired(
                        f"approval request {aid} is {view.state}", approval_id=aid, state=view.state
                    )
                wait = self.approval_poll
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ApprovalTimeout(
                            f"approval request {aid} is still pending", approval_id=aid
                        )
                    wait = max(1, min(wait, int(left)))
                view = await self._approval(aid, wait=wait)
        except asyncio.CancelledError:
            if not cancel_if_cancelled:
                raise
            try:
                await shielded(self.cancel_approval(aid))
            except ClientError as exc:
                log.warning("could not cancel approval request %s: %s", aid, exc.message)
            raise

    # -- token exchange (RFC 8693) --------------------------------------------------------

    async def exchange(
        self,
        *,
        resource: str,
        actions: Sequence[str] | str,
        issuer: str | None = None,
        task: str | None = None,
        ttl: str | int | None = None,
        purpose: str = "",
        wait: bool = True,
        approval_timeout: float | None = None,
        on_status: StatusCallback | None = None,
    ) -> Credential:
        """RFC 8693 token exchange at ``/oauth/token``: the identity token for a credential
        (``issuer`` default: the broker's ``jwt``). No ``Idempotency-Key`` there, so only
        failures before the request left and 503s are retried (docs/clients.md). A grant that
        needs approval is waited for as in :meth:`credential`."""
        subject = await self._http.identity_token()
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": JWT_TOKEN_TYPE,
            "resource": resource,
            "scope": " ".join(_actions(actions)),
        }
        if issuer:
            form["issuer"] = issuer
        if task:
            form["task_id"] = task
        seconds = _seconds(ttl)
        if seconds is not None:
            form["ttl"] = str(seconds)
        if purpose:
            form["purpose"] = purpose
        resp = await self._http.send("POST", "/oauth/token", data=form, auth="none", retry="unsent")
        if resp.status_code == 200:
            return _decode(resp, _TokenResponse).value(time.time())
        err = error_from(resp)
        aid = _approval_id(resp)
        if aid is None:
            raise err
        if err.code == "access_denied":
            raise ApprovalDenied(f"approval request {aid} was denied", approval_id=aid)
        if err.code == "expired_token":
            raise ApprovalExpired(err.message, approval_id=aid)
        if err.code != "authorization_pending":
            raise err
        if not wait:
            raise ApprovalRequired(err.message, approval_id=aid, status=err.status, code=err.code)
        return await self.wait_for_approval(
            aid, approval_timeout=approval_timeout, on_status=on_status
        )

    async def explain(
        self,
        *,
        resource: str,
        actions: Sequence[str] | str,
        issuer: str = "jwt",
        ttl: str | int | None = None,
    ) -> Explanation:
        """What the policy would answer this workload (and only it) for this request, and
        why; nothing is minted and nothing is recorded as a request."""
        body: dict[str, Any] = {
            "issuer": issuer,
            "resource": resource,
            "actions": _actions(actions),
        }
        if ttl is not None:
            body["ttl"] = ttl
        resp = await self._ok("POST", "/v1/explain", json=body)
        return _decode(resp, Explanation)

    # -- leases, tasks, tokens ------------------------------------------------------------

    async def leases(self, *, include_inactive: bool = False) -> list[LeaseInfo]:
        params = {"all": "true"} if include_inactive else None
        return _decode(await self._ok("GET", "/v1/leases", params=params), list[LeaseInfo])

    async def lease_info(self, lease_id: str) -> LeaseInfo:
        return _decode(await self._ok("GET", f"/v1/leases/{lease_id}"), LeaseInfo)

    async def revoke(self, lease_id: str) -> LeaseInfo:
        """Revoke one of this workload's leases (idempotent)."""
        return _decode(await self._ok("DELETE", f"/v1/leases/{lease_id}"), LeaseInfo)

    async def revoke_all(self) -> int:
        """Revoke every live lease of this workload; how many there were."""
        body = _decode(await self._ok("POST", "/v1/leases/revoke-all"), dict[str, int])
        return int(body.get("revoked", 0))

    async def revoke_token(self, token: str | Secret) -> None:
        """RFC 7009: revoke a credential by its value (one of this workload's)."""
        value = token.reveal() if isinstance(token, Secret) else token
        await self._ok("POST", "/oauth/revoke", data={"token": value})

    async def get_task(self, task_id: str) -> TaskInfo:
        return _decode(await self._ok("GET", f"/v1/tasks/{task_id}"), TaskInfo)

    async def complete_task(self, task_id: str) -> TaskInfo:
        """Complete a task: every lease of it is revoked (idempotent)."""
        return _decode(await self._ok("POST", f"/v1/tasks/{task_id}/complete"), TaskInfo)

    async def document(self, issuer: str, name: str) -> bytes:
        """An issuer's public document (a CA certificate, a KRL), unauthenticated."""
        return (await self._ok("GET", f"/v1/issuers/{issuer}/{name}", auth="none")).content

    async def environment(
        self, credential: Credential, directory: str | os.PathLike[str], *, prefix: str = ""
    ) -> dict[str, str]:
        """Write the credential's exported files (0600) into ``directory`` (0700) and return
        its environment variables (ADR 0031; a credential without exports gives
        ``JIT_CREDENTIAL``). Remove the directory when done."""
        return await materialise(credential, Path(directory), self.document, prefix=prefix)

    # -- approvals ------------------------------------------------------------------------

    async def approvals(self) -> list[Approval]:
        """Pending requests: this workload's own, or (an approver) those it may decide."""
        return [
            a.view() for a in _decode(await self._ok("GET", "/v1/approvals/"), list[ApprovalWire])
        ]

    async def approval(self, approval_id: str, *, wait: int = 0) -> Approval:
        """One approval request (long-polled up to ``wait`` seconds while pending). To the
        workload that made it, an approved request carries its credential once: use
        :meth:`wait_for_approval` to collect it."""
        return await self._approval(approval_id, wait=wait)

    async def _approval(self, approval_id: str, *, wait: int = 0) -> ApprovalWire:
        params = {"wait": str(wait)} if wait else None
        return _decode(
            await self._ok("GET", f"/v1/approvals/{approval_id}", params=params), ApprovalWire
        )

    async def approve(
        self,
        approval_id: str,
        *,
        ttl: str | int | None = None,
        actions: Sequence[str] | None = None,
        reason: str = "",
    ) -> Approval:
        """Approve (as an approver), optionally narrower: a shorter ``ttl``, fewer ``actions``."""
        body: dict[str, Any] = {"reason": reason}
        if ttl is not None:
            body["ttl"] = ttl
        if actions:
            body["actions"] = _actions(actions)
        resp = await self._ok(
            "POST", f"/v1/approvals/{approval_id}/approve", json=body, retry="unsent"
        )
        return _decode(resp, ApprovalWire).view()

    async def deny(self, approval_id: str, *, reason: str) -> Approval:
        resp = await self._ok(
            "POST", f"/v1/approvals/{approval_id}/deny", json={"reason": reason}, retry="unsent"
        )
        return _decode(resp, ApprovalWire).view()

    async def cancel_approval(self, approval_id: str) -> Approval:
        """Cancel this workload's pending approval request."""
        resp = await self._ok("POST", f"/v1/approvals/{approval_id}/cancel", retry="unsent")
        return _decode(resp, ApprovalWire).view()

    # -- jit dev --------------------------------------------------------------------------

    async def dev_token(
        self, sub: str, claims: Mapping[str, Any] | None = None, *, ttl: int = 3600
    ) -> str:
        """A workload identity token from ``jit dev``'s development issuer (this client's
        identity must be the dev admin key)."""
        resp = await self._ok(
            "POST", "/dev/token", json={"sub": sub, "claims": dict(claims or {}), "ttl": ttl}
        )
        return str(_decode(resp, dict[str, str])["token"])

    # -- plumbing -------------------------------------------------------------------------

    async def _ok(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        resp = await self._http.send(method, path, **kwargs)
        if resp.status_code >= 400:
            raise error_from(resp)
        return resp


def _approval_id(resp: httpx.Response) -> str | None:
    try:
        value = resp.json().get("approval_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


class _Lazy:
    """The client's identity source, detected on first use (an approver's client may never
    need one)."""

    name = "lazy"

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def source(self) -> IdentitySource:
        return self._client.identity

    async def token(self, http: httpx.AsyncClient, *, refresh: bool = False) -> str:
        return await self._client.identity.token(http, refresh=refresh)


class _TokenResponse(msgspec.Struct, frozen=True):
    """RFC 8693 §2.2.1, with the broker's ``lease_id``/``task_id`` and RFC 9396 details."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str
    lease_id: str
    task_id: str
    authorization_details: list[dict[str, Any]] = msgspec.field(default_factory=list)
    issued_token_type: str = ""
    ttl_capped_by: str | None = None

    def value(self, now: float) -> Credential:
        from datetime import UTC, datetime

        detail = self.authorization_details[0] if self.authorization_details else {}
        locations = detail.get("locations") or [""]
        issued = datetime.fromtimestamp(now, UTC)
        return Credential(
            lease_id=self.lease_id,
            task_id=self.task_id,
            issuer=str(detail.get("type", "")),
            resource=str(locations[0]),
            actions=tuple(self.scope.split()),
            expires_at=datetime.fromtimestamp(now + self.expires_in, UTC),
            token_type=self.token_type,
            secret=Secret(self.access_token),
            issued_at=issued,
            ttl=self.expires_in,
            ttl_capped_by=self.ttl_capped_by,
        )


class Task:
    """A task of :class:`Client` (see :meth:`Client.task`)."""

    def __init__(
        self,
        client: Client,
        task_id: str,
        *,
        purpose: str = "",
        ttl: str | int | None = None,
        keep: bool = False,
    ) -> None:
        self.client = client
        self.id = task_id
        self.purpose = purpose
        self.ttl = ttl
        self.keep = keep
        self.lease_ids: list[str] = []  # the leases taken through this object

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    async def credential(self, **options: Any) -> Credential:
        """A credential for this task: :meth:`Client.credential`'s arguments, without the
        task ones."""
        cred = await self.client.credential(
            task=self.id, purpose=self.purpose, task_ttl=self.ttl, **options
        )
        self.lease_ids.append(cred.lease_id)
        return cred

    async def request(self, **options: Any) -> Credential | Approval:
        result = await self.client.request(
            task=self.id, purpose=self.purpose, task_ttl=self.ttl, **options
        )
        if isinstance(result, Credential):
            self.lease_ids.append(result.lease_id)
        return result

    def lease(self, **options: Any) -> LeaseContext:
        """``async with task.lease(...) as cred:`` — revoked on exit (the task stays open)."""
        return LeaseContext(
            self.client, {"task": self.id, "purpose": self.purpose, "task_ttl": self.ttl, **options}
        )

    async def complete(self) -> TaskInfo | None:
        """Complete the task (every lease revoked); None if it never got a credential."""
        try:
            return await self.client.complete_task(self.id)
        except NotFound:
            return None

    async def revoke_leases(self) -> None:
        """Revoke the leases taken through this object (``keep=True``'s exit)."""
        for lease_id in self.lease_ids:
            await self.client.revoke(lease_id)

    async def __aenter__(self) -> Task:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.keep:
            await _cleanup(f"revoking the leases of task {self.id}", self.revoke_leases(), exc)
        else:
            await _cleanup(f"completing task {self.id}", self.complete(), exc)


class LeaseContext:
    """``async with``: one credential, its lease revoked on exit (see the module docstring)."""

    def __init__(self, client: Client, options: dict[str, Any]) -> None:
        self.client = client
        self.options = options
        self.credential: Credential | None = None

    async def __aenter__(self) -> Credential:
        self.credential = await self.client.credential(**self.options)
        return self.credential

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.credential is not None:
            lease_id = self.credential.lease_id
            await _cleanup(f"revoking lease {lease_id}", self.client.revoke(lease_id), exc)
