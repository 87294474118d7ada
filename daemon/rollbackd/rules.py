"""Rules as vectors: query plans, templating, conditions and the alert state machine.

A rule is written once for every service. Services whose selectors are plain equality
matchers on the same label keys form one *group*: ``{{selector}}`` becomes one matcher
per key that accepts every service of the group (``job=~"a|b"``) and ``{{by}}`` becomes
``by (job)``, so a rule costs one Prometheus query per group per tick however many
services there are. Each series of the result is matched back to its service by the
values of those keys. A service whose selector uses other matchers (``!=``, ``=~``)
cannot be merged safely and forms a group of its own.

Nothing here performs I/O: the loop runs the planned queries and hands the results to
``step``, which moves a rule through inactive -> pending -> firing -> resolved the way
Prometheus moves an alert.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rollbackd.config import Rule

# ----------------------------------------------------------------------------- selectors

_MATCHER = re.compile(
    r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"""  # label name and operator
    r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*"""  # a quoted value
)
_REGEX_SPECIAL = re.compile(r"([\\.^$*+?()\[\]{}|])")


class SelectorError(ValueError):
    """A service selector that is not a list of PromQL label matchers."""


@dataclass(frozen=True)
class Matcher:
    key: str
    op: str
    value: str

    def render(self) -> str:
        return f"{self.key}{self.op}{_quote(self.value)}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def parse_selector(selector: str) -> tuple[Matcher, ...]:
    """Split ``job="a", env!="dev"`` into matchers; braces around it are allowed."""
    text = selector.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    matchers: list[Matcher] = []
    pos = 0
    while pos < len(text):
        found = _MATCHER.match(text, pos)
        if not found:
            raise SelectorError(f"cannot read a label matcher at '{text[pos:]}'")
        key, op, raw = found.groups()
        matchers.append(Matcher(key, op, _unquote(raw)))
        pos = found.end()
        if pos < len(text):
            if text[pos] != ",":
                raise SelectorError(f"expected ',' between matchers at '{text[pos:]}'")
            pos += 1
    if not matchers:
        raise SelectorError("a selector needs at least one label matcher")
    return tuple(matchers)


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class Group:
    """Services evaluated by one query per rule, matched back by ``keys``."""

    keys: tuple[str, ...]
    selector: str
    members: dict[tuple[str, ...], str]  # label values of keys -> service name

    @property
    def services(self) -> list[str]:
        return list(self.members.values())

    def service_of(self, labels: dict[str, str]) -> str | None:
        return self.members.get(tuple(labels.get(k, "") for k in self.keys))


def plan_groups(selectors: dict[str, str], *, service_label: str) -> list[Group]:
    """Group services by the label keys of their equality-only selectors."""
    by_keys: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}
    groups: list[Group] = []
    for name, selector in selectors.items():
        matchers = parse_selector(selector)
        mergeable = all(m.op == "=" and "`" not in m.value for m in matchers)
        keys = tuple(sorted(m.key for m in matchers if m.op == "="))
        if mergeable and len(set(keys)) == len(keys):
            values = {m.key: m.value for m in matchers}
            members = by_keys.setdefault(keys, {})
            identity = tuple(values[k] for k in keys)
            if identity in members:
                raise SelectorError(
                    f"services '{members[identity]}' and '{name}' select the same series"
                )
            members[identity] = name
            continue
        # Not mergeable: a group of one, identified by its equality keys if it has any.
        own_keys = keys or ()
        identity = tuple(m.value for k in own_keys for m in matchers if m.key == k and m.op == "=")
        groups.append(Group(own_keys, ", ".join(m.render() for m in matchers), {identity: name}))
    for keys, members in by_keys.items():
        groups.append(Group(keys, _merged_selector(keys, members), dict(members)))
    _ = service_label  # the default selector already names it; kept for callers' clarity
    return groups


def _merged_selector(keys: tuple[str, ...], members: dict[tuple[str, ...], str]) -> str:
    parts = []
    for index, key in enumerate(keys):
        values = sorted({identity[index] for identity in members})
        if len(values) == 1:
            parts.append(f"{key}={_quote(values[0])}")
        else:
            alternatives = "|".join(_REGEX_SPECIAL.sub(r"\\\1", v) for v in values)
            parts.append(f"{key}=~`{alternatives}`")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- templating

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
PLACEHOLDERS = ("selector", "by", "by_le", "service")


class TemplateError(ValueError):
    """A rule or check query with a placeholder rollbackd does not know."""


def render(query: str, *, selector: str, keys: Sequence[str], service: str = "") -> str:
    """Expand ``{{selector}}``, ``{{by}}``, ``{{by_le}}`` and ``{{service}}`` in ``query``."""
    by_keys = list(keys)
    values = {
        "selector": selector,
        "by": f"by ({', '.join(by_keys)})" if by_keys else "",
        "by_le": f"by ({', '.join([*by_keys, 'le'])})",
        "service": service,
    }

    def substitute(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in values:
            raise TemplateError(
                f"unknown placeholder {{{{{name}}}}}; known: " + ", ".join(PLACEHOLDERS)
            )
        return values[name]

    return _PLACEHOLDER.sub(substitute, query)


def check_template(query: str) -> None:
    """Raise ``TemplateError`` for unknown placeholders or unbalanced braces."""
    rendered = render(query, selector='job="x"', keys=["job"], service="x")
    if rendered.count("{") != rendered.count("}") or rendered.count("(") != rendered.count(")"):
        raise TemplateError("unbalanced braces or parentheses after templating")


# ----------------------------------------------------------------------------- measuring

NoData = Literal["empty", "nan", "low_traffic", "error", "no_baseline", "no_samples"]


@dataclass(frozen=True)
class Reading:
    """One rule's signal for one service in one tick: a value, or why there is none."""

    value: float | None = None
    no_data: NoData | None = None
    detail: str = ""

    @classmethod
    def of(cls, value: float) -> Reading:
        if math.isnan(value):
            return cls(no_data="nan")
        return cls(value=value)


