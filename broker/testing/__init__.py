"""The public test kit: FakeClock, the issuer conformance mixin and fakes.

Third-party issuers use it in their own test suites (see docs/writing-an-issuer.md).
"""

from __future__ import annotations

from broker.testing.clock import FakeClock

__all__ = ["FakeClock"]
