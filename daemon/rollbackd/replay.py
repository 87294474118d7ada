"""Replaying the decision engine over history: shared by ``rollbackd test`` and ``backtest``.

The replay is the live loop with its I/O swapped for history. Every ``step`` seconds of
simulated time it measures every rule the way the loop does (``measure.measure`` at that
moment, or the same readings cut from range queries fetched in chunks), reads each
service's revision from a *schedule*, takes a probe sample from a probe schedule, and
hands all of it to the very same ``Decider`` the daemon uses. The plan that comes back is
"carried out" on a simulated clock:

- a rollback order is finished at once, as executed (in shadow mode the Decider already
  records it as would_execute and gives no order), through ``Decider.rollback_done``;
- verification after a rollback passes when the schedule shows the rollback target
  running and none of the incident's rules is pending or firing, and fails at the
  ``verify_timeout`` deadline otherwise. HTTP and query checks are not replayed: there
  is no history of them;
- pages are collected, nothing is sent.

The replayed history does not change after a would-be rollback. A backtest shows what
rollbackd would have *decided*; after deciding to roll back it keeps seeing what really
happened next (the bad revision still running, unless people rolled it back then), so
later decisions read as "had the rollback not taken effect". Probe rules have no
history in Prometheus: a backtest reports them as skipped (``probe_rules``), while a
rule unit test feeds them from its probe schedule.

``Replay`` ticks from ``start`` (inclusive) to ``end`` (inclusive). ``report_from`` lets
a backtest warm up (last known good needs ``bake_time`` of history) without reporting
the warm-up's events.
"""

from __future__ import annotations

import asyncio
import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from rollbackd.config import LoadedRule, Rule, Safety, Settings
from rollbackd.decide import Decider, Observation, Page, Plan, RevisionReading, TickContext
from rollbackd.measure import Measurement, measure
from rollbackd.rules import STATES, Group, Reading, plan_groups, readings_from, render
from rollbackd.signals.prometheus import (
    PrometheusClient,
    PrometheusUnavailable,
    QueryError,
)
from rollbackd.state import DaemonState

log = structlog.get_logger("rollbackd.replay")

__all__ = [
    "InstantSignals",
    "RangeSignals",
    "Replay",
    "ReplayEvent",
    "ReplayResult",
    "ReplaySetup",
    "Trace",
    "revision_at",
]

MAX_POINTS = 10_000  # Prometheus refuses range queries of more than 11,000 points a series
NO_DATA_CODES: tuple[str | None, ...] = (
    None,
    "empty",
    "nan",
    "low_traffic",
    "error",
    "no_baseline",
    "no_samples",
)
Schedule = Mapping[str, Sequence[tuple[float, str]]]
ProbeSchedule = Mapping[str, Sequence[bool | None]]


# ----------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class ReplaySetup:
    """What a replay needs from a configuration, without the live plug-ins."""

    rules: Sequence[LoadedRule]
    services: Mapping[str, str]  # name -> PromQL selector
    safety: Safety
    mode: Literal["shadow", "enforce"] = "shadow"
    verify_timeout: float = 300.0
    service_label: str = "job"

    @classmethod
    def from_settings(cls, settings: Settings, rules: Sequence[LoadedRule]) -> ReplaySetup:
        return cls(
            rules=rules,
            services={s.name: settings.selector_of(s) for s in settings.services},
            safety=settings.safety,
            mode=settings.mode,
            verify_timeout=settings.verify.timeout,
            service_label=settings.service_label,
        )

    @property
    def query_rules(self) -> list[Rule]:
        return [r.rule for r in self.rules if r.rule.query]

    @property
    def probe_rules(self) -> list[Rule]:
        return [r.rule for r in self.rules if r.rule.probe]


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ReplayEvent:
    """An event the Decider planned, stamped with the simulated time it happened."""

    at: float
    name: str
    fields: dict[str, Any]


@dataclass
class Trace:
    """One rule for one service at every reported tick: what the Decider saw and did.

    ``values`` is NaN where there was no data (``no_data`` says why, as an index into
    ``NO_DATA_CODES``); ``thresholds`` is the threshold in force (for baseline rules the
    baseline times the ratio), NaN before any; ``states`` indexes ``rules.STATES``.
    """

    values: array[float] = field(default_factory=lambda: array("d"))
    thresholds: array[float] = field(default_factory=lambda: array("d"))
    baselines: array[float] = field(default_factory=lambda: array("d"))
    states: bytearray = field(default_factory=bytearray)
    no_data: bytearray = field(default_factory=bytearray)

    def reading(self, index: int) -> Reading:
        """The reading of tick ``index`` as the Decider judged it."""
        value = self.values[index]
        if math.isnan(value):
            code = NO_DATA_CODES[self.no_data[index]] or "empty"
            return Reading(no_data=code)  # type: ignore[arg-type]
        return Reading(value=value)

    def state(self, index: int) -> str:
        return STATES[self.states[index]]


