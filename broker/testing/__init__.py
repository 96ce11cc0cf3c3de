"""The public test kit: FakeClock, the issuer conformance mixin and fakes.

Third-party issuers use it in their own test suites (see docs/writing-an-issuer.md).
``IssuerConformance`` and its helpers need pytest; they are imported on first use, so
``FakeClock`` and ``FakeIssuer`` work without it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from broker.testing.clock import FakeClock
from broker.testing.fakes import FakeCall, FakeCredential, FakeIssuer

if TYPE_CHECKING:
    from broker.testing.conformance import (
        IssuerConformance,
        lease_for,
        mint_request,
        new_lease_id,
    )

__all__ = [
    "FakeCall",
    "FakeClock",
    "FakeCredential",
    "FakeIssuer",
    "IssuerConformance",
    "lease_for",
    "mint_request",
    "new_lease_id",
]

_CONFORMANCE = frozenset({"IssuerConformance", "lease_for", "mint_request", "new_lease_id"})


def __getattr__(name: str) -> Any:
    if name in _CONFORMANCE:
        if "pytest" in sys.modules and "broker.testing.conformance" not in sys.modules:
            import pytest  # under pytest: let its failures show the compared values

            pytest.register_assert_rewrite("broker.testing.conformance")
        from broker.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
