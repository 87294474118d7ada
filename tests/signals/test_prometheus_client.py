"""The Prometheus client: answers, error classes and the retry policy.

The mock-transport tests cover only what a real Prometheus will not readily produce
(NaN samples, broken bodies, 429 and 503 answers); everything else runs against the
real Prometheus scraping a simulated fleet.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import LogCapture

from rollbackd.promserver import PrometheusServer
from rollbackd.signals.prometheus import (
    RETRY_AFTER_CAP,
    BadQuery,
    PrometheusClient,
    PrometheusUnavailable,
    QueryError,
    Series,
)
from rollbackd.sim import Fleet

pytest_plugins = ["tests.support.fixtures"]

Handler = Callable[[httpx.Request], httpx.Response]


def vector(*samples: tuple[dict[str, str], str]) -> httpx.Response:
    result = [{"metric": labels, "value": [1700000000.0, value]} for labels, value in samples]
    body = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return httpx.Response(200, json=body)


def scripted(*responses: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering with ``responses`` in order, recording the requests."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return httpx.MockTransport(handle), seen


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(sleeps: list[float]) -> Callable[..., PrometheusClient]:
    async def record(delay: float) -> None:
        sleeps.append(delay)

    def make(transport: httpx.AsyncBaseTransport, **options: Any) -> PrometheusClient:
        return PrometheusClient(
            "http://prometheus.test", transport=transport, sleep=record, **options
        )

    return make


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Every structlog event, debug included, whatever the suite configured before."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    yield capture
    structlog.configure(**saved)


# What only a mock transport can show.


async def test_nan_and_infinite_samples_are_kept_as_floats(make_client) -> None:
    """A NaN or infinite sample reaches the caller as a float, to be judged as no data."""
    transport, _ = scripted(
        vector(({"job": "a"}, "NaN"), ({"job": "b"}, "+Inf"), ({"job": "c"}, "-Inf"))
    )
    client = make_client(transport)

    result = await client.query("ratio")

    values = {series.labels["job"]: series.value for series in result}
    assert math.isnan(values["a"])
    assert values["b"] == math.inf
    assert values["c"] == -math.inf


async def test_malformed_body_is_unavailable_after_the_configured_retries(
    make_client, sleeps
) -> None:
    """A body that is not the API's JSON is retried with doubling pauses, then given up."""
    transport, seen = scripted(httpx.Response(200, text="<html>proxy error</html>"))
    client = make_client(transport, retries=2, backoff=0.2)

    with pytest.raises(PrometheusUnavailable) as caught:
        await client.query("up")

    assert caught.value.reason == "malformed_response"
    assert len(seen) == client.queries == 3
    assert sleeps == pytest.approx([0.2, 0.4])


async def test_rate_limited_query_waits_as_long_as_told_then_succeeds(make_client, sleeps) -> None:
    """A 429 with Retry-After pauses for that long before the next attempt."""
    transport, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "3"}, text="slow down"),
        vector(({"job": "a"}, "1")),
    )
    client = make_client(transport)

    result = await client.query("up")

    assert result == [Series({"job": "a"}, 1.0)]
    assert sleeps == [3.0]
    assert client.queries == 2


async def test_a_long_retry_after_is_capped(make_client, sleeps) -> None:
    """A server asking for an hour's pause cannot hold a tick for more than a few seconds."""
    transport, _ = scripted(httpx.Response(503, headers={"Retry-After": "3600"}))
    client = make_client(transport, retries=2)

    with pytest.raises(PrometheusUnavailable) as caught:
        await client.query("up")

    assert caught.value.reason == "http_503"
    assert sleeps == [RETRY_AFTER_CAP, RETRY_AFTER_CAP]


async def test_unavailable_once_then_answered_returns_the_answer_and_logs_the_retry(
    make_client, sleeps, logs
) -> None:
    """One 503 costs one retry, logged with the attempt and the pause before the next."""
    transport, _ = scripted(httpx.Response(503, text="busy"), vector(({"job": "a"}, "0.5")))
    client = make_client(transport, backoff=0.2)

    result = await client.query("up")

    assert result == [Series({"job": "a"}, 0.5)]
    assert sleeps == [0.2]
    failures = [e for e in logs.entries if e["event"] == "prometheus_query_failed"]
    assert failures == [
        {
            "event": "prometheus_query_failed",
            "log_level": "debug",
            "query": "up",
            "attempt": 1,
            "attempts": 3,
            "next_delay": 0.2,
            "reason": "http_503",
            "detail": "busy",
            "status": 503,
        }
    ]


async def test_authorization_header_is_sent_but_never_logged(make_client, logs) -> None:
    """The bearer token reaches Prometheus and appears in no log event, even on failure."""
    transport, seen = scripted(httpx.Response(502, text="bad gateway"))
    client = make_client(transport, headers={"Authorization": "Bearer s3cr3t-token"})

    with pytest.raises(PrometheusUnavailable):
        await client.query("up")

    assert seen[0].headers["Authorization"] == "Bearer s3cr3t-token"
    assert logs.entries, "failures should have been logged"
    assert "s3cr3t" not in json.dumps(logs.entries, default=str)


