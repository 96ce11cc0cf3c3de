"""The ``github`` issuer: GitHub App installation tokens for one repository and exact permissions.

Owns the exchanges with GitHub's REST API (github.com, GHE.com or GitHub Enterprise Server):

- **App JWT.** The broker signs a short JWT as the App (RS256 with the App's private key,
  ``iss`` = the App id or client ID, ``iat`` = now - 60 s, ``exp`` = ``iat`` + 10 min, as GitHub
  documents) and reuses it until two minutes before ``exp``.
- **Mint.** ``POST /app/installations/{installation_id}/access_tokens`` with
  ``{"repositories": [<repo>], "permissions": {...}}``: exactly one repository and exactly the
  requested permissions (see :mod:`issuers.github.scope`). The installation is configured per
  owner or discovered with ``GET /repos/{owner}/{repo}/installation`` (and cached). GitHub's
  answer is checked: one selected repository, no permission beyond the request (GitHub adds
  ``metadata: read`` to every repository token); anything else is revoked at once and refused.
- **Store.** The token is sealed (AES-256-GCM) into the token store under the lease id
  *before* anything else happens (:mod:`issuers.github.tokenstore`), because revoking it later
  needs the token itself.
- **Revoke.** ``DELETE /installation/token`` authenticated with the stored token; ``204`` and
  ``401`` (no longer valid) are success. Found from the lease id alone, so a lease whose handle
  was never recorded (a crash mid-mint) is revoked too.
- **Health.** ``GET /app`` with the App JWT (and a ping of the token store).

Expiry: GitHub tokens live one hour and cannot be shortened. ``expires_at`` is
``min(GitHub's expires_at, not_after)``; a lease shorter than an hour ends when the broker
revokes it at ``not_after`` (the reaper), and GitHub's own expiry is the second line of defence.
Hence ``max_ttl`` is at most 1h and ``revocable`` is True.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import httpx
from joserfc import jwt

from broker.errors import (
    ConfigError,
    InvalidRequest,
    IssuerError,
    IssuerUnavailable,
    ScopeNotSupported,
)
from broker.issuer import Capabilities, Exports, ExportSource, IssuerContext
from broker.types import Credential, Lease, MintRequest, Scope, Secret
from issuers.github.config import GITHUB_TOKEN_LIFETIME, GitHubConfig, Settings, load_settings
from issuers.github.scope import TokenScope, parse_scope
from issuers.github.tokenstore import TokenStore, valid_lease_id

__all__ = ["API_VERSION", "GitHubIssuer"]

log = logging.getLogger("jit.issuers.github")

#: The REST API version this issuer speaks (``X-GitHub-Api-Version``).
API_VERSION: Final = "2022-11-28"
#: GitHub's documented ceiling for an App JWT's lifetime, and the back-dating it recommends.
_JWT_LIFETIME: Final = timedelta(minutes=10)
_JWT_BACKDATE: Final = timedelta(seconds=60)
_JWT_REUSE_MARGIN: Final = timedelta(minutes=2)
#: How long past GitHub's expiry the sealed copy is kept (clock differences, slow answers).
_STORE_MARGIN: Final = timedelta(minutes=5)
_MAX_TOKEN_LENGTH: Final = 4096
_MAX_MESSAGE: Final = 200


class GitHubIssuer:
    """GitHub App installation tokens, one repository per lease. See the module docstring."""

    #: The ``config:`` of an instance, checked by the broker before construction.
    config_type: ClassVar[type[GitHubConfig]] = GitHubConfig

    def __init__(
        self, context: IssuerContext, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.name: str = context.name
        settings = load_settings(context.name, context.config, dev=context.dev)
        if context.redis is None and not context.dev:
            raise ConfigError(
                f"github issuer {context.name!r}: needs the broker's Redis to keep minted "
                "tokens revocable across replicas (context.redis is None)"
            )
        self._settings: Settings = settings
        self._clock = context.clock
        self.capabilities = Capabilities(
            max_ttl=settings.max_ttl,
            default_ttl=settings.default_ttl,
            min_ttl=timedelta(seconds=1),
            revocable=True,  # GitHub's 1h expiry cannot be shortened: revoke ends shorter leases
            renewable=False,
        )
        self._store = TokenStore(
            instance=context.name,
            keys=settings.state_keys,
            clock=context.clock,
            redis=context.redis,
            prefix=context.state_prefix,
        )
        if context.redis is None:
            log.warning(
                "github issuer %r: no Redis; minted tokens are kept (encrypted) in this "
                "process only (dev)",
                context.name,
            )
        verify = _default_tls()
        if settings.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"github issuer {context.name!r}: ca_file: {settings.ca_file} is not a "
                    f"usable PEM CA bundle ({exc.__class__.__name__})"
                ) from None
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": f"jit-broker (github issuer {context.name})",
            },
            timeout=httpx.Timeout(
                settings.timeout.total_seconds(),
                connect=settings.connect_timeout.total_seconds(),
            ),
            transport=transport,
            verify=verify,
            follow_redirects=False,
        )
        self._jwt: tuple[str, datetime, datetime] | None = None  # token, iat, exp
        self._discovered: dict[str, tuple[int, float]] = {}  # owner -> (id, monotonic deadline)
        self._inflight: dict[str, asyncio.Task[Credential]] = {}

    def __repr__(self) -> str:
        return (
            f"GitHubIssuer(name={self.name!r}, app_id={self._settings.app_id!r}, "
            f"base_url={self._settings.base_url!r})"
        )

    # -- scope -----------------------------------------------------------------------------

    def check_scope(self, requested: Scope) -> None:
        """One repository (``https://<host>/<owner>/<repo>``) whose owner has a configured or
        discoverable installation, and GitHub repository permissions as ``<name>:<level>``."""
        self._token_scope(requested)

    def _token_scope(self, requested: Scope) -> TokenScope:
        ts = parse_scope(requested, issuer=self.name, web_host=self._settings.web_host)
        s = self._settings
        if ts.owner.lower() not in s.installations and not s.discover_installations:
            raise ScopeNotSupported(
                f"no GitHub App installation is configured for {ts.owner!r} (installations) "
                "and discover_installations is off"
            )
        return ts

    # -- mint ------------------------------------------------------------------------------

    async def mint(self, request: MintRequest) -> Credential:
        """An installation token for exactly ``request.scope``; see the module docstring.

        The work runs in a task of its own, shielded from cancellation: if the broker gives up
        waiting, the token GitHub may already have created is still sealed into the store,
        and a ``revoke()`` of this lease (which waits for it) finds and revokes it."""
        ts = self._token_scope(request.scope)
        if request.params:
            raise InvalidRequest(
                f"github issuer {self.name!r} takes no params (got {sorted(request.params)})"
            )
        if not valid_lease_id(request.lease_id):
            raise InvalidRequest("lease id has characters the github issuer cannot store")
        if request.not_after <= request.issued_at:
            raise InvalidRequest("not_after must be after issued_at")
        if request.lease_id in self._inflight:
            raise InvalidRequest(f"lease {request.lease_id} is already being minted")
        task = asyncio.create_task(self._mint(request, ts), name=f"github-mint-{request.lease_id}")
        self._inflight[request.lease_id] = task
        task.add_done_callback(lambda t: self._minted(request.lease_id, t))
        return await asyncio.shield(task)

    def _minted(self, lease_id: str, task: asyncio.Task[Credential]) -> None:
        if self._inflight.get(lease_id) is task:
            del self._inflight[lease_id]
        if not task.cancelled():
            task.exception()  # retrieved: a mint nobody waits for any more must not warn

    async def _mint(self, request: MintRequest, ts: TokenScope) -> Credential:
        installation_id = await self._installation_id(ts)
        body = {"repositories": [ts.repo], "permissions": ts.permissions}
        what = f"create a token for {ts.full_name}"
        resp = await self._call(
            "POST",
            f"/app/installations/{installation_id}/access_tokens",
            auth=self._app_jwt(),
            json=body,
            what=what,
        )
        if resp.status_code != 201:
            if resp.status_code == 404:
                self._discovered.pop(ts.owner.lower(), None)
            raise self._refused(what, resp)
        data = _json_object(resp) or {}
        token_value = data.get("token")
        if not isinstance(token_value, str) or not _usable_token(token_value):
            raise IssuerError(
                f"github issuer {self.name!r}: {what}: GitHub's answer holds no usable token"
            )
        token = Secret(token_value)
        github_expires = _parse_time(data.get("expires_at"))
        now = self._clock.now()
        keep = GITHUB_TOKEN_LIFETIME
        if github_expires is not None:
            keep = max(keep, github_expires - now)
        try:
            await self._store.put(request.lease_id, token, keep + _STORE_MARGIN)
        except BaseException:
            # Without a stored copy nothing could revoke it later: revoke it now.
            await self._revoke_quietly(token, request.lease_id)
            raise
        problem = self._check_granted(data, ts, github_expires, request)
        if problem is not None or github_expires is None:
            await self._revoke_quietly(token, request.lease_id)
            await self._store.delete(request.lease_id)
            raise IssuerError(f"github issuer {self.name!r}: {what}: {problem}; revoked it")
        expires_at = min(github_expires, request.not_after)
        github_expiry = _format_time(github_expires)
        permissions = " ".join(f"{k}:{v}" for k, v in ts.permissions.items())
        log.info(
            "github issuer %r: minted an installation token for lease %s on %s (%s); GitHub "
            "expiry %s, lease ends %s",
            self.name,
            request.lease_id,
            ts.full_name,
            permissions,
            github_expiry,
            request.not_after.isoformat(),
        )
        return Credential(
            secret=token,
            expires_at=expires_at,
            token_type="Bearer",  # noqa: S106 (GitHub accepts "Authorization: Bearer <token>")
            handle={
                "installation_id": str(installation_id),
                "repository": ts.full_name,
                "github_expires_at": github_expiry,
            },
            metadata={
                "repository": ts.full_name,
                "installation_id": str(installation_id),
                "permissions": permissions,
                "github_expires_at": github_expiry,
            },
        )

    def _check_granted(
        self,
        data: dict[str, Any],
        ts: TokenScope,
        github_expires: datetime | None,
        request: MintRequest,
    ) -> str | None:
        """Why GitHub's answer is not exactly what was asked, or None."""
        if github_expires is None:
            return "GitHub's answer has no valid expires_at"
        if github_expires <= request.issued_at:
            return "GitHub's expires_at is already past (clocks far apart?)"
        if data.get("repository_selection") != "selected":
            return "the token is not limited to selected repositories"
        repos = data.get("repositories")
        if not isinstance(repos, list) or len(repos) != 1 or not isinstance(repos[0], dict):
            return "the token is not limited to exactly the requested repository"
        full_name = repos[0].get("full_name")
        if not isinstance(full_name, str) or full_name.lower() != ts.full_name.lower():
            return "the token is for another repository than requested"
        granted = data.get("permissions")
        if not isinstance(granted, dict):
            return "GitHub's answer does not list the token's permissions"
        for name, level in granted.items():
            if ts.permissions.get(name) == level:
                continue
            if name == "metadata" and level == "read":
                continue  # GitHub grants metadata:read with every repository permission
            return f"GitHub granted {name}:{level}, which was not requested"
        missing = sorted(n for n, lvl in ts.permissions.items() if granted.get(n) != lvl)
        if missing:
            return f"GitHub did not grant {', '.join(missing)} as requested"
        return None

    async def _installation_id(self, ts: TokenScope) -> int:
        owner = ts.owner.lower()
        configured = self._settings.installations.get(owner)
        if configured is not None:
            return configured
        cached = self._discovered.get(owner)
        if cached is not None and cached[1] > self._clock.monotonic():
            return cached[0]
        what = f"find the App's installation for {ts.full_name}"
        resp = await self._call(
            "GET", f"/repos/{ts.owner}/{ts.repo}/installation", auth=self._app_jwt(), what=what
        )
        if resp.status_code == 404:
            raise IssuerError(
                f"github issuer {self.name!r}: the GitHub App is not installed on {ts.full_name}"
            )
        if resp.status_code != 200:
            raise self._refused(what, resp)
        data = _json_object(resp)
        installation_id = data.get("id") if data is not None else None
        account = data.get("account") if data is not None else None
        login = account.get("login") if isinstance(account, dict) else None
        if (
            not isinstance(installation_id, int)
            or isinstance(installation_id, bool)
            or installation_id <= 0
        ):
            raise IssuerError(f"github issuer {self.name!r}: {what}: no installation id in answer")
        if not isinstance(login, str) or login.lower() != owner:
            raise IssuerError(
                f"github issuer {self.name!r}: {what}: the installation belongs to another account"
            )
        ttl = self._settings.installation_cache_ttl.total_seconds()
        if ttl > 0:
            self._discovered[owner] = (installation_id, self._clock.monotonic() + ttl)
        return installation_id

    # -- revoke ----------------------------------------------------------------------------

    async def revoke(self, lease: Lease) -> None:
        """Revoke the token of ``lease`` at GitHub, found by lease id (the handle may be
        empty). Idempotent: nothing stored (never minted, already revoked, or expired at
        GitHub) is a no-op, and GitHub's 401 for a dead token is success."""
        inflight = self._inflight.get(lease.id)
        if inflight is not None:  # a mint of this lease is still running here: let it store
            await asyncio.wait({inflight}, timeout=self._call_budget() * 3)
        token = await self._store.get(lease.id)
        if token is None:
            log.debug("github issuer %r: lease %s has no stored token", self.name, lease.id)
            return
        await self._revoke_token(token, lease.id)
        await self._store.delete(lease.id)
        log.info("github issuer %r: revoked the token of lease %s", self.name, lease.id)

    async def _revoke_token(self, token: Secret, lease_id: str) -> None:
        what = f"revoke the token of lease {lease_id}"
        resp = await self._call("DELETE", "/installation/token", auth=token.reveal(), what=what)
        if resp.status_code in (204, 401):  # 401: expired or already revoked
            return
        raise self._refused(what, resp)

    async def _revoke_quietly(self, token: Secret, lease_id: str) -> None:
        try:
            await self._revoke_token(token, lease_id)
        except Exception as exc:
            log.error(
                "github issuer %r: could not revoke the token of lease %s right away (%s); it "
                "stays valid until GitHub expires it",
                self.name,
                lease_id,
                exc.__class__.__name__,
            )

    # -- health, close ---------------------------------------------------------------------

    def exports(self, credential: Credential, request: MintRequest) -> Exports:
        """``GH_TOKEN`` (the gh CLI) and ``GITHUB_TOKEN`` (most other tools)."""
        return Exports(
            env={"GH_TOKEN": ExportSource(secret=True), "GITHUB_TOKEN": ExportSource(secret=True)}
        )

    async def check_health(self) -> None:
        """The token store answers, and ``GET /app`` accepts the App JWT and names our App."""
        await self._store.ping()
        what = "authenticate as the App (GET /app)"
        resp = await self._call("GET", "/app", auth=self._app_jwt(), what=what)
        if resp.status_code != 200:
            raise self._refused(what, resp, unavailable=True)
        data = _json_object(resp)
        app_id = self._settings.app_id
        if data is None or (str(data.get("id")) != app_id and data.get("client_id") != app_id):
            raise IssuerUnavailable(
                f"github issuer {self.name!r}: {what}: GitHub answered for another App"
            )

    async def aclose(self) -> None:
        """Let running mints finish storing their token, then close the HTTP client."""
        pending = set(self._inflight.values())
        if pending:
            await asyncio.wait(pending, timeout=self._call_budget() * 3)
        await self._http.aclose()

    # -- plumbing --------------------------------------------------------------------------

    def _call_budget(self) -> float:
        s = self._settings
        return (s.timeout + s.connect_timeout).total_seconds()

    def _app_jwt(self) -> str:
        """The App's JWT: RS256, ``iss`` = the App, ``iat`` = now - 60 s, ``exp`` = iat + 10 min;
        reused while it has more than two minutes left."""
        now = self._clock.now()
        cached = self._jwt
        if cached is not None and cached[1] <= now < cached[2] - _JWT_REUSE_MARGIN:
            return cached[0]
        iat = now.replace(microsecond=0) - _JWT_BACKDATE
        exp = iat + _JWT_LIFETIME
        app_id = self._settings.app_id
        claims: dict[str, Any] = {
            "iat": int(iat.timestamp()),
            "exp": int(exp.timestamp()),
            "iss": int(app_id) if app_id.isdigit() else app_id,
        }
        try:
            token = jwt.encode(
                {"alg": "RS256", "typ": "JWT"},
                claims,
                self._settings.signing_key,
                algorithms=["RS256"],
            )
        except Exception as exc:
            raise IssuerUnavailable(
                f"github issuer {self.name!r}: cannot sign the App JWT ({exc.__class__.__name__})"
            ) from None
        self._jwt = (token, iat, exp)
        return token

    async def _call(
        self, method: str, path: str, *, auth: str, what: str, json: Any = None
    ) -> httpx.Response:
        try:
            return await self._http.request(
                method, path, json=json, headers={"Authorization": f"Bearer {auth}"}
            )
        except httpx.TimeoutException:
            raise IssuerUnavailable(
                f"github issuer {self.name!r}: {what}: GitHub did not answer in time"
            ) from None
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(
                f"github issuer {self.name!r}: {what}: cannot reach GitHub "
                f"({exc.__class__.__name__})"
            ) from None

    def _refused(
        self, what: str, resp: httpx.Response, *, unavailable: bool = False
    ) -> IssuerError:
        """The error for an unexpected answer: GitHub down, rate-limiting or refusing the App
        (5xx, 429, 401, 403) is IssuerUnavailable (retryable); anything else, such as 404 or
        422 for a repository or permission the installation lacks, is an IssuerError. The
        message carries the status, GitHub's short message and request id: never a body."""
        status = resp.status_code
        text = f"github issuer {self.name!r}: {what}: GitHub answered {status}"
        message = _github_message(resp)
        if message:
            text += f" ({message})"
        request_id = resp.headers.get("x-github-request-id")
        if request_id and len(request_id) <= 64 and request_id.isprintable():
            text += f" [request {request_id}]"
        if unavailable or status >= 500 or status in (401, 403, 429):
            return IssuerUnavailable(text)
        return IssuerError(text)


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process (loading the CA bundle costs
    tens of milliseconds per client otherwise). Read-only once built, so it is shared."""
    return httpx.create_ssl_context()


def _json_object(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _github_message(resp: httpx.Response) -> str:
    data = _json_object(resp)
    message = data.get("message") if data is not None else None
    if not isinstance(message, str):
        return ""
    clean = "".join(c for c in message if c.isprintable())
    return clean[:_MAX_MESSAGE]


def _usable_token(value: str) -> bool:
    """A token we can send back in an Authorization header (opaque ``ghs_…`` or GitHub's
    longer stateless format alike)."""
    return (
        0 < len(value) <= _MAX_TOKEN_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
