"""The audit chain (one slot, ``{audit}``: its single order) and its delivery to a webhook on
each topology; the chain exported with ``jit audit export --config`` verifies."""

from __future__ import annotations

import pytest

from tests.integration.test_audit_redis import (
    receiver,
    test_a_webhook_that_is_down_for_a_while_gets_every_record_once_in_order,
    test_two_brokers_on_two_clients_write_one_chain_that_exports_and_verifies,
)

pytestmark = pytest.mark.integration

__all__ = [
    "receiver",
    "test_a_webhook_that_is_down_for_a_while_gets_every_record_once_in_order",
    "test_two_brokers_on_two_clients_write_one_chain_that_exports_and_verifies",
]
