"""``rollbackd backtest``: what the configured rules would have done over real history.

The configured rules are replayed over a Prometheus's history by ``replay.Replay``, the
live ``Decider`` on a simulated clock, with the same ``for``, baselines, attribution and
guards. Signals are cut from range queries fetched a chunk at a time (a day, or fewer
steps than Prometheus's 11,000-point limit), so a week at 15 s costs a few queries per
rule rather than one per tick.

Revision changes come from a metric named in the configuration::

    backtest:
      revision_metric: app_build_info   # one series per running revision
      revision_label: version

For every step the service's revision is the one whose series appeared most recently
among those present (a rollout shows both; the newer one is what was deployed, as a
Deployment's revision changes when its rollout starts); when none is present the last
one carries on, and a service's first revision in the range is taken to have run since
the start. Without ``revision_metric`` every service runs one unknown revision, so no
firing is ever deploy-related.

Limits, stated where users look (the README's "Tuning rules" repeats them):

- probe rules (``probe: health``) have no history in Prometheus: they are reported as
  skipped;
- after a would-be rollback the replay keeps seeing the real history (see ``replay``);
- revisions come only from the metric, not from Kubernetes ReplicaSets or Cloud Run
  revision lists;
- the replay starts ``bake_time`` before ``--start`` so a last known good exists; what
  happens in that warm-up is not reported but does count (a cooldown, the budget);
- ``--step`` coarser than the daemon's interval approximates it: ``for`` is counted in
  steps and the attribution tolerance is one step.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rollbackd.config import (
    ConfigError,
    LoadedRule,
    Rule,
    Settings,
    format_duration,
    parse_duration,
)
from rollbackd.record import utc_iso
from rollbackd.replay import (
    MAX_POINTS,
    RangeSignals,
    Replay,
    ReplayResult,
    ReplaySetup,
    groups_of,
)
from rollbackd.rules import Group, RuleStatus, judge, step
from rollbackd.secrets import SecretError
from rollbackd.signals.prometheus import PrometheusClient, QueryError

__all__ = [
    "BacktestResult",
    "RuleSummary",
    "Suggestion",
    "main",
    "parse_time",
    "revision_schedule",
    "run_backtest",
    "suggest_grid",
    "summarize",
]

DEFAULT_CHUNK = 86400.0
UNKNOWN_REVISION = "unknown"
SKIPPED_PROBE = "probe rules have no history in Prometheus"

Progress = Callable[[str, float], None]  # (phase, fraction done)

# ----------------------------------------------------------------------------- times

_RELATIVE = re.compile(r"(?:now)?\s*-\s*(.+)")


def parse_time(text: str, *, now: float) -> float:
    """Unix seconds from ``now``, ``-7d``/``now-7d``, unix seconds, or RFC 3339 / ISO 8601."""
    text = text.strip()
    if text == "now":
        return now
    relative = _RELATIVE.fullmatch(text)
    if relative is not None and not re.fullmatch(r"-?\d+(\.\d+)?", text):
        return now - parse_duration(relative.group(1).strip())
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"'{text}' is not a time: use RFC 3339 (2024-03-04T00:00:00Z), unix seconds, "
            "now, or -7d"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# ----------------------------------------------------------------------------- revisions


async def revision_schedule(
    prometheus: PrometheusClient,
    groups: Sequence[Group],
    *,
    metric: str,
    label: str,
    start: float,
    end: float,
    step: float,
    chunk: float = DEFAULT_CHUNK,
    progress: Progress | None = None,
) -> dict[str, list[tuple[float, str]]]:
    """Each service's revision changes over ``start..end``, read from ``metric``.

    One range query per group per chunk: ``max by (<keys>, <label>) (metric{selector})``.
    """
    present_since: dict[tuple[str, str], float] = {}
    current: dict[str, str] = {}
    schedule: dict[str, list[tuple[float, str]]] = {}
    steps = max(1, min(MAX_POINTS, int(chunk // step)))
    first = start
    while first <= end + 1e-9:
        last = min(end, first + (steps - 1) * step)
        count = round((last - first) / step) + 1
        seen: list[dict[str, set[str]]] = [{} for _ in range(count)]
        for group in groups:
            keys = ", ".join([*group.keys, label])
            promql = f"max by ({keys}) ({metric}{{{group.selector}}})"
            for labels, points in await prometheus.query_range(
                promql, start=first, end=last, step=step
            ):
                service = group.service_of(labels)
                revision = labels.get(label)
                if service is None or not revision:
                    continue
                for ts, _value in points:
                    index = round((ts - first) / step)
                    if 0 <= index < count:
                        seen[index].setdefault(service, set()).add(revision)
        for index in range(count):
            now = first + index * step
            _advance(seen[index], now, present_since, current, schedule, start)
        if progress is not None:
            progress("revisions", (last - start) / max(end - start, step))
        first = last + step
    return schedule


def _advance(
    seen: dict[str, set[str]],
    now: float,
    present_since: dict[tuple[str, str], float],
    current: dict[str, str],
    schedule: dict[str, list[tuple[float, str]]],
    start: float,
) -> None:
    """One step of the "newest present revision wins" rule."""
    for key in [k for k in present_since if k[1] not in seen.get(k[0], ())]:
        del present_since[key]
    for service, revisions in seen.items():
        for revision in revisions:
            present_since.setdefault((service, revision), now)
        newest = max(revisions, key=lambda r: (present_since[(service, r)], r))
        if current.get(service) != newest:
            # The first revision seen is taken to have run since the start.
            since = now if service in current else start
            current[service] = newest
            schedule.setdefault(service, []).append((since, newest))


async def target_schedules(
    settings: Settings, services: Sequence[str], *, start: float, end: float
) -> tuple[dict[str, list[tuple[float, str]]], list[str]]:
    """Revision histories the targets keep (Kubernetes ReplicaSets, Cloud Run revisions).

    A revision counts from its creation until the next one's: the targets date deploys,
    not traffic shifts, so rollbacks made in the range are not in these schedules.
    """
    from rollbackd.targets import build_target
    from rollbackd.targets.base import TargetError

    wanted = set(services)
    schedule: dict[str, list[tuple[float, str]]] = {}
    warnings: list[str] = []
    for service in settings.services:
        if service.name not in wanted or service.target.kind in ("exec", "github-actions"):
            continue
        try:
            target = build_target(service)
        except Exception as exc:  # a target that cannot be built here only loses history
            warnings.append(f"{service.name}: no revision history from the target: {exc}")
            continue
        try:
            history = await target.revision_history()  # type: ignore[attr-defined]
        except TargetError as exc:
            warnings.append(f"{service.name}: no revision history from the target: {exc}")
            continue
        finally:
            await target.aclose()
        schedule_of = history_schedule(history, start=start, end=end)
        if schedule_of:
            schedule[service.name] = schedule_of
    return schedule, warnings


def history_schedule(
    history: Sequence[tuple[float, str]], *, start: float, end: float
) -> list[tuple[float, str]]:
    """The revision running at ``start`` and every one created until ``end``."""
    before = [revision for at, revision in history if at <= start]
    schedule = [(start, before[-1])] if before else []
    schedule.extend((at, revision) for at, revision in history if start < at <= end)
    return schedule


# ----------------------------------------------------------------------------- running


@dataclass
class RuleSummary:
    rule: str
    impact: str
    firings: int = 0
    pending_seconds: float = 0.0
    firing_seconds: float = 0.0
    rollbacks: int = 0
    pages: int = 0
    blocked: int = 0
    skipped: str | None = None


@dataclass
class BacktestResult:
    setup: ReplaySetup
    replay: ReplayResult
    schedule: dict[str, list[tuple[float, str]]]
    start: float
    end: float
    step: float
    skipped: dict[str, str] = field(default_factory=dict)  # rule -> why
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time

    @property
    def query_rules(self) -> list[Rule]:
        return self.setup.query_rules

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision in the range, as rows for tables and JSON."""
        rows = []
        for event in self.replay.named("decision"):
            f = event.fields
            rows.append(
                {
                    "ts": utc_iso(event.at),
                    "at": event.at,
                    "service": f.get("service"),
                    "rule": f.get("rule"),
                    "impact": f.get("impact"),
                    "value": _finite(f.get("value")),
                    "threshold": _finite(f.get("threshold")),
                    "baseline": _finite(f.get("baseline")),
                    "attribution": f.get("attribution"),
                    "revision": f.get("revision"),
                    "rollback_to": f.get("rollback_to"),
                    "action": f.get("action"),
                    "outcome": f.get("outcome"),
                }
            )
        return rows

    def revision_changes(self) -> list[dict[str, Any]]:
        return [
            {
                "ts": utc_iso(e.at),
                "at": e.at,
                "service": e.fields.get("service"),
                "revision": e.fields.get("revision"),
                "previous": e.fields.get("previous"),
                "change": e.fields.get("change"),
            }
            for e in self.replay.named("revision_change")
            if e.fields.get("previous") is not None
        ]


