"""Shadow mode through the daemon: Cloud Run and GitHub Actions targets are never changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollbackd import app
from rollbackd.sim import Fleet
from tests.targets.standins.cloudrun import CloudRunStandIn
from tests.targets.standins.github import GitHubStandIn

SERVICE = "codex-api"
RULES = """\
rules:
  - {name: health-failing, impact: high, probe: health, failure_ratio_above: 0.5,
     window: 1s, for: 0s}
"""


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with Fleet([SERVICE]) as running:
        yield running


async def run_shadow(
    tmp_path: Path, fleet: Fleet, target: dict[str, Any], deploy: Any
) -> list[dict[str, Any]]:
    """Bake v1, deploy a bad revision, and return the decisions of the shadow daemon."""
    (tmp_path / "rules.yaml").write_text(RULES)
    config = {
        "mode": "shadow",
        "interval": "1s",
        "rules": ["rules.yaml"],
        "state": "state.db",
        "audit_log": "audit.jsonl",
        "prometheus": {"url": "http://127.0.0.1:9", "retries": 0},
        "services": [
            {"name": SERVICE, "health": {"url": fleet.health_url(SERVICE)}, "target": target}
        ],
        "safety": {"bake_time": "3s", "pause_file": "PAUSE"},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    now = [1_800_000_000.0]
    daemon, recorder = app.build(app.load(tmp_path / "config.yaml"), clock=lambda: now[0])
    events: list[dict[str, Any]] = []
    recorder.listeners.append(events.append)
    try:
        for _ in range(5):
            now[0] += 1
            await daemon.tick()
        deploy()
        fleet.set_down(SERVICE, True)
        for _ in range(2):
            now[0] += 1
            await daemon.tick()
        await daemon.wait_for_rollbacks(10)
    finally:
        await daemon.aclose()
        recorder.close()
    return [e for e in events if e["event"] == "decision"]


async def test_shadow_mode_never_shifts_cloud_run_traffic(tmp_path: Path, fleet: Fleet) -> None:
    """In shadow mode a bad Cloud Run revision is reported as would_execute, untouched."""
    with CloudRunStandIn() as cloudrun:
        [v1] = cloudrun.add_service(SERVICE, ["registry/app:v1"])
        target = {
            "kind": "cloudrun",
            "project": cloudrun.project,
            "region": cloudrun.region,
            "service": SERVICE,
            "api_endpoint": cloudrun.url,
        }
        decisions = await run_shadow(
            tmp_path, fleet, target, lambda: cloudrun.deploy(SERVICE, "registry/app:v2")
        )
        updates = [m for m, _ in cloudrun.requests if m in ("PATCH", "POST")]
        serving = cloudrun.serving(SERVICE)
    assert [(d["action"], d["outcome"], d["rollback_to"]) for d in decisions] == [
        ("rollback", "would_execute", v1.rsplit("/", 1)[-1])
    ]
    assert updates == []
    assert v1.rsplit("/", 1)[-1] not in {k.rsplit("/", 1)[-1] for k in serving}


async def test_shadow_mode_never_dispatches_a_workflow(
    tmp_path: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In shadow mode the deploy workflow is never dispatched."""
    monkeypatch.setenv("GITHUB_TOKEN", "write-token")
    with GitHubStandIn() as github:
        target = {
            "kind": "github-actions",
            "repo": github.repo,
            "workflow": "deploy.yml",
            "inputs": {"tag": "{to_version}"},
            "api_url": github.url,
            "version_url": fleet.version_url(SERVICE),
        }
        decisions = await run_shadow(tmp_path, fleet, target, lambda: fleet.deploy(SERVICE, "v2"))
        dispatched = list(github.dispatches)
    assert [(d["action"], d["outcome"], d["rollback_to"]) for d in decisions] == [
        ("rollback", "would_execute", "v1")
    ]
    assert dispatched == []
    assert fleet.version(SERVICE) == "v2"
