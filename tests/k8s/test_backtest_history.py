"""Backtests read revision history from the Kubernetes target when no metric names it."""

from __future__ import annotations

from rollbackd.backtest import history_schedule, target_schedules
from rollbackd.config import Settings
from rollbackd.targets.kubernetes import KubernetesDeployment
from tests.k8s.standin import KubeStandIn
from tests.k8s.test_target import V1, V2, V3, deploy_versions
from tests.k8s.workloads import NAME, NAMESPACE


def test_history_schedule_starts_with_the_revision_running_at_the_start() -> None:
    """Revisions created before the range collapse into the one running when it starts."""
    history = [(100.0, "a"), (200.0, "b"), (300.0, "c"), (900.0, "d")]
    assert history_schedule(history, start=250.0, end=800.0) == [(250.0, "b"), (300.0, "c")]
    assert history_schedule(history, start=50.0, end=150.0) == [(100.0, "a")]


async def test_backtest_takes_revisions_from_the_deployments_replicasets(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A service on a kubernetes target gets its deploys from its ReplicaSets."""
    v1, v2, v3 = await deploy_versions(standin, target, V1, V2, V3)
    history = await target.revision_history()
    settings = Settings(
        services=[
            {
                "name": "api",
                "target": {
                    "kind": "kubernetes",
                    "namespace": NAMESPACE,
                    "deployment": NAME,
                    "api_url": standin.url,
                },
            }
        ]
    )

    schedule, warnings = await target_schedules(
        settings, ["api"], start=history[0][0] - 60, end=history[-1][0] + 60
    )

    assert warnings == []
    assert [revision for _at, revision in schedule["api"]] == [v1, v2, v3]