async def run_backtest(
    settings: Settings,
    rules: Sequence[LoadedRule],
    *,
    prometheus: PrometheusClient,
    start: float,
    end: float,
    step: float | None = None,
    warmup: float | None = None,
    record: bool = False,
    chunk: float = DEFAULT_CHUNK,
    progress: Progress | None = None,
) -> BacktestResult:
    """Replay ``rules`` for ``settings``' services over ``start..end`` of history."""
    began = time.monotonic()
    queries_before = prometheus.queries
    setup = ReplaySetup.from_settings(settings, rules)
    step = step or settings.interval
    if end < start:
        raise ValueError("the end comes before the start")
    warm = settings.safety.bake_time if warmup is None else warmup
    first = start - math.ceil(warm / step) * step
    groups = groups_of(setup)

    warnings: list[str] = []
    options = settings.backtest
    if options is not None and options.revision_metric:
        schedule = await revision_schedule(
            prometheus,
            groups,
            metric=options.revision_metric,
            label=options.revision_label,
            start=first,
            end=end,
            step=step,
            chunk=chunk,
            progress=progress,
        )
        for name in setup.services:
            if name not in schedule:
                warnings.append(
                    f"{name}: no {options.revision_metric} series with a "
                    f"{options.revision_label} label: its revision is unknown"
                )
    else:
        schedule = {}
    missing = [name for name in setup.services if name not in schedule]
    if missing:
        kept, problems = await target_schedules(settings, missing, start=first, end=end)
        schedule.update(kept)
        warnings.extend(problems)
    unknown = [name for name in setup.services if name not in schedule]
    if unknown and (options is None or not options.revision_metric):
        warnings.append(
            f"{', '.join(unknown)}: no backtest.revision_metric configured and no revision "
            "history kept by the target: revisions are unknown, so no firing is "
            "deploy-related"
        )

    def tick_progress(done: float, until: float) -> None:
        if progress is not None:
            progress("signals", (done - first) / max(until - first, step))

    signals = RangeSignals(
        prometheus,
        setup.query_rules,
        groups,
        start=first,
        end=end,
        step=step,
        chunk=chunk,
        progress=tick_progress,
    )
    replay = Replay(
        setup,
        signals=signals,
        schedule=schedule,
        record=record,
        unknown_revision=UNKNOWN_REVISION,
    )
    result = await replay.run(start=first, end=end, step=step, report_from=start)
    result.queries = prometheus.queries - queries_before
    skipped = {r.name: SKIPPED_PROBE for r in setup.probe_rules}
    return BacktestResult(
        setup=setup,
        replay=result,
        schedule=schedule,
        start=start,
        end=end,
        step=step,
        skipped=skipped,
        warnings=warnings,
        seconds=time.monotonic() - began,
    )


