"""HTTP health probes against a real local server: every failure is a sample, never a crash."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from rollbackd.signals.probes import probe, probe_all


class StandIn(ThreadingHTTPServer):
    """/ok answers 200, /fail 503, /hang never answers, /pair waits for a second caller."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/hang":
            self.server.release.wait(timeout=10)
        if self.path == "/pair":
            self._meet_another_request()
        status = 503 if self.path == "/fail" else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _meet_another_request(self) -> None:
        """Hold until two requests are in flight at once (bounded), recording the peak."""
        with self.server.changed:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
            self.server.changed.notify_all()
            self.server.changed.wait_for(lambda: self.server.in_flight >= 2, timeout=2)
        with self.server.changed:
            self.server.in_flight -= 1


@pytest.fixture
def server() -> Iterator[StandIn]:
    stand_in = StandIn()
    thread = threading.Thread(target=stand_in.serve_forever, daemon=True)
    thread.start()
    yield stand_in
    stand_in.release.set()
    stand_in.shutdown()
    stand_in.server_close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


async def test_expected_status_is_a_healthy_sample(server: StandIn, client) -> None:
    """A 200 from the health endpoint counts as healthy."""
    result = await probe(client, server.url + "/ok")

    assert result.ok
    assert result.status == 200
    assert result.error is None
    assert result.seconds >= 0


async def test_other_status_is_a_failed_sample(server: StandIn, client) -> None:
    """A 503 is a failure that names the status it got and the one it wanted."""
    result = await probe(client, server.url + "/fail")

    assert not result.ok
    assert result.status == 503
    assert result.error == "status 503, expected 200"


async def test_expected_status_can_be_something_else(server: StandIn, client) -> None:
    """A probe configured for 503 (a drained instance, say) is healthy on 503."""
    result = await probe(client, server.url + "/fail", expect_status=503)

    assert result.ok


async def test_a_hanging_endpoint_fails_at_the_timeout(server: StandIn, client) -> None:
    """An endpoint that never answers is a failure after the timeout, not a stuck tick."""
    result = await probe(client, server.url + "/hang", timeout=0.2)

    assert not result.ok
    assert result.status is None
    assert result.error == "timeout after 0.2s"
    assert result.seconds < 2


async def test_a_refused_connection_is_a_failed_sample(client) -> None:
    """Nothing listening on the port is a failure with the reason, not an exception."""
    with socket.socket() as bound:
        # Bound but not listening: connecting is refused, and no one else can take the port.
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/healthz"

        result = await probe(client, url)

    assert not result.ok
    assert result.status is None
    assert result.error is not None
    assert result.error.startswith("connection failed")
    assert "refused" in result.error.lower()


async def test_probe_all_runs_probes_concurrently_within_the_limit(server: StandIn, client) -> None:
    """Several services are probed side by side, never more than `concurrency` at once."""
    probes = {f"svc-{i}": (server.url + "/pair", 200, 5.0) for i in range(6)}
    probes["broken"] = (server.url + "/fail", 200, 5.0)

    results = await probe_all(client, probes, concurrency=2)

    assert list(results) == list(probes)
    assert all(results[f"svc-{i}"].ok for i in range(6))
    assert not results["broken"].ok
    assert server.max_in_flight == 2
