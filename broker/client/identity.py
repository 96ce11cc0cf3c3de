"""Where the workload's identity token comes from.

A source is anything with ``async def token(http, *, refresh=False) -> str``. The built-in
ones, in the order :func:`detect` tries them:

1. :class:`GitHubActions`: the Actions OIDC endpoint (``ACTIONS_ID_TOKEN_REQUEST_URL`` +
   ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, present when the job has ``permissions: id-token:
   write``), for an ``audience`` (default ``jit-broker``); fetched again when the token held
   is within a minute of its ``exp``, or when the broker refused it.
2. :class:`GitLabCI`: the variable a job's ``id_tokens:`` declares (default ``JIT_ID_TOKEN``).
3. :class:`KubernetesToken`: a projected service-account token file (default
   ``/var/run/secrets/jit-broker/token``, or ``JIT_KUBERNETES_TOKEN_FILE``); the kubelet
   rotates it in place, so it is read again whenever the file changes.
4. :class:`StaticToken` from ``JIT_TOKEN``, or :class:`TokenFile` from ``JIT_TOKEN_FILE``.

Every source can be chosen explicitly (``Client(identity=GitLabCI("MY_TOKEN"))``). Tokens are
never logged; errors say which source failed and why, never the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

import httpx

from broker.client.errors import IdentityUnavailable

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_KUBERNETES_TOKEN_FILE",
    "GitHubActions",
    "GitLabCI",
    "IdentitySource",
    "KubernetesToken",
    "StaticToken",
    "TokenFile",
    "detect",
    "from_name",
]

DEFAULT_AUDIENCE: Final = "jit-broker"
DEFAULT_KUBERNETES_TOKEN_FILE: Final = "/var/run/secrets/jit-broker/token"  # noqa: S105 (a path)
#: A token this close to its ``exp`` is fetched again before use.
REFRESH_BEFORE: Final = 60.0


@runtime_checkable
class IdentitySource(Protocol):
    """Gives the workload's identity token. ``refresh=True``: the broker refused the last one
    (expired?); fetch a new one if the source can."""

    name: str

    async def token(self, http: httpx.AsyncClient, *, refresh: bool = False) -> str: ...


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT, read without verifying it (the broker verifies); None if absent."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class StaticToken:
    """A token given as a value (``JIT_TOKEN``, ``--token``)."""

    name = "token"

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token:
            raise IdentityUnavailable("the identity token is empty")
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(****)"

    async def token(self, http: httpx.AsyncClient, *, refresh: bool = False) -> str:
        return self._token


class TokenFile:
    """A token in a file, read again whenever the file changes (size, mtime or inode: the
    kubelet replaces projected tokens by swapping a symlink)."""

    name = "token-file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    async def token(self, http: httpx.AsyncClient, *, refresh: bool = False) -> str:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp or refresh:
                self._token = self.path.read_text().strip()
                self._stamp = stamp
        except OSError as exc:
            raise IdentityUnavailable(
                f"{self.name}: cannot read {self.path}: {exc.strerror}"
            ) from None
        if not self._token:
            raise IdentityUnavailable(f"{self.name}: {self.path} is empty")
        return self._token


class KubernetesToken(TokenFile):
    """A projected service-account token (docs/identity.md, ``kubernetes`` preset)."""

    name = "kubernetes"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(path or DEFAULT_KUBERNETES_TOKEN_FILE)


class GitLabCI:
    """The ID token a GitLab job declares under ``id_tokens:`` (``variable``, default
    ``JIT_ID_TOKEN``). GitLab issues it when the job starts; it cannot be refreshed."""

    name = "gitlab"

    def __init__(
        self, variable: str = "JIT_ID_TOKEN", *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.variable = variable
        self._environ = os.environ if environ is None else environ

    def __repr__(self) -> str:
        return f"GitLabCI({self.variable!r})"

    async def token(self, http: httpx.AsyncClient, *, refresh: bool = False) -> str:
        value = (self._environ.get(self.variable) or "").strip()
        if not value:
            raise IdentityUnavailable(
                f"gitlab: ${self.variable} is not set: declare it under the job's id_tokens:"
            )
        return value


class GitHubActions:
    """The job's OIDC token from the Actions runtime, for ``audience``. Fetched when first
    needed, again when the one held expires within a minute, and when ``refresh`` is asked."""

    name = "github"

    def __init__(
        self,
        audience: str = DEFAULT_AUDIENCE,
        *,
        environ: Mapping[str, str] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self._environ = os.environ if environ is None else environ
        self._now = now
        self._token: str | None = None
        self._expires = 0.0

    def __repr__(self) -> str:
        return f"GitHubActions(audience={self.audience!r})"

    async def token(self, http: httpx.AsyncClient, *, refresh: bool = False) -> str:
        if self._token and not refresh and self._expires - self._now() > REFRESH_BEFORE:
            return self._token
        url = self._environ.get("ACTIONS_ID_TOKEN_REQUEST_URL")
        request_token = self._environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        if not url or not request_token:
            raise IdentityUnavailable(
                "github: ACTIONS_ID_TOKEN_REQUEST_URL / ACTIONS_ID_TOKEN_REQUEST_TOKEN are not "
                "set: give the job `permissions: id-token: write`"
            )
        try:
            resp = await http.get(
                url,
                params={"audience": self.audience},
                headers={"Authorization": f"Bearer {request_token}"},
                timeout=10,
            )
        except httpx.HTTPError as exc:
            raise IdentityUnavailable(
                f"github: the OIDC token endpoint failed ({exc.__class__.__name__})"
            ) from None
        try:
            value = resp.json().get("value") if resp.status_code == 200 else None
        except ValueError:
            value = None
        if not isinstance(value, str) or not value:
            raise IdentityUnavailable(
                f"github: the OIDC token endpoint answered {resp.status_code} without a token"
            )
        self._token = value
        self._expires = jwt_expiry(value) or self._now() + 300
        return value


def detect(
    environ: Mapping[str, str] | None = None, *, audience: str = DEFAULT_AUDIENCE
) -> IdentitySource:
    """The first source this environment offers, in the module's order; IdentityUnavailable
    when there is none."""
    env = os.environ if environ is None else environ
    if env.get("ACTIONS_ID_TOKEN_REQUEST_URL") and env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        return GitHubActions(audience, environ=env)
    if env.get("JIT_ID_TOKEN"):
        return GitLabCI("JIT_ID_TOKEN", environ=env)
    k8s = env.get("JIT_KUBERNETES_TOKEN_FILE") or DEFAULT_KUBERNETES_TOKEN_FILE
    if Path(k8s).is_file():
        return KubernetesToken(k8s)
    if env.get("JIT_TOKEN"):
        return StaticToken(env["JIT_TOKEN"])
    if env.get("JIT_TOKEN_FILE"):
        return TokenFile(env["JIT_TOKEN_FILE"])
    raise IdentityUnavailable(
        "no workload identity token: not in GitHub Actions with id-token: write, no "
        f"$JIT_ID_TOKEN (GitLab id_tokens), no {k8s} (Kubernetes), no $JIT_TOKEN or "
        "$JIT_TOKEN_FILE"
    )


#: The names ``from_name`` (and the CLI's ``--identity``) accept.
SOURCES: Final = ("auto", "github", "gitlab", "kubernetes", "token")


def from_name(
    name: str,
    *,
    environ: Mapping[str, str] | None = None,
    audience: str = DEFAULT_AUDIENCE,
    token: str | None = None,
    token_file: str | None = None,
    variable: str | None = None,
    path: str | None = None,
) -> IdentitySource:
    """A source by name: ``auto`` (:func:`detect`), ``github``, ``gitlab`` (``variable``),
    ``kubernetes`` (``path``) or ``token`` (``token``, else ``token_file``, else
    ``JIT_TOKEN`` / ``JIT_TOKEN_FILE``)."""
    env = os.environ if environ is None else environ
    if name == "auto":
        return detect(env, audience=audience)
    if name == "github":
        return GitHubActions(audience, environ=env)
    if name == "gitlab":
        return GitLabCI(variable or "JIT_ID_TOKEN", environ=env)
    if name == "kubernetes":
        return KubernetesToken(path or env.get("JIT_KUBERNETES_TOKEN_FILE"))
    if name == "token":
        if token:
            return StaticToken(token)
        if token_file:
            return TokenFile(token_file)
        if env.get("JIT_TOKEN"):
            return StaticToken(env["JIT_TOKEN"])
        if env.get("JIT_TOKEN_FILE"):
            return TokenFile(env["JIT_TOKEN_FILE"])
        raise IdentityUnavailable(
            "no workload token: pass --token, set JIT_TOKEN or JIT_TOKEN_FILE"
        )
    raise ValueError(f"unknown identity source {name!r} (one of {', '.join(SOURCES)})")