# ----------------------------------------------------------------------------- summaries


def summarize(result: BacktestResult) -> dict[str, RuleSummary]:
    """Per rule: firings, time pending and firing, rollbacks, pages, blocked rollbacks."""
    out: dict[str, RuleSummary] = {}
    for loaded in result.setup.rules:
        rule = loaded.rule
        out[rule.name] = RuleSummary(rule.name, rule.impact, skipped=result.skipped.get(rule.name))
    for row in result.decisions():
        summary = out.get(row["rule"])
        if summary is None:
            continue
        outcome = row["outcome"] or ""
        if row["action"] == "rollback" and outcome in ("executed", "would_execute"):
            summary.rollbacks += 1
        elif row["action"] == "page" and outcome == "executed":
            summary.pages += 1
        if outcome.startswith("blocked:") and row["action"] == "rollback":
            summary.blocked += 1

    # Spans from rule_state transitions, starting from the state found at --start.
    spans: dict[tuple[str, str], tuple[str, float]] = {
        key: (state, result.start) for key, state in result.replay.initial_states.items()
    }
    for event in result.replay.named("rule_state"):
        key = (event.fields["service"], event.fields["rule"])
        state, since = spans.get(key, ("inactive", result.start))
        _add_span(out, key[1], state, event.at - since)
        spans[key] = (event.fields["state"], event.at)
        if event.fields["state"] == "firing" and key[1] in out:
            out[key[1]].firings += 1
    for (_, rule_name), (state, since) in spans.items():
        _add_span(out, rule_name, state, result.end - since)
    return out


