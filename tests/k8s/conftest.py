"""Fixtures: a Kubernetes API stand-in per test, and clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from kubernetes.client import ApiClient

from rollbackd.config import HighAvailability, KubernetesTarget
from rollbackd.kube import api_client_from
from rollbackd.targets.kubernetes import KubernetesDeployment, create
from tests.k8s.standin import KubeStandIn
from tests.k8s.workloads import NAME, NAMESPACE


@pytest.fixture
def standin() -> Iterator[KubeStandIn]:
    server = KubeStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def api_client(standin: KubeStandIn) -> Iterator[ApiClient]:
    """A client built the way the daemon builds it, from an ``ha`` section."""
    client = api_client_from(HighAvailability(api_url=standin.url))
    yield client
    client.close()


def target_config(standin: KubeStandIn, **overrides: object) -> KubernetesTarget:
    settings: dict[str, object] = {
        "kind": "kubernetes",
        "namespace": NAMESPACE,
        "deployment": NAME,
        "api_url": standin.url,
        "request_timeout": "5s",
    }
    return KubernetesTarget.model_validate(settings | overrides)


@pytest.fixture
async def target(standin: KubeStandIn) -> AsyncIterator[KubernetesDeployment]:
    """The target as the factory builds it from configuration."""
    built = create(target_config(standin), service="codex-api")
    yield built
    await built.aclose()
