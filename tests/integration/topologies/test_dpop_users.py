"""The DPoP replay cache (one key per proof, spread over a cluster's slots) on each topology."""

from __future__ import annotations

import pytest

from tests.integration.test_dpop_api import (
    env,
    test_v1_credentials_binds_too_and_bad_or_replayed_proofs_are_refused,
)

pytestmark = pytest.mark.integration

__all__ = ["env", "test_v1_credentials_binds_too_and_bad_or_replayed_proofs_are_refused"]