def _add_span(out: dict[str, RuleSummary], rule: str, state: str, seconds: float) -> None:
    summary = out.get(rule)
    if summary is None or seconds <= 0:
        return
    if state == "pending":
        summary.pending_seconds += seconds
    elif state == "firing":
        summary.firing_seconds += seconds


@dataclass
class Suggestion:
    """Firing counts over a grid of thresholds (rows) and ``for`` values (columns)."""

    rule: str
    condition: str
    thresholds: list[float]
    holds: list[float]
    firings: list[list[int]]
    current: tuple[float, float]


def suggest_grid(
    result: BacktestResult,
    rule_name: str,
    *,
    thresholds: Sequence[float] | None = None,
    holds: Sequence[float] | None = None,
) -> Suggestion:
    """How many times ``rule_name`` would have fired for other thresholds and ``for`` values.

    Runs the rule's own state machine (``rules.judge`` and ``rules.step``) over the
    readings the replay recorded, so each cell is exact for that rule; it needs a
    result recorded with ``record=True``. Counted from the start of the range.
    """
    rule = next((r.rule for r in result.setup.rules if r.rule.name == rule_name), None)
    if rule is None:
        known = ", ".join(r.rule.name for r in result.setup.rules)
        raise ValueError(f"no rule '{rule_name}'; the configured rules are {known}")
    if rule.probe:
        raise ValueError(f"'{rule_name}' is a probe rule: {SKIPPED_PROBE}")
    condition = rule.condition
    current = (rule.threshold, rule.for_)
    thresholds = list(thresholds) if thresholds else _threshold_grid(rule)
    holds = list(holds) if holds else _hold_grid(rule.for_, result.step)
    times = result.replay.times
    traces = [t for (svc, r), t in result.replay.traces.items() if r == rule_name]
    if not traces:
        raise ValueError("the backtest recorded no readings (record=True is needed)")

    grid: list[list[int]] = []
    for threshold in thresholds:
        row = []
        for hold in holds:
            variant = rule.model_copy(update={condition: threshold, "for_": hold})
            row.append(sum(_count_firings(variant, trace, times) for trace in traces))
        grid.append(row)
    return Suggestion(rule_name, condition, thresholds, holds, grid, current)


