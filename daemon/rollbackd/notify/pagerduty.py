"""The ``pagerduty`` channel: Events API v2, one PagerDuty alert per rollbackd incident.

Every message of an incident is a ``trigger`` with ``dedup_key`` = the incident id, so
PagerDuty folds the stages of one episode into one alert (later triggers add to its
log rather than paging again), and the resolve notification sends ``resolve`` with
the same key. Severity is the notification's (``critical``, ``warning``, ``info``),
which the loop derives from impact; the summary is the one-line ``summary`` template,
and ``custom_details`` carry the decision's facts.

With ``change_events: true`` the channel also sends Change Events (their own
endpoint, ``change_url``) for ``rollback_started`` and ``rollback_finished``, and for a
deploy notice: a notification with ``fields["change"] == "deploy"`` becomes only a
Change Event (or nothing, when change events are off), never a page.

The routing key is a secret, read with ``read_secret``; PagerDuty answers 400 with an
``errors`` list for a bad event (permanent) and 429 when rate limited (temporary).
"""

from __future__ import annotations

from typing import Any

import httpx

from rollbackd.config import PagerDutyChannel
from rollbackd.notify._http import HttpChannel, channel_name, iso_or_now, json_safe
from rollbackd.notify.base import Notification, PermanentDeliveryError
from rollbackd.notify.templates import SUMMARY_LIMIT, render, render_links
from rollbackd.secrets import read_secret

CHANGE_STAGES = ("rollback_started", "rollback_finished")

DETAIL_KEYS = (
    "rule",
    "value",
    "threshold",
    "baseline",
    "condition",
    "attribution",
    "revision",
    "rollback_to",
    "outcome",
    "command",
    "reason",
    "report",
)


class PagerDutyNotifier(HttpChannel):
    """Sends trigger and resolve events, and optionally Change Events."""

    kind = "pagerduty"
    config: PagerDutyChannel

    def __init__(
        self,
        config: PagerDutyChannel,
        *,
        routing_key: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(config, transport=transport)
        self._routing_key = routing_key

    async def send(self, notification: Notification) -> None:
        if notification.fields.get("change") == "deploy":
            if self.config.change_events:
                await self._post_change(notification)
            return
        body = event(self.config, notification, routing_key=self._routing_key)
        await self.post(self.config.events_url, json=body, what="PagerDuty")
        if self.config.change_events and notification.stage in CHANGE_STAGES:
            await self._post_change(notification)

    async def _post_change(self, notification: Notification) -> None:
        body = change_event(self.config, notification, routing_key=self._routing_key)
        await self.post(self.config.change_url, json=body, what="PagerDuty change events")


def event(
    config: PagerDutyChannel, notification: Notification, *, routing_key: str
) -> dict[str, Any]:
    """The Events API v2 body for ``notification``: a trigger, or a resolve."""
    if notification.resolve:
        if not notification.incident:
            raise PermanentDeliveryError("a PagerDuty resolve needs an incident id")
        return {
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": notification.incident,
        }
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "payload": {
            "summary": render(config, notification)[:SUMMARY_LIMIT],
            "source": notification.service,
            "severity": notification.severity,
            "timestamp": iso_or_now(notification.ts),
            "component": notification.service,
            "class": str(notification.fields.get("rule") or notification.stage),
            "custom_details": details(notification),
        },
        "client": "rollbackd",
        "links": _links(config, notification),
    }
    if notification.incident:
        body["dedup_key"] = notification.incident
    return body


def change_event(
    config: PagerDutyChannel, notification: Notification, *, routing_key: str
) -> dict[str, Any]:
    """A Change Event: a deploy or rollback shown on the service's timeline."""
    fields = notification.fields
    moved = " → ".join(str(v) for v in (fields.get("revision"), fields.get("rollback_to")) if v)
    what = "deploy" if fields.get("change") == "deploy" else notification.stage.replace("_", " ")
    summary = f"rollbackd: {what} of {notification.service}" + (f" ({moved})" if moved else "")
    return {
        "routing_key": routing_key,
        "payload": {
            "summary": summary[:SUMMARY_LIMIT],
            "source": "rollbackd",
            "timestamp": iso_or_now(notification.ts),
            "custom_details": details(notification),
        },
        "links": _links(config, notification),
    }


def details(notification: Notification) -> dict[str, Any]:
    """The decision's facts, without the empty ones, as strict JSON."""
    facts: dict[str, Any] = {
        "stage": notification.stage,
        "incident": notification.incident,
        "impact": notification.impact,
        "action": notification.action,
        "mode": notification.mode,
    }
    facts.update({key: notification.fields.get(key) for key in DETAIL_KEYS})
    return {k: v for k, v in json_safe(facts).items() if v is not None and v != ""}


def _links(config: PagerDutyChannel, notification: Notification) -> list[dict[str, str]]:
    rendered = render_links(config, notification)
    links = [{"href": url, "text": text} for text, url in rendered.items()]
    report = notification.fields.get("report")
    if isinstance(report, str) and report.startswith(("http://", "https://")):
        links.append({"href": report, "text": "Incident report"})
    return links


def create(config: PagerDutyChannel) -> PagerDutyNotifier:
    key = read_secret(
        env=config.routing_key_env,
        file=config.routing_key_file,
        what=f"notify channel '{channel_name(config)}' routing key",
    )
    return PagerDutyNotifier(config, routing_key=key)
