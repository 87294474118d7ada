"""``rollbackd test FILE...``: unit tests for rules, in the spirit of ``promtool test rules``.

A test file names rule files and describes, per test, synthetic input series, revision
changes and health probes, then states what must hold at given times: rule states and
decisions. The series go into a *real* Prometheus (so PromQL means what it means in
production), and the decisions come from the same ``Decider`` the daemon runs, through
``replay.Replay``. A minimal file::

    rule_files: [../default.yaml]       # relative to this file
    evaluation_interval: 15s            # the daemon's tick
    tests:
      - name: a bad deploy is rolled back
        interval: 15s                   # between input samples
        input_series:
          - series: 'http_requests_total{job="api", code="200"}'
            values: '0+300x120'
          - series: 'http_requests_total{job="api", code="500"}'
            values: '0x60 100+100x59'
        revisions:
          - {at: 0s, revision: v1}
          - {at: 15m, revision: v2}
        expect:
          - at: 16m15s
            rule_states: [{rule: error-rate-high, state: firing}]
            decisions:
              - {rule: error-rate-high, action: rollback, attribution: deploy,
                 outcome: executed, rollback_to: v1}

Other top-level keys: ``services`` (names, or ``{name, selector}``; by default the values
of ``service_label`` (``job``) found in a test's series), ``service_label``, ``mode``
(``enforce`` by default, so rollbacks read ``executed``), ``safety`` (the config's safety
section) and ``verify_timeout``.

Values use promtool's expanding notation: ``1 2 3``; ``a+bxn`` is ``a, a+b, ... a+n*b``
(n+1 samples; ``b`` may be negative, ``1-2x3``); ``axn`` is a repeated n+1 times; ``_`` is
a missing sample and ``_xn`` n of them; ``stale`` is a staleness marker. Probes read
``ok``, ``fail`` and ``_`` (no result) with the same ``xn`` rule (``okx3`` is four ok
samples, ``_x3`` three missing ones), one sample per tick.

Before its first ``revisions`` entry (or without any) a service runs the revision
``initial``. An ``expect`` item has ``at`` (a tick) with ``rule_states`` and/or
``decisions``, or ``from`` and ``to`` with ``decisions`` only. Listed decisions must be
exactly the decisions made then (an empty list: none); only the keys written are
compared.

Where the data lives: time 0 of the first test is 2024-01-01T00:00:00Z (``ANCHOR``) and
each further test starts at least a day after the previous one ended, so tests never see
each other's series (for queries whose range windows stay under a day). The command
backfills all series with promtool into one folder and starts a Prometheus on it, with
the remote-write receiver on so that ``stale`` markers, which blocks cannot hold, are
written afterwards. With ``--prometheus URL`` it starts nothing and writes nothing: that
Prometheus must already hold the same series at the same times, for example the blocks
that ``--write-blocks DIR`` makes from the same files in the same order, copied into its
data folder, and nothing newer (its time retention counts from its newest block). Tests
that use ``stale`` cannot run in that mode.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from rollbackd.backfill import BackfillError, SeriesKey, backfill, send_stale_markers
from rollbackd.config import (
    ConfigError,
    Duration,
    LoadedRule,
    Mode,
    Problem,
    Safety,
    Strict,
    _line_of,
    _plain,
    _problems,
    _read_yaml,
    load_rules,
)
from rollbackd.promserver import PrometheusNotInstalled, PrometheusServer
from rollbackd.replay import InstantSignals, Replay, ReplayResult, ReplaySetup, groups_of
from rollbackd.rules import SelectorError, parse_selector
from rollbackd.signals.prometheus import PrometheusClient, QueryError

__all__ = [
    "ANCHOR",
    "STALE",
    "expand_probes",
    "expand_values",
    "main",
    "parse_series",
]

ANCHOR = 1_704_067_200.0  # 2024-01-01T00:00:00Z: time 0 of the first test
DAY = 86400.0
MAX_SAMPLES = 200_000  # per series; a typo like 1x99999999 should not eat the machine
UNKNOWN_REVISION = "initial"
CONCURRENT_TESTS = 4


class _Stale:
    def __repr__(self) -> str:
        return "stale"


STALE = _Stale()
Value = float | None | _Stale

# ----------------------------------------------------------------------------- notation

_NUM = r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI][nN][fF]|[nN][aA][nN])"
_INC = r"[+-](?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_ITEM = re.compile(
    rf"(?:(?P<blank>_)|(?P<stale>stale)|(?P<start>{_NUM})(?P<inc>{_INC})?)(?:x(?P<times>\d+))?"
)
_PROBE = re.compile(r"(?P<what>ok|fail|_)(?:x(?P<times>\d+))?")


def _tokens(text: str) -> list[str]:
    """Whitespace-separated items; a lone ``xN`` joins the item before it (``ok x10``)."""
    items: list[str] = []
    for token in text.split():
        if re.fullmatch(r"x\d+", token) and items and "x" not in items[-1].lstrip("+-"):
            items[-1] += token
        else:
            items.append(token)
    return items


def expand_values(text: str) -> list[Value]:
    """Expand promtool's series notation into one value per interval.

    ``None`` is a missing sample, ``STALE`` a staleness marker. Raises ``ValueError``
    naming the item it cannot read.
    """
    out: list[Value] = []
    for token in _tokens(str(text)):
        found = _ITEM.fullmatch(token)
        if found is None:
            raise ValueError(f"cannot read '{token}': expected a number, _, stale, a+bxn or axn")
        times = found.group("times")
        count = int(times) if times is not None else None
        if found.group("blank"):
            out.extend([None] * (count if count is not None else 1))
        elif found.group("stale"):
            out.extend([STALE] * (count + 1 if count is not None else 1))
        else:
            start = float(found.group("start"))
            inc = found.group("inc")
            if inc is not None and count is None:
                raise ValueError(f"cannot read '{token}': an increment needs xn, as in {token}x10")
            step = float(inc) if inc is not None else 0.0
            if count is None:
                out.append(start)
            else:
                out.extend(start + i * step for i in range(count + 1))
        if len(out) > MAX_SAMPLES:
            raise ValueError(f"more than {MAX_SAMPLES} samples in one series")
    return out


def expand_probes(text: str) -> list[bool | None]:
    """Expand a probe schedule: ``ok``, ``fail``, ``_`` with promtool's ``xn`` rule."""
    out: list[bool | None] = []
    for token in _tokens(str(text)):
        found = _PROBE.fullmatch(token)
        if found is None:
            raise ValueError(f"cannot read '{token}': expected ok, fail or _, with optional xn")
        times = found.group("times")
        what = found.group("what")
        value = None if what == "_" else what == "ok"
        if what == "_":
            out.extend([None] * (int(times) if times else 1))
        else:
            out.extend([value] * (int(times) + 1 if times else 1))
        if len(out) > MAX_SAMPLES:
            raise ValueError(f"more than {MAX_SAMPLES} probe samples")
    return out