async def test_unauthorized_is_a_query_error_that_is_not_retried(make_client, sleeps) -> None:
    """A 401 is a configuration problem: reported at once, not retried."""
    transport, seen = scripted(httpx.Response(401, text="unauthorized"))
    client = make_client(transport)

    with pytest.raises(QueryError) as caught:
        await client.query("up")

    assert type(caught.value) is QueryError
    assert caught.value.reason == "http_401"
    assert len(seen) == 1
    assert sleeps == []


async def test_a_hanging_prometheus_is_unavailable_after_the_timeout() -> None:
    """A server that accepts and never answers costs at most timeout per attempt."""
    with socket.socket() as listener:
        # Listening without ever accepting: the kernel completes the handshake, then
        # nothing is ever read or written.
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = PrometheusClient(url, timeout=0.2, retries=1, backoff=0.01)

        with pytest.raises(PrometheusUnavailable) as caught:
            await client.query("up")
        await client.aclose()

    assert caught.value.reason == "timeout"
    assert client.queries == 2


# Against the real Prometheus, scraping the simulated fleet.


@pytest.fixture
async def client(prometheus: PrometheusServer) -> AsyncIterator[PrometheusClient]:
    async with PrometheusClient(prometheus.url, backoff=0.01) as connected:
        yield connected


@pytest.mark.integration
async def test_vector_query_gives_one_series_per_service_matched_by_job(
    client: PrometheusClient, fleet: Fleet
) -> None:
    """A `sum by (job)` query answers every service, each recognisable by its job label."""
    result = await client.query("sum by (job) (http_requests_total)")

    assert {series.labels["job"] for series in result} == set(fleet.services)
    assert all(series.labels.keys() == {"job"} for series in result)
    assert all(series.value >= 0 for series in result)


@pytest.mark.integration
async def test_scalar_query_is_one_series_without_labels(
    client: PrometheusClient, fleet: Fleet
) -> None:
    """A scalar answer becomes one unlabelled sample."""
    result = await client.query("scalar(count(app_build_info))")

    assert result == [Series({}, float(len(fleet.services)))]


@pytest.mark.integration
async def test_instant_query_can_be_evaluated_at_a_past_time(client: PrometheusClient) -> None:
    """`at` sets the evaluation time, as baselines read from history need."""
    result = await client.query("time()", at=1_700_000_000.5)

    assert result == [Series({}, 1_700_000_000.5)]


@pytest.mark.integration
async def test_bad_query_is_bad_query_and_sent_only_once(client: PrometheusClient) -> None:
    """A syntax error is reported as a bad query at once, without a retry."""
    with pytest.raises(BadQuery) as caught:
        await client.query("sum(rate(http_requests_total[1m])")

    assert caught.value.reason == "bad_data"
    assert "parse error" in caught.value.detail
    assert client.queries == 1


@pytest.mark.integration
async def test_range_vector_in_an_instant_query_is_bad_query(client: PrometheusClient) -> None:
    """A rule whose query yields a range vector is a mistake in the rule, not no data."""
    with pytest.raises(BadQuery) as caught:
        await client.query("app_build_info[1m]")

    assert caught.value.reason == "unexpected_result_type"


@pytest.mark.integration
async def test_query_range_returns_timestamped_samples_per_service(
    client: PrometheusClient, fleet: Fleet, prometheus: PrometheusServer
) -> None:
    """History comes back as one list of (time, value) per service, oldest first."""
    latest = prometheus.wait_for("timestamp(app_build_info)")[0].value

    result = await client.query_range("app_build_info", start=latest - 2, end=latest, step=1)

    assert {labels["job"] for labels, _ in result} == set(fleet.services)
    for _, samples in result:
        times = [ts for ts, _ in samples]
        assert times == sorted(times)
        assert times[-1] == pytest.approx(latest)
        assert {value for _, value in samples} == {1.0}


@pytest.mark.integration
async def test_stopped_prometheus_is_unavailable_after_the_configured_retries() -> None:
    """Once Prometheus stops, a query fails as unavailable after exactly retries + 1 tries."""
    with PrometheusServer([]) as server:
        client = PrometheusClient(server.url, retries=2, backoff=0.01)
        assert await client.query("1") == [Series({}, 1.0)]
        assert await client.ready()
        server.stop()

        with pytest.raises(PrometheusUnavailable) as caught:
            await client.query("1")
        ready = await client.ready()
        await client.aclose()

    assert caught.value.reason == "connection_failed"
    assert caught.value.detail == "connection refused"
    assert client.queries == 1 + 3
    assert ready is False
