"""The broker's Redis users behind the HTTP API — the lease store (write-ahead, activation,
task completion, the due index), the audit chain, idempotency, quotas and the state guard —
on each topology: the same tests as in their own modules, collected here again."""

from __future__ import annotations

import pytest

from tests.integration.test_api import (
    test_a_valid_request_gets_201_with_the_credential_and_its_lease,
)
from tests.integration.test_idempotency import (
    test_a_retry_with_the_same_key_gets_the_same_lease_and_credential,
    test_concurrent_requests_with_one_key_make_one_lease,
)
from tests.integration.test_quotas import (
    settings_over,
    test_concurrent_requests_never_exceed_the_quota,
    test_mints_per_minute_refuse_with_the_seconds_to_the_next_minute,
)
from tests.integration.test_state_loss import (
    test_a_lost_epoch_stops_the_replica_until_an_operator_accepts,
)

pytestmark = pytest.mark.integration

__all__ = [
    "settings_over",
    "test_a_lost_epoch_stops_the_replica_until_an_operator_accepts",
    "test_a_retry_with_the_same_key_gets_the_same_lease_and_credential",
    "test_a_valid_request_gets_201_with_the_credential_and_its_lease",
    "test_concurrent_requests_never_exceed_the_quota",
    "test_concurrent_requests_with_one_key_make_one_lease",
    "test_mints_per_minute_refuse_with_the_seconds_to_the_next_minute",
]
