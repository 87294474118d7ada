"""The dispatcher: routing, once-per-incident, durable retries, restarts, reminders."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from rollbackd.config import (
    ChannelConfig,
    LogChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
)
from rollbackd.notify.dispatch import Dispatcher, channel_names, routes
from rollbackd.notify.outbox import Outbox
from tests.notify.conftest import (
    ROUTING_KEY,
    SLACK_TOKEN,
    Events,
    FakeClock,
    eventually,
    notification,
)
from tests.notify.standins import Answer, PagerDutyStandIn, Receiver, SlackStandIn

pytestmark = pytest.mark.usefixtures("secrets_env")


def pagerduty_channel(server: PagerDutyStandIn, **extra: Any) -> PagerDutyChannel:
    return PagerDutyChannel(
        kind="pagerduty",
        routing_key_env="TEST_PD_ROUTING_KEY",
        events_url=server.url + "/v2/enqueue",
        change_url=server.url + "/v2/change/enqueue",
        retries=0,
        **extra,
    )


def slack_channel(**extra: Any) -> SlackChannel:
    return SlackChannel(kind="slack", webhook_url_env="TEST_SLACK_WEBHOOK_URL", retries=0, **extra)


def dispatcher(
    channels: list[ChannelConfig], db: Path, events: Events, clock: FakeClock
) -> Dispatcher:
    return Dispatcher(channels, outbox=Outbox(db), on_event=events, clock=clock)


# --------------------------------------------------------------------------- routing


def test_routing_admits_by_impact_action_service_and_mode() -> None:
    """Empty lists admit everything; each list that is set must match."""
    page = notification("page", impact="medium", action="page", mode="shadow")

    assert routes(LogChannel(kind="log"), page)
    assert routes(LogChannel(kind="log", impact=["medium", "high"]), page)
    assert not routes(LogChannel(kind="log", impact=["high"]), page)
    assert not routes(LogChannel(kind="log", action=["rollback"]), page)
    assert not routes(LogChannel(kind="log", mode=["enforce"]), page)
    assert routes(LogChannel(kind="log", services=["codex-*"]), page)
    assert not routes(LogChannel(kind="log", services=["billing"]), page)
    # Notices about rollbackd itself (blind) have no impact and pass impact filters.
    assert routes(LogChannel(kind="log", impact=["high"]), notification("blind", impact=None))


async def test_shadow_goes_to_slack_only_while_enforce_pages_pagerduty(
    pagerduty: PagerDutyStandIn,
    slack: SlackStandIn,
    tmp_path: Path,
    events: Events,
    clock: FakeClock,
) -> None:
    """Routing by mode and impact: shadow to Slack, enforce high impact to PagerDuty."""
    channels: list[ChannelConfig] = [
        slack_channel(mode=["shadow"]),
        pagerduty_channel(pagerduty, mode=["enforce"], impact=["high"]),
    ]
    d = dispatcher(channels, tmp_path / "state.db", events, clock)

    assert d.submit(notification("would_rollback", incident="a", mode="shadow")) == ["slack"]
    assert d.submit(notification("page", incident="b", impact="medium")) == []
    assert d.submit(notification("rollback_started", incident="c")) == ["pagerduty"]
    await d.drain(5)

    assert len(slack.accepted) == 1
    assert "WOULD ROLL BACK" in slack.texts()[0]
    assert [e["dedup_key"] for e in pagerduty.events()] == ["c"]
    await d.aclose()


def test_channels_of_one_kind_get_distinct_names() -> None:
    """Two Slack channels are told apart in events and in the outbox."""
    configs = [slack_channel(), slack_channel(), slack_channel(name="oncall")]
    assert channel_names(configs) == ["slack", "slack-2", "oncall"]
    with pytest.raises(ValueError, match="named 'x'"):
        channel_names([slack_channel(name="x"), slack_channel(name="x")])


# --------------------------------------------------------------------------- incidents


async def test_one_incident_pages_once_however_many_ticks_it_lasts(
    pagerduty: PagerDutyStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """The loop may hand over the same stage every tick; PagerDuty hears it once."""
    d = dispatcher([pagerduty_channel(pagerduty)], tmp_path / "state.db", events, clock)
    for _ in range(10):
        d.submit(notification("rollback_started"))
        clock.advance(15)
        await d.retry_due()
        await d.drain(5)
    d.submit(notification("resolved", resolve=True, severity="info"))
    d.submit(notification("resolved", resolve=True, severity="info"))
    await d.drain(5)

    assert [e["event_action"] for e in pagerduty.events()] == ["trigger", "resolve"]
    assert len(events.named("notification", outcome="delivered")) == 2
    await d.aclose()


async def test_resolve_reaches_every_channel_that_carried_the_incident(
    pagerduty: PagerDutyStandIn,
    slack: SlackStandIn,
    tmp_path: Path,
    events: Events,
    clock: FakeClock,
) -> None:
    """A resolve without impact still ends the page, and skips channels never told."""
    channels: list[ChannelConfig] = [
        pagerduty_channel(pagerduty, impact=["high"]),
        slack_channel(impact=["low"]),
    ]
    d = dispatcher(channels, tmp_path / "state.db", events, clock)
    d.submit(notification("rollback_started"))
    queued = d.submit(notification("resolved", resolve=True, impact=None, action=None))
    await d.drain(5)

    assert queued == ["pagerduty"]
    assert [e["event_action"] for e in pagerduty.events()] == ["trigger", "resolve"]
    assert slack.received == []
    await d.aclose()


# --------------------------------------------------------------------------- delivery


async def test_channel_down_for_a_while_loses_nothing_and_keeps_order(
    pagerduty: PagerDutyStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """Messages queued while PagerDuty is unreachable arrive after it recovers, in order."""
    pagerduty.stop()
    d = dispatcher([pagerduty_channel(pagerduty)], tmp_path / "state.db", events, clock)
    d.submit(notification("rollback_started"))
    await eventually(lambda: bool(events.named("notification", outcome="retrying")))
    d.submit(notification("resolved", resolve=True))
    clock.advance(60)
    await d.retry_due()
    await d.drain(5)
    assert len(events.named("notification", outcome="retrying")) == 2

    pagerduty.start()
    clock.advance(600)
    await d.retry_due()
    await d.drain(5)

    assert [e["event_action"] for e in pagerduty.events()] == ["trigger", "resolve"]
    retrying = events.named("notification", outcome="retrying")[0]
    assert retrying["reason"] == "cannot connect to PagerDuty"
    assert retrying["retry_in"] == 5.0
    await d.aclose()


async def test_messages_survive_a_restart_and_are_delivered_by_the_next_process(
    pagerduty: PagerDutyStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """A daemon restarted while a channel was down still delivers what it had queued."""
    db = tmp_path / "state.db"
    pagerduty.fail_next.append(Answer(503, "unavailable"))
    first = dispatcher([pagerduty_channel(pagerduty)], db, events, clock)
    first.submit(notification("rollback_started"))
    first.submit(notification("resolved", resolve=True))
    await first.drain(5)
    await first.aclose()
    assert pagerduty.events() == []

    clock.advance(600)
    second = dispatcher([pagerduty_channel(pagerduty)], db, events, clock)
    await second.retry_due()
    await second.drain(5)

    assert [e["event_action"] for e in pagerduty.events()] == ["trigger", "resolve"]
    assert second.submit(notification("rollback_started")) == []
    await second.aclose()


async def test_retry_after_from_the_channel_sets_the_next_attempt(
    pagerduty: PagerDutyStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """A rate-limited channel is not retried before the time it asked for."""
    pagerduty.fail_next.append(Answer(429, {"status": "throttled"}, {"Retry-After": "120"}))
    d = dispatcher([pagerduty_channel(pagerduty)], tmp_path / "state.db", events, clock)
    d.submit(notification())
    await d.drain(5)
    assert events.named("notification", outcome="retrying")[0]["retry_in"] == 120

    clock.advance(100)
    assert await d.retry_due() == 0
    clock.advance(21)
    assert await d.retry_due() == 1
    await d.drain(5)
    assert len(pagerduty.events("trigger")) == 1
    await d.aclose()


async def test_slow_channel_delays_neither_the_caller_nor_another_channel(
    receiver: Receiver, slack: SlackStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """While a webhook hangs, submit returns at once and Slack is delivered."""
    receiver.hold.clear()
    channels: list[ChannelConfig] = [
        WebhookChannel(kind="webhook", url=receiver.url, timeout=10),
        slack_channel(),
    ]
    d = dispatcher(channels, tmp_path / "state.db", events, clock)
    started = time.monotonic()
    assert d.submit(notification()) == ["webhook", "slack"]
    assert time.monotonic() - started < 0.5

    await eventually(lambda: len(slack.accepted) == 1)
    await eventually(lambda: len(receiver.received) == 1)
    assert receiver.accepted == []

    receiver.hold.set()
    await d.drain(5)
    assert len(receiver.accepted) == 1
    await d.aclose()


async def test_rejected_message_is_kept_reported_and_not_retried_until_restart(
    slack: SlackStandIn,
    tmp_path: Path,
    events: Events,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A revoked hook is reported once; after a restart with a fixed URL it is delivered."""
    db = tmp_path / "state.db"
    monkeypatch.setenv("TEST_SLACK_WEBHOOK_URL", slack.url + "/services/T0001/B0001/revoked")
    first = dispatcher([slack_channel()], db, events, clock)
    first.submit(notification())
    await first.drain(5)
    clock.advance(3600)
    await first.retry_due()
    await first.drain(5)
    await first.aclose()

    [failed] = events.named("notification_failed")
    assert failed["channel"] == "slack"
    assert "no_service" in failed["reason"]
    assert len(slack.received) == 1
    [row] = Outbox(db).rows()
    assert (row.status, row.attempts) == ("failed", 1)

    monkeypatch.setenv("TEST_SLACK_WEBHOOK_URL", slack.hook_url)
    second = dispatcher([slack_channel()], db, events, clock)
    await second.retry_due()
    await second.drain(5)
    assert len(slack.accepted) == 1
    await second.aclose()


