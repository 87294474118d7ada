"""The Markdown incident report written for each incident."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rollbackd.report import write_report
from rollbackd.secrets import remember

TIMELINE: list[dict[str, Any]] = [
    {"ts": "2026-12-01T03:14:00+00:00", "event": "detected", "rule": "error-rate-high"},
    {
        "ts": "2026-12-01T03:14:00+00:00",
        "event": "rule_state",
        "rule": "error-rate-high",
        "state": "pending",
        "value": 0.31,
    },
    {
        "ts": "2026-12-01T03:15:00+00:00",
        "event": "rule_state",
        "rule": "error-rate-high",
        "state": "firing",
        "value": 0.33,
    },
    {
        "ts": "2026-12-01T03:15:00+00:00",
        "event": "decision",
        "action": "rollback",
        "outcome": "blocked:cooldown",
    },
    {
        "ts": "2026-12-01T03:20:00+00:00",
        "event": "decision",
        "action": "rollback",
        "outcome": "executed",
    },
    {"ts": "2026-12-01T03:20:01+00:00", "event": "rollback_started", "to": "v1"},
    {"ts": "2026-12-01T03:21:30+00:00", "event": "rollback_finished", "outcome": "executed"},
    {"ts": "2026-12-01T03:23:00+00:00", "event": "verification", "outcome": "passed"},
    {"ts": "2026-12-01T03:23:00+00:00", "event": "resolved"},
]

FACTS: dict[str, Any] = {
    "summary": "error-rate-high at 0.33, above 0.1 since v2",
    "mode": "enforce",
    "rule": "error-rate-high",
    "impact": "high",
    "value": 0.33,
    "threshold": 0.1,
    "baseline": 0.002,
    "condition": "above",
    "revision": "v2",
    "rollback_to": "v1",
    "action": "rollback",
    "outcome": "executed",
    "attribution": "deploy",
    "command": "./scripts/deploy-rollback.sh v1",
    "checks": [
        {"name": "health", "passed": True, "detail": "200"},
        {"name": "metrics collecting", "passed": True},
    ],
}


def test_report_tells_the_whole_incident(tmp_path: Path) -> None:
    """Timeline, values against threshold and baseline, revisions, guards, checklist."""
    path = write_report(
        tmp_path / "reports",
        incident="codex-api-1",
        service="codex-api",
        timeline=TIMELINE,
        facts=FACTS,
    )
    text = path.read_text()

    assert path == tmp_path / "reports" / "codex-api-1.md"
    assert text.startswith("# Incident codex-api-1: codex-api\n")
    assert "- **Status:** resolved" in text
    assert "- **Duration:** 9m" in text
    for row in (
        "| 2026-12-01T03:14:00+00:00 | detected | rule=error-rate-high |",
        "| 2026-12-01T03:14:00+00:00 | rule error-rate-high pending | value=0.31 |",
        "| 2026-12-01T03:15:00+00:00 | rule error-rate-high firing | value=0.33 |",
        "| 2026-12-01T03:15:00+00:00 | decision | action=rollback, outcome=blocked:cooldown |",
        "| 2026-12-01T03:20:01+00:00 | rollback started | to=v1 |",
        "| 2026-12-01T03:21:30+00:00 | rollback finished | outcome=executed |",
        "| 2026-12-01T03:23:00+00:00 | verification passed | |",
        "| 2026-12-01T03:23:00+00:00 | resolved | |",
        "| error-rate-high | high | 0.33 | above | 0.1 | 0.002 |",
        "| health | passed | 200 |",
    ):
        assert row in text.splitlines()
    assert "- **Running when detected:** v2" in text
    assert "- **Rolled back to:** v1" in text
    assert "## Guards that blocked\n\n- `cooldown`" in text
    assert "- [ ] Update the status page" in text
    assert "- [ ] Plan the forward fix" in text


def test_report_is_rewritten_in_place_as_the_incident_moves_on(tmp_path: Path) -> None:
    """One incident, one file: a later write replaces the earlier one."""
    first = write_report(
        tmp_path, incident="codex-api/1 2", service="codex-api", timeline=TIMELINE[:3], facts={}
    )
    second = write_report(
        tmp_path, incident="codex-api/1 2", service="codex-api", timeline=TIMELINE, facts=FACTS
    )

    assert first == second == tmp_path / "codex-api-1-2.md"
    assert "- **Status:** resolved" in second.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["codex-api-1-2.md"]


def test_report_without_a_blocked_guard_says_so_and_masks_secrets(tmp_path: Path) -> None:
    """An open incident reads as open; a secret in an event is masked in the report."""
    remember("tok-9f8e7d6c5b4a")
    timeline = [
        {
            "ts": "2026-12-01T03:14:00+00:00",
            "event": "notification",
            "reason": "rejected tok-9f8e7d6c5b4a",
        }
    ]
    text = write_report(
        tmp_path, incident="i", service="s", timeline=timeline, facts={}
    ).read_text()

    assert "- **Status:** open" in text
    assert "None: no guard stopped an action." in text
    assert "tok-9f8e7d6c5b4a" not in text
    assert "[REDACTED]" in text
