"""How a broker scope maps onto a GitHub installation token: pure parsing, no I/O.

Owns the ``github`` issuer's scope model:

- ``resource`` is one repository, ``https://<web host>/<owner>/<repo>`` (``https://github.com/
  acme/api``; on GitHub Enterprise Server, the server's host). Nothing else: no trailing slash,
  no ``.git``, no query, no glob. One lease, one repository.
- ``actions`` are GitHub App *repository* permission grants, ``<permission>:<level>``
  (``contents:read``, ``pull_requests:write``, ``repository_projects:admin``). The names and the
  levels each permission accepts are GitHub's, from the REST schema ``app-permissions`` of
  ``POST /app/installations/{installation_id}/access_tokens``. Organization, user and
  enterprise permissions are refused: they are not confined to the repository of the resource.
- Two levels of the same permission collapse to the higher one (``write`` includes ``read``
  and ``admin`` includes ``write`` on GitHub), so ``[contents:read, contents:write]`` asks for
  exactly ``{"contents": "write"}``.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from broker.errors import ScopeNotSupported
from broker.types import Scope

__all__ = [
    "LEVELS",
    "REPOSITORY_PERMISSIONS",
    "TokenScope",
    "parse_scope",
]

#: GitHub's permission levels, weakest first: each includes the ones before it.
LEVELS: Final = ("read", "write", "admin")

#: Repository permissions of a GitHub App installation token and the levels GitHub accepts for
#: each (REST schema ``app-permissions``, the repository part).
REPOSITORY_PERMISSIONS: Final[dict[str, tuple[str, ...]]] = {
    "actions": ("read", "write"),
    "administration": ("read", "write"),
    "artifact_metadata": ("read", "write"),
    "attestations": ("read", "write"),
    "checks": ("read", "write"),
    "codespaces": ("read", "write"),
    "contents": ("read", "write"),
    "dependabot_secrets": ("read", "write"),
    "deployments": ("read", "write"),
    "discussions": ("read", "write"),
    "environments": ("read", "write"),
    "issues": ("read", "write"),
    "merge_queues": ("read", "write"),
    "metadata": ("read", "write"),
    "packages": ("read", "write"),
    "pages": ("read", "write"),
    "pull_requests": ("read", "write"),
    "repository_custom_properties": ("read", "write"),
    "repository_hooks": ("read", "write"),
    "repository_projects": ("read", "write", "admin"),
    "secret_scanning_alerts": ("read", "write"),
    "secrets": ("read", "write"),
    "security_events": ("read", "write"),
    "single_file": ("read", "write"),
    "statuses": ("read", "write"),
    "vulnerability_alerts": ("read", "write"),
    "workflows": ("write",),
}

#: Permissions GitHub documents for App tokens that are not confined to one repository.
_NOT_REPOSITORY: Final = frozenset(
    {
        "custom_properties_for_organizations",
        "email_addresses",
        "enterprise_custom_properties_for_organizations",
        "followers",
        "git_ssh_keys",
        "gpg_keys",
        "interaction_limits",
        "members",
        "organization_administration",
        "organization_announcement_banners",
        "organization_copilot_seat_management",
        "organization_custom_org_roles",
        "organization_custom_properties",
        "organization_custom_roles",
        "organization_events",
        "organization_hooks",
        "organization_packages",
        "organization_personal_access_token_requests",
        "organization_personal_access_tokens",
        "organization_plan",
        "organization_projects",
        "organization_secrets",
        "organization_self_hosted_runners",
        "organization_user_blocking",
        "profile",
        "starring",
        "team_discussions",
    }
)

# GitHub logins: letters, digits and hyphens, at most 39 characters (Enterprise Managed Users
# add an ``_<shortcode>`` suffix, hence the underscore). Repository names: letters, digits,
# ``.``, ``_`` and ``-``, at most 100 characters.
_OWNER: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,38})")
_REPO: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")


class TokenScope(msgspec.Struct, frozen=True, kw_only=True):
    """What one installation token is asked for: one repository, some permissions."""

    owner: str
    repo: str
    permissions: dict[str, str]  # GitHub's request body ``permissions``: name -> level

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


def parse_scope(scope: Scope, *, issuer: str, web_host: str) -> TokenScope:
    """The repository and permissions ``scope`` asks for; ScopeNotSupported for anything an
    installation token cannot express exactly."""
    if scope.issuer != issuer:
        raise ScopeNotSupported(f"scope is for issuer {scope.issuer!r}, not {issuer!r}")
    owner, repo = _parse_resource(scope.resource, web_host)
    if not scope.actions:
        raise ScopeNotSupported("at least one action (<permission>:<level>) is required")
    permissions: dict[str, str] = {}
    for action in scope.actions:
        name, level = _parse_action(action)
        current = permissions.get(name)
        if current is None or LEVELS.index(level) > LEVELS.index(current):
            permissions[name] = level
    return TokenScope(owner=owner, repo=repo, permissions=dict(sorted(permissions.items())))


def _parse_resource(resource: str, web_host: str) -> tuple[str, str]:
    prefix = f"https://{web_host}/"
    expected = f"a repository URL {prefix}<owner>/<repo>"
    if not isinstance(resource, str) or not resource.startswith(prefix):
        raise ScopeNotSupported(f"resource must be {expected}")
    path = resource[len(prefix) :]
    owner, sep, repo = path.partition("/")
    if not sep or not _OWNER.fullmatch(owner) or not _REPO.fullmatch(repo):
        raise ScopeNotSupported(
            f"resource must be {expected} (one repository: no trailing slash, sub-path, "
            "query or wildcard)"
        )
    if repo in (".", "..") or repo.lower().endswith(".git"):
        raise ScopeNotSupported(f"resource must be {expected}, without a .git suffix")
    return owner, repo


def _parse_action(action: str) -> tuple[str, str]:
    if not isinstance(action, str):
        raise ScopeNotSupported("every action must be a string <permission>:<level>")
    name, sep, level = action.partition(":")
    if not sep:
        raise ScopeNotSupported(
            f"action {action!r} is not <permission>:<level> (e.g. contents:read)"
        )
    if name in _NOT_REPOSITORY:
        raise ScopeNotSupported(
            f"action {action!r}: {name!r} is not a repository permission; this issuer mints "
            "tokens for one repository only"
        )
    levels = REPOSITORY_PERMISSIONS.get(name)
    if levels is None:
        raise ScopeNotSupported(f"action {action!r}: unknown GitHub repository permission")
    if level not in levels:
        raise ScopeNotSupported(
            f"action {action!r}: GitHub accepts {name!r} at {', '.join(levels)} only"
        )
    return name, level
