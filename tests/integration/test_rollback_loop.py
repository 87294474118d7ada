"""The daemon as a process against a real Prometheus scraping a simulated fleet.

Each test runs ``rollbackd run`` on a service of its own in the module's shared fleet
(one Prometheus per module: its first scrape takes ~5 s), drives the fleet the way a
deploy or an outage would, and follows the daemon's JSON events. Windows are short
(1 s ticks, 10 s rates, 2 s holds, 5 s bake) so each scenario takes seconds.

Timing the scenarios rely on: a v2 failing half its requests pushes the 10 s error
ratio over 10 % (pending) about 2 s after the deploy is seen and fires 2 s later; a
pending high-impact rule stops the 5 s bake, so v2 never becomes last known good.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from rollbackd.promserver import PrometheusServer
from rollbackd.sim import Behaviour, Fleet
from tests.integration.daemon import DaemonProcess, iter_audit, write_config

pytest_plugins = ["tests.support.fixtures"]
pytestmark = pytest.mark.integration

SERVICES = [
    "rollback-svc",
    "shadow-svc",
    "outage-svc",
    "spike-svc",
    "restart-svc",
    "failing-svc",
    "sigterm-svc",
    "paused-svc",
]
BAD = Behaviour(error_ratio=0.5)
# Bounds for waits: generous against a loaded 2-core machine, never reached when green.
BAKE_WAIT = 25.0
DETECT_WAIT = 25.0


@pytest.fixture(scope="module")
def fleet_options() -> dict[str, Any]:
    return {"services": SERVICES, "bad_versions": {"v2": BAD}}


@pytest.fixture(scope="module")
def prom_url(prometheus: PrometheusServer) -> str:
    """The shared Prometheus, once it has enough samples for a 10 s rate."""
    prometheus.wait_for("rate(http_requests_total[10s]) > 0", timeout=30)
    return prometheus.url


def paged(daemon: DaemonProcess, service: str, stage: str) -> dict[str, Any]:
    """The log channel's ``message`` for a page of ``stage``, once its delivery is recorded."""
    daemon.wait_for("notification", timeout=10, service=service, stage=stage, outcome="delivered")
    return daemon.wait_for("message", timeout=5, service=service, stage=stage)


def started_on_v1(daemon: DaemonProcess, service: str, *, baked: bool) -> None:
    """Wait until the daemon has seen v1 (and, when ``baked``, made it last known good)."""
    daemon.wait_for("revision_change", timeout=15, service=service, revision="v1")
    if baked:
        daemon.wait_for("last_known_good", timeout=BAKE_WAIT, service=service, revision="v1")


def test_bad_deploy_is_rolled_back_to_last_known_good(
    tmp_path: Path, fleet: Fleet, prom_url: str
) -> None:
    """A deploy that fails half its requests is rolled back to the baked v1 and verified."""
    service = "rollback-svc"
    config = write_config(tmp_path, fleet=fleet, prometheus_url=prom_url, service=service)
    with DaemonProcess(config) as daemon:
        started_on_v1(daemon, service, baked=True)

        fleet.deploy(service, "v2")
        change = daemon.wait_for("revision_change", timeout=10, service=service, revision="v2")
        assert change["previous"] == "v1"
        assert change["last_known_good"] == "v1"

        decision = daemon.wait_for(
            "decision", timeout=DETECT_WAIT, service=service, action="rollback"
        )
        assert decision["rule"] == "error-rate-high"
        assert decision["attribution"] == "deploy"
        assert decision["revision"] == "v2"
        assert decision["rollback_to"] == "v1"
        assert decision["mode"] == "enforce"
        assert decision["outcome"] == "executed", daemon.describe()
        finished = daemon.wait_for("rollback_finished", timeout=5, service=service)
        assert finished["outcome"] == "executed"
        assert fleet.version(service) == "v1"

        verification = daemon.wait_for("verification", timeout=45, service=service)
        assert verification["outcome"] == "passed", daemon.describe()
        assert verification["revision"] == "v1"
        daemon.stop()

    audited = [e["event"] for e in iter_audit(tmp_path / "audit.jsonl")]
    assert "decision" in audited
    assert "verification" in audited


