"""TTL resolution and retry backoff: pure rules, checked exhaustively and by property."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InvalidRequest
from broker.issuer import Capabilities
from broker.leases.ttl import resolve_ttl
from broker.retry import backoff

M = timedelta(minutes=1)
ISSUER = Capabilities(max_ttl=60 * M, default_ttl=15 * M, min_ttl=timedelta(seconds=1))


def ttl(requested: timedelta | None, **kw: object) -> tuple[timedelta, str | None]:
    args: dict[str, object] = {
        "grant_default": 15 * M,
        "grant_max": 60 * M,
        "issuer": ISSUER,
        "hard_max": 12 * 60 * M,
    }
    args.update(kw)
    d = resolve_ttl(requested, **args)  # type: ignore[arg-type]
    return d.ttl, d.capped_by


def test_nothing_asked_gets_the_grant_default() -> None:
    assert ttl(None) == (15 * M, None)


def test_an_explicit_ttl_is_honoured_exactly() -> None:
    assert ttl(7 * M) == (7 * M, None)


def test_more_than_the_grant_allows_is_refused_naming_the_limit() -> None:
    with pytest.raises(InvalidRequest, match="exceeds the grant's max_ttl of 1h"):
        ttl(61 * M)


@pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-5)])
def test_a_non_positive_ttl_is_refused(bad: timedelta) -> None:
    with pytest.raises(InvalidRequest, match="positive"):
        ttl(bad)


def test_the_issuer_and_the_broker_cap_and_say_so() -> None:
    small = Capabilities(max_ttl=5 * M, default_ttl=M)
    assert ttl(30 * M, issuer=small) == (5 * M, "issuer")
    assert ttl(30 * M, hard_max=10 * M) == (10 * M, "broker")


def test_an_expiry_only_issuer_is_capped_to_the_task() -> None:
    expiry_only = Capabilities(max_ttl=60 * M, default_ttl=15 * M, min_ttl=15 * M, revocable=False)
    assert ttl(50 * M, issuer=expiry_only, task_remaining=20 * M) == (20 * M, "task")
    with pytest.raises(InvalidRequest, match="less than this issuer's minimum"):
        ttl(50 * M, issuer=expiry_only, task_remaining=5 * M)
    # A revocable issuer is not capped by the task: revocation ends it with the task.
    assert ttl(50 * M, task_remaining=5 * M) == (50 * M, None)


def test_below_the_issuer_minimum() -> None:
    strict = Capabilities(max_ttl=60 * M, default_ttl=M, min_ttl=15 * M)
    with pytest.raises(InvalidRequest, match="below this issuer's minimum of 15m"):
        ttl(2 * M, issuer=strict)
    assert ttl(None, issuer=strict, grant_default=M) == (15 * M, None)


@given(
    requested=st.none() | st.integers(1, 3600).map(lambda s: timedelta(seconds=s)),
    issuer_max=st.integers(1, 7200),
    hard_max=st.integers(1, 7200),
)
def test_the_ttl_never_exceeds_any_limit(
    requested: timedelta | None, issuer_max: int, hard_max: int
) -> None:
    caps = Capabilities(
        max_ttl=timedelta(seconds=issuer_max),
        default_ttl=M,
        min_ttl=timedelta(seconds=1),
    )
    got, _ = ttl(requested, issuer=caps, hard_max=timedelta(seconds=hard_max))
    assert got <= timedelta(seconds=issuer_max)
    assert got <= timedelta(seconds=hard_max)
    assert got <= 60 * M
    if requested is not None:
        assert got <= requested


def test_backoff_doubles_then_caps_with_jitter_between_half_and_all() -> None:
    base, cap = timedelta(seconds=1), timedelta(seconds=60)
    lo = [backoff(n, base=base, cap=cap, rand=lambda: 0.0).total_seconds() for n in range(1, 10)]
    hi = [backoff(n, base=base, cap=cap, rand=lambda: 1.0).total_seconds() for n in range(1, 10)]
    assert hi == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert lo == [h / 2 for h in hi]
    assert backoff(10_000, base=base, cap=cap).total_seconds() <= 60
    with pytest.raises(ValueError, match="attempt"):
        backoff(0, base=base, cap=cap)
