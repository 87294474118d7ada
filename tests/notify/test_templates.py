"""Message templates: the defaults, user overrides, and what ``rollbackd check`` reports."""

from __future__ import annotations

from dataclasses import replace

import pytest
import structlog

from rollbackd.config import (
    AlertmanagerChannel,
    ChannelBase,
    LogChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
)
from rollbackd.notify.templates import (
    STAGES,
    check_templates,
    render,
    render_status,
    sample_notification,
)
from tests.notify.conftest import notification

CHANNELS: list[ChannelBase] = [
    LogChannel(kind="log"),
    SlackChannel(kind="slack"),
    PagerDutyChannel(kind="pagerduty"),
    AlertmanagerChannel(kind="alertmanager", url="http://127.0.0.1:9093"),
    WebhookChannel(kind="webhook", url="http://127.0.0.1:1"),
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("channel", CHANNELS, ids=lambda c: str(getattr(c, "kind", "")))
def test_every_stage_has_a_default_message_in_every_channel(
    channel: ChannelBase, stage: str
) -> None:
    """No stage renders empty or breaks, with all facts given or with none of them."""
    assert render(channel, sample_notification(stage)).strip()
    bare = replace(notification(stage), fields={}, impact=None, action=None, ts="")
    assert render(channel, bare).strip()
    assert render_status(channel, bare).strip()


def test_pagerduty_summary_is_one_line_within_its_limit() -> None:
    """PagerDuty refuses summaries over 1024 characters; ours never are."""
    long = notification(summary="x" * 3000)
    summary = render(PagerDutyChannel(kind="pagerduty"), long)
    assert "\n" not in summary
    assert len(summary) == 1024


def test_override_for_a_stage_wins_over_default_and_built_in() -> None:
    """A stage's own template is used for it; ``default`` for the other stages."""
    channel = SlackChannel(
        kind="slack",
        templates={
            "rollback_started": "Rolling {{ service }} back to {{ rollback_to }}",
            "default": "{{ headline }} on {{ service }}",
        },
    )
    assert render(channel, notification("rollback_started")) == "Rolling codex-api back to v1"
    assert render(channel, notification("resolved", resolve=True)) == "RESOLVED on codex-api"


def test_status_page_sentence_can_be_overridden() -> None:
    """The webhook's status-page text follows the ``status_page`` template."""
    channel = WebhookChannel(
        kind="webhook",
        url="http://127.0.0.1:1",
        templates={"status_page": "{{ service }}: {{ stage }}"},
    )
    assert render_status(channel, notification()) == "codex-api: rollback_started"


def test_check_reports_an_undefined_variable_with_channel_and_stage() -> None:
    """A misspelt variable is found by ``rollbackd check``, naming where it is."""
    channel = SlackChannel(kind="slack", name="oncall", templates={"blocked": "{{ reasn }}"})
    [problem] = check_templates(channel, where="config.yaml:12")
    assert problem == (
        "config.yaml:12: notify channel 'oncall', template 'blocked': "
        "'reasn' is undefined (rendering stage blocked)"
    )


def test_check_reports_a_syntax_error_with_its_line() -> None:
    """A template that does not parse is reported with the line inside the template."""
    channel = SlackChannel(kind="slack", templates={"default": "ok\n{% if service %}open"})
    [problem] = check_templates(channel, where="config.yaml:3")
    assert problem.startswith("config.yaml:3: notify channel 'slack', template 'default': line 2:")


def test_check_reports_a_default_template_that_fails_on_some_stage() -> None:
    """``default`` is tried on every stage, so a stage-specific failure is still found."""
    channel = LogChannel(kind="log", templates={"default": "{{ fields.reason.upper() }}"})
    assert check_templates(channel, where="c.yaml:1") == []
    channel = LogChannel(kind="log", templates={"default": "{{ fields.missing }}"})
    [problem] = check_templates(channel, where="c.yaml:1")
    assert "has no attribute 'missing'" in problem
    assert "(rendering stage rollback_started)" in problem


def test_check_reports_unknown_template_keys_and_unsafe_access() -> None:
    """A misspelt stage name and sandbox escapes are both errors."""
    channel = SlackChannel(
        kind="slack",
        templates={"rollback_start": "x", "page": "{{ service.__class__.__mro__ }}"},
        links={"Dashboard": "https://grafana.example/{{ servce }}"},
    )
    problems = check_templates(channel, where="config.yaml:9")
    assert len(problems) == 3
    assert "unknown template 'rollback_start'" in problems[0]
    assert "unsafe" in problems[1]
    assert "link 'Dashboard': 'servce' is undefined" in problems[2]


def test_valid_overrides_pass_the_check() -> None:
    """The check stays quiet for templates that work, so it can be trusted."""
    channel = SlackChannel(
        kind="slack",
        templates={"page": "{{ service }} {{ value|num }} {{ command or '' }} {{ eta }}"},
        links={"Dashboard": "https://grafana.example/d/x?var-service={{ service }}"},
    )
    assert check_templates(channel, where="config.yaml:1") == []


def test_a_template_failing_at_run_time_falls_back_to_the_default_text() -> None:
    """A message is still sent, in the default wording, and the failure is logged."""
    channel = LogChannel(kind="log", templates={"page": "{{ value + 1 }}"})
    page = notification("page", fields={"value": None})
    with structlog.testing.capture_logs() as logs:
        text = render(channel, page)
    assert text.startswith("ROLLBACK RECOMMENDED")
    assert [e["event"] for e in logs] == ["template_failed"]