def test_shadow_mode_logs_would_execute_and_changes_nothing(
    tmp_path: Path, fleet: Fleet, prom_url: str
) -> None:
    """With --mode shadow the same bad deploy is reported as would_execute and stays on v2."""
    service = "shadow-svc"
    config = write_config(tmp_path, fleet=fleet, prometheus_url=prom_url, service=service)
    with DaemonProcess(config, args=("--mode", "shadow")) as daemon:
        started_on_v1(daemon, service, baked=True)

        fleet.deploy(service, "v2")
        decision = daemon.wait_for(
            "decision", timeout=DETECT_WAIT, service=service, action="rollback"
        )
        assert decision["outcome"] == "would_execute"
        assert decision["mode"] == "shadow"
        assert decision["rollback_to"] == "v1"
        paged(daemon, service, "would_rollback")

        # Give a would-be rollback every chance to show up before looking.
        mark = daemon.mark()
        daemon.wait_ticks(2, timeout=10)
        assert daemon.named("rollback_started") == []
        assert daemon.named("decision", since=mark, outcome="executed", action="rollback") == []
        assert fleet.version(service) == "v2"
        daemon.stop()


def test_outage_without_deploy_pages_and_keeps_revision(
    tmp_path: Path, fleet: Fleet, prom_url: str
) -> None:
    """Errors with no recent revision change page a human (external) and never roll back."""
    service = "outage-svc"
    config = write_config(tmp_path, fleet=fleet, prometheus_url=prom_url, service=service)
    with DaemonProcess(config) as daemon:
        started_on_v1(daemon, service, baked=False)

        fleet.set_outage(service, True)
        try:
            decision = daemon.wait_for(
                "decision", timeout=DETECT_WAIT, service=service, rule="error-rate-high"
            )
            assert decision["action"] == "page", daemon.describe()
            assert decision["attribution"] == "external"
            assert decision["outcome"] == "executed"
            page = paged(daemon, service, "page")
            assert page["severity"] == "critical"

            daemon.wait_ticks(2, timeout=10)
            assert daemon.named("decision", action="rollback") == []
            assert daemon.named("rollback_started") == []
            assert fleet.version(service) == "v1"
        finally:
            fleet.set_outage(service, False)
        daemon.stop()


def test_short_spike_under_for_does_nothing(tmp_path: Path, fleet: Fleet, prom_url: str) -> None:
    """A breach shorter than the rule's `for` goes pending and back, with no decision."""
    service = "spike-svc"
    # A 20 s hold against a breach of a few seconds: the ratio falls back under 10 %
    # about 8 s after v1 returns, so the rule cannot stay pending for 20 s.
    config = write_config(
        tmp_path, fleet=fleet, prometheus_url=prom_url, service=service, hold="20s"
    )
    with DaemonProcess(config) as daemon:
        started_on_v1(daemon, service, baked=False)

        fleet.deploy(service, "v2")
        rule = "error-rate-high"
        daemon.wait_for(
            "rule_state", timeout=DETECT_WAIT, service=service, rule=rule, state="pending"
        )
        fleet.deploy(service, "v1")
        daemon.wait_for(
            "rule_state",
            timeout=25,
            service=service,
            rule=rule,
            state="inactive",
            previous="pending",
        )

        assert daemon.named("rule_state", state="firing") == []
        assert daemon.named("decision") == []
        assert daemon.named("rollback_started") == []
        daemon.stop()


