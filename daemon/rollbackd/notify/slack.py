"""The ``slack`` channel: a Slack incoming webhook, one readable message per stage.

The message is the ``chat`` template (see ``templates``): the runbook's alert with
Service, Issue, Impact, ETA and Incident Commander, the rollback command when a
person has to run it, and the reason when a guard blocked the rollback. It goes out
as ``text`` (what notifications and old clients show) and as one mrkdwn section block.

The webhook URL is a secret (anyone holding it can post), so it is read with
``read_secret`` and never appears in a reason, a log line or an event. Slack answers
404 ``no_service`` for a revoked hook and 400 for a bad payload: both permanent.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from rollbackd.config import SlackChannel
from rollbackd.notify._http import HttpChannel, channel_name
from rollbackd.notify.base import Notification
from rollbackd.notify.templates import render
from rollbackd.secrets import read_secret, remember

BLOCK_TEXT_LIMIT = 3000
"""Slack refuses a section block whose text is longer than this."""


class SlackNotifier(HttpChannel):
    """Posts the rendered message to one incoming webhook."""

    kind = "slack"
    config: SlackChannel

    def __init__(
        self,
        config: SlackChannel,
        *,
        webhook_url: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(config, transport=transport)
        self._url = webhook_url

    async def send(self, notification: Notification) -> None:
        await self.post(self._url, json=payload(self.config, notification), what="Slack")


def payload(config: SlackChannel, notification: Notification) -> dict[str, object]:
    """The JSON body of an incoming-webhook message."""
    text = render(config, notification)
    section = text if len(text) <= BLOCK_TEXT_LIMIT else text[: BLOCK_TEXT_LIMIT - 1] + "…"
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": section}}],
    }


def create(config: SlackChannel) -> SlackNotifier:
    url = read_secret(
        env=config.webhook_url_env,
        file=config.webhook_url_file,
        what=f"notify channel '{channel_name(config)}' webhook URL",
    )
    # The hook's path is the credential; mask it (and its last part) wherever it is quoted.
    path = urlsplit(url).path
    remember(path)
    remember(path.rsplit("/", 1)[-1])
    return SlackNotifier(config, webhook_url=url)
