"""The ``webhook`` channel: the notification as JSON to any URL, signed when a secret is set.

The body carries the notification's own fields, the rendered ``text``, a
``status_page`` sentence fit for a public status page, and the channel's links, so a
small receiver can update a status page or open a ticket without templates of its own.

With ``secret_env`` or ``secret_file`` set, the header ``X-Rollbackd-Signature`` is
``sha256=<hex HMAC-SHA256 of the exact body bytes, keyed with the secret>``; the
receiver recomputes it over the raw body before parsing and compares in constant time.
Delivery is at least once: a receiver may see a message again after a retry and can
tell by ``incident`` and ``stage``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx

from rollbackd.config import WebhookChannel
from rollbackd.notify._http import HttpChannel, channel_name, json_safe
from rollbackd.notify.base import Notification
from rollbackd.notify.templates import render, render_links, render_status
from rollbackd.secrets import read_secret

SIGNATURE_HEADER = "X-Rollbackd-Signature"


class WebhookNotifier(HttpChannel):
    """Posts the JSON body, with an HMAC signature header when it has a secret."""

    kind = "webhook"
    config: WebhookChannel

    def __init__(
        self,
        config: WebhookChannel,
        *,
        secret: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(config, transport=transport)
        self._secret = secret

    async def send(self, notification: Notification) -> None:
        raw = json.dumps(
            body(self.config, notification), separators=(",", ":"), allow_nan=False
        ).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "rollbackd"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, raw)
        await self.post(self.config.url, content=raw, headers=headers, what="the webhook")


def body(config: WebhookChannel, notification: Notification) -> dict[str, Any]:
    """What the receiver gets: the notification, its message and a status-page line."""
    result: dict[str, Any] = {
        "version": 1,
        "channel": channel_name(config),
        "stage": notification.stage,
        "service": notification.service,
        "incident": notification.incident,
        "severity": notification.severity,
        "summary": notification.summary,
        "resolve": notification.resolve,
        "impact": notification.impact,
        "action": notification.action,
        "mode": notification.mode,
        "ts": notification.ts,
        "fields": json_safe(notification.fields),
        "text": render(config, notification),
        "status_page": render_status(config, notification),
        "links": render_links(config, notification),
    }
    return result


def signature(secret: str, raw: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``raw`` keyed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def create(config: WebhookChannel) -> WebhookNotifier:
    secret = None
    if config.secret_env or config.secret_file:
        secret = read_secret(
            env=config.secret_env,
            file=config.secret_file,
            what=f"notify channel '{channel_name(config)}' signing secret",
        )
    return WebhookNotifier(config, secret=secret)