def _count_firings(rule: Rule, trace: Any, times: Sequence[float]) -> int:
    status = RuleStatus()
    count = 0
    for index, now in enumerate(times):
        baseline = trace.baselines[index]
        verdict = judge(
            rule, trace.reading(index), baseline=None if math.isnan(baseline) else baseline
        )
        moved = step(status, verdict, now=now, hold=rule.for_)
        if moved is not None and moved.current == "firing":
            count += 1
    return count


def _threshold_grid(rule: Rule) -> list[float]:
    value = rule.threshold
    factors = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
    if rule.uses_baseline:
        # A ratio to the baseline: vary how far above (or below) 1 it sits.
        return sorted({round(1 + (value - 1) * f, 6) for f in factors})
    if value == 0:
        return [0.0]
    return sorted({round(value * f, 6) for f in factors})


def _hold_grid(hold: float, step_: float) -> list[float]:
    base = hold if hold > 0 else step_
    candidates = {0.0, hold} | {base * f for f in (0.5, 1, 2, 4)}
    rounded = {round(c / step_) * step_ for c in candidates}
    return sorted(rounded)


# ----------------------------------------------------------------------------- output


def format_table(result: BacktestResult) -> str:
    """The decisions, then a summary per rule, as plain text columns."""
    lines: list[str] = []
    rows = result.decisions()
    head = ("time (UTC)", "service", "rule", "value", "threshold", "attribution", "action")
    table = [(*head, "outcome")]
    for r in rows:
        table.append(
            (
                _clock(r["at"]),
                str(r["service"]),
                str(r["rule"]),
                _num(r["value"]),
                _num(r["threshold"]),
                str(r["attribution"]),
                str(r["action"]),
                str(r["outcome"]),
            )
        )
    span = f"{_clock(result.start)} .. {_clock(result.end)}, step {format_duration(result.step)}"
    lines.append(f"backtest {span}, mode {result.setup.mode}: {len(rows)} decisions")
    if rows:
        lines.extend(_columns(table))
    lines.append("")
    summary = [("rule", "impact", "firings", "pending", "firing", "rollbacks", "pages", "blocked")]
    skipped = []
    for s in summarize(result).values():
        if s.skipped:
            skipped.append(f"{s.rule}: skipped, {s.skipped}")
            continue
        summary.append(
            (
                s.rule,
                s.impact,
                str(s.firings),
                _span(s.pending_seconds),
                _span(s.firing_seconds),
                str(s.rollbacks),
                str(s.pages),
                str(s.blocked),
            )
        )
    lines.extend(_columns(summary))
    lines.extend(skipped)
    return "\n".join(line.rstrip() for line in lines)


def format_suggestion(s: Suggestion) -> str:
    threshold, hold = s.current
    head = [f"{s.condition} \\ for"] + [
        format_duration(h) + ("*" if math.isclose(h, hold) else "") for h in s.holds
    ]
    table = [tuple(head)]
    for value, row in zip(s.thresholds, s.firings, strict=True):
        mark = "*" if math.isclose(value, threshold) else ""
        table.append((f"{value:g}{mark}", *(str(c) for c in row)))
    title = (
        f"suggest {s.rule}: firings over the range by threshold and for "
        f"(* marks the configured {s.condition} {threshold:g}, for {format_duration(hold)})"
    )
    return "\n".join(line.rstrip() for line in [title, *_columns(table)])


