"""Who is who: config people and groups, mapped from principals, Slack users and CI claims.

Separation of duties is decided here: the people *behind* a request (the human who triggered a
CI job, the user an agent acts for, a human requesting for themself) can never approve it.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.config import ApprovalSettings
from broker.types import Principal

__all__ = ["People"]

# Claims that name the human behind a CI job, and the person field they are matched against.
_GITHUB_CLAIMS = ("actor", "triggering_actor")
_GITLAB_CLAIMS = ("user_login",)


class People:
    def __init__(self, settings: ApprovalSettings) -> None:
        self.settings = settings
        self._by_identity = {i: name for name, p in settings.people.items() for i in p.identities}
        self._by_slack = {p.slack: name for name, p in settings.people.items() if p.slack}
        self._by_github = {p.github: name for name, p in settings.people.items() if p.github}
        self._by_gitlab = {p.gitlab: name for name, p in settings.people.items() if p.gitlab}

    def known_names(self) -> set[str]:
        """What a policy may name as approvers: people (by name or Slack user id) and
        ``group:<name>``."""
        return (
            set(self.settings.people)
            | set(self._by_slack)
            | {f"group:{g}" for g in self.settings.groups}
        )

    def expand(self, names: Iterable[str]) -> tuple[str, ...]:
        """People named directly or through ``group:<name>``; the config's default approvers
        when ``names`` is empty."""
        names = list(names) or list(self.settings.default_approvers)
        out: set[str] = set()
        for name in names:
            if name.startswith("group:"):
                out.update(self.settings.groups.get(name.removeprefix("group:"), ()))
            elif name in self.settings.people:
                out.add(name)
            elif name in self._by_slack:  # a Slack user id stands for the person it maps to
                out.add(self._by_slack[name])
        return tuple(sorted(out))

    def for_principal(self, principal: Principal) -> str | None:
        return self._by_identity.get(principal.id)

    def for_slack(self, user_id: str) -> str | None:
        return self._by_slack.get(user_id)

    def slack_id(self, person: str) -> str | None:
        p = self.settings.people.get(person)
        return p.slack if p else None

    def resolve(self, who: str) -> str | None:
        """A person from a name, a Slack user id or a principal id."""
        if who in self.settings.people:
            return who
        return self._by_slack.get(who) or self._by_identity.get(who)

    def behind(self, principal: Principal, on_behalf_of: str | None) -> tuple[str, ...]:
        """The people behind a request: they may not approve it."""
        out: set[str] = set()
        if (p := self.for_principal(principal)) is not None:
            out.add(p)
        for claim in _GITHUB_CLAIMS:
            login = principal.claims.get(claim)
            if isinstance(login, str) and login in self._by_github:
                out.add(self._by_github[login])
        for claim in _GITLAB_CLAIMS:
            login = principal.claims.get(claim)
            if isinstance(login, str) and login in self._by_gitlab:
                out.add(self._by_gitlab[login])
        if on_behalf_of and (p := self.resolve(on_behalf_of)) is not None:
            out.add(p)
        return tuple(sorted(out))
