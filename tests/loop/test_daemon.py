"""The loop's promises that do not depend on Prometheus: concurrency and restarts.

These tests use only probe rules against the simulated fleet, so no query is sent;
the Prometheus client points at a closed port and is never called.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollbackd import app
from rollbackd.loop import Daemon
from rollbackd.record import Recorder
from rollbackd.sim import Fleet
from rollbackd.state import RollbackIntent

PY = sys.executable
RULES = """\
rules:
  - {name: health-failing, impact: high, probe: health, failure_ratio_above: 0.5,
     window: 1s, for: 0s}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(["api", "web"]) as running:
        yield running


def build(
    tmp_path: Path, fleet: Fleet, *, services: list[dict[str, Any]], clock: Clock, **extra: Any
) -> tuple[Daemon, Recorder, list[dict[str, Any]]]:
    (tmp_path / "rules.yaml").write_text(RULES)
    config = {
        "mode": "enforce",
        "interval": "1s",
        "rules": ["rules.yaml"],
        "state": "state.db",
        "audit_log": "audit.jsonl",
        "prometheus": {"url": "http://127.0.0.1:9", "retries": 0},
        "services": services,
        "safety": {"bake_time": "10s", "cooldown": "1m", "pause_file": "PAUSE"},
        "verify": {"timeout": "30s"},
        **extra,
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    loaded = app.load(tmp_path / "config.yaml")
    daemon, recorder = app.build(loaded, clock=clock)
    events: list[dict[str, Any]] = []
    recorder.listeners.append(events.append)
    return daemon, recorder, events


def exec_service(fleet: Fleet, name: str, **target: Any) -> dict[str, Any]:
    sim = f"{PY} -m rollbackd.sim"
    return {
        "name": name,
        "health": {"url": fleet.health_url(name), "timeout": "1s"},
        "target": {
            "kind": "exec",
            "version_url": fleet.version_url(name),
            "rollback_command": f"{sim} deploy --url {fleet.url} --service {name} {{to_version}}",
            **target,
        },
    }


async def test_slow_revision_read_does_not_stall_other_services(
    tmp_path: Path, fleet: Fleet
) -> None:
    """A service whose version command hangs is unreadable; the others are still read."""
    hang = f"{PY} -c 'import time; time.sleep(60)'"
    slow = exec_service(fleet, "web")
    slow["target"] = {**slow["target"], "version_url": None, "version_command": hang}
    daemon, recorder, events = build(
        tmp_path, fleet, services=[exec_service(fleet, "api"), slow], clock=Clock()
    )
    try:
        await daemon.tick()
    finally:
        await daemon.aclose()
        recorder.close()
    changes = [e for e in events if e["event"] == "revision_change"]
    assert [(e["service"], e["revision"]) for e in changes] == [("api", "v1")]
    assert [e["service"] for e in events if e["event"] == "blind"] == ["web"]


async def test_rollback_runs_in_the_background_and_ticks_go_on(
    tmp_path: Path, fleet: Fleet
) -> None:
    """A slow rollback command does not hold up the next tick; its outcome lands later."""
    clock = Clock()
    gate = tmp_path / "gate"
    script = (
        "import pathlib, subprocess, sys, time\n"
        f"while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.05)\n"
        "subprocess.run(sys.argv[1:], check=True)\n"
    )
    (tmp_path / "slow_deploy.py").write_text(script)
    service = exec_service(fleet, "api")
    service["target"]["rollback_command"] = (
        f"{PY} {tmp_path / 'slow_deploy.py'} " + service["target"]["rollback_command"]
    )
    daemon, recorder, events = build(tmp_path, fleet, services=[service], clock=clock)
    try:
        for _ in range(12):  # v1 bakes
            clock.now += 1
            await daemon.tick()
        fleet.deploy("api", "v2")
        fleet.set_down("api", True)
        clock.now += 1
        plan = await daemon.tick()
        assert [o.to_version for o in plan.rollbacks] == ["v1"]
        clock.now += 1
        await daemon.tick()  # the rollback is still waiting for its gate
        assert "api" in daemon._inflight
        assert not any(e["event"] == "rollback_finished" for e in events)
        fleet.set_down("api", False)
        gate.touch()
        await daemon.wait_for_rollbacks(30)
    finally:
        await daemon.aclose()
        recorder.close()
    finished = [e for e in events if e["event"] == "rollback_finished"]
    assert [e["outcome"] for e in finished] == ["executed"]
    assert fleet.version("api") == "v1"


async def test_restart_keeps_last_known_good_and_rolls_back_to_it(
    tmp_path: Path, fleet: Fleet
) -> None:
    """After a restart the daemon remembers v1 as last known good and rolls back to it."""
    clock = Clock()
    daemon, recorder, _ = build(tmp_path, fleet, services=[exec_service(fleet, "api")], clock=clock)
    for _ in range(12):
        clock.now += 1
        await daemon.tick()
    await daemon.aclose()
    recorder.close()

    fleet.deploy("api", "v2")
    fleet.set_down("api", True)
    daemon, recorder, events = build(
        tmp_path, fleet, services=[exec_service(fleet, "api")], clock=clock
    )
    try:
        assert daemon.state.service("api").last_known_good == "v1"
        clock.now += 1
        await daemon.tick()
        await daemon.wait_for_rollbacks(30)
    finally:
        await daemon.aclose()
        recorder.close()
    decision = next(e for e in events if e["event"] == "decision")
    assert (decision["action"], decision["rollback_to"], decision["outcome"]) == (
        "rollback",
        "v1",
        "executed",
    )
    assert fleet.version("api") == "v1"


async def test_rollback_interrupted_by_a_crash_is_not_repeated(
    tmp_path: Path, fleet: Fleet
) -> None:
    """An intent left on disk by a crash is reported as failed:interrupted and paged."""
    clock = Clock()
    daemon, recorder, _ = build(tmp_path, fleet, services=[exec_service(fleet, "api")], clock=clock)
    for _ in range(12):
        clock.now += 1
        await daemon.tick()
    fleet.deploy("api", "v2")
    fleet.set_down("api", True)
    clock.now += 1
    # The crash: the intent is saved, then the process dies before the command runs.
    daemon.state.service("api").intent = RollbackIntent(
        "v1", "v2", "health-failing", clock.now, "enforce"
    )
    daemon.save()
    await daemon.aclose()
    recorder.close()

    daemon, recorder, events = build(
        tmp_path, fleet, services=[exec_service(fleet, "api")], clock=clock
    )
    try:
        daemon.recover()
    finally:
        await daemon.aclose()
        recorder.close()
    outcomes = [e["outcome"] for e in events if e["event"] == "decision"]
    assert outcomes == ["failed:interrupted"]
    assert any(e["event"] == "notification" and e["stage"] == "rollback_failed" for e in events)
    assert fleet.version("api") == "v2"
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(e.get("outcome") == "failed:interrupted" for e in audit)


async def test_endpoints_report_liveness_readiness_and_metrics(
    tmp_path: Path, fleet: Fleet
) -> None:
    """/healthz, /readyz and /metrics answer with the documented metric names."""
    import httpx

    from rollbackd.endpoints import Endpoints

    clock = Clock()
    daemon, recorder, _ = build(tmp_path, fleet, services=[exec_service(fleet, "api")], clock=clock)
    endpoints = Endpoints(
        "127.0.0.1:0", healthy=daemon.healthy, ready=daemon.ready, registry=daemon.metrics.registry
    ).start()
    try:
        async with httpx.AsyncClient(base_url=endpoints.address) as client:
            assert (await client.get("/readyz")).status_code == 503
            clock.now += 1
            await daemon.tick()
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            text = (await client.get("/metrics")).text
    finally:
        endpoints.stop()
        await daemon.aclose()
        recorder.close()
    for name in (
        "rollbackd_ticks_total 1.0",
        "rollbackd_tick_duration_seconds_count 1.0",
        'rollbackd_rule_state{rule="health-failing",service="api",state="inactive"} 1.0',
        "# TYPE rollbackd_decisions_total counter",
        "# TYPE rollbackd_rollbacks_total counter",
    ):
        assert name in text, name
