"""The ``log`` channel: the rendered message as a structlog event, the default channel.

It cannot fail, so a daemon with no other channel configured still records every
message it would have sent, in the same stream as its other events.
"""

from __future__ import annotations

import structlog

from rollbackd.config import LogChannel
from rollbackd.notify._http import channel_name
from rollbackd.notify.base import Notification
from rollbackd.notify.templates import render

log = structlog.get_logger()


class LogNotifier:
    """Writes each message as the event ``message`` at info level."""

    kind = "log"

    def __init__(self, config: LogChannel) -> None:
        self.config = config
        self.name = channel_name(config)

    async def send(self, notification: Notification) -> None:
        # Named apart from the dispatcher's own ``notification`` delivery event.
        log.info(
            "message",
            channel=self.name,
            stage=notification.stage,
            service=notification.service,
            incident=notification.incident,
            severity=notification.severity,
            mode=notification.mode,
            resolve=notification.resolve,
            message=render(self.config, notification),
        )

    async def aclose(self) -> None:
        return None


def create(config: LogChannel) -> LogNotifier:
    return LogNotifier(config)
