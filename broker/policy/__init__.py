"""Policy: owner-approved scopes as YAML documents → compiled once → decided by a pure function.

This package owns the policy language (docs/policy.md is its reference), its loading and lint
(``jit policy lint``), the decision for a request (:func:`decide`), extra permissions
(:func:`can`) and the human explanation of a decision (:func:`explain`, ``jit policy explain``).

Modules: ``model`` (the written schema), ``source`` (YAML with line numbers), ``compile`` (one
document → compiled form), ``loader`` (directories, versions, lint), ``decide`` (decisions).
It never imports litestar and never reads the clock.
"""

from __future__ import annotations

from broker.policy.compile import (
    ClaimMatcher,
    Condition,
    Grant,
    PolicyDocument,
    PolicySet,
    Workload,
)
from broker.policy.decide import Allow, Decision, Deny, NeedsApproval, can, decide, explain
from broker.policy.loader import lint_policy_dir, load_policy_dir, load_policy_text
from broker.policy.model import CEL_VARIABLES, PERMISSIONS

__all__ = [
    "CEL_VARIABLES",
    "PERMISSIONS",
    "Allow",
    "ClaimMatcher",
    "Condition",
    "Decision",
    "Deny",
    "Grant",
    "NeedsApproval",
    "PolicyDocument",
    "PolicySet",
    "Workload",
    "can",
    "decide",
    "explain",
    "lint_policy_dir",
    "load_policy_dir",
    "load_policy_text",
]