_METRIC = re.compile(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)?\s*(\{.*\})?\s*", re.DOTALL)


def parse_series(text: str) -> SeriesKey:
    """``name{a="1", b="2"}`` as a ``SeriesKey``; only ``=`` matchers make sense here."""
    found = _METRIC.fullmatch(text)
    if found is None or not (found.group(1) or found.group(2)):
        raise ValueError(f"cannot read series '{text}': write it as name{{label=\"value\"}}")
    labels: dict[str, str] = {}
    if found.group(2) and found.group(2).strip("{} \t\n"):
        try:
            matchers = parse_selector(found.group(2))
        except SelectorError as exc:
            raise ValueError(f"cannot read the labels of '{text}': {exc}") from exc
        for m in matchers:
            if m.op != "=":
                raise ValueError(f"series '{text}': labels are set with =, not {m.op}")
            labels[m.key] = m.value
    name = found.group(1) or labels.pop("__name__", "")
    if not name:
        raise ValueError(f"series '{text}' has no metric name")
    return SeriesKey.of(name, labels)


# ----------------------------------------------------------------------------- the file


class SeriesInput(Strict):
    series: str
    values: str = Field(description="promtool's expanding notation, one value per interval.")


class RevisionAt(Strict):
    service: str | None = None
    at: Duration
    revision: str


