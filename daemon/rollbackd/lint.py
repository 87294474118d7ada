"""Rule lints and query validation for ``rollbackd check``.

Lints are warnings, printed as ``path:line: warning: ...``; they never change the exit
status, because each describes a rule that works but will mislead at 3 a.m.:

- a ``rate()`` or ``increase()`` window shorter than four scrape intervals
  (``prometheus.scrape_interval``, 15 s by default) holds too few samples: one missed
  scrape and the rule reads *no data* or jumps;
- a ``for`` shorter than two ticks fires on a single tick's reading;
- a ratio (a query with `` / ``) without ``min_traffic`` turns one failed request at
  night into a 100 % error rate.

When the configured Prometheus answers, every rule query and ``min_traffic`` filter is
also run there, rendered for each service group: a query Prometheus rejects (syntax,
unknown function) is a *problem* at the rule's line; a query that returns series
without the labels that name a service is a warning, since those series can never be
matched to one (usually a missing ``{{by}}``). A Prometheus that does not answer only
skips this part, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from rollbackd.config import (
    LoadedRule,
    Problem,
    Rule,
    Settings,
    _line_of,
    _read_yaml,
    format_duration,
    parse_duration,
)
from rollbackd.rules import Group, SelectorError, plan_groups, render
from rollbackd.signals.prometheus import BadQuery, PrometheusClient, QueryError

__all__ = ["lint_rules", "validate_queries", "warning"]

MIN_SAMPLES_IN_WINDOW = 4
MIN_TICKS_FOR = 2
_COUNTER_FUNCTION = re.compile(r"\b(rate|increase)\s*\(")
_RANGE = re.compile(r"\[\s*([0-9][0-9a-z]*)\s*\]")
_RATIO = re.compile(r"\s/\s")


def warning(path: str, line: int | None, message: str) -> Problem:
    """A ``Problem`` that reads as ``path:line: warning: message``."""
    return Problem(path, line, f"warning: {message}")


def lint_rules(settings: Settings, rules: Sequence[LoadedRule]) -> list[Problem]:
    """Warnings about rules that are valid but fragile; see the module docstring."""
    out: list[Problem] = []
    scrape = settings.prometheus.scrape_interval
    tick = settings.interval
    for loaded in rules:
        rule = loaded.rule
        for what in ("query", "min_traffic"):
            text = getattr(rule, what)
            if not text:
                continue
            for function, window in sorted(set(counter_windows(text))):
                if window < MIN_SAMPLES_IN_WINDOW * scrape:
                    out.append(
                        warning(
                            loaded.path,
                            key_line(loaded, what),
                            f"rule '{rule.name}' {what}: {function}() window "
                            f"{format_duration(window)} is shorter than four scrape intervals "
                            f"({MIN_SAMPLES_IN_WINDOW} x {format_duration(scrape)}); one missed "
                            "scrape leaves too few samples",
                        )
                    )
        if rule.for_ < MIN_TICKS_FOR * tick:
            out.append(
                warning(
                    loaded.path,
                    key_line(loaded, "for"),
                    f"rule '{rule.name}': for {format_duration(rule.for_)} is shorter than two "
                    f"ticks ({MIN_TICKS_FOR} x {format_duration(tick)}); a single reading fires it",
                )
            )
        if rule.query and _RATIO.search(rule.query) and not rule.min_traffic:
            out.append(
                warning(
                    loaded.path,
                    key_line(loaded, "query"),
                    f"rule '{rule.name}' is a ratio without min_traffic; at low traffic one "
                    "failed request reads as 100 %",
                )
            )
    return out


def counter_windows(query: str) -> list[tuple[str, float]]:
    """``(function, seconds)`` for each range window given directly to rate() or increase()."""
    out: list[tuple[str, float]] = []
    for found in _COUNTER_FUNCTION.finditer(query):
        depth, end = 1, found.end()
        while end < len(query) and depth:
            depth += {"(": 1, ")": -1}.get(query[end], 0)
            end += 1
        for window in _RANGE.finditer(query, found.end(), end):
            try:
                out.append((found.group(1), parse_duration(window.group(1))))
            except ValueError:
                continue  # a unit we do not parse (y): Prometheus will judge it
    return out


def key_line(loaded: LoadedRule, key: str) -> int:
    """The line of ``key`` inside ``loaded``'s rule, or the rule's own line."""
    tree = _tree(loaded.path)
    items = tree.get("rules") if isinstance(tree, dict) else None
    if isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, dict) and item.get("name") == loaded.rule.name:
                line = _line_of(tree, ("rules", index, key))
                return line or loaded.line
    return loaded.line


@cache
def _tree(path: str) -> Any:
    try:
        return _read_yaml(Path(path))
    except Exception:  # the rules loaded once already; a file gone since is no lint's business
        return None


# ----------------------------------------------------------------------------- Prometheus


async def validate_queries(
    settings: Settings,
    rules: Sequence[LoadedRule],
    *,
    prometheus: PrometheusClient,
    config_path: str,
) -> tuple[list[Problem], list[Problem]]:
    """Run every rule query on ``prometheus``; returns ``(problems, warnings)``."""
    if not await prometheus.ready():
        return [], [
            warning(
                config_path,
                None,
                f"Prometheus at {settings.prometheus.url} does not answer; rule queries were "
                "not validated there",
            )
        ]
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for loaded in rules:
        for what in ("query", "min_traffic"):
            text = getattr(loaded.rule, what)
            if not text:
                continue
            try:
                found = await _validate(loaded.rule, what, text, _groups(settings), prometheus)
            except BadQuery as exc:
                problems.append(
                    Problem(
                        loaded.path,
                        key_line(loaded, what),
                        f"rule '{loaded.rule.name}' {what}: Prometheus rejects it: "
                        f"{exc.detail or exc.reason}",
                    )
                )
                continue
            except QueryError as exc:
                warnings.append(
                    warning(
                        config_path,
                        None,
                        f"Prometheus stopped answering ({exc.reason}); rule queries were not "
                        "all validated",
                    )
                )
                return problems, warnings
            if found:
                warnings.append(warning(loaded.path, key_line(loaded, what), found))
    return problems, warnings


async def _validate(
    rule: Rule, what: str, text: str, groups: list[Group], prometheus: PrometheusClient
) -> str | None:
    """Run ``text`` for each group; a warning about unmatched series, or None."""
    for group in groups:
        series = await prometheus.query(render(text, selector=group.selector, keys=group.keys))
        missing = sorted({k for s in series for k in group.keys if k not in s.labels})
        if missing:
            return (
                f"rule '{rule.name}' {what} returns series without the label "
                f"{', '.join(missing)} that names a service, so they match no service "
                "(is {{by}} missing?)"
            )
    return None


def _groups(settings: Settings) -> list[Group]:
    selectors = {s.name: settings.selector_of(s) for s in settings.services}
    if not selectors:
        # No services yet: a selector that matches nothing still lets Prometheus parse.
        selectors = {"rollbackd-check": f'{settings.service_label}="rollbackd-check"'}
    try:
        return plan_groups(selectors, service_label=settings.service_label)
    except SelectorError:
        return []  # reported by load() already
