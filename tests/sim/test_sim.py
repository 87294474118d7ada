"""The simulated fleet: deploys, exact counters, switches, its command line, and what
the real Prometheus measures from it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollbackd.promserver import PrometheusServer
from rollbackd.sim import Behaviour, Fleet

pytest_plugins = ["tests.support.fixtures"]

BAD = {"v2": Behaviour(error_ratio=0.3, latency=0.05)}


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def samples(fleet: Fleet, service: str) -> dict[str, float]:
    """The service's samples keyed like `requests_500`, `bucket_0.05`, `count`."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(fleet.metrics_text([service])):
        for sample in family.samples:
            if sample.name == "http_requests_total":
                found[f"requests_{sample.labels['code']}"] = sample.value
            elif sample.name.endswith("_bucket"):
                found[f"bucket_{sample.labels['le']}"] = sample.value
            elif sample.name.endswith(("_sum", "_count")):
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def served() -> Iterator[Fleet]:
    with Fleet(["codex-api", "billing"], bad_versions=BAD) as running:
        yield running


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollbackd.sim", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_deploy_switches_the_version_seen_over_http(served: Fleet) -> None:
    """After a deploy, /version, app_build_info and the Python API all name the new one."""
    response = httpx.post(f"{served.url}/codex-api/deploy", params={"version": "v2"})

    assert response.status_code == 200
    assert httpx.get(f"{served.url}/codex-api/version").text.strip() == "v2"
    assert served.version("codex-api") == "v2"
    assert served.version("billing") == "v1"
    assert 'app_build_info{job="codex-api",version="v2"} 1' in served.metrics_text()


def test_counters_are_exact_and_monotonic_across_version_switches(clock: Clock) -> None:
    """Counters follow rate, time and behaviour per stretch and never go down on a deploy."""
    fleet = Fleet(["codex-api"], bad_versions=BAD, rps=20, clock=clock)

    clock.advance(10)
    at_v1 = samples(fleet, "codex-api")
    fleet.deploy("codex-api", "v2")
    clock.advance(10)
    at_v2 = samples(fleet, "codex-api")
    fleet.deploy("codex-api", "v1")
    clock.advance(5)
    back = samples(fleet, "codex-api")

    assert at_v1["requests_200"] == 200
    assert at_v1["requests_500"] == 0
    assert at_v2["requests_200"] == pytest.approx(200 + 140)
    assert at_v2["requests_500"] == pytest.approx(60)
    assert back["requests_500"] == pytest.approx(60)
    assert back["count"] == pytest.approx(500)
    # The v1 requests (0.02 s) fill the 0.025 bucket, the v2 ones (0.05 s) only from 0.05.
    assert back["bucket_0.025"] == pytest.approx(300)
    assert back["bucket_0.05"] == pytest.approx(500)
    assert back["sum"] == pytest.approx(300 * 0.02 + 200 * 0.05)
    for key in at_v1:
        assert at_v1[key] <= at_v2[key] <= back[key], key


def test_outage_fails_requests_whatever_the_version(clock: Clock) -> None:
    """An outage turns the configured share of requests into 500s even on a good version."""
    fleet = Fleet(["codex-api"], outage_error_ratio=0.5, clock=clock)

    fleet.set_outage("codex-api", True)
    clock.advance(10)
    fleet.set_outage("codex-api", False)
    clock.advance(10)

    assert samples(fleet, "codex-api")["requests_500"] == pytest.approx(100)


def test_down_switch_and_an_unhealthy_version_fail_the_health_endpoint(served: Fleet) -> None:
    """`down` and a version configured unhealthy make /healthz answer 503."""
    health = f"{served.url}/billing/healthz"
    assert httpx.get(health).status_code == 200

    assert httpx.post(f"{served.url}/billing/down", params={"on": "1"}).status_code == 200
    assert httpx.get(health).status_code == 503
    served.set_down("billing", False)
    assert httpx.get(health).status_code == 200

    served.set_behaviour("billing", "v3", Behaviour(healthy=False))
    served.deploy("billing", "v3")
    assert httpx.get(health).status_code == 503