class ProbeInput(Strict):
    service: str | None = None
    values: str = Field(description="ok, fail, _ with xn; one sample per tick from time 0.")


class StateExpect(Strict):
    service: str | None = None
    rule: str
    state: Literal["inactive", "pending", "firing", "resolved"]


class DecisionExpect(Strict):
    service: str | None = None
    rule: str | None = None
    impact: Literal["high", "medium", "low"] | None = None
    action: Literal["rollback", "page", "notify", "none"] | None = None
    attribution: Literal["deploy", "external", "unknown"] | None = None
    outcome: str | None = Field(None, description="executed, would_execute, blocked:<guard>")
    rollback_to: str | None = None
    revision: str | None = None


class Expect(Strict):
    at: Duration | None = None
    from_: Duration | None = Field(None, alias="from")
    to: Duration | None = None
    rule_states: list[StateExpect] = Field(default_factory=list)
    decisions: list[DecisionExpect] | None = None

    @model_validator(mode="after")
    def _one_time(self) -> Expect:
        if self.at is None and (self.from_ is None or self.to is None):
            raise ValueError("an expect item has at, or from and to")
        if self.at is not None and (self.from_ is not None or self.to is not None):
            raise ValueError("an expect item has at, or from and to, not both")
        if self.at is None and self.rule_states:
            raise ValueError("rule_states are checked at one time: use at")
        if self.from_ is not None and self.to is not None and self.to < self.from_:
            raise ValueError("to comes before from")
        if not self.rule_states and self.decisions is None:
            raise ValueError("an expect item checks rule_states or decisions")
        return self

    @property
    def until(self) -> float:
        return self.at if self.at is not None else float(self.to or 0.0)


class TestCase(Strict):
    name: str
    interval: Duration | None = Field(None, description="Between input samples; the tick.")
    input_series: list[SeriesInput] = Field(default_factory=list)
    revisions: list[RevisionAt] = Field(default_factory=list)
    probes: list[ProbeInput] = Field(default_factory=list)
    expect: list[Expect] = Field(min_length=1)


class ServiceSpec(Strict):
    name: str
    selector: str | None = None


class TestFile(Strict):
    rule_files: list[str] = Field(min_length=1)
    evaluation_interval: Duration = Field(15.0, gt=0, description="The daemon's tick (s).")
    service_label: str = "job"
    services: list[str | ServiceSpec] | None = None
    mode: Mode = "enforce"
    safety: Safety = Field(default_factory=Safety)
    verify_timeout: Duration = 300.0
    tests: list[TestCase] = Field(min_length=1)


# ----------------------------------------------------------------------------- plans


@dataclass
class TestPlan:
    """One test, resolved: absolute times, services, series and expectations."""

    file: str
    line: int
    name: str
    setup: ReplaySetup
    step: float
    end: float  # seconds after the test's time 0
    series: dict[SeriesKey, list[tuple[float, Value]]]  # relative times
    schedule: dict[str, list[tuple[float, str]]]
    probes: dict[str, list[bool | None]]
    expects: list[tuple[int, Expect]]  # (line, item)
    origin: float = 0.0  # absolute time 0, set when slots are assigned
    failures: list[str] = field(default_factory=list)

    @property
    def span(self) -> float:
        last = max((t for points in self.series.values() for t, _ in points), default=0.0)
        return max(self.end, last)

    @property
    def uses_stale(self) -> bool:
        return any(v is STALE for points in self.series.values() for _, v in points)