async def test_message_older_than_give_up_after_is_marked_failed(
    pagerduty: PagerDutyStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """After a day undelivered, a message is given up and reported, not sent stale."""
    pagerduty.stop()
    d = dispatcher([pagerduty_channel(pagerduty)], tmp_path / "state.db", events, clock)
    d.submit(notification())
    await d.drain(5)
    pagerduty.start()
    clock.advance(86401)
    await d.retry_due()
    await d.drain(5)

    assert pagerduty.events() == []
    assert "given up" in events.named("notification_failed")[0]["reason"]
    await d.aclose()


async def test_channel_missing_its_secret_fails_its_messages_and_spares_the_others(
    slack: SlackStandIn,
    tmp_path: Path,
    events: Events,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel that cannot be built reports why; the other channels deliver."""
    monkeypatch.delenv("TEST_PD_ROUTING_KEY")
    channels: list[ChannelConfig] = [
        PagerDutyChannel(kind="pagerduty", routing_key_env="TEST_PD_ROUTING_KEY"),
        slack_channel(),
    ]
    d = dispatcher(channels, tmp_path / "state.db", events, clock)
    d.submit(notification())
    await d.drain(5)

    assert len(slack.accepted) == 1
    [failed] = events.named("notification_failed", channel="pagerduty")
    assert "TEST_PD_ROUTING_KEY" in failed["reason"]
    await d.aclose()


# --------------------------------------------------------------------------- reminders


async def test_reminders_follow_repeat_interval_and_stop_at_resolve(
    slack: SlackStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """An open incident is re-announced every repeat_interval, never on every tick."""
    d = dispatcher([slack_channel(repeat_interval="10m")], tmp_path / "state.db", events, clock)
    d.submit(notification("page", action="page"))
    await d.drain(5)

    reminded = []
    for _ in range(80):  # 20 minutes of 15-second ticks
        clock.advance(15)
        reminded += d.remind(notification("page", action="page"))
        await d.retry_due()
        await d.drain(5)
    assert reminded == ["slack", "slack"]
    assert [t.splitlines()[0] for t in slack.texts()] == [
        "📟 *ROLLBACK RECOMMENDED, a person decides* 📟",
        "⏰ *STILL OPEN* ⏰",
        "⏰ *STILL OPEN* ⏰",
    ]

    d.submit(notification("resolved", resolve=True))
    clock.advance(3600)
    assert d.remind(notification("page", action="page")) == []
    await d.aclose()


async def test_no_reminder_piles_up_behind_an_undelivered_message(
    slack: SlackStandIn, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """While a channel is down, reminders wait instead of queueing one per interval."""
    d = dispatcher([slack_channel(repeat_interval="1m")], tmp_path / "state.db", events, clock)
    slack.stop()
    d.submit(notification("page"))
    await d.drain(5)
    clock.advance(3600)
    assert d.remind(notification("page")) == []
    await d.aclose()


# --------------------------------------------------------------------------- secrets


async def test_secrets_never_reach_events_or_logs(
    pagerduty: PagerDutyStandIn,
    slack: SlackStandIn,
    receiver: Receiver,
    tmp_path: Path,
    events: Events,
    clock: FakeClock,
) -> None:
    """Routing key, webhook URL and signing secret stay out of every event and log line."""
    # Receivers that quote what they were sent back in an error are the usual leak.
    receiver.fail_next.append(Answer(400, "bad signature: s3cret-signing-key"))
    pagerduty.fail_next.append(Answer(400, {"errors": [f"unknown key {ROUTING_KEY}"]}))
    slack.fail_next.append(Answer(500, f"rollup_error for {SLACK_TOKEN}"))
    channels: list[ChannelConfig] = [
        pagerduty_channel(pagerduty),
        slack_channel(),
        WebhookChannel(
            kind="webhook", url=receiver.url, secret_env="TEST_WEBHOOK_SECRET", retries=0
        ),
        LogChannel(kind="log"),
    ]
    with structlog.testing.capture_logs() as logs:
        d = dispatcher(channels, tmp_path / "state.db", events, clock)
        d.submit(notification())
        await d.drain(5)
        await d.aclose()

    assert len(events.named("notification_failed")) == 2
    assert len(events.named("notification", outcome="retrying")) == 1
    everything = (
        repr(events.seen)
        + repr(logs)
        + repr([r.last_error for r in Outbox(tmp_path / "state.db").rows()])
    )
    assert "[REDACTED]" in everything
    for secret in (ROUTING_KEY, SLACK_TOKEN, "s3cret-signing-key"):
        assert secret not in everything


# --------------------------------------------------------------------------- outbox


def test_outbox_shares_the_state_file_with_the_loops_own_connection(tmp_path: Path) -> None:
    """A write by the outbox waits for the loop's transaction instead of failing."""
    db = tmp_path / "state.db"
    outbox = Outbox(db)
    loop_db = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    loop_db.execute("CREATE TABLE IF NOT EXISTS services (name TEXT)")
    loop_db.execute("BEGIN IMMEDIATE")
    loop_db.execute("INSERT INTO services VALUES ('codex-api')")

    # The loop holds its write lock for a moment; the outbox's write has to wait it out.
    commit = threading.Timer(0.3, loop_db.execute, args=("COMMIT",))
    started = time.monotonic()
    commit.start()
    outbox.add("slack", notification(), dedup="x", now=1.0)
    waited = time.monotonic() - started
    commit.join()

    assert waited >= 0.25
    assert [r.channel for r in outbox.rows()] == ["slack"]
    assert loop_db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert loop_db.execute("SELECT name FROM services").fetchall() == [("codex-api",)]


def test_deploy_notices_go_only_to_pagerduty_change_events() -> None:
    """A deploy notice reaches PagerDuty with change events on, and no chat channel."""
    from rollbackd.config import PagerDutyChannel, SlackChannel
    from rollbackd.notify.base import Notification
    from rollbackd.notify.dispatch import routes

    notice = Notification(
        stage="notify",
        service="api",
        incident="api-notify-1",
        severity="info",
        summary="api: v2 deployed",
        fields={"change": "deploy"},
    )
    assert routes(
        PagerDutyChannel(kind="pagerduty", routing_key_env="K", change_events=True), notice
    )
    assert not routes(PagerDutyChannel(kind="pagerduty", routing_key_env="K"), notice)
    assert not routes(SlackChannel(kind="slack", webhook_url_env="S"), notice)
