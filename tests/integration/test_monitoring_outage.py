"""Prometheus going away mid-run is not an incident.

This module has a Prometheus of its own, because its one test stops it and starts it
again (on the same port, with empty storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rollbackd.promserver import PrometheusServer
from rollbackd.sim import Behaviour, Fleet
from tests.integration.daemon import (
    DaemonProcess,
    free_port,
    http_status,
    wait_until,
    write_config,
)

pytest_plugins = ["tests.support.fixtures"]
pytestmark = pytest.mark.integration

SERVICE = "blind-svc"


@pytest.fixture(scope="module")
def fleet_options() -> dict[str, Any]:
    return {"services": [SERVICE], "bad_versions": {"v2": Behaviour(error_ratio=0.5)}}


def test_prometheus_outage_holds_rollbacks_and_daemon_stays_live(
    tmp_path: Path, fleet: Fleet, prometheus: PrometheusServer
) -> None:
    """With Prometheus down: /healthz 200, /readyz 503, blind, and a bad deploy not rolled back."""
    prometheus.wait_for("rate(http_requests_total[10s]) > 0", timeout=30)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path,
        fleet=fleet,
        prometheus_url=prometheus.url,
        service=SERVICE,
        listen=f"127.0.0.1:{port}",
        blind_after="3s",
    )
    with DaemonProcess(config) as daemon:

        def ready_is(status: int) -> bool:
            return http_status(f"{base}/readyz") == status

        # v1 is last known good, so only the monitoring outage can hold a rollback back.
        daemon.wait_for("last_known_good", timeout=25, service=SERVICE, revision="v1")
        wait_until(lambda: ready_is(200), timeout=10, what="/readyz 200", context=daemon.describe)
        assert http_status(f"{base}/healthz") == 200

        prometheus.stop()
        blind = daemon.wait_for("blind", timeout=15, service=SERVICE, blind=True)
        assert "Prometheus" in blind["reason"]
        wait_until(lambda: ready_is(503), timeout=10, what="/readyz 503", context=daemon.describe)
        daemon.wait_for("notification", timeout=10, service=SERVICE, stage="blind")

        # A bad deploy while blind: watched, it would fire within ~4 s and roll back.
        fleet.deploy(SERVICE, "v2")
        daemon.wait_for("revision_change", timeout=10, service=SERVICE, revision="v2")
        daemon.wait_ticks(6, timeout=20)
        assert http_status(f"{base}/healthz") == 200
        assert ready_is(503)
        assert daemon.named("decision", action="rollback") == [], daemon.describe()
        assert daemon.named("rollback_started") == []
        # The health probe does not depend on Prometheus, and v2 answers it.
        assert daemon.named("rule_state", rule="health-failing") == []
        assert fleet.version(SERVICE) == "v2"

        mark = daemon.mark()
        prometheus.start()
        prometheus.wait_ready(timeout=20)
        wait_until(
            lambda: ready_is(200), timeout=20, what="/readyz 200 again", context=daemon.describe
        )
        daemon.wait_for("blind", timeout=10, since=mark, service=SERVICE, blind=False)
        assert http_status(f"{base}/healthz") == 200
        daemon.stop()