def load_test_file(path: Path) -> list[TestPlan]:
    """Parse and resolve one test file; raises ``ConfigError`` with every problem."""
    tree = _read_yaml(path)
    if not isinstance(tree, dict):
        raise ConfigError([Problem(str(path), 1, "a test file must be a mapping")])
    try:
        parsed = TestFile(**_plain(tree))
    except ValidationError as exc:
        raise ConfigError(_problems(exc, str(path), tree, TestFile)) from exc

    problems: list[Problem] = []
    rule_paths = [str((path.parent / f).resolve()) for f in parsed.rule_files]
    rules: list[LoadedRule] = []
    try:
        rules = load_rules(rule_paths)
    except ConfigError as exc:
        problems.extend(exc.problems)
    plans = []
    for index, case in enumerate(parsed.tests):
        resolver = _Resolver(path, tree, parsed, rules, index, case)
        plan = resolver.resolve()
        problems.extend(resolver.problems)
        if plan is not None:
            plans.append(plan)
    if problems:
        raise ConfigError(problems)
    return plans


class _Resolver:
    """Checks one test's references and times, and builds its plan."""

    def __init__(
        self,
        path: Path,
        tree: Any,
        parsed: TestFile,
        rules: list[LoadedRule],
        index: int,
        case: TestCase,
    ) -> None:
        self.path, self.tree, self.parsed, self.rules = path, tree, parsed, rules
        self.index, self.case = index, case
        self.problems: list[Problem] = []

    def problem(self, loc: Sequence[int | str], message: str) -> None:
        line = _line_of(self.tree, ("tests", self.index, *loc))
        self.problems.append(Problem(str(self.path), line, message))

    def resolve(self) -> TestPlan | None:
        case, parsed = self.case, self.parsed
        tick = parsed.evaluation_interval
        interval = case.interval or tick
        series = self._series(interval)
        services = self._services(series)
        if services is None:
            return None
        schedule = self._schedule(services)
        probes = self._probes(services)
        expects = self._expects(services, tick)
        if self.problems:
            return None
        setup = ReplaySetup(
            rules=self.rules,
            services=services,
            safety=parsed.safety,
            mode=parsed.mode,
            verify_timeout=parsed.verify_timeout,
            service_label=parsed.service_label,
        )
        try:
            groups_of(setup)
        except SelectorError as exc:
            self.problem(("name",), f"services: {exc}")
            return None
        return TestPlan(
            file=str(self.path),
            line=_line_of(self.tree, ("tests", self.index)) or 1,
            name=case.name,
            setup=setup,
            step=tick,
            end=max(e.until for _, e in expects),
            series=series,
            schedule=schedule,
            probes=probes,
            expects=expects,
        )

    def _series(self, interval: float) -> dict[SeriesKey, list[tuple[float, Value]]]:
        out: dict[SeriesKey, list[tuple[float, Value]]] = {}
        for i, item in enumerate(self.case.input_series):
            try:
                key = parse_series(item.series)
            except ValueError as exc:
                self.problem(("input_series", i, "series"), str(exc))
                continue
            try:
                values = expand_values(item.values)
            except ValueError as exc:
                self.problem(("input_series", i, "values"), f"values: {exc}")
                continue
            if key in out:
                self.problem(("input_series", i, "series"), f"series {key.render()} given twice")
                continue
            out[key] = [(n * interval, v) for n, v in enumerate(values) if v is not None]
        return out

    def _services(
        self, series: dict[SeriesKey, list[tuple[float, Value]]]
    ) -> dict[str, str] | None:
        label = self.parsed.service_label
        if self.parsed.services is not None:
            services: dict[str, str] = {}
            for entry in self.parsed.services:
                spec = ServiceSpec(name=entry) if isinstance(entry, str) else entry
                services[spec.name] = spec.selector or f'{label}="{spec.name}"'
            return services
        names = {v for key in series for k, v in key.labels if k == label}
        names |= {r.service for r in self.case.revisions if r.service}
        names |= {p.service for p in self.case.probes if p.service}
        if not names:
            if not self.problems:  # a series we could not read may have named one
                self.problem(
                    ("name",),
                    f"cannot tell the services: no input series has a '{label}' label; "
                    "list them under services",
                )
            return None
        return {n: f'{label}="{n}"' for n in sorted(names)}

    def _service(
        self, given: str | None, services: dict[str, str], loc: Sequence[int | str]
    ) -> str | None:
        if given is None:
            if len(services) == 1:
                return next(iter(services))
            self.problem(loc, "name the service: this test has " + ", ".join(services))
            return None
        if given not in services:
            self.problem(
                (*loc, "service"), f"unknown service '{given}'; known: " + ", ".join(services)
            )
            return None
        return given

    def _schedule(self, services: dict[str, str]) -> dict[str, list[tuple[float, str]]]:
        schedule: dict[str, list[tuple[float, str]]] = {}
        for i, entry in enumerate(self.case.revisions):
            name = self._service(entry.service, services, ("revisions", i))
            if name is not None:
                schedule.setdefault(name, []).append((entry.at, entry.revision))
        for name in services:
            entries = sorted(schedule.get(name, []))
            if not entries or entries[0][0] > 0:
                entries.insert(0, (0.0, UNKNOWN_REVISION))
            schedule[name] = entries
        return schedule

    def _probes(self, services: dict[str, str]) -> dict[str, list[bool | None]]:
        probes: dict[str, list[bool | None]] = {}
        for i, entry in enumerate(self.case.probes):
            name = self._service(entry.service, services, ("probes", i))
            try:
                samples = expand_probes(entry.values)
            except ValueError as exc:
                self.problem(("probes", i, "values"), f"values: {exc}")
                continue
            if name is not None:
                if name in probes:
                    self.problem(("probes", i), f"probes for '{name}' given twice")
                probes[name] = samples
        return probes

    def _expects(self, services: dict[str, str], tick: float) -> list[tuple[int, Expect]]:
        known_rules = {r.rule.name for r in self.rules}
        out: list[tuple[int, Expect]] = []
        for i, item in enumerate(self.case.expect):
            loc: tuple[int | str, ...] = ("expect", i)
            for key in ("at", "from", "to"):
                value = item.at if key == "at" else item.from_ if key == "from" else item.to
                if value is not None and not _on_tick(value, tick):
                    self.problem(
                        (*loc, key),
                        f"{key} {_rel(value)} is not a tick: use a multiple of "
                        f"evaluation_interval ({_rel(tick)})",
                    )
            for j, want in enumerate(item.rule_states):
                where = (*loc, "rule_states", j)
                name = self._service(want.service, services, where)
                if self.rules and want.rule not in known_rules:
                    self.problem((*where, "rule"), _unknown_rule(want.rule, known_rules))
                if name is not None:
                    item.rule_states[j] = want.model_copy(update={"service": name})
            for j, dec in enumerate(item.decisions or []):
                where = (*loc, "decisions", j)
                if dec.service is not None:
                    self._service(dec.service, services, where)
                if dec.rule is not None and self.rules and dec.rule not in known_rules:
                    self.problem((*where, "rule"), _unknown_rule(dec.rule, known_rules))
            out.append((_line_of(self.tree, ("tests", self.index, *loc)) or 1, item))
        return out


