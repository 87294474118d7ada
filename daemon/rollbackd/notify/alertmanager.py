"""The ``alertmanager`` channel: rollbackd incidents as alerts, so existing routing applies.

Each message posts one alert to ``/api/v2/alerts`` with the labels ``alertname``
(``rollbackd_<rule>``, or ``rollbackd_<stage>`` when no rule is involved), ``service``,
``severity`` and ``incident``. Later stages of the same incident post the same labels,
so Alertmanager updates one alert instead of raising a new one, and the operator's
routes, silences and inhibitions see ordinary alerts.

Alertmanager forgets an alert that is not re-posted: an alert without ``endsAt``
resolves itself after its ``resolve_timeout`` (5 minutes by default). So a firing alert
carries ``endsAt`` = now + 4 times ``repeat_interval`` (1 minute by default), the way
Prometheus does it, and the dispatcher's reminders re-post it every
``repeat_interval``; if rollbackd stops, the alert lapses on its own a few minutes
later rather than firing forever. With ``repeat_interval: null`` no ``endsAt`` is set
and Alertmanager's ``resolve_timeout`` decides.

A resolve posts ``endsAt`` = now for every alert Alertmanager still holds for the
incident (looked up by its ``incident`` label), so an alert whose severity or rule
changed during the episode is ended too, also after a restart of rollbackd.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from rollbackd.config import AlertmanagerChannel
from rollbackd.notify._http import HttpChannel, iso_or_now, json_safe, now_iso
from rollbackd.notify.base import Notification
from rollbackd.notify.templates import STAGES, render, render_links

ANNOTATION_KEYS = (
    "rule",
    "value",
    "threshold",
    "baseline",
    "revision",
    "rollback_to",
    "outcome",
    "command",
    "reason",
    "report",
)


class AlertmanagerNotifier(HttpChannel):
    """Posts, refreshes and ends one alert per incident."""

    kind = "alertmanager"
    config: AlertmanagerChannel

    def __init__(self, config: AlertmanagerChannel, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._base = config.url.rstrip("/")

    async def send(self, notification: Notification) -> None:
        # A reminder is a refresh of the alert as it stood, not a new stage.
        earlier = notification.fields.get("reminder_of")
        if notification.stage == "reminder" and earlier in STAGES:
            notification = dataclasses.replace(notification, stage=earlier)
        if notification.resolve:
            body = await self._resolving(notification)
        else:
            body = [self._firing(notification)]
        await self.post(f"{self._base}/api/v2/alerts", json=body, what="Alertmanager")

    def _firing(self, notification: Notification) -> dict[str, Any]:
        alert: dict[str, Any] = {
            "labels": labels_of(notification),
            "annotations": annotations_of(self.config, notification),
            "startsAt": _start(notification),
        }
        if self.config.repeat_interval:
            lapse = datetime.now(UTC) + timedelta(seconds=4 * self.config.repeat_interval)
            alert["endsAt"] = lapse.isoformat().replace("+00:00", "Z")
        return alert

    async def _resolving(self, notification: Notification) -> list[dict[str, Any]]:
        """End this notification's alert and every other one still open for the incident."""
        ended = now_iso()
        mine = labels_of(notification)
        alerts = [
            {
                "labels": mine,
                "annotations": annotations_of(self.config, notification),
                "startsAt": _start(notification),
                "endsAt": ended,
            }
        ]
        if not notification.incident:
            return alerts
        matcher = 'incident="{}"'.format(notification.incident.replace('"', '\\"'))
        held = await self.request(
            "GET",
            f"{self._base}/api/v2/alerts",
            params={"filter": matcher},
            what="Alertmanager",
        )
        for alert in held if isinstance(held, list) else []:
            found = {str(k): str(v) for k, v in alert.get("labels", {}).items()}
            if found and found != mine:
                alerts.append(
                    {
                        "labels": found,
                        "annotations": alert.get("annotations", {}),
                        "startsAt": alert.get("startsAt") or ended,
                        "endsAt": ended,
                    }
                )
        return alerts


def labels_of(notification: Notification) -> dict[str, str]:
    """The identity of the incident's alert; empty values are left out, as Alertmanager does."""
    name = str(notification.fields.get("rule") or notification.stage)
    found = {
        "alertname": "rollbackd_" + re.sub(r"[^A-Za-z0-9_]", "_", name),
        "service": notification.service,
        "severity": notification.severity,
        "incident": notification.incident,
    }
    return {k: v for k, v in found.items() if v}


def annotations_of(config: AlertmanagerChannel, notification: Notification) -> dict[str, str]:
    """Summary, description, the decision's facts and links; all values are strings."""
    notes = {
        "summary": render(config, notification, style="summary"),
        "description": render(config, notification),
        "stage": notification.stage,
        "mode": notification.mode,
    }
    facts = json_safe({key: notification.fields.get(key) for key in ANNOTATION_KEYS})
    notes.update({k: str(v) for k, v in facts.items() if v is not None and v != ""})
    for text, url in render_links(config, notification).items():
        notes[re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") + "_url"] = url
    return notes


def _start(notification: Notification) -> str:
    """The incident's start if the loop gave it; Alertmanager keeps the earliest anyway."""
    return iso_or_now(notification.fields.get("started_at") or notification.ts)


def create(config: AlertmanagerChannel) -> AlertmanagerNotifier:
    return AlertmanagerNotifier(config)
