"""The one rule for URLs that a secret travels to. A contract module: imports nothing from broker.

Every URL that carries a credential (Slack's API with the bot token, an audit webhook with its
bearer token, an SSF receiver, an issuer backend such as GitHub's API or an AWS endpoint) must
be ``https://``; plain ``http://`` is accepted only when the host is a loopback address
(``127.0.0.0/8``, ``::1``) or ``localhost`` — a test fake on this machine. A host that merely
*starts* like a loopback address (``127.evil.example``) is not one.

Callers turn the ``ValueError`` into their own error type naming the config key.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit

__all__ = ["check_url", "is_loopback"]


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and for IP literals in a loopback range; False for any other
    name, however it looks (names are not resolved)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(
    url: str,
    *,
    allow_http: bool = False,
    allow_query: bool = False,
) -> SplitResult:
    """Parse ``url`` and enforce the transport rule (module docstring). Also refuses a URL
    without a host, with a bad port, with credentials in it, with a fragment, and (unless
    ``allow_query``) with a query. ``allow_http`` accepts plain http to any host (for an
    explicitly configured non-secret endpoint). Raises ValueError with a short reason."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise ValueError(f"not a valid URL: {url!r}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"must be an absolute https:// URL, got {url!r}")
    if parts.scheme == "http" and not (allow_http or is_loopback(host)):
        raise ValueError(f"must use https (plain http only to a loopback address), got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    if parts.query and not allow_query:
        raise ValueError("must not have a query")
    return parts
