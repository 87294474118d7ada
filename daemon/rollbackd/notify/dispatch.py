"""Getting every message to every channel that should have it, without holding up the loop.

The loop calls ``submit`` with a notification; the dispatcher picks the channels whose
routing admits it, writes one outbox row per channel, and starts delivery in
background tasks. ``submit`` returns as soon as the rows are written: a slow or
failing channel never delays a rollback, and never delays another channel, because
each (channel, incident) has its own task.

Delivery rules, which the README repeats for users:

* **Order.** The rows of one channel and one incident go out in the order they were
  submitted; a newer one waits while an older one is being retried, so a resolve
  never overtakes its trigger.
* **Temporary failures** (timeouts, refused connections, 429, 5xx) are retried a few
  times within the send, then the row is postponed with exponential backoff, from
  ``first_backoff`` doubling to at most ``max_backoff`` (5 s to 5 min by default), or
  longer when the channel sent ``Retry-After`` (honoured up to ``max_retry_after``).
  ``retry_due`` on every tick resends rows whose time has come, also rows written by
  an earlier process.
* **Permanent failures** (the channel rejected the message: 4xx other than 408, 425
  and 429, an unusable URL, a missing secret) are not retried by the running daemon:
  the row is marked ``failed``, kept, and reported as ``notification_failed``. On the
  next start, failed rows younger than ``give_up_after`` are tried once more, since a
  restart is how a fixed secret or URL takes effect.
* **Giving up.** A row still undelivered ``give_up_after`` (24 h by default) after it
  was written is marked failed and reported: by then the message describes a past
  that a newer message has overtaken. ``give_up_after=None`` keeps trying for ever.
* **Once per incident.** A notification with the same incident, stage and rule as
  one already in the outbox for a channel is not sent again, however many ticks hand
  it over; a resolve is sent once per incident and channel, and only to channels that
  carried the incident (whatever their routing says about the resolve itself).
  ``remind`` is the only way to repeat: it re-notifies a channel with a
  ``repeat_interval`` once that long has passed since the last message queued for
  the incident, and never while an earlier one is still undelivered.

Every attempt's outcome is an event through ``on_event``: ``notification`` with
``outcome`` ``delivered``, ``retrying`` or ``failed``, and ``notification_failed`` when
a row is given up. Every field is passed through ``redact`` first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from rollbackd.config import ChannelBase, ChannelConfig, PagerDutyChannel
from rollbackd.notify import build_notifier
from rollbackd.notify._http import channel_name
from rollbackd.notify.base import (
    DeliveryError,
    Notification,
    Notifier,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from rollbackd.notify.outbox import Outbox, Row
from rollbackd.secrets import redact

log = structlog.get_logger()

PRUNE_AFTER = 7 * 86400.0
"""Delivered rows are kept this long (s) for inspection, then forgotten."""


class EventSink(Protocol):
    def __call__(self, event: str, /, **fields: Any) -> None: ...


def routes(config: ChannelBase, notification: Notification) -> bool:
    """Whether the channel's routing admits ``notification``; an empty list admits all.

    ``services`` entries may be shell patterns (``checkout-*``). A notification that
    has no impact or action (monitoring went blind, say) passes impact and action
    filters; mode and service filters still apply.
    """
    if notification.fields.get("change") == "deploy" and not (
        isinstance(config, PagerDutyChannel) and config.change_events
    ):
        # Deploy notices exist for PagerDuty's change timeline; chat channels would drown.
        return False
    # A notice without impact or action is about rollbackd itself (blind, reminders):
    # impact and action filters do not hold it back, or "rollbackd is blind" could
    # never reach the channel that pages for high impact.
    if config.impact and notification.impact and notification.impact not in config.impact:
        return False
    if config.action and notification.action and notification.action not in config.action:
        return False
    if config.mode and notification.mode not in config.mode:
        return False
    return not config.services or any(
        fnmatch.fnmatchcase(notification.service, pattern) for pattern in config.services
    )


def channel_names(configs: Sequence[ChannelBase]) -> list[str]:
    """Each channel's name: its ``name``, else its kind, numbered when a kind repeats."""
    names: list[str] = []
    for config in configs:
        base = channel_name(config)
        name, n = base, 1
        while name in names:
            if config.name:
                raise ValueError(f"two notify channels are named '{config.name}'")
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


@dataclass
class _Channel:
    name: str
    config: ChannelBase
    notifier: Notifier | None
    unavailable: str | None = None

    @property
    def send_timeout(self) -> float:
        # Every try may take the full timeout, plus the waits between tries.
        return self.config.timeout * (self.config.retries + 1) + 35.0


