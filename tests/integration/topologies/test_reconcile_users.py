"""Reconcile (its lock and the live-lease scan over the due index) on each topology."""

from __future__ import annotations

import pytest

from tests.integration.test_state_loss import (
    env,
    test_a_mint_in_flight_is_never_an_orphan,
    test_reconcile_revokes_what_no_live_lease_owns_and_nothing_else,
)

pytestmark = pytest.mark.integration

__all__ = [
    "env",
    "test_a_mint_in_flight_is_never_an_orphan",
    "test_reconcile_revokes_what_no_live_lease_owns_and_nothing_else",
]
