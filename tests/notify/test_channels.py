"""Each channel against a stand-in that checks payloads as the real API does."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import structlog

from rollbackd.config import (
    LogChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
)
from rollbackd.notify import build_notifier
from rollbackd.notify.base import PermanentDeliveryError, TemporaryDeliveryError
from rollbackd.secrets import SecretError
from tests.notify.conftest import ROUTING_KEY, notification
from tests.notify.standins import Answer, PagerDutyStandIn, Receiver, SlackStandIn


def pagerduty_channel(server: PagerDutyStandIn, **extra: object) -> PagerDutyChannel:
    return PagerDutyChannel(
        kind="pagerduty",
        routing_key_env="TEST_PD_ROUTING_KEY",
        events_url=server.url + "/v2/enqueue",
        change_url=server.url + "/v2/change/enqueue",
        **extra,
    )


# --------------------------------------------------------------------------- PagerDuty


@pytest.mark.usefixtures("secrets_env")
async def test_pagerduty_trigger_is_keyed_by_incident_with_severity_and_details(
    pagerduty: PagerDutyStandIn,
) -> None:
    """A page is one PagerDuty alert per incident, with the decision's facts attached."""
    notifier = build_notifier(
        pagerduty_channel(pagerduty, links={"Dashboard": "https://grafana.example/{{ service }}"})
    )
    await notifier.send(notification("rollback_started"))
    await notifier.aclose()

    [event] = pagerduty.events("trigger")
    assert event["dedup_key"] == "codex-api-1"
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["source"] == "codex-api"
    assert event["payload"]["summary"].startswith("ROLLBACK IN PROGRESS: codex-api")
    details = event["payload"]["custom_details"]
    assert details["rule"] == "error-rate-high"
    assert (details["value"], details["threshold"], details["baseline"]) == (0.31, 0.1, 0.002)
    assert (details["revision"], details["rollback_to"]) == ("v2", "v1")
    assert (details["action"], details["outcome"], details["mode"]) == (
        "rollback",
        "executed",
        "enforce",
    )
    assert event["links"] == [{"href": "https://grafana.example/codex-api", "text": "Dashboard"}]


@pytest.mark.usefixtures("secrets_env")
async def test_pagerduty_resolve_ends_the_incident_by_its_key(
    pagerduty: PagerDutyStandIn,
) -> None:
    """When the incident ends, PagerDuty gets a resolve for the same dedup key."""
    notifier = build_notifier(pagerduty_channel(pagerduty))
    await notifier.send(notification("resolved", resolve=True, severity="info"))
    await notifier.aclose()

    assert pagerduty.events("resolve") == [
        {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "codex-api-1"}
    ]


@pytest.mark.usefixtures("secrets_env")
async def test_pagerduty_rate_limit_is_retried_after_the_delay_it_asked_for(
    pagerduty: PagerDutyStandIn,
) -> None:
    """A 429 with Retry-After: 1 is retried once that second has passed, and delivered."""
    pagerduty.fail_next.append(Answer(429, {"status": "throttled"}, {"Retry-After": "1"}))
    notifier = build_notifier(pagerduty_channel(pagerduty, retries=1))
    started = time.monotonic()
    await notifier.send(notification())
    await notifier.aclose()

    assert time.monotonic() - started >= 1.0
    first, second = pagerduty.received
    assert first.raw == second.raw
    assert len(pagerduty.events("trigger")) == 1


@pytest.mark.usefixtures("secrets_env")
async def test_pagerduty_long_retry_after_is_left_to_the_outbox(
    pagerduty: PagerDutyStandIn,
) -> None:
    """A Retry-After of two minutes is not slept through; the error carries the delay."""
    pagerduty.fail_next.append(Answer(429, {"status": "throttled"}, {"Retry-After": "120"}))
    notifier = build_notifier(pagerduty_channel(pagerduty, retries=3))
    with pytest.raises(TemporaryDeliveryError) as caught:
        await notifier.send(notification())
    await notifier.aclose()

    assert caught.value.retry_after == 120
    assert len(pagerduty.received) == 1