def _unknown_rule(name: str, known: set[str]) -> str:
    return f"unknown rule '{name}'; the rule files define " + ", ".join(sorted(known))


def _on_tick(value: float, tick: float) -> bool:
    ratio = value / tick
    return abs(ratio - round(ratio)) < 1e-6


def _rel(seconds: float) -> str:
    """``16m15s``, ``1h``, ``0s``: a time within a test, as its author writes it."""
    whole = round(seconds)
    if abs(seconds - whole) > 1e-6:
        return f"{seconds:g}s"
    if whole == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


# ----------------------------------------------------------------------------- data


def assign_slots(plans: Sequence[TestPlan]) -> None:
    """Give every test its own stretch of time, a day apart from the next."""
    cursor = ANCHOR
    for plan in plans:
        plan.origin = cursor
        cursor += math.ceil((plan.span + DAY) / DAY) * DAY


def load_into_blocks(plans: Sequence[TestPlan], out_dir: Path) -> int:
    """Backfill every test's series (at absolute times) into ``out_dir``."""
    samples: dict[SeriesKey, list[tuple[float, float]]] = {}
    for plan in plans:
        for key, points in plan.series.items():
            target = samples.setdefault(key, [])
            target.extend(
                (plan.origin + t, float(v)) for t, v in points if isinstance(v, float | int)
            )
    return backfill({k: v for k, v in samples.items() if v}, out_dir)


