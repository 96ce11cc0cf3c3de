"""The Shared Signals outbox (its scripts, the delivery lock, the cursors) on each topology."""

from __future__ import annotations

import pytest

from tests.integration.test_ssf_redis import (
    clock,
    make,
    receiver,
    test_a_receiver_that_is_down_gets_every_set_once_in_order_after_it_comes_back,
    test_a_replica_that_dies_holding_the_lock_is_replaced_when_the_lock_runs_out,
    token,
    token_file,
)

pytestmark = pytest.mark.integration

__all__ = [
    "clock",
    "make",
    "receiver",
    "test_a_receiver_that_is_down_gets_every_set_once_in_order_after_it_comes_back",
    "test_a_replica_that_dies_holding_the_lock_is_replaced_when_the_lock_runs_out",
    "token",
    "token_file",
]
