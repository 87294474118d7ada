"""Fixtures for the notification tests: stand-in servers, a fake clock, an event sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rollbackd.notify.base import Notification
from tests.notify.standins import PagerDutyStandIn, Receiver, SlackStandIn

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
SLACK_TOKEN = "hooktoken0123456789ABCDEF"


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyStandIn]:
    server = PagerDutyStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    server = SlackStandIn(SLACK_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch, slack: SlackStandIn) -> None:
    """The secrets a deployment would have in its environment."""
    monkeypatch.setenv("TEST_PD_ROUTING_KEY", ROUTING_KEY)
    monkeypatch.setenv("TEST_SLACK_WEBHOOK_URL", slack.hook_url)
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "s3cret-signing-key")


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class Events:
    """Collects what the dispatcher reports through ``on_event``."""

    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, event: str, /, **fields: Any) -> None:
        self.seen.append((event, fields))

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            f for e, f in self.seen if e == event and all(f.get(k) == v for k, v in match.items())
        ]


@pytest.fixture
def events() -> Events:
    return Events()


async def eventually(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, polling with a bound; fail the test otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def notification(stage: str = "rollback_started", **overrides: Any) -> Notification:
    """A typical notification of one incident of codex-api; override any part."""
    fields = {
        "rule": "error-rate-high",
        "value": 0.31,
        "threshold": 0.1,
        "baseline": 0.002,
        "condition": "above",
        "revision": "v2",
        "rollback_to": "v1",
        "action": "rollback",
        "outcome": "executed",
        "command": "./scripts/deploy-rollback.sh v1",
    }
    fields.update(overrides.pop("fields", {}))
    values: dict[str, Any] = {
        "stage": stage,
        "service": "codex-api",
        "incident": "codex-api-1",
        "severity": "critical",
        "summary": "error-rate-high at 0.31, above 0.1 since v2",
        "fields": fields,
        "impact": "high",
        "action": "rollback",
        "mode": "enforce",
        "ts": "2026-12-01T03:15:00+00:00",
    }
    values.update(overrides)
    return Notification(**values)
