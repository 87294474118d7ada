"""Two rollbackd replicas sharing a Lease and a ConfigMap state, through the stand-in."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollbackd import app
from rollbackd.loop import Daemon
from rollbackd.record import Recorder
from rollbackd.sim import Fleet
from rollbackd.state import RollbackIntent
from tests.k8s.standin import KubeStandIn

RULES = """\
rules:
  - {name: health-failing, impact: high, probe: health, failure_ratio_above: 0.5,
     window: 1s, for: 0s}
"""


class Replica:
    """One daemon with its own folder and clock, a Lease elector running beside it."""

    def __init__(self, folder: Path, standin: KubeStandIn, fleet: Fleet, name: str) -> None:
        folder.mkdir()
        (folder / "rules.yaml").write_text(RULES)
        sim = f"{sys.executable} -m rollbackd.sim"
        config = {
            "mode": "enforce",
            "interval": "1s",
            "rules": ["rules.yaml"],
            "state": "kubernetes://rollbackd/rollbackd-state",
            "audit_log": "audit.jsonl",
            "prometheus": {"url": "http://127.0.0.1:9", "retries": 0},
            "ha": {
                "api_url": standin.url,
                "lease": "rollbackd",
                "namespace": "rollbackd",
                "identity_env": f"TEST_POD_{name}",
                "lease_duration": "3s",
                "renew_deadline": "2s",
                "retry_period": "0.2s",
            },
            "services": [
                {
                    "name": "api",
                    "health": {"url": fleet.health_url("api"), "timeout": "1s"},
                    "target": {
                        "kind": "exec",
                        "version_url": fleet.version_url("api"),
                        "rollback_command": f"{sim} deploy --url {fleet.url} --service api "
                        "{to_version}",
                    },
                }
            ],
            "safety": {"bake_time": "3s", "cooldown": "10m", "pause_file": "PAUSE"},
            "verify": {"timeout": "30s"},
        }
        (folder / "config.yaml").write_text(json.dumps(config))
        self.now = 1_800_000_000.0
        loaded = app.load(folder / "config.yaml")
        self.daemon: Daemon
        self.recorder: Recorder
        self.daemon, self.recorder = app.build(loaded, clock=lambda: self.now)
        self.events: list[dict[str, Any]] = []
        self.recorder.listeners.append(self.events.append)
        self.stop = asyncio.Event()
        self.electing: asyncio.Task[None] | None = None

    def elect(self) -> None:
        self.electing = asyncio.create_task(self.daemon.leadership.run(self.stop))

    async def tick(self) -> None:
        self.now += 1
        await self.daemon.tick()
        await self.daemon.wait_for_rollbacks(30)

    async def close(self) -> None:
        self.stop.set()
        if self.electing is not None:
            await self.electing
        await self.daemon.aclose()
        self.recorder.close()

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet(["api"]) as running:
        yield running


@pytest.fixture
def pods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_POD_a", "rollbackd-a")
    monkeypatch.setenv("TEST_POD_b", "rollbackd-b")


@pytest.mark.usefixtures("pods")
async def test_only_the_leader_rolls_back_and_the_follower_takes_over_warm(
    tmp_path: Path, standin: KubeStandIn, fleet: Fleet
) -> None:
    """Two replicas: one rollback, by the leader; after failover the state carries over."""
    a = Replica(tmp_path / "a", standin, fleet, "a")
    b = Replica(tmp_path / "b", standin, fleet, "b")
    try:
        a.elect()
        await until(lambda: a.daemon.leadership.is_leader)
        b.elect()
        for _ in range(5):  # v1 bakes; the follower reloads what the leader saved
            await a.tick()
            await b.tick()
        assert b.daemon.state.service("api").last_known_good == "v1"

        fleet.deploy("api", "v2")
        fleet.set_down("api", True)
        await b.tick()
        await a.tick()
        follower = [d["outcome"] for d in b.named("decision")]
        leader = [d["outcome"] for d in a.named("decision") if d["action"] == "rollback"]
        assert follower == ["blocked:not_leader"]
        assert leader == ["executed"]
        assert b.named("notification") == []
        assert fleet.version("api") == "v1"

        # The leader stops and releases the Lease: the follower leads, with the state.
        a.stop.set()
        await until(lambda: b.daemon.leadership.is_leader)
        fleet.set_down("api", False)
        await b.tick()
        fleet.deploy("api", "v3")
        fleet.set_down("api", True)
        await b.tick()
        outcomes = [d["outcome"] for d in b.named("decision") if d["action"] == "rollback"]
        assert outcomes[-1] == "blocked:cooldown"  # it knows the rollback A made
    finally:
        await a.close()
        await b.close()


@pytest.mark.usefixtures("pods")
async def test_failover_in_the_middle_of_a_rollback_never_rolls_back_twice(
    tmp_path: Path, standin: KubeStandIn, fleet: Fleet
) -> None:
    """A rollback the old leader left half done is reported by the new one, not redone."""
    a = Replica(tmp_path / "a", standin, fleet, "a")
    b = Replica(tmp_path / "b", standin, fleet, "b")
    try:
        a.elect()
        await until(lambda: a.daemon.leadership.is_leader)
        b.elect()
        for _ in range(5):
            await a.tick()
        fleet.deploy("api", "v2")
        await a.tick()
        # The leader wrote its intent, then died before the command ran.
        a.daemon.state.service("api").intent = RollbackIntent(
            "v1", "v2", "health-failing", a.now, "enforce"
        )
        a.daemon.save()
        a.stop.set()
        await until(lambda: b.daemon.leadership.is_leader)
        await b.tick()
    finally:
        await a.close()
        await b.close()
    assert [d["outcome"] for d in b.named("decision")] == ["failed:interrupted"]
    assert fleet.version("api") == "v2"
    assert b.daemon.state.service("api").intent is None