def readings_from(
    group: Group,
    series: Iterable[tuple[dict[str, str], float]],
    *,
    traffic: set[str] | None = None,
) -> dict[str, Reading]:
    """Match each series to its service; services without a series read ``empty``.

    ``traffic`` is the set of services that passed ``min_traffic`` (None: no filter).
    A service with several series (a ``{{by}}`` the rule forgot) takes the worst, the
    largest value, so a split result cannot hide a breach.
    """
    values: dict[str, float] = {}
    for labels, value in series:
        name = group.service_of(labels)
        if name is None:
            continue
        if name in values and not math.isnan(value) and not math.isnan(values[name]):
            values[name] = max(values[name], value)
        else:
            values.setdefault(name, value)
    readings: dict[str, Reading] = {}
    for name in group.services:
        if traffic is not None and name not in traffic:
            readings[name] = Reading(no_data="low_traffic")
        elif name not in values:
            readings[name] = Reading(no_data="empty")
        else:
            readings[name] = Reading.of(values[name])
    return readings


def failure_ratio(samples: Sequence[tuple[float, bool]], *, now: float, window: float) -> Reading:
    """The share of failed probes among the samples of the last ``window`` seconds."""
    recent = [ok for at, ok in samples if at > now - window]
    if not recent:
        return Reading(no_data="no_samples")
    return Reading(value=recent.count(False) / len(recent))


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Verdict:
    """A reading judged against a rule: breached or not, with the threshold in force."""

    breached: bool
    value: float | None
    threshold: float | None
    no_data: NoData | None = None


def judge(rule: Rule, reading: Reading, *, baseline: float | None) -> Verdict:
    """Compare a reading with the rule's condition; no data is never a breach."""
    if reading.value is None:
        return Verdict(False, None, None, reading.no_data or "empty")
    value = reading.value
    condition = rule.condition
    if condition in ("above_baseline", "below_baseline"):
        # A zero or missing baseline makes any ratio meaningless: no data, not a breach.
        if baseline is None or math.isnan(baseline) or baseline <= 0:
            return Verdict(False, value, None, "no_baseline")
        threshold = baseline * rule.threshold
        breached = value > threshold if condition == "above_baseline" else value < threshold
        return Verdict(breached, value, threshold)
    threshold = rule.threshold
    if condition == "below":
        return Verdict(value < threshold, value, threshold)
    return Verdict(value > threshold, value, threshold)


def breaches(rule: Rule, value: float | None) -> bool | None:
    """Whether ``value`` alone would breach an absolute rule (for baselines); None if unknown."""
    if value is None or math.isnan(value) or rule.uses_baseline:
        return None
    if rule.condition == "below":
        return value < rule.threshold
    return value > rule.threshold


# ----------------------------------------------------------------------------- states

State = Literal["inactive", "pending", "firing", "resolved"]
STATES: tuple[State, ...] = ("inactive", "pending", "firing", "resolved")


@dataclass
class RuleStatus:
    """Where one rule stands for one service; persisted across restarts."""

    state: State = "inactive"
    active_since: float | None = None
    fired_at: float | None = None
    last_value: float | None = None
    last_value_at: float | None = None
    threshold: float | None = None
    baseline: float | None = None
    error_since: float | None = None
    no_data: str | None = None
    samples: list[tuple[float, bool]] = field(default_factory=list)


@dataclass(frozen=True)
class Transition:
    previous: State
    current: State


def step(status: RuleStatus, verdict: Verdict, *, now: float, hold: float) -> Transition | None:
    """Advance the state machine by one tick; returns the transition, if any.

    No data resets a pending rule, as an empty result resets a Prometheus alert's
    ``for``. A firing rule resolves on an empty or NaN result, but a failed query
    (``error``) keeps it firing: the monitoring going away is not a recovery.
    """
    before = status.state
    status.threshold = verdict.threshold if verdict.threshold is not None else status.threshold
    status.no_data = verdict.no_data
    if verdict.value is not None:
        status.last_value, status.last_value_at = verdict.value, now
    if verdict.no_data == "error":
        status.error_since = status.error_since if status.error_since is not None else now
    else:
        status.error_since = None

    if verdict.no_data is not None and verdict.no_data != "no_baseline":
        if before == "firing" and verdict.no_data == "error":
            return None
        after: State = "resolved" if before == "firing" else "inactive"
    elif verdict.no_data == "no_baseline" or not verdict.breached:
        after = "resolved" if before == "firing" else "inactive"
    elif before in ("inactive", "resolved"):
        status.active_since = now
        after = "firing" if hold <= 0 else "pending"
    elif before == "pending":
        assert status.active_since is not None
        after = "firing" if now - status.active_since >= hold else "pending"
    else:
        after = "firing"

    if after in ("inactive", "resolved"):
        status.active_since = None
        status.fired_at = None
    if after == "firing" and before != "firing":
        status.fired_at = now
    status.state = after
    return Transition(before, after) if after != before else None
