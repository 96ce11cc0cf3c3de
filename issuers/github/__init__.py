"""The ``github`` issuer: GitHub App installation tokens, one repository per lease.

See :mod:`issuers.github.issuer` and docs/issuers/github.md.
"""

from issuers.github.issuer import GitHubIssuer

__all__ = ["GitHubIssuer"]
