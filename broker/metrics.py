"""Prometheus metrics for one broker: a private registry fed by audit events, plus gauges read at
scrape time.

Owns the metric catalogue (documented in docs/metrics.md) and :class:`MetricsSink`, the audit
sink that turns the events of the audit trail into counters and histograms — so the numbers
come from the same events as the record. HTTP request counts and latencies come from the API
middleware through :meth:`Metrics.observe_request`. Gauges that describe shared state (live and
overdue leases in Redis, audit sink lag) are read from async callables when ``/metrics`` is
scraped (:meth:`Metrics.set_gauge_sources`, :meth:`Metrics.render`).

Label values come only from bounded sets: configured issuer instance names, revocation
triggers, outcomes, event types, route templates, sink names. Every label value passes a guard
that maps anything unexpected (an unknown issuer a caller typed, something shaped like an id)
to ``"other"`` and caps how many distinct values a label may take, so a bug or a hostile input
cannot explode the series count or put an id, principal or user name into a metric.

Free of litestar (the API edge wires it in) and of Redis (the gauges' callables read Redis).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from broker import __version__
from broker.audit import AuditEvent

__all__ = [
    "APPROVAL_WAIT_BUCKETS",
    "HTTP_LATENCY_BUCKETS",
    "OTHER",
    "REAPER_LAG_BUCKETS",
    "UNMATCHED",
    "LabelGuard",
    "Metrics",
    "MetricsSink",
]

log = logging.getLogger("jit.metrics")

#: The label value that stands in for anything outside a label's bounded set.
OTHER: Final = "other"
#: The ``route`` for a request that matched no route (a 404 before routing).
UNMATCHED: Final = "unmatched"

#: revoked_at - not_after; the target is p99 under one second, the scale ends at 10 s.
REAPER_LAG_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
#: Seconds from an approval request being opened to its final state (humans: minutes to hours).
APPROVAL_WAIT_BUCKETS: Final = (
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0, 86400.0,
)  # fmt: skip
HTTP_LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_DECISION_OUTCOMES: Final = frozenset({"ok", "deny", "approval_required", "error"})
_APPROVAL_FINAL: Final = {
    "approval.approved": "approved",
    "approval.denied": "denied",
    "approval.expired": "expired",
    "approval.cancelled": "cancelled",
}
_AUTH_KINDS: Final = frozenset({"token", "client", "slack"})
_QUOTAS: Final = frozenset(
    f"{who}.{what}" for who in ("workload", "owner") for what in ("live_leases", "mints_per_minute")
)

_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}(?:\.[a-z][a-z0-9_]{0,31}){0,3}$")
_WORD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # audit sink names (broker.audit.chain)
_ROUTE_SEGMENT = re.compile(
    r"^(?:[A-Za-z0-9_.-]{0,64}|\{[A-Za-z_][A-Za-z0-9_]{0,31}(?::[a-z]+)?\})$"
)
_ID_LIKE = re.compile(r"[0-9a-fA-F]{12,}|\d{6,}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-")

GaugeSource = Callable[[], Awaitable[int | float]]
SinkLagSource = Callable[[], Awaitable[Mapping[str, int | float]]]


class LabelGuard:
    """Maps a raw value to a bounded label value.

    With ``allowed``, only those values pass. Otherwise a value must match ``pattern``, must not
    look like an id (long hex or digit runs, UUIDs), and at most ``cap`` distinct values are
    admitted (first come); everything else becomes ``"other"``. Each refusal is logged once per
    guard at WARNING, without the value (it may be exactly what must not be exposed).
    """

    def __init__(
        self,
        name: str,
        *,
        allowed: Iterable[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        cap: int = 64,
        check: Callable[[str], bool] | None = None,
    ) -> None:
        if allowed is None and pattern is None and check is None:
            raise ValueError(f"label guard {name!r} needs allowed values, a pattern or a check")
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.name = name
        self.allowed = frozenset(allowed) if allowed is not None else None
        self.pattern = pattern
        self.check = check
        self.cap = cap
        self._seen: set[str] = set()
        self._warned = False

    def __call__(self, value: object) -> str:
        if isinstance(value, str):
            if value in self._seen or value == OTHER:
                return value
            if self._admit(value):
                self._seen.add(value)
                return value
        if not self._warned:
            self._warned = True
            log.warning(
                "metrics: a %s label value outside the bounded set was reported as %r",
                self.name,
                OTHER,
            )
        return OTHER

    def _admit(self, value: str) -> bool:
        if self.allowed is not None:
            return value in self.allowed
        if self.pattern is not None and not self.pattern.match(value):
            return False
        if self.check is not None and not self.check(value):
            return False
        if _ID_LIKE.search(value):
            return False
        return len(self._seen) < self.cap


def _route_ok(route: str) -> bool:
    """A route template: ``/v1/leases/{lease_id}``. Raw paths with ids in them are refused."""
    if route == UNMATCHED:
        return True
    if not route.startswith("/") or len(route) > 200:
        return False
    return all(_ROUTE_SEGMENT.match(seg) for seg in route[1:].split("/"))


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


def _number(value: object) -> float | None:
    """A finite int/float from an event's detail (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


