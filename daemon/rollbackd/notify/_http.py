"""What every HTTP channel shares: one POST, its error classification, and its retries.

A channel calls ``HttpChannel.post`` and gets either a 2xx response or one of our
``DeliveryError`` classes, never an httpx exception:

* a timeout, a refused connection, 408, 425, 429 and 5xx are temporary;
* any other 4xx, or a URL httpx cannot use, is permanent;
* ``Retry-After`` (seconds or an HTTP date) travels on the error as ``retry_after``.

Temporary errors are retried inside one send with tenacity, a few times and briefly,
waiting what the server asked for when it asked. A wait longer than
``RETRY_AFTER_CAP`` is not slept through here: the error goes back to the dispatcher,
whose outbox keeps the message and honours the delay on a later tick, so a rate limit
never holds a delivery task for minutes.

Reasons are built from status codes and short body excerpts, never from ``str()`` of
an httpx error: those carry the URL, and a Slack webhook URL is itself a secret.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base

from rollbackd.config import ChannelBase
from rollbackd.notify.base import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from rollbackd.secrets import redact

log = structlog.get_logger()

RETRY_AFTER_CAP = 30.0
"""Longest wait (s) slept inside one send; longer waits are left to the outbox."""

FIRST_WAIT = 0.5
"""First wait (s) between retries when the server named none; doubles, up to MAX_WAIT."""

MAX_WAIT = 4.0

_TEMPORARY_STATUS = {408, 425, 429}


def channel_name(config: ChannelBase) -> str:
    """The name a channel goes by in events and logs: its ``name``, else its kind."""
    kind = str(getattr(config, "kind", "channel"))
    return config.name or kind


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can carry it: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def now_iso() -> str:
    """The current UTC time as ISO 8601, as every API here expects it."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso_or_now(ts: object) -> str:
    """``ts`` if it is an ISO 8601 time (the APIs reject anything else), otherwise now."""
    if isinstance(ts, str) and ts:
        try:
            datetime.fromisoformat(ts)
        except ValueError:
            return now_iso()
        return ts
    return now_iso()


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def classify(response: httpx.Response, *, what: str) -> None:
    """Return for a 2xx response; raise the matching ``DeliveryError`` otherwise."""
    status = response.status_code
    if 200 <= status < 300:
        return
    excerpt = " ".join(response.text.split())[:200]
    reason = redact(f"{what} answered HTTP {status}" + (f": {excerpt}" if excerpt else ""))
    if status in _TEMPORARY_STATUS or status >= 500:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        raise TemporaryDeliveryError(reason, retry_after=retry_after)
    raise PermanentDeliveryError(reason)


class _RetryAfterTooLong(stop_base):
    """Stop retrying in-process when the server asked for a wait the outbox should keep."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = _error_of(retry_state)
        return bool(error and error.retry_after and error.retry_after > RETRY_AFTER_CAP)


def _error_of(retry_state: RetryCallState) -> DeliveryError | None:
    outcome = retry_state.outcome
    if outcome is None or not outcome.failed:
        return None
    error = outcome.exception()
    return error if isinstance(error, DeliveryError) else None


def _wait(retry_state: RetryCallState) -> float:
    error = _error_of(retry_state)
    if error is not None and error.retry_after is not None:
        return min(error.retry_after, RETRY_AFTER_CAP)
    return float(min(FIRST_WAIT * 2 ** (retry_state.attempt_number - 1), MAX_WAIT))


class HttpChannel:
    """Base of the HTTP channels: an httpx client with the channel's timeout and retries.

    ``transport`` exists for tests that need a response a real server cannot easily
    give; everything else goes through a real socket.
    """

    kind: str = "http"

    def __init__(
        self, config: ChannelBase, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.name = channel_name(config)
        self._client = httpx.AsyncClient(
            timeout=config.timeout, follow_redirects=False, transport=transport
        )

    async def post(
        self,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        what: str,
    ) -> httpx.Response:
        """POST with the channel's retries; a 2xx response or a ``DeliveryError``."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TemporaryDeliveryError),
            stop=stop_after_attempt(self.config.retries + 1) | _RetryAfterTooLong(),
            wait=_wait,
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post_once(
                    url, json=json, content=content, headers=headers, what=what
                )
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def request(self, method: str, url: str, *, what: str, **kwargs: Any) -> Any:
        """One request without retries, answered as parsed JSON (for look-ups)."""
        try:
            response = await self._client.request(method, url, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _wrap(exc, what=what, timeout=self.config.timeout) from exc
        classify(response, what=what)
        return response.json()

    async def _post_once(
        self,
        url: str,
        *,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        what: str,
    ) -> httpx.Response:
        try:
            response = await self._client.post(url, json=json, content=content, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _wrap(exc, what=what, timeout=self.config.timeout) from exc
        classify(response, what=what)
        return response

    def _log_retry(self, retry_state: RetryCallState) -> None:
        error = _error_of(retry_state)
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "delivery_attempt_failed",
            channel=self.name,
            attempt=retry_state.attempt_number,
            of=self.config.retries + 1,
            retry_in=round(delay, 3),
            reason=redact(error.reason) if error else "unknown",
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _wrap(exc: Exception, *, what: str, timeout: float) -> DeliveryError:
    """Our error for an httpx failure; the text never includes the URL."""
    if isinstance(exc, httpx.TimeoutException):
        return TemporaryDeliveryError(f"{what} gave no answer within {timeout:g}s")
    if isinstance(exc, httpx.ConnectError):
        return TemporaryDeliveryError(f"cannot connect to {what}")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return PermanentDeliveryError(f"the {what} URL is not usable")
    return TemporaryDeliveryError(f"{what} request failed ({type(exc).__name__})")