def stale_markers(plans: Sequence[TestPlan]) -> list[tuple[SeriesKey, float]]:
    return [
        (key, plan.origin + t)
        for plan in plans
        for key, points in plan.series.items()
        for t, v in points
        if v is STALE
    ]


# ----------------------------------------------------------------------------- running


async def run_test(plan: TestPlan, prometheus: PrometheusClient, *, check_data: bool) -> None:
    """Replay one test and record its failures in ``plan.failures``."""
    if check_data and plan.series:
        key = next(iter(plan.series))
        first = plan.origin + plan.series[key][0][0] if plan.series[key] else plan.origin
        try:
            found = await prometheus.query(key.render(), at=first)
        except QueryError as exc:
            plan.failures.append(f"cannot query {key.render()}: {exc}")
            return
        if not found:
            plan.failures.append(
                f"the Prometheus holds no {key.render()} at {_rel(first - plan.origin)} of this "
                "test: load the blocks written by --write-blocks for the same files"
            )
            return
    setup = plan.setup
    query_rules = [r.rule for r in setup.rules if r.rule.query]
    replay = Replay(
        setup,
        signals=InstantSignals(prometheus, query_rules, groups_of(setup)),
        schedule={
            name: [(plan.origin + t, rev) for t, rev in entries]
            for name, entries in plan.schedule.items()
        },
        probes=plan.probes,
        record=True,
        unknown_revision=UNKNOWN_REVISION,
    )
    result = await replay.run(start=plan.origin, end=plan.origin + plan.end, step=plan.step)
    for line, item in plan.expects:
        plan.failures.extend(_check(plan, result, line, item))


def _check(plan: TestPlan, result: ReplayResult, line: int, item: Expect) -> list[str]:
    failures: list[str] = []
    if item.at is not None:
        when = f"at {_rel(item.at)}"
        first = last = plan.origin + item.at
    else:
        assert item.from_ is not None
        assert item.to is not None
        when = f"from {_rel(item.from_)} to {_rel(item.to)}"
        first, last = plan.origin + item.from_, plan.origin + item.to
    where = f"{plan.file}:{line}: {when}"

    for want in item.rule_states:
        assert want.service is not None
        index = result.index_of(first)
        trace = result.traces.get((want.service, want.rule))
        if index is None or trace is None:
            failures.append(f"{where}: {want.service} {want.rule}: no tick recorded")
            continue
        got = trace.state(index)
        if got != want.state:
            failures.append(
                f"{where}: {want.service} {want.rule}: expected state {want.state}, "
                f"got {got} ({_describe(trace.reading(index), trace.thresholds[index])})"
            )

    if item.decisions is not None:
        made = [e for e in result.named("decision") if first - 1e-6 <= e.at <= last + 1e-6]
        failures.extend(_match_decisions(where, plan, item.decisions, made))
    return failures


def _match_decisions(
    where: str, plan: TestPlan, wanted: list[DecisionExpect], made: list[Any]
) -> list[str]:
    failures: list[str] = []
    left = list(made)
    # The most specific expectations choose first, so a loose one cannot take their match.
    ordered = sorted(wanted, key=lambda d: -len(d.model_fields_set))
    for want in ordered:
        keys = want.model_dump(exclude_unset=True)
        match = next((e for e in left if all(e.fields.get(k) == v for k, v in keys.items())), None)
        if match is None:
            failures.append(
                f"{where}: expected decision {_fmt_expect(keys)} was not made; "
                + (
                    "decisions made: " + "; ".join(_fmt_made(e, plan) for e in made)
                    if made
                    else "no decision was made"
                )
            )
        else:
            left.remove(match)
    for extra in left:
        failures.append(f"{where}: unexpected decision {_fmt_made(extra, plan)}")
    return failures


