"""Deployments as users write them, and the changes users make, for the stand-in."""

from __future__ import annotations

from typing import Any

from tests.k8s.standin import KubeStandIn

NAMESPACE = "prod"
NAME = "api"


def deployment(
    *,
    image: str = "registry.example/api:v1",
    env: dict[str, str] | None = None,
    replicas: int = 2,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    config_map: str | None = None,
    secret: str | None = None,
) -> dict[str, Any]:
    """A Deployment ``prod/api`` with one container, optionally reading config objects."""
    container: dict[str, Any] = {
        "name": "api",
        "image": image,
        "ports": [{"containerPort": 8080}],
        "env": [{"name": k, "value": v} for k, v in (env or {"LOG_LEVEL": "info"}).items()],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    if config_map:
        container["envFrom"] = [{"configMapRef": {"name": config_map}}]
    pod_spec: dict[str, Any] = {"containers": [container]}
    if secret:
        pod_spec["volumes"] = [{"name": "creds", "secret": {"secretName": secret}}]
        container["volumeMounts"] = [{"name": "creds", "mountPath": "/etc/creds"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": NAME,
            "labels": {"app": NAME, **(labels or {})},
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": NAME}},
            "template": {
                "metadata": {"labels": {"app": NAME}},
                "spec": pod_spec,
            },
        },
    }


def set_image(standin: KubeStandIn, image: str) -> None:
    """``kubectl set image deployment/api api=<image>``."""

    def change(obj: dict[str, Any]) -> None:
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = image

    standin.update("deployments", NAMESPACE, NAME, change)


def set_env(standin: KubeStandIn, **env: str) -> None:
    """``kubectl set env deployment/api KEY=value``: a configuration-only change."""

    def change(obj: dict[str, Any]) -> None:
        container = obj["spec"]["template"]["spec"]["containers"][0]
        values = {e["name"]: e["value"] for e in container.get("env", [])} | env
        container["env"] = [{"name": k, "value": v} for k, v in values.items()]

    standin.update("deployments", NAMESPACE, NAME, change)


def annotate(standin: KubeStandIn, **annotations: str) -> None:
    def change(obj: dict[str, Any]) -> None:
        obj["metadata"].setdefault("annotations", {}).update(annotations)

    standin.update("deployments", NAMESPACE, NAME, change)


def current_image(standin: KubeStandIn) -> str:
    obj = standin.get("deployments", NAMESPACE, NAME)
    assert obj is not None
    return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])


def replica_set_revisions(standin: KubeStandIn) -> dict[str, str]:
    """Image -> revision number of every ReplicaSet, as ``kubectl rollout history`` shows."""
    return {
        rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs["metadata"]["annotations"][
            "deployment.kubernetes.io/revision"
        ]
        for rs in standin.items("replicasets", NAMESPACE)
    }