def test_unknown_service_and_unsafe_version_are_refused(served: Fleet) -> None:
    """A typo in a service name is a 404 and a version with a space a 400, not a crash."""
    unknown = httpx.post(f"{served.url}/nope/deploy", params={"version": "v2"})
    unsafe = httpx.post(f"{served.url}/codex-api/deploy", params={"version": "v2; rm"})

    assert unknown.status_code == 404
    assert unsafe.status_code == 400
    assert served.version("codex-api") == "v1"


def test_cli_deploy_and_version_drive_a_running_fleet(served: Fleet) -> None:
    """The commands an exec target runs switch the version and print it, exiting 0."""
    deployed = run_cli("deploy", "--url", served.url, "--service", "billing", "v2")
    shown = run_cli("version", "--url", served.url, "--service", "billing")

    assert deployed.returncode == 0, deployed.stderr
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "v2\n"
    assert served.version("billing") == "v2"


def test_cli_failures_exit_non_zero_with_one_line(served: Fleet) -> None:
    """An unknown service or an unreachable fleet is a non-zero exit and a one-line reason."""
    unknown = run_cli("deploy", "--url", served.url, "--service", "nope", "v2")
    with socket.socket() as bound:
        # Bound but not listening: connections are refused and the port stays ours.
        bound.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{bound.getsockname()[1]}"
        unreachable = run_cli("version", "--url", dead, "--service", "billing")

    assert unknown.returncode != 0
    assert unknown.stderr == "sim deploy: HTTP 404: unknown service 'nope'\n"
    assert unreachable.returncode != 0
    assert unreachable.stderr.startswith(f"sim version: cannot reach {dead}/billing/version")
    assert unreachable.stderr.count("\n") == 1


def test_serve_command_serves_until_sigterm() -> None:
    """`serve` prints its URL, answers, and exits 0 on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rollbackd.sim", "serve", "--names", "a,b", "--bad", "v2=0.3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.rsplit(" ", 1)[1].strip()
        assert line.startswith("sim: serving 2 services at http://127.0.0.1:")
        assert httpx.get(f"{url}/b/version").text == "v1\n"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_metrics_for_a_thousand_services_render_quickly() -> None:
    """The benchmark scrapes 1000 services every second; one render must take far less."""
    fleet = Fleet(1000, bad_versions=BAD)
    fleet.deploy("svc-7", "v2")

    started = time.perf_counter()
    text = fleet.metrics_text()
    elapsed = time.perf_counter() - started

    assert text.count("\napp_build_info{") == 1000
    assert elapsed < 0.25


@pytest.mark.integration
def test_error_ratio_measured_through_prometheus_approaches_the_configured_ratio(
    fleet: Fleet, prometheus: PrometheusServer
) -> None:
    """Deploying the bad v2 moves the 5xx ratio Prometheus computes from 0 to about 0.3."""
    ratio = (
        'sum by (job) (rate(http_requests_total{job="svc-2",code="500"}[3s]))'
        ' / sum by (job) (rate(http_requests_total{job="svc-2"}[3s]))'
    )
    assert prometheus.wait_for(f"{ratio} == 0", timeout=20)

    fleet.deploy("svc-2", "v2")

    prometheus.wait_for(f"{ratio} > 0.29 < 0.31", timeout=20)


@pytest.mark.integration
def test_p95_latency_measured_through_prometheus_follows_the_version(
    fleet: Fleet, prometheus: PrometheusServer
) -> None:
    """The bad v2's slower requests show as a higher p95 in histogram_quantile."""
    p95 = (
        "histogram_quantile(0.95, sum by (job, le)"
        ' (rate(http_request_duration_seconds_bucket{job="svc-1"}[3s])))'
    )
    assert prometheus.wait_for(f"{p95} > 0.01 <= 0.025", timeout=20)

    fleet.deploy("svc-1", "v2")

    prometheus.wait_for(f"{p95} > 0.025 <= 0.05", timeout=20)
