"""The Markdown incident report: what happened, what rollbackd did, what people do next.

The runbook asks for an incident report after every rollback; by the time someone
writes it, the timeline is in a dozen places. rollbackd already holds it, so each
incident writes ``<reports>/<incident>.md``: rewritten in place as the incident moves
on (the file name depends only on the incident id), so its path can go into the
resolve message and always shows the latest state.

Inputs are plain data, so the loop, the demo and a test can all write one:

``timeline``
    the incident's events in order, each a dict with ``ts`` and ``event`` (the event
    names of the event stream: ``rule_state``, ``decision``, ``rollback_started``,
    ``rollback_finished``, ``verification``, ``notification``, ``resolved``, ...) and
    its other fields, which are printed as details.
``facts``
    ``summary``, ``status``, ``mode``; the signals as ``rules`` (a list of dicts with
    ``rule``, ``impact``, ``value``, ``threshold``, ``baseline``, ``condition``) or as
    those keys at the top level; ``revision``, ``rollback_to``, ``last_known_good``;
    ``action``, ``outcome``, ``attribution``; ``guards`` (names of guards that
    blocked; ``blocked:<guard>`` outcomes in the timeline are added); ``checks``
    (verification results: ``name``, ``passed``, ``detail``); ``command``.

Everything printed goes through ``redact``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from rollbackd.config import format_duration
from rollbackd.secrets import redact

RULE_KEYS = ("rule", "impact", "value", "condition", "threshold", "baseline")

_STEP_OF_EVENT = {
    "detected": "detected",
    "revision_change": "revision changed",
    "decision": "decision",
    "rollback_started": "rollback started",
    "rollback_finished": "rollback finished",
    "verification": "verification",
    "notification": "notification",
    "resolved": "resolved",
    "escalated": "escalated",
}

_CHECKLIST = (
    "Confirm the service is healthy from the outside: health endpoint answers 200, "
    "sign-in works, database reads and writes succeed, metrics are arriving, background "
    "jobs are being processed, the admin dashboard and the mobile app connect.",
    "Update the status page, and close the notice once users are no longer affected.",
    "Tell the people who depend on the service what happened and that it is over.",
    "Complete this report: root cause, who was affected and for how long, and what "
    "the rollback changed.",
    "Plan the forward fix, and keep the bad revision from being deployed again before it lands.",
    "Review the rules: did the threshold and `for` catch the problem early enough, "
    "and was every guard that blocked right to do so?",
)


def report_path(folder: str | Path, incident: str) -> Path:
    """Where the report of ``incident`` lives: the same file for the whole incident."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", incident).strip("-.") or "incident"
    return Path(folder) / f"{slug}.md"


