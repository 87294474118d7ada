"""deploy/ checked offline: schemas, RBAC against the code, alerts, dashboard, image.

No API server runs here, so manifests are validated against the Kubernetes OpenAPI
schemas with ``kubernetes-validate --strict``; the alert rules and the dashboard's
queries go through ``promtool``; and the RBAC rules are compared with the permissions
the code declares, which in turn are compared with the client calls in its source.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rollbackd import ha
from rollbackd.config import load_rules, load_settings
from rollbackd.metrics import Metrics
from rollbackd.targets import kubernetes as kubernetes_target

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# A release kubernetes-validate ships schemas for, and old enough for most clusters.
KUBERNETES_VERSION = "1.33.0"
# The metrics the daemon must export (DESIGN.md) plus the ones the alerts need.
REQUIRED_METRICS = {
    "rollbackd_ticks_total",
    "rollbackd_tick_duration_seconds",
    "rollbackd_rule_state",
    "rollbackd_decisions_total",
    "rollbackd_rollbacks_total",
    "rollbackd_prometheus_up",
}


def manifests() -> list[Path]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [DEPLOY / name for name in kustomization["resources"]]


def objects() -> list[dict[str, Any]]:
    return [doc for path in manifests() for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name)


def shipped_config(tmp_path: Path) -> tuple[Path, Path]:
    """config.yaml and the rules from the ConfigMap, written where the loader can read them."""
    data = find("ConfigMap", "rollbackd-config")["data"]
    config = tmp_path / "config.yaml"
    config.write_text(data["config.yaml"])
    rules = tmp_path / "rules" / "default.yaml"
    rules.parent.mkdir()
    rules.write_text(data["rules.yaml"])
    return config, rules


# --------------------------------------------------------------------------- manifests


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    """Each object in deploy/ matches its Kubernetes schema, unknown fields included."""
    pytest.importorskip("kubernetes_validate")
    command = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(command), "--strict", "-k", KUBERNETES_VERSION, *map(str, manifests())],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(objects())


def test_kustomization_applies_every_manifest() -> None:
    """``kubectl apply -k deploy/`` creates everything in deploy/, nothing is forgotten."""
    not_objects = {"kustomization.yaml", "prometheus-rules.yaml"}
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - not_objects

    assert {p.name for p in manifests()} == on_disk


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_builds_offline() -> None:
    """kubectl's built-in kustomize renders the manifests without a cluster."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


def test_deployment_runs_two_non_root_replicas_with_probes(tmp_path: Path) -> None:
    """Two replicas with liveness /healthz, readiness /readyz, on the port the config uses."""
    deployment = find("Deployment", "rollbackd")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    settings = load_settings(shipped_config(tmp_path)[0])
    port = int(settings.listen.rsplit(":", 1)[1])

    assert deployment["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert settings.listen.startswith("0.0.0.0:")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The Lease names each replica by its pod, from the downward API.
    env = {e["name"]: e for e in container["env"]}
    assert settings.ha is not None
    assert env[settings.ha.identity_env]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # SIGTERM ends the daemon within 10 s; the pod must be given that long.
    assert pod["terminationGracePeriodSeconds"] > 10


def test_service_and_budget_select_the_daemons_pods() -> None:
    """/metrics is reachable through the Service, and a drain keeps one replica."""
    labels = find("Deployment", "rollbackd")["spec"]["template"]["metadata"]["labels"]
    service = find("Service", "rollbackd")
    budget = find("PodDisruptionBudget", "rollbackd")

    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 9105
    assert budget["spec"]["minAvailable"] == 1


def test_shipped_config_and_rules_load(tmp_path: Path) -> None:
    """The ConfigMap holds a valid config and the same rules as rules/default.yaml."""
    config, rules = shipped_config(tmp_path)

    settings = load_settings(config)
    loaded = load_rules([str(rules)])

    assert settings.state == "kubernetes://rollbackd/rollbackd-state"
    assert settings.mode == "shadow"
    shipped_names = {r.rule.name for r in load_rules([str(ROOT / "rules" / "default.yaml")])}
    assert {r.rule.name for r in loaded} == shipped_names
    mounts = find("Deployment", "rollbackd")["spec"]["template"]["spec"]["volumes"][0]
    assert {i["path"] for i in mounts["configMap"]["items"]} == {
        "config.yaml",
        "rules/default.yaml",
    }


def test_dockerfile_builds_a_slim_non_root_image() -> None:
    """The image is python:3.11-slim, runs as a numeric non-root user, and starts the daemon."""
    text = (DEPLOY / "Dockerfile").read_text()
    from_lines = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    pod = find("Deployment", "rollbackd")["spec"]["template"]["spec"]

    assert set(from_lines) == {"python:3.11-slim"}
    user = re.findall(r"^USER (\d+)", text, re.MULTILINE)
    assert user == [str(pod["securityContext"]["runAsUser"])]
    assert user != ["0"]
    assert 'ENTRYPOINT ["rollbackd", "run", "-c", "/etc/rollbackd/config.yaml"]' in text


# --------------------------------------------------------------------------- RBAC


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


_CALL = re.compile(r"\.(read|list|create|replace|patch|delete)_namespaced_(\w+?)\b")
_VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "replace": "update",
    "patch": "patch",
    "delete": "delete",
}
_GROUPS = {"deployments": "apps", "replicasets": "apps", "leases": "coordination.k8s.io"}