class Dispatcher:
    """Routes, stores and delivers notifications; see the module docstring for the rules.

    ``channels`` are the ``notify`` entries of the settings; ``build`` turns one into
    a notifier (the factory by default). A channel that cannot be built (a secret is
    missing) still gets its rows, which fail as permanent failures with the reason.
    ``clock`` returns Unix seconds. The dispatcher owns ``outbox`` and closes it in
    ``aclose``.
    """

    def __init__(
        self,
        channels: Sequence[ChannelConfig],
        *,
        outbox: Outbox,
        on_event: EventSink,
        clock: Callable[[], float] = time.time,
        build: Callable[[ChannelConfig], Notifier] = build_notifier,
        first_backoff: float = 5.0,
        max_backoff: float = 300.0,
        max_retry_after: float = 900.0,
        give_up_after: float | None = 86400.0,
    ) -> None:
        self._outbox = outbox
        self._on_event = on_event
        self._clock = clock
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._max_retry_after = max_retry_after
        self._give_up_after = give_up_after
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._last_prune = 0.0
        self._channels: dict[str, _Channel] = {}
        for name, config in zip(channel_names(channels), channels, strict=True):
            self._channels[name] = _build(name, config, build)
        self._recover()

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    # ----------------------------------------------------------------------- the loop's API

    def submit(self, notification: Notification) -> list[str]:
        """Queue ``notification`` for every channel that takes it; the channels' names.

        Returns at once; delivery runs in background tasks. Outside a running event
        loop the rows are only stored, and ``retry_due`` sends them.
        """
        now = self._clock()
        queued = []
        for channel in self._channels.values():
            if not self._admits(channel, notification):
                continue
            row_id = self._outbox.add(
                channel.name, notification, dedup=_dedup(notification), now=now
            )
            if row_id is not None:
                queued.append(channel.name)
                self._start(channel.name, notification.incident)
        return queued

    def remind(self, notification: Notification) -> list[str]:
        """Re-notify an unresolved incident on channels whose ``repeat_interval`` passed.

        Call it on every tick for every open incident with its latest notification;
        a channel is reminded only if it carried the incident before, has no message
        of it still waiting, has not seen it resolved, and its ``repeat_interval``
        has passed since the last message queued for it. Returns the channels reminded.
        """
        if notification.resolve or not notification.incident:
            return []
        now = self._clock()
        reminder = dataclasses.replace(
            notification,
            stage="reminder",
            fields={**notification.fields, "reminder_of": notification.stage},
        )
        reminded = []
        for channel in self._channels.values():
            interval = channel.config.repeat_interval
            if not interval:
                continue
            count, last, waiting, resolved = self._outbox.history(
                channel.name, notification.incident
            )
            if count == 0 or waiting or resolved or (last is not None and now - last < interval):
                continue
            self._outbox.add(channel.name, reminder, dedup=f"reminder@{now:.3f}", now=now)
            reminded.append(channel.name)
            self._start(channel.name, notification.incident)
        return reminded

    async def retry_due(self) -> int:
        """Start delivery of every row whose retry time has come; how many groups started.

        Cheap enough for every tick: one indexed query, and tasks only for groups not
        already being delivered.
        """
        now = self._clock()
        started = 0
        for name, incident in self._outbox.due(now=now):
            if name in self._channels and self._start(name, incident):
                started += 1
        if now - self._last_prune > 3600.0:
            self._last_prune = now
            self._outbox.prune(before=now - PRUNE_AFTER)
        return started

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for deliveries in flight, cancel the rest.

        Cancelled and undelivered rows stay pending in the outbox for the next start.
        Returns how many rows are still pending.
        """
        tasks = list(self._workers.values())
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        return len(self._outbox.pending())

    async def aclose(self) -> None:
        """Stop deliveries (their rows stay pending), close the channels and the outbox.

        Call ``drain`` first to give deliveries in flight a chance to finish.
        """
        await self.drain(0)
        for channel in self._channels.values():
            if channel.notifier is not None:
                await channel.notifier.aclose()
        self._outbox.close()

    # ----------------------------------------------------------------------- delivery

    def _admits(self, channel: _Channel, notification: Notification) -> bool:
        if notification.resolve and notification.incident:
            count, *_ = self._outbox.history(channel.name, notification.incident)
            return count > 0
        return routes(channel.config, notification)

    def _start(self, name: str, incident: str) -> bool:
        """Start the worker of a (channel, incident) group unless it runs already."""
        key = (name, incident)
        if key in self._workers:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._workers[key] = loop.create_task(self._work(key), name=f"notify:{name}:{incident}")
        return True

    async def _work(self, key: tuple[str, str]) -> None:
        """Deliver a group's rows in order until none is left or one must wait."""
        channel = self._channels[key[0]]
        try:
            while True:
                row = self._outbox.head(*key)
                if row is None or row.next_attempt > self._clock():
                    return
                if not await self._attempt(channel, row):
                    return
        finally:
            # No await between the last query and this removal: submit() either sees
            # this worker (whose loop will find its row) or starts a new one.
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]

    async def _attempt(self, channel: _Channel, row: Row) -> bool:
        """One delivery of ``row``; True when the next row of the group may follow."""
        notification = row.notification
        now = self._clock()
        if self._give_up_after is not None and now - row.created > self._give_up_after:
            reason = f"not delivered within {self._give_up_after:g}s; given up"
            self._give_up(channel.name, row, notification, reason, attempted=False)
            return True
        try:
            if channel.notifier is None:
                raise PermanentDeliveryError(channel.unavailable or "channel unavailable")
            async with asyncio.timeout(channel.send_timeout):
                await channel.notifier.send(notification)
        except PermanentDeliveryError as exc:
            self._give_up(channel.name, row, notification, exc.reason, attempted=True)
            return True
        except TemporaryDeliveryError as exc:
            self._postpone(channel.name, row, notification, exc)
            return False
        except TimeoutError:
            error = TemporaryDeliveryError(f"no answer within {channel.send_timeout:g}s")
            self._postpone(channel.name, row, notification, error)
            return False
        except Exception as exc:
            # A bug in a channel must not end delivery for good; it is retried like an
            # outage, and the traceback goes to the log for whoever fixes it.
            log.exception("notifier_crashed", channel=channel.name, service=row.service)
            error = TemporaryDeliveryError(f"{type(exc).__name__} in the {channel.name} channel")
            self._postpone(channel.name, row, notification, error)
            return False
        self._outbox.delivered(row.id, now=self._clock())
        self._emit("notification", channel.name, notification, "delivered", row.attempts + 1)
        return True

    def _postpone(
        self, name: str, row: Row, notification: Notification, error: DeliveryError
    ) -> None:
        attempts = row.attempts + 1
        delay = min(self._first_backoff * 2 ** (attempts - 1), self._max_backoff)
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self._max_retry_after))
        self._outbox.postpone(row.id, reason=redact(error.reason), until=self._clock() + delay)
        self._emit(
            "notification",
            name,
            notification,
            "retrying",
            attempts,
            reason=error.reason,
            retry_in=round(delay, 3),
        )

    def _give_up(
        self, name: str, row: Row, notification: Notification, reason: str, *, attempted: bool
    ) -> None:
        self._outbox.failed(row.id, reason=redact(reason), now=self._clock(), attempted=attempted)
        attempts = row.attempts + int(attempted)
        self._emit("notification", name, notification, "failed", attempts, reason=reason)
        self._emit("notification_failed", name, notification, None, attempts, reason=reason)

    def _emit(
        self,
        event: str,
        channel: str,
        notification: Notification,
        outcome: str | None,
        attempts: int,
        **extra: Any,
    ) -> None:
        fields: dict[str, Any] = {
            "channel": channel,
            "stage": notification.stage,
            "service": notification.service,
            "incident": notification.incident,
            "severity": notification.severity,
            "summary": notification.summary,
            "attempts": attempts,
            **extra,
        }
        # The facts a reader of the event stream needs without the channel's text.
        for key in ("rule", "blocked_by", "command", "rollback_to", "revision"):
            if notification.fields.get(key) is not None:
                fields.setdefault(key, notification.fields[key])
        if outcome is not None:
            fields["outcome"] = outcome
        try:
            self._on_event(event, **redact(fields))
        except Exception:
            # Recording must never stop delivery; the failure itself is logged.
            log.exception("event_sink_failed", event_name=event, channel=channel)

    # ----------------------------------------------------------------------- start-up

    def _recover(self) -> None:
        """Apply the start-up rules: retry recent failures, report orphaned rows."""
        now = self._clock()
        if self._give_up_after is not None:
            requeued = self._outbox.requeue_failed(since=now - self._give_up_after, now=now)
            if requeued:
                log.info("notifications_requeued", rows=requeued)
        for row in self._outbox.pending():
            if row.channel not in self._channels:
                reason = f"channel '{row.channel}' is no longer configured"
                self._give_up(row.channel, row, row.notification, reason, attempted=False)


def _build(
    name: str, config: ChannelConfig, build: Callable[[ChannelConfig], Notifier]
) -> _Channel:
    """The channel with its notifier, or without one and the reason it could not be made."""
    try:
        return _Channel(name, config, build(config))
    except Exception as exc:
        reason = redact(f"channel unavailable: {exc}")
        log.warning("notifier_unavailable", channel=name, reason=reason)
        return _Channel(name, config, None, reason)


def _dedup(notification: Notification) -> str:
    """What makes two notifications of one incident the same message."""
    if notification.resolve:
        return "resolve"
    return f"{notification.stage}|{notification.fields.get('rule') or ''}"