@dataclass
class ReplayResult:
    start: float
    end: float
    step: float
    times: list[float] = field(default_factory=list)  # reported ticks
    events: list[ReplayEvent] = field(default_factory=list)
    pages: list[tuple[float, Page]] = field(default_factory=list)
    traces: dict[tuple[str, str], Trace] = field(default_factory=dict)
    state: DaemonState = field(default_factory=DaemonState)
    initial_states: dict[tuple[str, str], str] = field(default_factory=dict)  # at ``start``
    queries: int = 0

    def named(self, name: str) -> list[ReplayEvent]:
        return [e for e in self.events if e.name == name]

    def index_of(self, at: float) -> int | None:
        """The reported tick at ``at`` (within a millisecond), or None."""
        if not self.times:
            return None
        index = round((at - self.times[0]) / self.step)
        if 0 <= index < len(self.times) and abs(self.times[index] - at) < 1e-3:
            return index
        return None


# ----------------------------------------------------------------------------- sources


def revision_at(schedule: Sequence[tuple[float, str]], at: float) -> str | None:
    """The revision a schedule names at ``at``: the last entry at or before it."""
    current = None
    for since, revision in schedule:
        if since <= at + 1e-9:
            current = revision
        else:
            break
    return current


class Signals(Protocol):
    """Where a replay's rule readings come from."""

    async def measure(self, at: float) -> Measurement: ...

    async def raw(self, rule: Rule, group: Group, service: str, at: float) -> float | None: ...


class InstantSignals:
    """The loop's own measurement: ``measure(..., at=t)``, one instant query per rule."""

    def __init__(
        self, prometheus: PrometheusClient, rules: Sequence[Rule], groups: Sequence[Group]
    ) -> None:
        self.prometheus = prometheus
        self.rules = list(rules)
        self.groups = list(groups)

    async def measure(self, at: float) -> Measurement:
        return await measure(self.prometheus, self.rules, self.groups, at=at)

    async def raw(self, rule: Rule, group: Group, service: str, at: float) -> float | None:
        return await _raw_instant(self.prometheus, rule, group, service, at)


async def _raw_instant(
    prometheus: PrometheusClient, rule: Rule, group: Group, service: str, at: float
) -> float | None:
    """The rule's own query (no ``min_traffic``) at ``at``, as the loop reads baselines."""
    assert rule.query is not None
    try:
        series = await prometheus.query(
            render(rule.query, selector=group.selector, keys=group.keys), at=at
        )
    except QueryError:
        return None
    for s in series:
        if group.service_of(s.labels) == service and not math.isnan(s.value):
            return s.value
    return None


@dataclass
class _Chunk:
    first: float
    count: int
    # (rule, group) -> per step: (labels, value) of each series, as readings_from takes them
    series: dict[tuple[str, int], list[list[tuple[dict[str, str], float]]]]
    traffic: dict[tuple[str, int], list[set[str]]]
    errors: dict[tuple[str, int], QueryError]


