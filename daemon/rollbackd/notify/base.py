"""The one interface every notification channel implements.

The loop turns each decision into a ``Notification`` and hands it to every channel
whose routing admits it. A channel only delivers: it never decides, never blocks the
loop for longer than its timeout, and raises ``DeliveryError`` when it failed so the
loop can keep the message and try again later.

Errors::

    DeliveryError               a message was not delivered
    ├── TemporaryDeliveryError  worth another try (timeouts, 5xx, 429)
    └── PermanentDeliveryError  the channel rejected it (400, bad credentials)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Stage = Literal[
    "rollback_started",
    "rollback_finished",
    "rollback_failed",
    "would_rollback",
    "blocked",
    "page",
    "notify",
    "verification_passed",
    "verification_failed",
    "blind",
    "sight_restored",
    "resolved",
    "reminder",
]


class DeliveryError(Exception):
    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class TemporaryDeliveryError(DeliveryError):
    """The channel may accept the message later (``retry_after`` seconds, if it said)."""


class PermanentDeliveryError(DeliveryError):
    """The channel refused the message; sending it again unchanged will not help."""


@dataclass(frozen=True)
class Notification:
    """One message about one service's incident.

    ``incident`` is stable for the whole episode (it becomes PagerDuty's ``dedup_key``
    and Alertmanager's alert identity); ``severity`` is ``critical``, ``warning`` or
    ``info``; ``resolve`` ends the incident on channels that track incidents.
    ``fields`` holds the decision's facts (rule, value, threshold, baseline,
    revision, rollback_to, action, outcome, mode, command, reason, ...).
    """

    stage: Stage
    service: str
    incident: str
    severity: Literal["critical", "warning", "info"]
    summary: str
    fields: dict[str, Any] = field(default_factory=dict)
    resolve: bool = False
    impact: str | None = None
    action: str | None = None
    mode: str = "shadow"
    ts: str = ""


@runtime_checkable
class Notifier(Protocol):
    """A delivery channel."""

    kind: str

    async def send(self, notification: Notification) -> None:
        """Deliver or raise ``DeliveryError``."""
        ...

    async def aclose(self) -> None: ...