def test_restart_keeps_last_known_good(tmp_path: Path, fleet: Fleet, prom_url: str) -> None:
    """After a restart on the same state file, a bad deploy rolls back to v1 at once."""
    service = "restart-svc"
    config = write_config(tmp_path, fleet=fleet, prometheus_url=prom_url, service=service)
    with DaemonProcess(config) as first:
        started_on_v1(first, service, baked=True)
        first.stop()

    with DaemonProcess(config) as second:
        second.wait_ticks(1, timeout=15)
        # The state remembered v1: reading it again is not a change, let alone a first sight.
        assert second.named("revision_change") == [], second.describe()

        # Deployed before a new bake could finish: only the remembered v1 can be the target.
        fleet.deploy(service, "v2")
        change = second.wait_for("revision_change", timeout=10, service=service, revision="v2")
        assert change["previous"] == "v1"
        assert change["last_known_good"] == "v1"
        assert not change.get("first_seen")

        decision = second.wait_for(
            "decision", timeout=DETECT_WAIT, service=service, action="rollback"
        )
        assert decision["rollback_to"] == "v1"
        assert decision["outcome"] == "executed", second.describe()
        assert second.named("last_known_good") == []
        assert fleet.version(service) == "v1"
        second.stop()


def test_failing_rollback_command_pages_and_daemon_keeps_ticking(
    tmp_path: Path, fleet: Fleet, prom_url: str
) -> None:
    """A rollback command exiting 3 is failed:exit_3, pages as critical, and ticks go on."""
    service = "failing-svc"
    failing = f"{sys.executable} -c 'raise SystemExit(3)'"
    config = write_config(
        tmp_path, fleet=fleet, prometheus_url=prom_url, service=service, rollback_command=failing
    )
    with DaemonProcess(config) as daemon:
        started_on_v1(daemon, service, baked=True)

        fleet.deploy(service, "v2")
        decision = daemon.wait_for(
            "decision", timeout=DETECT_WAIT, service=service, action="rollback"
        )
        assert decision["outcome"] == "failed:exit_3", daemon.describe()
        page = paged(daemon, service, "rollback_failed")
        assert page["severity"] == "critical"
        assert "exit_3" in page["message"]

        daemon.wait_ticks(2, timeout=10)
        assert daemon.running
        assert fleet.version(service) == "v2"
        daemon.stop()


def test_sigterm_stops_within_ten_seconds_and_says_so(
    tmp_path: Path, fleet: Fleet, prom_url: str
) -> None:
    """SIGTERM mid-run ends the daemon with status 0 within 10 s and a daemon_stopped event."""
    service = "sigterm-svc"
    config = write_config(tmp_path, fleet=fleet, prometheus_url=prom_url, service=service)
    with DaemonProcess(config) as daemon:
        daemon.wait_ticks(2, timeout=15)
        assert daemon.stop() == 0  # stop() itself asserts the 10 s bound

        stopped = daemon.named("daemon_stopped")
        assert len(stopped) == 1, daemon.describe()
        assert stopped[0]["ticks"] >= 2
    audited = [e["event"] for e in iter_audit(tmp_path / "audit.jsonl")]
    assert audited[-1] == "daemon_stopped"


def test_pause_file_blocks_rollback_and_pages(tmp_path: Path, fleet: Fleet, prom_url: str) -> None:
    """Creating the pause file turns a bad deploy's rollback into blocked:paused and a page."""
    service = "paused-svc"
    config = write_config(tmp_path, fleet=fleet, prometheus_url=prom_url, service=service)
    with DaemonProcess(config) as daemon:
        started_on_v1(daemon, service, baked=True)

        (tmp_path / "PAUSE").touch()
        fleet.deploy(service, "v2")
        decision = daemon.wait_for(
            "decision", timeout=DETECT_WAIT, service=service, action="rollback"
        )
        assert decision["outcome"] == "blocked:paused", daemon.describe()
        assert decision["rollback_to"] == "v1"
        page_decision = daemon.wait_for(
            "decision", timeout=5, service=service, action="page", blocked_by="paused"
        )
        assert page_decision["outcome"] == "executed"
        page = paged(daemon, service, "blocked")
        assert "paused" in page["message"], page

        daemon.wait_ticks(2, timeout=10)
        assert daemon.named("rollback_started") == []
        assert fleet.version(service) == "v2"
        daemon.stop()
