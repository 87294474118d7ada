"""Generated Prometheus history: weeks of services with deploys, outages and quiet nights.

Used by the backtest tests and ``bench/backtest_bench.py``. Counters are integrated
exactly (requests per second times seconds), so they stay monotonic across deploys and
2-hour windows. Each service exposes, with ``job="<name>"``:

- ``http_requests_total{code="200"|"500"}``, the shipped rules' counter;
- ``http_request_duration_seconds_bucket{le=...}``: 90 % of requests in the bucket of
  the version's latency, 10 % one bucket slower, so p95 sits inside the slower bucket;
- ``app_build_info{version=...}`` = 1 for the running version.

Traffic follows the day: ``DAY_RPS`` from 08:00 to 20:00 UTC, ``NIGHT_RPS`` otherwise,
with a gentle three-hour wave. Nights fail ``NIGHT_ERROR_RATIO`` of their few requests,
which a rule with ``min_traffic`` must ignore.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rollbackd.backfill import BLOCK_SECONDS, SeriesKey

BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)
DAY_RPS = 20.0
NIGHT_RPS = 0.3
NIGHT_ERROR_RATIO = 0.5
BASE_ERROR_RATIO = 0.005
MONDAY = datetime(2024, 3, 4, tzinfo=UTC).timestamp()  # 2024-03-04 00:00 UTC, a Monday
HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class Version:
    """How a version serves: share of 500s and typical latency (seconds)."""

    error_ratio: float = BASE_ERROR_RATIO
    latency: float = 0.04


@dataclass
class ServicePlan:
    """One service's week: deploys ``(time, version)`` and outages ``(from, to, ratio)``."""

    name: str
    deploys: list[tuple[float, str]]
    versions: dict[str, Version] = field(default_factory=dict)
    outages: list[tuple[float, float, float]] = field(default_factory=list)

    def version_at(self, at: float) -> str:
        current = self.deploys[0][1]
        for since, version in self.deploys:
            if since <= at:
                current = version
        return current

    def behaviour(self, at: float) -> tuple[float, float, float]:
        """Requests per second, error ratio and latency in force at ``at``."""
        version = self.versions.get(self.version_at(at), Version())
        hour = datetime.fromtimestamp(at, UTC).hour
        day = 8 <= hour < 20
        rps = (DAY_RPS if day else NIGHT_RPS) * (1 + 0.1 * math.sin(2 * math.pi * at / (3 * HOUR)))
        errors = version.error_ratio if day else max(version.error_ratio, NIGHT_ERROR_RATIO)
        for first, last, ratio in self.outages:
            if first <= at < last:
                errors = max(errors, ratio)
        return rps, errors, version.latency


def week_of(name: str, *, start: float = MONDAY) -> ServicePlan:
    """A quiet service: v1 all week, no incidents (the benchmark's filler)."""
    return ServicePlan(name, [(start, "v1")])


def generate(
    plans: Sequence[ServicePlan],
    *,
    start: float,
    end: float,
    resolution: float = 60.0,
) -> Iterator[dict[SeriesKey, list[tuple[float, float]]]]:
    """Samples every ``resolution`` seconds, one mapping per promtool 2-hour window."""
    totals = {p.name: _Totals() for p in plans}
    keys = {p.name: _keys(p.name) for p in plans}
    window: dict[SeriesKey, list[tuple[float, float]]] = {}
    current = int(start // BLOCK_SECONDS)
    at = start
    while at <= end:
        if int(at // BLOCK_SECONDS) != current:
            yield window
            window, current = {}, int(at // BLOCK_SECONDS)
        for plan in plans:
            _sample(plan, at, resolution, totals[plan.name], keys[plan.name], window)
        at += resolution
    if window:
        yield window


@dataclass
class _Totals:
    ok: float = 0.0
    err: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(BUCKETS) + 1))


def _keys(name: str) -> dict[str, SeriesKey]:
    keys = {
        "ok": SeriesKey.of("http_requests_total", {"job": name, "code": "200"}),
        "err": SeriesKey.of("http_requests_total", {"job": name, "code": "500"}),
    }
    for index, bound in enumerate((*BUCKETS, math.inf)):
        le = "+Inf" if math.isinf(bound) else f"{bound:g}"
        keys[f"le{index}"] = SeriesKey.of(
            "http_request_duration_seconds_bucket", {"job": name, "le": le}
        )
    return keys


def _sample(
    plan: ServicePlan,
    at: float,
    resolution: float,
    total: _Totals,
    keys: dict[str, SeriesKey],
    window: dict[SeriesKey, list[tuple[float, float]]],
) -> None:
    rps, errors, latency = plan.behaviour(at - resolution)
    requests = rps * resolution
    total.ok += requests * (1 - errors)
    total.err += requests * errors
    home = next((i for i, b in enumerate(BUCKETS) if latency <= b), len(BUCKETS))
    total.buckets[home] += 0.9 * requests
    total.buckets[min(home + 1, len(BUCKETS))] += 0.1 * requests
    window.setdefault(keys["ok"], []).append((at, round(total.ok, 3)))
    window.setdefault(keys["err"], []).append((at, round(total.err, 3)))
    cumulative = 0.0
    for index, count in enumerate(total.buckets):
        cumulative += count
        window.setdefault(keys[f"le{index}"], []).append((at, round(cumulative, 3)))
    info = SeriesKey.of("app_build_info", {"job": plan.name, "version": plan.version_at(at)})
    window.setdefault(info, []).append((at, 1.0))