class RangeSignals:
    """The same readings as ``measure(..., at=t)``, cut from range queries.

    A range query evaluates its expression at ``start + k * step`` exactly as an instant
    query at each of those times would, so one query per rule (and filter) per group per
    chunk replaces a query per tick. ``measure`` must be called at those times, in
    order; the readings are built by the same ``readings_from`` the loop uses.
    """

    def __init__(
        self,
        prometheus: PrometheusClient,
        rules: Sequence[Rule],
        groups: Sequence[Group],
        *,
        start: float,
        end: float,
        step: float,
        chunk: float = 86400.0,
        progress: Callable[[float, float], None] | None = None,
    ) -> None:
        self.prometheus = prometheus
        self.rules = [r for r in rules if r.query]
        self.groups = list(groups)
        self.start, self.end, self.step = start, end, step
        self.chunk_steps = max(1, min(MAX_POINTS, int(chunk // step)))
        self.progress = progress
        self._chunk: _Chunk | None = None

    async def measure(self, at: float) -> Measurement:
        chunk = await self._chunk_for(at)
        index = round((at - chunk.first) / self.step)
        out = Measurement(attempted=len(self.rules) * len(self.groups))
        unavailable = 0
        for rule in self.rules:
            for g, group in enumerate(self.groups):
                key = (rule.name, g)
                error = chunk.errors.get(key)
                if error is not None:
                    out.failed += 1
                    unavailable += isinstance(error, PrometheusUnavailable)
                    readings = {
                        s: Reading(no_data="error", detail=error.reason) for s in group.services
                    }
                else:
                    traffic = chunk.traffic[key][index] if rule.min_traffic else None
                    readings = readings_from(group, chunk.series[key][index], traffic=traffic)
                for service, reading in readings.items():
                    out.readings.setdefault(service, {})[rule.name] = reading
        out.prometheus_down = bool(out.attempted) and unavailable == out.attempted
        return out

    async def raw(self, rule: Rule, group: Group, service: str, at: float) -> float | None:
        chunk = self._chunk
        g = self.groups.index(group)
        if chunk is not None and (rule.name, g) in chunk.series:
            index = round((at - chunk.first) / self.step)
            if 0 <= index < chunk.count:
                for labels, value in chunk.series[(rule.name, g)][index]:
                    if group.service_of(labels) == service and not math.isnan(value):
                        return value
                return None
        # The previous chunk is gone: ask for that one moment, as the loop would.
        return await _raw_instant(self.prometheus, rule, group, service, at)

    async def _chunk_for(self, at: float) -> _Chunk:
        chunk = self._chunk
        if chunk is not None:
            index = round((at - chunk.first) / self.step)
            if 0 <= index < chunk.count:
                return chunk
        first = at
        remaining = round((self.end - first) / self.step) + 1
        count = max(1, min(self.chunk_steps, remaining))
        self._chunk = await self._fetch(first, count)
        if self.progress is not None:
            self.progress(first + (count - 1) * self.step, self.end)
        return self._chunk

    async def _fetch(self, first: float, count: int) -> _Chunk:
        last = first + (count - 1) * self.step
        chunk = _Chunk(first, count, {}, {}, {})

        async def one(rule: Rule, g: int, group: Group) -> None:
            key = (rule.name, g)
            assert rule.query is not None
            promql = render(rule.query, selector=group.selector, keys=group.keys)
            queries = [promql]
            if rule.min_traffic:
                queries.append(render(rule.min_traffic, selector=group.selector, keys=group.keys))
            try:
                result, *passing = await asyncio.gather(
                    *(
                        self.prometheus.query_range(q, start=first, end=last, step=self.step)
                        for q in queries
                    )
                )
            except QueryError as exc:
                log.warning("query_failed", rule=rule.name, reason=exc.reason, at=first)
                chunk.errors[key] = exc
                return
            if passing:
                traffic: list[set[str]] = [set() for _ in range(count)]
                for labels, points in passing[0]:
                    name = group.service_of(labels)
                    if name is None:
                        continue
                    for ts, _value in points:
                        index = round((ts - first) / self.step)
                        if 0 <= index < count:
                            traffic[index].add(name)
                chunk.traffic[key] = traffic
            per_step: list[list[tuple[dict[str, str], float]]] = [[] for _ in range(count)]
            for labels, points in result:
                for ts, value in points:
                    index = round((ts - first) / self.step)
                    if 0 <= index < count:
                        per_step[index].append((labels, value))
            chunk.series[key] = per_step

        await asyncio.gather(
            *(one(rule, g, group) for rule in self.rules for g, group in enumerate(self.groups))
        )
        return chunk


# ----------------------------------------------------------------------------- the replay


class Replay:
    """The Decider driven over a stretch of history on a simulated clock.

    Example::

        replay = Replay(setup, signals=InstantSignals(client, rules, groups),
                        schedule={"api": [(t0, "v1"), (t0 + 900, "v2")]})
        result = await replay.run(start=t0, end=t0 + 3600, step=15)
    """

    def __init__(
        self,
        setup: ReplaySetup,
        *,
        signals: Signals,
        schedule: Schedule,
        probes: ProbeSchedule | None = None,
        record: bool = False,
        unknown_revision: str | None = None,
    ) -> None:
        self.setup = setup
        self.signals = signals
        self.schedule = schedule
        self.probes = probes or {}
        self.record = record
        self.unknown_revision = unknown_revision
        self.groups = groups_of(setup)
        self.group_of = {name: g for g in self.groups for name in g.services}
        self.rules = [r.rule for r in setup.rules]

    async def run(
        self,
        *,
        start: float,
        end: float,
        step: float,
        report_from: float | None = None,
    ) -> ReplayResult:
        """Tick every ``step`` from ``start`` to ``end``; report events from ``report_from``."""
        decider = Decider(self.setup.rules, safety=self.setup.safety, interval=step)
        state = DaemonState()
        reported_from = report_from if report_from is not None else start
        result = ReplayResult(start=reported_from, end=end, step=step, state=state)
        ticks = math.floor((end - start) / step + 1e-9) + 1
        for index in range(ticks):
            now = start + index * step
            reported = now >= result.start - 1e-9
            if reported and not result.times:
                # Where the warm-up left each rule, for spans that begin before the range.
                result.initial_states = {
                    (name, rule.name): state.service(name).rule(rule.name).state
                    for name in self.setup.services
                    for rule in self.rules
                }
            plan = await self._tick(decider, state, now, index, step)
            if reported:
                result.times.append(now)
                self._collect(result, plan, now)
                if self.record:
                    self._trace(result, state, now)
        return result

    async def _tick(
        self, decider: Decider, state: DaemonState, now: float, index: int, step: float
    ) -> Plan:
        measurement = await self.signals.measure(now)
        revisions = {name: self._revision(name, now) for name in self.setup.services}
        baselines = await self._history_baselines(state, revisions, fresh=2 * step)
        observations = {
            name: Observation(
                revision=revisions[name],
                readings=measurement.readings.get(name, {}),
                probe_ok=_probe(self.probes.get(name), index),
                history_baselines=baselines.get(name, {}),
            )
            for name in self.setup.services
        }
        down = measurement.prometheus_down
        ctx = TickContext(now=now, mode=self.setup.mode, prometheus_down=down)
        plan = decider.tick(state, observations, ctx)
        self._verify(decider, state, now, plan)
        for order in plan.rollbacks:
            # The rollback "finishes" at once; history carries on as it really was.
            decider.rollback_done(
                state,
                order,
                now=now,
                mode=self.setup.mode,
                error=None,
                verify_timeout=self.setup.verify_timeout,
                plan=plan,
            )
        return plan

    def _revision(self, name: str, now: float) -> RevisionReading:
        revision = revision_at(self.schedule.get(name, ()), now)
        if revision is None:
            revision = self.unknown_revision
        if revision is None:
            return RevisionReading(None, error="no revision known at this time")
        return RevisionReading(revision)

    async def _history_baselines(
        self, state: DaemonState, revisions: Mapping[str, RevisionReading], *, fresh: float
    ) -> dict[str, dict[str, float]]:
        """Baselines from history for rules without a fresh value, as the loop reads them.

        Mirrors ``Daemon._history_baselines``: only for services whose revision is
        changing in this tick, and only for query rules the Decider has no value for
        from the last two ticks; the rule's own query at the last tick before the change.
        """
        found: dict[str, dict[str, float]] = {}
        for name, reading in revisions.items():
            svc = state.services.get(name)
            if svc is None or svc.revision is None or reading.id in (None, svc.revision):
                continue
            seen = svc.revision_seen_at
            if seen is None:
                continue
            for rule in self.rules:
                status = svc.rules.get(rule.name)
                last = status.last_value_at if status is not None else None
                if rule.query and (last is None or last < seen - fresh):
                    value = await self.signals.raw(rule, self.group_of[name], name, seen)
                    if value is not None:
                        found.setdefault(name, {})[rule.name] = value
        return found

    def _verify(self, decider: Decider, state: DaemonState, now: float, plan: Plan) -> None:
        for name, svc in state.services.items():
            ver = svc.verification
            if ver is None or name not in self.setup.services:
                continue
            running = revision_at(self.schedule.get(name, ()), now)
            still = [r for r in ver.rules if svc.rule(r).state in ("firing", "pending")]
            if running == ver.to_version and not still:
                detail = f"replayed: {running} running, rules calm"
                decider.verification_done(
                    state, name, passed=True, now=now, detail=detail, plan=plan
                )
            elif now >= ver.deadline:
                if running != ver.to_version:
                    detail = f"replayed: history shows {running} still running"
                else:
                    detail = "replayed: still firing: " + ", ".join(still)
                decider.verification_done(
                    state, name, passed=False, now=now, detail=detail, plan=plan
                )

    def _collect(self, result: ReplayResult, plan: Plan, now: float) -> None:
        for event in plan.events:
            result.events.append(ReplayEvent(now, event.name, dict(event.fields)))
        for page in plan.pages:
            result.pages.append((now, page))

    def _trace(self, result: ReplayResult, state: DaemonState, now: float) -> None:
        for name in self.setup.services:
            svc = state.service(name)
            for rule in self.rules:
                trace = result.traces.get((name, rule.name))
                if trace is None:
                    trace = result.traces[(name, rule.name)] = Trace()
                status = svc.rule(rule.name)
                fresh = status.last_value_at is not None and abs(status.last_value_at - now) < 1e-6
                value = status.last_value if fresh and status.last_value is not None else math.nan
                trace.values.append(value)
                trace.thresholds.append(_nan(status.threshold))
                trace.baselines.append(_nan(status.baseline))
                trace.states.append(STATES.index(status.state))
                code = status.no_data if status.no_data in NO_DATA_CODES else "empty"
                trace.no_data.append(NO_DATA_CODES.index(code))


def groups_of(setup: ReplaySetup) -> list[Group]:
    return plan_groups(dict(setup.services), service_label=setup.service_label)


def _probe(samples: Sequence[bool | None] | None, index: int) -> bool | None:
    if samples is None or index >= len(samples):
        return None
    return samples[index]


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
