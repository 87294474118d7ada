"""Rule readings from Prometheus: one query per rule per service group.

Shared by the live loop (``at=None``: now) and by ``rollbackd test`` and ``backtest``
(``at``: a moment in history), so all three read signals the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from rollbackd.config import Rule
from rollbackd.rules import Group, Reading, readings_from, render
from rollbackd.signals.prometheus import PrometheusClient, PrometheusUnavailable, QueryError

log = structlog.get_logger("rollbackd.measure")


@dataclass
class Measurement:
    """Readings per service per rule, and whether Prometheus was reachable at all."""

    readings: dict[str, dict[str, Reading]] = field(default_factory=dict)
    prometheus_down: bool = False
    attempted: int = 0
    failed: int = 0


async def measure(
    prometheus: PrometheusClient,
    rules: Sequence[Rule],
    groups: Sequence[Group],
    *,
    at: float | None = None,
) -> Measurement:
    """Run every query rule for every group (and its ``min_traffic`` filter)."""
    jobs = [(rule, group) for rule in rules if rule.query for group in groups]
    results = await asyncio.gather(
        *(measure_one(prometheus, rule, group, at=at) for rule, group in jobs)
    )
    out = Measurement(attempted=len(jobs))
    unavailable = 0
    for (rule, _group), (readings, failure) in zip(jobs, results, strict=True):
        if failure is not None:
            out.failed += 1
            unavailable += isinstance(failure, PrometheusUnavailable)
        for service, reading in readings.items():
            out.readings.setdefault(service, {})[rule.name] = reading
    out.prometheus_down = bool(jobs) and unavailable == len(jobs)
    return out


async def measure_one(
    prometheus: PrometheusClient, rule: Rule, group: Group, *, at: float | None = None
) -> tuple[dict[str, Reading], QueryError | None]:
    assert rule.query is not None
    promql = render(rule.query, selector=group.selector, keys=group.keys)
    try:
        traffic: set[str] | None = None
        if rule.min_traffic:
            filt = render(rule.min_traffic, selector=group.selector, keys=group.keys)
            passing = await prometheus.query(filt, at=at)
            traffic = {s for s in (group.service_of(x.labels) for x in passing) if s}
        series = await prometheus.query(promql, at=at)
    except QueryError as exc:
        log.warning("query_failed", rule=rule.name, reason=exc.reason, services=len(group.services))
        return {s: Reading(no_data="error", detail=exc.reason) for s in group.services}, exc
    readings = readings_from(group, ((s.labels, s.value) for s in series), traffic=traffic)
    for service, reading in readings.items():
        if reading.no_data is not None:
            log.debug("no_data", service=service, rule=rule.name, reason=reading.no_data)
    return readings, None