class Metrics:
    """The broker's metrics, in a registry of its own (several brokers in one process, and
    tests, never share counters).

    ``issuers`` are the configured issuer instance names: the only values the ``issuer`` label
    takes (anything else is ``"other"``). ``source_timeout`` bounds each gauge callable at
    scrape time; a callable that fails or times out leaves its gauge out of that scrape and sets
    ``jit_gauge_source_up{source}`` to 0.
    """

    def __init__(
        self,
        *,
        issuers: Iterable[str],
        source_timeout: float = 2.0,
        approval_memory: int = 10_000,
    ) -> None:
        if isinstance(issuers, str):
            raise TypeError("issuers is a collection of issuer instance names, not one string")
        if not source_timeout > 0:
            raise ValueError("source_timeout must be positive")
        if approval_memory < 0:
            raise ValueError("approval_memory must be >= 0")
        # `jit serve --workers N` (broker/cli/workers.py) sets PROMETHEUS_MULTIPROC_DIR: counters
        # and histograms then live in files there, and a scrape of any worker sums all workers.
        self._multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        if self._multiprocess_dir is not None and not getattr(
            values.ValueClass, "_multiprocess", False
        ):
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.source_timeout = source_timeout
        self._issuer = LabelGuard("issuer", allowed=[*issuers])
        self._trigger = LabelGuard("trigger", pattern=_WORD, cap=32)
        self._event_type = LabelGuard("type", pattern=_EVENT_TYPE, cap=128)
        self._outcome = LabelGuard("outcome", allowed=_DECISION_OUTCOMES)
        self._route = LabelGuard("route", check=_route_ok, cap=256)
        self._sink = LabelGuard("sink", pattern=_NAME, cap=32)
        self._auth_kind = LabelGuard("kind", allowed=_AUTH_KINDS)
        self._quota = LabelGuard("quota", allowed=_QUOTAS)
        # approval id -> opened time, for approvals opened here whose final event carries no
        # wait_ms (bounded: the oldest are forgotten first).
        self._opened: OrderedDict[str, datetime] = OrderedDict()
        # (metric, label values) -> labelled child, for the labels set on every request
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._approval_memory = approval_memory
        self._leases_active: GaugeSource | None = None
        self._overdue: GaugeSource | None = None
        self._sink_lag: SinkLagSource | None = None
        self._issuer_health: Callable[[], Mapping[str, bool]] | None = None
        self._state_lost: Callable[[], bool] | None = None

        r = self.registry
        info = Gauge(
            "jit_build_info",
            "The broker's version (always 1).",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        info.labels(version=__version__).set(1)
        self.audit_events = Counter(
            "jit_audit_events", "Audit events seen by this replica, by type.", ["type"], registry=r
        )
        self.decisions = Counter(
            "jit_decisions",
            "Policy decisions on credential requests, by outcome (ok, deny, approval_required).",
            ["outcome"],
            registry=r,
        )
        self.http_requests = Counter(
            "jit_http_requests",
            "HTTP requests, by route template and status class (2xx, 4xx, 5xx).",
            ["route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "jit_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=HTTP_LATENCY_BUCKETS,
            registry=r,
        )
        self.issued = Counter(
            "jit_credentials_issued",
            "Credentials minted, by issuer instance.",
            ["issuer"],
            registry=r,
        )
        self.mint_failures = Counter(
            "jit_credential_mint_failures",
            "Mints that failed at the issuer (whatever it may have created is revoked).",
            ["issuer"],
            registry=r,
        )
        self.revocations = Counter(
            "jit_revocations",
            "Leases revoked at the issuer, by issuer instance and trigger.",
            ["issuer", "trigger"],
            registry=r,
        )
        self.revocation_failures = Counter(
            "jit_revocation_failures",
            "Failed revocation attempts (each is retried with backoff), by issuer instance.",
            ["issuer"],
            registry=r,
        )
        self.marked_overdue = Counter(
            "jit_leases_marked_overdue",
            "Leases flagged overdue (revocation failed N times; still retried), by issuer.",
            ["issuer"],
            registry=r,
        )
        self.reaper_lag = Histogram(
            "jit_reaper_lag_seconds",
            "revoked_at - not_after for leases revoked because their TTL ran out.",
            ["issuer"],
            buckets=REAPER_LAG_BUCKETS,
            registry=r,
        )
        self.approvals_opened = Counter(
            "jit_approvals_opened", "Approval requests opened.", registry=r
        )
        self.approvals = Counter(
            "jit_approvals",
            "Approval requests that reached a final state, by outcome "
            "(approved, denied, expired, cancelled).",
            ["outcome"],
            registry=r,
        )
        self.approval_wait = Histogram(
            "jit_approval_wait_seconds",
            "Seconds from an approval request being opened to its final state, by outcome.",
            ["outcome"],
            buckets=APPROVAL_WAIT_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter(
            "jit_auth_failures",
            "Failed authentications, by kind (token, client, slack).",
            ["kind"],
            registry=r,
        )
        self.quota_refusals = Counter(
            "jit_quota_refusals",
            "Credential requests refused by a quota (429), by quota.",
            ["quota"],
            registry=r,
        )
        self.scraped = _ScrapeGauges()
        r.register(self.scraped)
        # Zero series from the start, so rate() and "increase(...) > 0" alerts see them.
        for outcome in ("ok", "deny", "approval_required"):
            self.decisions.labels(outcome=outcome)
        for outcome in _APPROVAL_FINAL.values():
            self.approvals.labels(outcome=outcome)
        for kind in sorted(_AUTH_KINDS):
            self.auth_failures.labels(kind=kind)
        for issuer in sorted(self._issuer.allowed or ()):
            for counter in (
                self.issued,
                self.mint_failures,
                self.revocation_failures,
                self.marked_overdue,
            ):
                counter.labels(issuer=issuer)

    # -- feeding -------------------------------------------------------------------------------

    def observe_event(self, event: AuditEvent) -> None:
        """Count one audit event. Never raises for an unexpected shape; unknown types are only
        counted in ``jit_audit_events_total``."""
        t = event.type
        self._child(self.audit_events, self._event_type(t)).inc()
        detail = event.detail
        if t == "decision":
            self.decisions.labels(outcome=self._outcome(event.outcome)).inc()
        elif t == "lease.minted":
            self.issued.labels(issuer=self._issuer(event.issuer)).inc()
        elif t == "lease.mint_failed":
            self.mint_failures.labels(issuer=self._issuer(event.issuer)).inc()
        elif t == "lease.revoked":
            issuer = self._issuer(event.issuer)
            self.revocations.labels(
                issuer=issuer, trigger=self._trigger(detail.get("trigger"))
            ).inc()
            lag_ms = _number(detail.get("lag_ms"))
            if lag_ms is not None:
                # A lease revoked a hair before not_after (clock skew between replicas) is 0.
                self.reaper_lag.labels(issuer=issuer).observe(max(0.0, lag_ms / 1000))
        elif t == "lease.revoke_failed":
            self.revocation_failures.labels(issuer=self._issuer(event.issuer)).inc()
        elif t == "lease.overdue":
            self.marked_overdue.labels(issuer=self._issuer(event.issuer)).inc()
        elif t == "approval.opened":
            self.approvals_opened.inc()
            aid = detail.get("approval_id")
            if isinstance(aid, str):
                self._opened[aid] = event.time
                while len(self._opened) > self._approval_memory:
                    self._opened.popitem(last=False)
        elif t in _APPROVAL_FINAL:
            outcome = _APPROVAL_FINAL[t]
            self.approvals.labels(outcome=outcome).inc()
            wait = self._approval_wait(event)
            if wait is not None:
                self.approval_wait.labels(outcome=outcome).observe(wait)
        elif t == "auth.failed":
            self.auth_failures.labels(kind=self._auth_kind(_auth_kind(event))).inc()
        elif t == "quota.refused":
            self.quota_refusals.labels(quota=self._quota(detail.get("quota"))).inc()

    def _approval_wait(self, event: AuditEvent) -> float | None:
        """Seconds the request waited: ``detail.wait_ms`` when the event carries it (any
        replica), else the time since this replica saw it opened; None when neither is known."""
        aid = event.detail.get("approval_id")
        opened = self._opened.pop(aid, None) if isinstance(aid, str) else None
        wait_ms = _number(event.detail.get("wait_ms"))
        if wait_ms is not None:
            return max(0.0, wait_ms / 1000)
        if opened is not None:
            return max(0.0, (event.time - opened).total_seconds())
        return None

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """One answered HTTP request. ``route`` must be the route template
        (``/v1/leases/{lease_id}``) or :data:`UNMATCHED`, never the raw path; anything else is
        counted as ``"other"``. ``seconds`` below 0 (or not a number) counts as 0."""
        label = self._route(route)
        self._child(self.http_requests, label, _status_class(status)).inc()
        s = _number(seconds)
        self._child(self.http_latency, label).observe(max(0.0, s) if s is not None else 0.0)

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: the values come through a label guard, so
        there are few of them, and a labelled child is never removed."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- scrape-time gauges --------------------------------------------------------------------

    def set_gauge_sources(
        self,
        *,
        leases_active: GaugeSource | None = None,
        overdue: GaugeSource | None = None,
        sink_lag: SinkLagSource | None = None,
        issuer_health: Callable[[], Mapping[str, bool]] | None = None,
        state_lost: Callable[[], bool] | None = None,
    ) -> None:
        """Register the callables read at every scrape (the async ones read shared state in
        Redis; ``issuer_health`` and ``state_lost`` are this replica's view). A source left as
        None keeps whatever was registered before."""
        if issuer_health is not None:
            self._issuer_health = issuer_health
        if state_lost is not None:
            self._state_lost = state_lost
        if leases_active is not None:
            self._leases_active = leases_active
        if overdue is not None:
            self._overdue = overdue
        if sink_lag is not None:
            self._sink_lag = sink_lag

    async def _read(self, source: str, fn: Callable[[], Awaitable[object]]) -> object | None:
        try:
            return await asyncio.wait_for(fn(), self.source_timeout)
        except Exception as exc:  # a failing source must not fail the scrape
            log.warning("metrics: gauge source %s failed: %s", source, type(exc).__name__)
            return None

    async def refresh(self) -> None:
        """Read every registered gauge source (concurrently, each bounded by the timeout). A
        source that fails, times out or returns something else than a number (a mapping of
        numbers for ``sink_lag``) is absent from the scrape and ``jit_gauge_source_up`` says
        0 — never a stale or zero value that would hide overdue leases."""
        sources: dict[str, Callable[[], Awaitable[object]]] = {}
        if self._leases_active is not None:
            sources["leases_active"] = self._leases_active
        if self._overdue is not None:
            sources["overdue"] = self._overdue
        if self._sink_lag is not None:
            sources["sink_lag"] = self._sink_lag
        names = list(sources)
        values = await asyncio.gather(*(self._read(n, sources[n]) for n in names))
        up: dict[str, bool] = {}
        scalars: dict[str, float] = {}
        lag: dict[str, float] | None = None
        for name, value in zip(names, values, strict=True):
            if name == "sink_lag":
                lag = self._lag(value)
                up[name] = lag is not None
            else:
                n = _number(value)
                if n is not None:
                    scalars[name] = n
                elif value is not None:
                    log.warning("metrics: gauge source %s returned a non-number", name)
                up[name] = n is not None
        health = dict(self._issuer_health()) if self._issuer_health is not None else {}
        if self._state_lost is not None:
            scalars["state_lost"] = 1.0 if self._state_lost() else 0.0
        # One assignment: a concurrent scrape sees the old set or the new one, never a mix.
        self.scraped.snapshot = _Snapshot(
            up=up,
            scalars=scalars,
            lag=lag or {},
            issuers={self._issuer(n): ok for n, ok in health.items()},
        )

    def _lag(self, value: object) -> dict[str, float] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            log.warning("metrics: gauge source sink_lag returned a non-mapping")
            return None
        totals: dict[str, float] = {}
        for sink, behind in value.items():
            n = _number(behind)
            if n is None:
                log.warning("metrics: gauge source sink_lag returned a non-number")
                return None
            label = self._sink(sink)
            totals[label] = totals.get(label, 0.0) + n
        return totals

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The body and content type for ``GET /metrics``. ``accept`` is the request's Accept
        header: content negotiation as prometheus_client does it (OpenMetrics when asked for,
        else the classic text format 0.0.4)."""
        await self.refresh()
        encoder, content_type = choose_encoder(accept or "")
        registry = self.registry
        if self._multiprocess_dir is not None:  # every worker's values, and this one's gauges
            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
            registry.register(self.scraped)
        return encoder(_WithoutCreated(registry)), content_type

    def label_values(self) -> dict[str, set[str]]:
        """Every label value currently exported, by label name (for tests and debugging)."""
        out: dict[str, set[str]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                for k, v in sample.labels.items():
                    out.setdefault(k, set()).add(v)
        return out


class _Snapshot(NamedTuple):
    up: dict[str, bool]
    scalars: dict[str, float]
    lag: dict[str, float]
    issuers: dict[str, bool] = {}  # noqa: RUF012 (a NamedTuple default, never mutated)


class _ScrapeGauges(Collector):
    """The gauges read at scrape time. Unlike a prometheus_client Gauge, a value that could
    not be read is absent (not the last value, not 0)."""

    def __init__(self) -> None:
        self.snapshot = _Snapshot(up={}, scalars={}, lag={}, issuers={})

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        for name, source, help_text in (
            (
                "jit_leases_active",
                "leases_active",
                "Live leases (minting, active or revoking) across all replicas, read at scrape "
                "time.",
            ),
            (
                "jit_leases_overdue",
                "overdue",
                "Leases currently flagged overdue across all replicas, read at scrape time.",
            ),
        ):
            g = GaugeMetricFamily(name, help_text)
            if source in snap.scalars:
                g.add_metric([], snap.scalars[source])
            yield g
        issuer_up = GaugeMetricFamily(
            "jit_issuer_up",
            "1 while this replica sees the issuer's backend healthy, 0 while it is degraded "
            "(its requests get 503; the other issuers are unaffected).",
            labels=["issuer"],
        )
        for issuer, ok in sorted(snap.issuers.items()):
            issuer_up.add_metric([issuer], 1.0 if ok else 0.0)
        yield issuer_up
        if "state_lost" in snap.scalars:
            lost = GaugeMetricFamily(
                "jit_state_lost",
                "1 while this replica refuses to serve because Redis lost the broker's state "
                "(until `jit state accept`).",
            )
            lost.add_metric([], snap.scalars["state_lost"])
            yield lost
        lag = GaugeMetricFamily(
            "jit_audit_sink_lag_records",
            "Audit records not yet delivered to a sink, read at scrape time.",
            labels=["sink"],
        )
        for sink, n in sorted(snap.lag.items()):
            lag.add_metric([sink], n)
        yield lag
        up = GaugeMetricFamily(
            "jit_gauge_source_up",
            "1 when this scrape read the gauge source, 0 when it failed or timed out.",
            labels=["source"],
        )
        for source, ok in sorted(snap.up.items()):
            up.add_metric([source], 1.0 if ok else 0.0)
        yield up


class _WithoutCreated:
    """The registry without the ``*_created`` samples (one extra series per counter and
    histogram child that the text format would otherwise carry; nothing here uses them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family


def _auth_kind(event: AuditEvent) -> str:
    via = event.detail.get("via")
    if via == "slack":
        return "slack"
    if "client_id" in event.detail:
        return "client"
    return "token"


class MetricsSink:
    """An audit sink (``broker.audit.AuditSink``) that feeds :class:`Metrics`. Never raises:
    metrics must not break the audit path."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def write(self, events: Sequence[AuditEvent]) -> None:
        for event in events:
            try:
                self.metrics.observe_event(event)
            except Exception:  # a metrics bug must never cost an audit record or a request
                log.exception("metrics: could not count a %s event", event.type)

    async def aclose(self) -> None:
        return None