def write_report(
    folder: str | Path,
    *,
    incident: str,
    service: str,
    timeline: list[dict[str, Any]],
    facts: dict[str, Any],
) -> Path:
    """Write (or rewrite) the incident's Markdown report; return its path.

    The file is replaced atomically, so a reader never sees half a report.
    """
    path = report_path(folder, incident)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(incident=incident, service=service, timeline=timeline, facts=facts)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def render_report(
    *, incident: str, service: str, timeline: list[dict[str, Any]], facts: dict[str, Any]
) -> str:
    """The report's Markdown text."""
    timeline = [redact(dict(entry)) for entry in timeline]
    facts = redact(dict(facts))
    sections = [
        _heading(incident, service, timeline, facts),
        _timeline(timeline),
        _signals(facts),
        _revisions(facts),
        _guards(facts, timeline),
        _verification(facts),
        _checklist(),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


# --------------------------------------------------------------------------- sections


def _heading(
    incident: str, service: str, timeline: list[dict[str, Any]], facts: dict[str, Any]
) -> str:
    first, last = _span(timeline)
    lines = [f"# Incident {incident}: {service}", ""]
    if facts.get("summary"):
        lines += [str(facts["summary"]), ""]
    rows = [
        ("Service", service),
        ("Status", facts.get("status") or ("resolved" if _has(timeline, "resolved") else "open")),
        ("Mode", facts.get("mode")),
        ("Started", first),
        ("Last update", last),
        ("Duration", _duration(first, last)),
        ("Decision", _decision(facts)),
        ("Attribution", facts.get("attribution")),
    ]
    lines += [f"- **{label}:** {_cell(value)}" for label, value in rows if value]
    return "\n".join(lines)


def _timeline(timeline: list[dict[str, Any]]) -> str:
    lines = ["## Timeline", "", "| time (UTC) | step | details |", "|---|---|---|"]
    for entry in timeline:
        lines.append(_row([_cell(entry.get("ts", "")), _step(entry), _details(entry)]))
    if not timeline:
        lines.append("| | no events recorded | |")
    return "\n".join(lines)


def _signals(facts: dict[str, Any]) -> str:
    rules = facts.get("rules") or ([facts] if facts.get("rule") else [])
    if not rules:
        return ""
    lines = [
        "## Signals",
        "",
        "| rule | impact | value | condition | threshold | baseline |",
        "|---|---|---|---|---|---|",
    ]
    for rule in rules:
        lines.append(_row([_cell(_num(rule.get(key))) for key in RULE_KEYS]))
    return "\n".join(lines)


def _revisions(facts: dict[str, Any]) -> str:
    rows = [
        ("Running when detected", facts.get("revision")),
        ("Rolled back to", facts.get("rollback_to")),
        ("Last known good", facts.get("last_known_good")),
        ("Rollback command", f"`{facts['command']}`" if facts.get("command") else None),
    ]
    found = [f"- **{label}:** {_cell(value)}" for label, value in rows if value]
    return "\n".join(["## Revisions", "", *found]) if found else ""


def _guards(facts: dict[str, Any], timeline: list[dict[str, Any]]) -> str:
    guards = list(facts.get("guards") or [])
    for entry in timeline:
        outcome = str(entry.get("outcome", ""))
        if outcome.startswith("blocked:") and outcome[8:] not in guards:
            guards.append(outcome[8:])
    lines = ["## Guards that blocked", ""]
    lines += [f"- `{g}`" for g in guards] if guards else ["None: no guard stopped an action."]
    return "\n".join(lines)


def _verification(facts: dict[str, Any]) -> str:
    checks = facts.get("checks") or []
    if not checks:
        return ""
    lines = ["## Verification", "", "| check | result | detail |", "|---|---|---|"]
    for check in checks:
        result = "passed" if check.get("passed") else "failed"
        lines.append(_row([_cell(check.get("name")), result, _cell(check.get("detail"))]))
    return "\n".join(lines)


def _checklist() -> str:
    return "\n".join(["## After the incident", "", *(f"- [ ] {item}" for item in _CHECKLIST)])


# --------------------------------------------------------------------------- helpers


def _step(entry: dict[str, Any]) -> str:
    event = str(entry.get("event", ""))
    if event == "rule_state":
        return _cell(f"rule {entry.get('rule', '')} {entry.get('state', '')}".strip())
    if event == "verification":
        verdict = entry.get("outcome") or ("passed" if entry.get("passed") else "failed")
        return _cell(f"verification {verdict}")
    return _cell(_STEP_OF_EVENT.get(event, event.replace("_", " ")))


def _details(entry: dict[str, Any]) -> str:
    skip = {"ts", "event", "service", "incident"}
    if entry.get("event") == "rule_state":
        skip |= {"rule", "state"}
    if entry.get("event") == "verification":
        skip |= {"outcome", "passed"}
    parts = [f"{k}={_num(v)}" for k, v in entry.items() if k not in skip and v not in (None, "")]
    return _cell(", ".join(parts))


def _decision(facts: dict[str, Any]) -> str | None:
    if not facts.get("action"):
        return None
    outcome = f" ({facts['outcome']})" if facts.get("outcome") else ""
    return f"{facts['action']}{outcome}"


def _has(timeline: Iterable[dict[str, Any]], event: str) -> bool:
    return any(entry.get("event") == event for entry in timeline)


def _span(timeline: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    stamps = [str(e["ts"]) for e in timeline if e.get("ts")]
    return (stamps[0], stamps[-1]) if stamps else (None, None)


def _duration(first: str | None, last: str | None) -> str | None:
    if not first or not last:
        return None
    try:
        seconds = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    except (ValueError, TypeError):
        return None
    return format_duration(round(seconds)) if seconds >= 0 else None


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _row(cells: list[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def _cell(value: Any) -> str:
    """A value that cannot break a Markdown table row."""
    text = "" if value is None else str(value)
    return " ".join(text.split()).replace("|", "\\|")
