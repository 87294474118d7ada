"""An async client for the Prometheus HTTP API, on plain httpx.

Why not ``prometheus-api-client``: it is synchronous, sets no timeout by default and
retries a refused connection for about six seconds on its own, so one tick could stall
behind it and our retry policy would be hidden under its own. The API we need is two
endpoints (``/api/v1/query`` and ``/api/v1/query_range``), small enough to speak
directly, with the retry policy kept here where it can be seen and tested.

Errors::

    QueryError                  the query produced no answer; ``reason`` is short
    │                           (raised as is for other refusals: 401, 403, 404; not retried)
    ├── PrometheusUnavailable   temporary, retried: refused connection, timeout, 5xx, 429,
    │                           a body that is not the API's JSON
    └── BadQuery                permanent, never retried: 400 ``bad_data``, 422 (execution
                                error), a result type the caller cannot use

Every error is *no data* to the caller, never a breach; the distinction matters only for
what is logged and whether a retry is worth it.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from rollbackd.signals.probes import describe_transport_error

__all__ = [
    "BadQuery",
    "PrometheusClient",
    "PrometheusUnavailable",
    "QueryError",
    "Series",
    "parse_instant",
]

# A server asking for a long pause must not hold a tick for longer than this.
RETRY_AFTER_CAP = 5.0
# Exponential backoff stops growing here, whatever the number of retries.
BACKOFF_CAP = 5.0
# Queries are logged for debugging; a templated rule for many services can be long.
QUERY_LOG_CHARS = 300

log = structlog.get_logger()


@dataclass(frozen=True)
class Series:
    """One sample of an instant vector: its labels and value (NaN and ±Inf are kept)."""

    labels: dict[str, str]
    value: float


Samples = list[tuple[float, float]]
T = TypeVar("T")


class QueryError(Exception):
    """A query got no usable answer. ``reason`` is short, for events and metrics."""

    def __init__(self, reason: str, *, detail: str = "", status: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}" if detail else reason)


class PrometheusUnavailable(QueryError):
    """Prometheus could not answer now; ``retry_after`` is the pause it asked for, if any."""

    def __init__(
        self,
        reason: str,
        *,
        detail: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, detail=detail, status=status)
        self.retry_after = retry_after


class BadQuery(QueryError):
    """Prometheus rejected the query itself; asking again unchanged will not help."""


class PrometheusClient:
    """Instant and range queries against one Prometheus, with bounded retries.

    ``timeout`` bounds each HTTP request (and is passed to Prometheus as the query
    timeout); ``retries`` is the number of extra attempts after a temporary failure,
    spaced by ``backoff`` seconds doubling each time, or by the server's Retry-After
    (capped at ``RETRY_AFTER_CAP``). ``queries`` counts query requests actually sent,
    retries included. ``sleep`` exists so tests can observe the pauses without waiting.

    Example::

        client = PrometheusClient("http://127.0.0.1:9090")
        for series in await client.query('sum by (job) (rate(http_requests_total[1m]))'):
            print(series.labels["job"], series.value)
        await client.aclose()
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.queries = 0
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=url,
            timeout=timeout,
            headers=headers,
            transport=transport,
            follow_redirects=False,
        )

    async def query(self, promql: str, *, at: float | None = None) -> list[Series]:
        """Evaluate ``promql`` at ``at`` (unix seconds; now when None).

        A vector gives one ``Series`` per element; a scalar gives one ``Series`` with no
        labels. A range vector or a string is ``BadQuery``: rules compare numbers.
        """
        form = {"query": promql, "timeout": f"{self.timeout:g}"}
        if at is not None:
            form["time"] = _format_time(at)
        return await self._request("/api/v1/query", form, promql, parse_instant)

    async def query_range(
        self, promql: str, *, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], Samples]]:
        """Evaluate ``promql`` every ``step`` seconds from ``start`` to ``end``.

        Returns ``(labels, [(timestamp, value), ...])`` per series, as Prometheus
        returns them (a scalar expression comes back as one series without labels).
        """
        form = {
            "query": promql,
            "start": _format_time(start),
            "end": _format_time(end),
            "step": f"{step}",
            "timeout": f"{self.timeout:g}",
        }
        return await self._request("/api/v1/query_range", form, promql, _parse_range)

    async def ready(self) -> bool:
        """Whether Prometheus says it is ready to serve queries; never raises."""
        try:
            response = await self._http.get("/-/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == httpx.codes.OK

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # The retry policy: only PrometheusUnavailable is worth another attempt.

    async def _request(
        self,
        path: str,
        form: dict[str, str],
        promql: str,
        parse: Callable[[dict[str, Any]], T],
    ) -> T:
        """POST ``form`` and ``parse`` the answer, retrying temporary failures.

        Parsing is inside the retried step: a truncated body is as temporary as a 503.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(PrometheusUnavailable),
            stop=stop_after_attempt(self.retries + 1),
            wait=self._delay,
            sleep=self._sleep,
            before_sleep=lambda state: _log_failure(state, promql, self.retries + 1),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return parse(await self._send(path, form))
        except PrometheusUnavailable as exc:
            log.warning(
                "prometheus_query_failed",
                query=promql[:QUERY_LOG_CHARS],
                attempt=retrying.statistics.get("attempt_number"),
                attempts=self.retries + 1,
                next_delay=None,
                reason=exc.reason,
                detail=exc.detail,
                status=exc.status,
            )
            raise
        except QueryError as exc:
            log.warning(
                "prometheus_query_rejected",
                query=promql[:QUERY_LOG_CHARS],
                reason=exc.reason,
                detail=exc.detail,
                status=exc.status,
            )
            raise
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    def _delay(self, state: RetryCallState) -> float:
        """Retry-After when the server gave one (capped), else exponential backoff."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, PrometheusUnavailable) and exc.retry_after is not None:
            return min(exc.retry_after, RETRY_AFTER_CAP)
        return float(min(self.backoff * 2 ** (state.attempt_number - 1), BACKOFF_CAP))

    async def _send(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        """One POST; translate every way it can go wrong into our error tree."""
        self.queries += 1
        try:
            response = await self._http.post(path, data=form)
        except httpx.TimeoutException as exc:
            raise PrometheusUnavailable("timeout", detail=type(exc).__name__) from exc
        except httpx.ConnectError as exc:
            detail = describe_transport_error(exc)
            raise PrometheusUnavailable("connection_failed", detail=detail) from exc
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable("transport_error", detail=type(exc).__name__) from exc
        return _check(response)


def _check(response: httpx.Response) -> dict[str, Any]:
    """The ``data`` member of a successful answer, or the matching ``QueryError``."""
    status = response.status_code
    body = _json(response)
    error = str(body.get("error", "")) if body else response.text[:200]

    if status == httpx.codes.OK:
        if (
            body is None
            or body.get("status") != "success"
            or not isinstance(body.get("data"), dict)
        ):
            raise PrometheusUnavailable(
                "malformed_response", detail=response.text[:200], status=status
            )
        return body["data"]  # type: ignore[no-any-return]
    if status in (httpx.codes.BAD_REQUEST, httpx.codes.UNPROCESSABLE_ENTITY):
        reason = str(body.get("errorType", f"http_{status}")) if body else f"http_{status}"
        raise BadQuery(reason, detail=error, status=status)
    if status == httpx.codes.TOO_MANY_REQUESTS or status >= httpx.codes.INTERNAL_SERVER_ERROR:
        raise PrometheusUnavailable(
            f"http_{status}",
            detail=error,
            status=status,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )
    # 401, 403, 404 and the like: a configuration problem, not a passing one.
    raise QueryError(f"http_{status}", detail=error, status=status)


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def parse_instant(data: Mapping[str, Any]) -> list[Series]:
    """Turn the ``data`` of an instant query answer into ``Series``.

    Public because the test and demo helpers that poll Prometheus read the same shape.
    """
    kind = data.get("resultType")
    result: Any = data.get("result")
    try:
        if kind == "vector":
            return [Series(_labels(item["metric"]), float(item["value"][1])) for item in result]
        if kind == "scalar":
            return [Series({}, float(result[1]))]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PrometheusUnavailable("malformed_response", detail=repr(exc)) from exc
    if kind in ("matrix", "string"):
        raise BadQuery("unexpected_result_type", detail=f"instant query gave a {kind}")
    raise PrometheusUnavailable("malformed_response", detail=f"result type {kind!r}")


def _parse_range(data: Mapping[str, Any]) -> list[tuple[dict[str, str], Samples]]:
    if data.get("resultType") != "matrix":
        raise PrometheusUnavailable(
            "malformed_response", detail=f"range query gave {data.get('resultType')!r}"
        )
    try:
        return [
            (_labels(item["metric"]), [(float(ts), float(value)) for ts, value in item["values"]])
            for item in data["result"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise PrometheusUnavailable("malformed_response", detail=repr(exc)) from exc


def _labels(metric: Any) -> dict[str, str]:
    if not isinstance(metric, dict):
        raise TypeError(f"labels are not an object: {metric!r}")
    return {str(k): str(v) for k, v in metric.items()}


def _format_time(ts: float) -> str:
    return f"{ts:.3f}"


def _retry_after(header: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None if unusable."""
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


def _log_failure(state: RetryCallState, promql: str, attempts: int) -> None:
    """An attempt failed and another will follow: routine, so debug level."""
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.debug(
        "prometheus_query_failed",
        query=promql[:QUERY_LOG_CHARS],
        attempt=state.attempt_number,
        attempts=attempts,
        next_delay=round(delay, 3),
        reason=getattr(exc, "reason", type(exc).__name__),
        detail=getattr(exc, "detail", ""),
        status=getattr(exc, "status", None),
    )