@pytest.mark.usefixtures("secrets_env")
async def test_pagerduty_rejected_event_is_a_permanent_error_with_its_reason(
    pagerduty: PagerDutyStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed routing key is a 400 that retrying cannot fix; the reason says why."""
    monkeypatch.setenv("TEST_PD_ROUTING_KEY", "too-short-key")
    notifier = build_notifier(pagerduty_channel(pagerduty, retries=3))
    with pytest.raises(PermanentDeliveryError) as caught:
        await notifier.send(notification())
    await notifier.aclose()

    assert "HTTP 400" in caught.value.reason
    assert "routing_key" in caught.value.reason
    assert len(pagerduty.received) == 1


@pytest.mark.usefixtures("secrets_env")
async def test_pagerduty_sends_change_events_for_rollbacks_and_deploys_when_asked(
    pagerduty: PagerDutyStandIn,
) -> None:
    """Rollbacks and deploys appear on the PagerDuty timeline; a deploy never pages."""
    notifier = build_notifier(pagerduty_channel(pagerduty, change_events=True))
    await notifier.send(notification("rollback_started"))
    await notifier.send(
        notification("notify", incident="", fields={"change": "deploy"}, severity="info")
    )
    await notifier.aclose()

    assert len(pagerduty.events("trigger")) == 1
    summaries = [c["payload"]["summary"] for c in pagerduty.changes()]
    assert summaries == [
        "rollbackd: rollback started of codex-api (v2 → v1)",
        "rollbackd: deploy of codex-api (v2 → v1)",
    ]


async def test_pagerduty_without_its_routing_key_cannot_be_built(
    pagerduty: PagerDutyStandIn,
) -> None:
    """A missing secret is reported by name of the variable, not silently ignored."""
    with pytest.raises(SecretError, match="TEST_PD_ROUTING_KEY"):
        build_notifier(pagerduty_channel(pagerduty))


# --------------------------------------------------------------------------- Slack


def slack_channel(**extra: object) -> SlackChannel:
    return SlackChannel(kind="slack", webhook_url_env="TEST_SLACK_WEBHOOK_URL", **extra)


@pytest.mark.usefixtures("secrets_env")
async def test_slack_rollback_message_carries_the_runbook_fields(slack: SlackStandIn) -> None:
    """The Slack alert names service, issue, impact, ETA and incident commander."""
    notifier = build_notifier(slack_channel(incident_commander="@alice", eta="15m"))
    await notifier.send(notification("rollback_started"))
    await notifier.aclose()

    [text] = slack.texts()
    assert "ROLLBACK IN PROGRESS" in text
    for line in (
        "*Service:* codex-api",
        "*Issue:* error-rate-high at 0.31, above 0.1 since v2",
        "*Impact:* high",
        "*ETA:* 15m",
        "*Incident Commander:* @alice",
        "*Revision:* v2 → v1",
    ):
        assert line in text.splitlines()


@pytest.mark.usefixtures("secrets_env")
async def test_slack_medium_impact_page_includes_the_exact_rollback_command(
    slack: SlackStandIn,
) -> None:
    """A person paged for a medium-impact regression can copy the rollback command."""
    notifier = build_notifier(slack_channel())
    page = notification(
        "page", impact="medium", action="page", severity="warning", fields={"outcome": "executed"}
    )
    await notifier.send(page)
    await notifier.aclose()

    [text] = slack.texts()
    assert "ROLLBACK RECOMMENDED" in text
    assert "*Roll back by hand:* `./scripts/deploy-rollback.sh v1`" in text


@pytest.mark.usefixtures("secrets_env")
async def test_slack_blocked_rollback_says_which_guard_and_why(slack: SlackStandIn) -> None:
    """A blocked rollback tells the reader why nothing was done."""
    notifier = build_notifier(slack_channel())
    blocked = notification(
        "blocked",
        action="rollback",
        fields={"outcome": "blocked:cooldown", "reason": "cooldown: rolled back 4m ago"},
    )
    await notifier.send(blocked)
    await notifier.aclose()

    [text] = slack.texts()
    assert "ROLLBACK BLOCKED" in text
    assert "*Reason:* cooldown: rolled back 4m ago" in text


@pytest.mark.usefixtures("secrets_env")
async def test_slack_escapes_markup_in_values(slack: SlackStandIn) -> None:
    """A reason with < or & shows as written instead of breaking Slack's markup."""
    notifier = build_notifier(slack_channel())
    await notifier.send(notification("blocked", fields={"reason": "p95 <2s & rising"}))
    await notifier.aclose()

    assert "*Reason:* p95 &lt;2s &amp; rising" in slack.texts()[0]


async def test_slack_unknown_hook_is_a_permanent_error(
    slack: SlackStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked webhook (404 no_service) is not retried: it will not come back."""
    monkeypatch.setenv("TEST_SLACK_WEBHOOK_URL", slack.url + "/services/T0001/B0001/revoked")
    notifier = build_notifier(slack_channel(retries=3))
    with pytest.raises(PermanentDeliveryError, match="no_service"):
        await notifier.send(notification())
    await notifier.aclose()
    assert len(slack.received) == 1


@pytest.mark.usefixtures("secrets_env")
async def test_slow_channel_times_out_as_a_temporary_error(slack: SlackStandIn) -> None:
    """A channel that does not answer within its timeout is worth another try later."""
    slack.hold.clear()
    notifier = build_notifier(slack_channel(timeout=0.2, retries=0))
    with pytest.raises(TemporaryDeliveryError, match=r"no answer within 0.2s"):
        await notifier.send(notification())
    slack.hold.set()
    await notifier.aclose()


# --------------------------------------------------------------------------- webhook


@pytest.mark.usefixtures("secrets_env")
async def test_webhook_signature_verifies_with_the_shared_secret(receiver: Receiver) -> None:
    """The receiver can prove the message came from rollbackd and was not altered."""
    channel = WebhookChannel(
        kind="webhook", url=receiver.url + "/hook", secret_env="TEST_WEBHOOK_SECRET"
    )
    notifier = build_notifier(channel)
    await notifier.send(notification("rollback_started"))
    await notifier.aclose()

    [request] = receiver.accepted
    expected = hmac.new(b"s3cret-signing-key", request.raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Rollbackd-Signature"], f"sha256={expected}")
    tampered = request.raw.replace(b"codex-api", b"other-api")
    forged = hmac.new(b"s3cret-signing-key", tampered, hashlib.sha256).hexdigest()
    assert forged != expected

    body = json.loads(request.raw)
    assert (body["stage"], body["service"], body["incident"]) == (
        "rollback_started",
        "codex-api",
        "codex-api-1",
    )
    assert body["text"].startswith("ROLLBACK IN PROGRESS")
    assert "returning it to its previous stable version" in body["status_page"]


async def test_webhook_without_a_secret_is_sent_unsigned(receiver: Receiver) -> None:
    """No secret configured: the body goes out without a signature header."""
    notifier = build_notifier(WebhookChannel(kind="webhook", url=receiver.url))
    await notifier.send(notification(fields={"value": float("nan")}))
    await notifier.aclose()

    [request] = receiver.accepted
    assert "X-Rollbackd-Signature" not in request.headers
    assert request.json["fields"]["value"] is None


# --------------------------------------------------------------------------- log


async def test_log_channel_writes_the_rendered_message_as_an_event() -> None:
    """With no channel configured, the message still appears in the daemon's log."""
    notifier = build_notifier(LogChannel(kind="log"))
    with structlog.testing.capture_logs() as logs:
        await notifier.send(notification("rollback_started"))
    await notifier.aclose()

    [entry] = [e for e in logs if e["event"] == "message"]
    assert entry["log_level"] == "info"
    assert (entry["service"], entry["incident"], entry["stage"]) == (
        "codex-api",
        "codex-api-1",
        "rollback_started",
    )
    assert entry["message"].startswith("ROLLBACK IN PROGRESS\nService: codex-api")