def to_json(result: BacktestResult, suggestion: Suggestion | None = None) -> dict[str, Any]:
    summaries = summarize(result)
    doc: dict[str, Any] = {
        "start": utc_iso(result.start),
        "end": utc_iso(result.end),
        "step": result.step,
        "mode": result.setup.mode,
        "services": list(result.setup.services),
        "decisions": [{k: v for k, v in r.items() if k != "at"} for r in result.decisions()],
        "revision_changes": [
            {k: v for k, v in r.items() if k != "at"} for r in result.revision_changes()
        ],
        "summary": {
            name: {
                "impact": s.impact,
                "firings": s.firings,
                "pending_seconds": s.pending_seconds,
                "firing_seconds": s.firing_seconds,
                "rollbacks": s.rollbacks,
                "pages": s.pages,
                "blocked_rollbacks": s.blocked,
                "skipped": s.skipped,
            }
            for name, s in summaries.items()
        },
        "warnings": result.warnings,
        "seconds": round(result.seconds, 3),
    }
    if suggestion is not None:
        doc["suggest"] = {
            "rule": suggestion.rule,
            "condition": suggestion.condition,
            "thresholds": suggestion.thresholds,
            "for": suggestion.holds,
            "firings": suggestion.firings,
            "current": {"threshold": suggestion.current[0], "for": suggestion.current[1]},
        }
    return doc


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _span(seconds: float) -> str:
    if seconds <= 0:
        return "0s"
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{round(seconds)}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- command


class _Progress:
    """Progress lines on stderr for long ranges: one per fetched chunk."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled

    def __call__(self, phase: str, fraction: float) -> None:
        if self.enabled:
            percent = min(100, round(100 * fraction))
            print(f"backtest: {phase} {percent}%", file=self.stream, flush=True)


def main(
    path: str | Path,
    *,
    start: str,
    end: str,
    step: str | None = None,
    plot: Path | None = None,
    fmt: str = "table",
    suggest: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The command: 0 done, 1 Prometheus failed, 2 bad configuration or arguments."""
    from rollbackd import app

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        loaded = app.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=err)
        return 2
    settings = loaded.settings
    now = time.time()
    try:
        t0, t1 = parse_time(start, now=now), parse_time(end, now=now)
        every = parse_duration(step) if step else settings.interval
        if every <= 0:
            raise ValueError("--step must be positive")
        if t1 < t0:
            raise ValueError("--end comes before --start")
        if plot is not None and plot.suffix.lower() not in (".png", ".html", ".htm", ".svg"):
            raise ValueError("--plot writes .png, .svg or .html files")
        if suggest is not None and suggest not in {r.rule.name for r in loaded.rules}:
            raise ValueError(f"--suggest: no rule named '{suggest}'")
    except ValueError as exc:
        print(f"rollbackd backtest: {exc}", file=err)
        return 2

    chunks = (t1 - t0) / min(DEFAULT_CHUNK, every * MAX_POINTS)
    progress = _Progress(err, enabled=chunks > 1)
    try:
        result = asyncio.run(
            _run(
                loaded,
                t0,
                t1,
                every,
                record=plot is not None or suggest is not None,
                progress=progress,
            )
        )
    except QueryError as exc:
        print(f"rollbackd backtest: Prometheus at {settings.prometheus.url}: {exc}", file=err)
        return 1
    except SecretError as exc:
        print(f"{path}: {exc}", file=err)
        return 2
    for warning in result.warnings:
        print(f"rollbackd backtest: warning: {warning}", file=err)

    suggestion = None
    if suggest is not None:
        try:
            suggestion = suggest_grid(result, suggest)
        except ValueError as exc:
            print(f"rollbackd backtest: --suggest: {exc}", file=err)
            return 2
    if fmt == "json":
        print(json.dumps(to_json(result, suggestion), indent=2), file=out)
    else:
        print(format_table(result), file=out)
        if suggestion is not None:
            print("", file=out)
            print(format_suggestion(suggestion), file=out)
    if plot is not None:
        from rollbackd.plot import write_plot

        write_plot(result, plot)
        print(f"rollbackd backtest: plot written to {plot}", file=err)
    return 0


async def _run(
    loaded: Any, start: float, end: float, step: float, *, record: bool, progress: Progress
) -> BacktestResult:
    from rollbackd import app

    async with app.prometheus_client(loaded.settings) as prometheus:
        return await run_backtest(
            loaded.settings,
            loaded.rules,
            prometheus=prometheus,
            start=start,
            end=end,
            step=step,
            record=record,
            progress=progress,
        )