def _fmt_expect(keys: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in keys.items()) + "}"


def _fmt_made(event: Any, plan: TestPlan) -> str:
    f = event.fields
    parts = [
        f"{f.get('service')} {f.get('rule')} {f.get('action')} {f.get('outcome')}",
        f"at {_rel(event.at - plan.origin)}",
        f"attribution {f.get('attribution')}",
    ]
    if f.get("rollback_to") is not None:
        parts.append(f"rollback_to {f.get('rollback_to')}")
    return ", ".join(parts)


def _describe(reading: Any, threshold: float) -> str:
    if reading.value is None:
        return f"no data: {reading.no_data}"
    text = f"value {reading.value:.4g}"
    if not math.isnan(threshold):
        text += f", threshold {threshold:.4g}"
    return text


async def _run_all(plans: list[TestPlan], url: str, *, check_data: bool) -> None:
    limit = asyncio.Semaphore(CONCURRENT_TESTS)
    async with PrometheusClient(url, timeout=30.0, retries=1) as client:

        async def one(plan: TestPlan) -> None:
            async with limit:
                await run_test(plan, client, check_data=check_data)

        await asyncio.gather(*(one(p) for p in plans))


# ----------------------------------------------------------------------------- command


def main(
    files: Sequence[str | Path],
    *,
    prometheus_url: str | None = None,
    write_blocks: Path | None = None,
) -> int:
    """Run every test of ``files``; print failures and a summary. 0 all pass, 1 otherwise."""
    plans: list[TestPlan] = []
    problems: list[Problem] = []
    for name in files:
        try:
            plans.extend(load_test_file(Path(name)))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    assign_slots(plans)

    if write_blocks is not None:
        return _write_blocks(plans, write_blocks)
    if prometheus_url is not None:
        stale = [p for p in plans if p.uses_stale]
        for plan in stale:
            plan.failures.append(
                f"{plan.file}:{plan.line}: {plan.name!r} uses stale markers, which blocks "
                "cannot hold: run it without --prometheus"
            )
        runnable = [p for p in plans if not p.uses_stale]
        asyncio.run(_run_all(runnable, prometheus_url, check_data=True))
    else:
        try:
            _run_with_own_prometheus(plans)
        except (BackfillError, PrometheusNotInstalled, RuntimeError, TimeoutError) as exc:
            print(f"rollbackd test: {exc}", file=sys.stderr)
            return 1
    return _report(plans)


def _run_with_own_prometheus(plans: list[TestPlan]) -> None:
    with tempfile.TemporaryDirectory(prefix="rollbackd-test-blocks-") as scratch:
        blocks = Path(scratch)
        load_into_blocks(plans, blocks)
        server = PrometheusServer(
            blocks=blocks,
            tsdb={"out_of_order_time_window": "100y"},
            extra_args=["--web.enable-remote-write-receiver", "--storage.tsdb.retention.time=100y"],
        )
        with server:
            send_stale_markers(server.url, stale_markers(plans))
            asyncio.run(_run_all(plans, server.url, check_data=False))


def _write_blocks(plans: list[TestPlan], out_dir: Path) -> int:
    count = load_into_blocks(plans, out_dir)
    print(f"wrote {count} samples of {len(plans)} tests as blocks in {out_dir}")
    for plan in plans:
        if plan.uses_stale:
            print(
                f"{plan.file}:{plan.line}: warning: {plan.name!r} uses stale markers, which "
                "blocks cannot hold; it runs only without --prometheus",
                file=sys.stderr,
            )
    return 0


def _report(plans: list[TestPlan]) -> int:
    failed = 0
    for plan in plans:
        if plan.failures:
            failed += 1
            print(f"FAIL {plan.file}:{plan.line}: {plan.name}")
            for failure in plan.failures:
                print(f"  {failure}")
        else:
            print(f"ok   {plan.file}:{plan.line}: {plan.name}")
    print(f"{len(plans) - failed} passed, {failed} failed")
    return 1 if failed else 0
