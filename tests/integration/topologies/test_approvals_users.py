"""Approvals (their store and the one-mint claim) on each topology."""

from __future__ import annotations

import pytest

from tests.integration.test_approvals import (
    env,
    slack,
    test_quorum_of_one_approval_mints_once_and_the_clock_starts_at_approval,
    test_two_concurrent_approvals_mint_exactly_one_credential,
)

pytestmark = pytest.mark.integration

__all__ = [
    "env",
    "slack",
    "test_quorum_of_one_approval_mints_once_and_the_clock_starts_at_approval",
    "test_two_concurrent_approvals_mint_exactly_one_credential",
]