def called(module: Any) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every client method the module's source calls."""
    source = Path(module.__file__).read_text()
    found = set()
    for method, kind in _CALL.findall(source):
        resource = kind.replace("_", "") + "s"
        found.add((_GROUPS.get(resource, ""), resource, _VERBS[method]))
    return found


@pytest.mark.parametrize("module", [ha, kubernetes_target], ids=["ha", "target"])
def test_declared_permissions_are_exactly_the_client_calls_in_the_code(module: Any) -> None:
    """REQUIRED_PERMISSIONS names every API call the module makes, and nothing more."""
    assert called(module) == module.REQUIRED_PERMISSIONS


def test_role_grants_exactly_what_leader_election_and_state_use() -> None:
    """The Role in rollbackd's namespace grants the Lease and state calls, nothing else."""
    assert granted(find("Role", "rollbackd")) == ha.REQUIRED_PERMISSIONS


def test_target_role_grants_exactly_what_the_kubernetes_target_uses() -> None:
    """The target ClusterRole (bound per namespace) grants the target's calls, nothing else."""
    assert granted(find("ClusterRole", "rollbackd-target")) == (
        kubernetes_target.REQUIRED_PERMISSIONS
    )


def test_target_rights_are_bound_in_the_namespace_of_each_watched_deployment(
    tmp_path: Path,
) -> None:
    """Every namespace the shipped config rolls back in has a RoleBinding, and no other."""
    settings = load_settings(shipped_config(tmp_path)[0])
    watched = {s.target.namespace for s in settings.services if s.target.kind == "kubernetes"}
    bindings = [
        o
        for o in objects()
        if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == "rollbackd-target"
    ]

    assert {b["metadata"]["namespace"] for b in bindings} == watched
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "ClusterRole"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rollbackd", "namespace": "rollbackd"}
        ]
    assert not [o for o in objects() if o["kind"] == "ClusterRoleBinding"]


# --------------------------------------------------------------------------- monitoring


def exported_metrics() -> set[str]:
    """Sample names the daemon's registry can expose, with the suffixes of each type."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\brollbackd_[a-z_]+", expr))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def test_dashboard_shows_only_metrics_the_daemon_exports() -> None:
    """Every dashboard query names real daemon metrics, and the key ones are all shown."""
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))

    assert used <= exported_metrics()
    bases = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert bases >= REQUIRED_METRICS


def test_alerts_use_only_metrics_the_daemon_exports() -> None:
    """An alert on a metric that does not exist would never fire."""
    used = set().union(*(metric_names(e) for e in alert_exprs()))

    assert used <= exported_metrics()
    assert {"rollbackd_ticks_total", "rollbackd_prometheus_up", "rollbackd_rollbacks_total"} <= used


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_alert_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    """The alerting rules parse, and fire (or not) as their unit tests describe."""
    check = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "prometheus-rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    shutil.copy(DEPLOY / "prometheus-rules.yaml", tmp_path)
    shutil.copy(Path(__file__).with_name("prometheus-rules.test.yaml"), tmp_path)
    unit = subprocess.run(
        ["promtool", "test", "rules", "prometheus-rules.test.yaml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each dashboard query parses as PromQL (checked as a recording rule by promtool)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    check = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )

    assert check.returncode == 0, check.stdout + check.stderr
