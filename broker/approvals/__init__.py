"""Human approval of elevated scopes: requests, reviews, Slack, and the one mint they allow.

- :mod:`.model` — the values (ApprovalView, Review, ApprovalState)
- :mod:`.people` — config people and groups; who is behind a request
- :mod:`.store` — Redis records and atomic transitions (Lua)
- :mod:`.service` — open/merge, review, expire, mint once
- :mod:`.slack` — the Slack notifier and interaction verification

See docs/approvals.md.
"""

from broker.approvals.model import ApprovalState, ApprovalView, Review
from broker.approvals.people import People
from broker.approvals.service import Approvals, Notifier, SlackInbound, TooManyPending
from broker.approvals.store import ApprovalStore

__all__ = [
    "ApprovalState",
    "ApprovalStore",
    "ApprovalView",
    "Approvals",
    "Notifier",
    "People",
    "Review",
    "SlackInbound",
    "TooManyPending",
]
