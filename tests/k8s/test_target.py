"""The Kubernetes target against the API stand-in, through the official client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from rollbackd.config import Service
from rollbackd.decide import _detail as event_facts
from rollbackd.kube import api_client_from
from rollbackd.targets import build_target
from rollbackd.targets.base import PermanentTargetError, Target, TemporaryTargetError
from rollbackd.targets.kubernetes import REQUIRED_PERMISSIONS, KubernetesDeployment, create
from tests.k8s.conftest import target_config
from tests.k8s.standin import KubeStandIn
from tests.k8s.workloads import (
    NAME,
    NAMESPACE,
    annotate,
    current_image,
    deployment,
    set_env,
    set_image,
)

REASON: dict[str, Any] = {"rule": "error-rate-high", "value": 0.31, "threshold": 0.1}
V1, V2, V3 = (f"registry.example/api:v{n}" for n in (1, 2, 3))


async def deploy_versions(
    standin: KubeStandIn, target: KubernetesDeployment, *images: str, **spec: Any
) -> list[str]:
    """Deploy each image in turn, as a CI pipeline would; the revision id of each."""
    ids = []
    for index, image in enumerate(images):
        if index == 0:
            standin.create("deployments", NAMESPACE, deployment(image=image, **spec))
        else:
            set_image(standin, image)
        ids.append((await target.current_revision()).id)
    return ids


# --------------------------------------------------------------------------- revisions


async def test_revision_names_the_replicaset_number_and_images(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """The running revision is the current ReplicaSet, with its number and images."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)

    revision = await target.current_revision()

    assert revision.id == v2 != v1
    assert revision.change == "code"
    assert revision.detail["revision_number"] == "2"
    assert revision.detail["image"] == V2
    assert revision.detail["images"] == {"api": V2}
    assert revision.detail["previous_revision"]["revision_number"] == "1"
    assert revision.detail["previous_revision"]["image"] == V1
    assert revision.detail["replicaset"] == f"{NAME}-{v2}"


async def test_revision_history_lists_kept_replicasets_by_creation(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Backtests get each kept ReplicaSet's hash, oldest first, dated by its creation."""
    v1, v2, v3 = await deploy_versions(standin, target, V1, V2, V3)

    history = await target.revision_history()

    assert [revision for _at, revision in history] == [v1, v2, v3]
    times = [at for at, _revision in history]
    assert times == sorted(times)


async def test_revision_number_and_images_reach_the_decision_events(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """The facts a decision event carries name the revision numbers and images."""
    await deploy_versions(standin, target, V1, V2)

    facts = event_facts((await target.current_revision()).detail)

    assert facts["revision_number"] == "2"
    assert facts["image"] == V2
    assert facts["previous_revision"]["revision_number"] == "1"
    assert facts["previous_revision"]["image"] == V1


async def test_env_only_change_is_a_config_change(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Changing only an environment variable is reported as ``config``, not ``code``."""
    await deploy_versions(standin, target, V1)
    set_env(standin, LOG_LEVEL="debug")

    revision = await target.current_revision()

    assert revision.change == "config"
    assert revision.detail["changed"] == ["containers[api].env"]
    assert revision.detail["image"] == V1


async def test_revision_before_the_controller_catches_up_is_temporary(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A template with no ReplicaSet yet is a temporary error, not a made-up revision."""
    await deploy_versions(standin, target, V1)
    standin.controller = False
    set_image(standin, V2)

    with pytest.raises(TemporaryTargetError) as caught:
        await target.current_revision()
    assert caught.value.reason == "rollout_pending"


async def test_missing_deployment_is_a_permanent_error(target: KubernetesDeployment) -> None:
    """A Deployment that does not exist is reported as not found, not retried forever."""
    with pytest.raises(PermanentTargetError) as caught:
        await target.current_revision()
    assert caught.value.reason == "not_found"
    assert f'"{NAME}" not found' in caught.value.detail


async def test_factory_builds_a_kubernetes_target(standin: KubeStandIn) -> None:
    """``kind: kubernetes`` in a service builds this target, which meets the Protocol."""
    service = Service(name="codex-api", target=target_config(standin))

    built = build_target(service)

    assert isinstance(built, KubernetesDeployment)
    assert isinstance(built, Target)
    await built.aclose()


# --------------------------------------------------------------------------- rollback


@pytest.mark.parametrize(
    ("images", "last_known_good"),
    [
        pytest.param((V1, V2, V3), 1, id="last-known-good-is-the-previous-revision"),
        pytest.param((V1, V2, V3), 0, id="last-known-good-is-older-than-the-previous"),
    ],
)
async def test_bad_image_is_rolled_back_to_last_known_good(
    standin: KubeStandIn,
    target: KubernetesDeployment,
    images: tuple[str, ...],
    last_known_good: int,
) -> None:
    """The template of the last known good ReplicaSet comes back, not merely the previous."""
    ids = await deploy_versions(standin, target, *images)

    result = await target.rollback(
        to_version=ids[last_known_good], from_version=ids[-1], reason=REASON
    )

    assert result.changed
    assert current_image(standin) == images[last_known_good]
    assert result.detail["from"]["revision_number"] == "3"
    assert result.detail["to"]["revision_number"] == str(last_known_good + 1)
    assert result.detail["to"]["image"] == images[last_known_good]
    # Kubernetes re-uses the old ReplicaSet and makes it the newest revision; the id holds.
    after = await target.current_revision()
    assert after.id == ids[last_known_good]
    assert after.detail["revision_number"] == "4"
    assert after.detail["revision_history"] == [str(last_known_good + 1)]
    assert len(standin.items("replicasets", NAMESPACE)) == 3


async def test_config_only_change_is_rolled_back(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A bad environment change is undone by restoring the earlier pod template."""
    [good] = await deploy_versions(standin, target, V1)
    set_env(standin, LOG_LEVEL="trace", FEATURE_X="on")
    bad = await target.current_revision()
    assert bad.change == "config"

    await target.rollback(to_version=good, from_version=bad.id, reason=REASON)

    obj = standin.get("deployments", NAMESPACE, NAME)
    assert obj is not None
    env = obj["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "LOG_LEVEL", "value": "info"}]
    assert (await target.current_revision()).id == good


async def test_rollback_template_has_no_pod_template_hash_label(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """As ``kubectl rollout undo``: the restored template carries no pod-template-hash."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)

    await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    obj = standin.get("deployments", NAMESPACE, NAME)
    assert obj is not None
    assert obj["spec"]["template"]["metadata"]["labels"] == {"app": NAME}


async def test_concurrent_update_is_not_overwritten(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Someone deploying between our read and our patch wins; we report a conflict."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    standin.before("patch", "deployments", lambda: set_image(standin, "registry.example/api:v4"))

    with pytest.raises(TemporaryTargetError) as caught:
        await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    assert caught.value.reason == "conflict"
    assert "not overwriting" in caught.value.detail
    assert current_image(standin) == "registry.example/api:v4"
    assert len(standin.calls("patch", "deployments")) == 1
    assert standin.items("events", NAMESPACE) == []


async def test_unrelated_concurrent_write_is_retried_with_a_fresh_read(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A write that leaves the template alone (a new label) does not stop the rollback."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    standin.before("patch", "deployments", lambda: annotate(standin, team="payments"))

    result = await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    assert result.changed
    assert current_image(standin) == V1
    assert len(standin.calls("patch", "deployments")) == 2
    obj = standin.get("deployments", NAMESPACE, NAME)
    assert obj is not None
    assert obj["metadata"]["annotations"]["team"] == "payments"


async def test_decision_on_a_revision_no_longer_running_is_a_conflict(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A rollback decided for v2 does nothing once v3 has been deployed meanwhile."""
    v1, v2, _ = await deploy_versions(standin, target, V1, V2, V3)

    with pytest.raises(TemporaryTargetError) as caught:
        await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    assert caught.value.reason == "conflict"
    assert current_image(standin) == V3
    assert standin.calls("patch") == []


async def test_already_matching_template_patches_nothing(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Rolling back to what already runs changes nothing and says so."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    await target.rollback(to_version=v1, from_version=v2, reason=REASON)
    patches = len(standin.calls("patch"))

    result = await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    assert not result.changed
    assert "already running revision 3" in result.note
    assert len(standin.calls("patch")) == patches


async def test_unknown_revision_is_a_permanent_error(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A last known good whose ReplicaSet is gone cannot be restored, and says why."""
    [v1] = await deploy_versions(standin, target, V1)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="gone12345", from_version=v1, reason=REASON)

    assert caught.value.reason == "revision_not_found"
    assert standin.calls("patch") == []


async def test_rollback_is_recorded_in_annotations_and_an_event(
    standin: KubeStandIn, target: KubernetesDeployment, api_client: ApiClient
) -> None:
    """``kubectl describe deployment`` shows who rolled back what, from where, and why."""
    v1, _, v3 = await deploy_versions(standin, target, V1, V2, V3)

    result = await target.rollback(to_version=v1, from_version=v3, reason=REASON)

    obj = standin.get("deployments", NAMESPACE, NAME)
    assert obj is not None
    annotations = obj["metadata"]["annotations"]
    assert annotations["rollbackd.io/rolled-back-from"] == v3
    assert annotations["rollbackd.io/rolled-back-to"] == v1
    assert annotations["rollbackd.io/rolled-back-rule"] == "error-rate-high"
    assert datetime.fromisoformat(annotations["rollbackd.io/rolled-back-at"]) <= datetime.now(UTC)
    # kubectl describe lists events by the involved object, as here.
    events = CoreV1Api(api_client).list_namespaced_event(
        NAMESPACE, field_selector=f"involvedObject.kind=Deployment,involvedObject.name={NAME}"
    )
    [event] = events.items
    assert event.reason == "RollbackdRollback"
    assert event.involved_object.uid == obj["metadata"]["uid"]
    assert event.metadata.name == result.detail["event"]
    assert f"revision 3 ({V3}) to revision 1 ({V1})" in event.message
    assert "rule error-rate-high value 0.31 vs threshold 0.1" in event.message
    last = (await target.current_revision()).detail["last_rollback"]
    assert last == {
        "from": v3,
        "to": v1,
        "rule": "error-rate-high",
        "at": annotations["rollbackd.io/rolled-back-at"],
    }


async def test_failed_event_write_does_not_fail_the_rollback(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """The rollback stands even when the Event cannot be written."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    standin.fail(403, verb="create", resource="events")

    result = await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    assert result.changed
    assert result.detail["event"] is None
    assert current_image(standin) == V1


async def test_api_outage_during_rollback_is_temporary_and_changes_nothing(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A 503 from the API server fails the rollback as retryable and leaves v2 running."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    standin.fail(503, verb="patch", resource="deployments")

    with pytest.raises(TemporaryTargetError) as caught:
        await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    assert caught.value.reason == "unavailable"
    assert current_image(standin) == V2
    assert standin.items("events", NAMESPACE) == []
    # Once the API answers again, the same rollback goes through.
    await target.rollback(to_version=v1, from_version=v2, reason=REASON)
    assert current_image(standin) == V1


async def test_unreachable_api_server_is_a_temporary_error() -> None:
    """No API server at all is a temporary error, like any other outage."""
    closed = KubeStandIn().start()
    url = closed.url
    closed.stop()
    unreachable = create(
        target_config(closed, api_url=url, request_timeout="2s"), service="codex-api"
    )

    with pytest.raises(TemporaryTargetError) as caught:
        await unreachable.rollback(to_version="a", from_version="b", reason=REASON)

    assert caught.value.reason == "unreachable"
    await unreachable.aclose()


# --------------------------------------------------------------------------- pausing


async def test_paused_annotation_is_reported(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """``rollbackd.io/paused: "true"`` is a reason to block, and rollback refuses too."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    assert await target.paused_reason() is None

    annotate(standin, **{"rollbackd.io/paused": "true"})

    reason = await target.paused_reason()
    assert reason is not None
    assert 'rollbackd.io/paused="true"' in reason
    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version=v1, from_version=v2, reason=REASON)
    assert caught.value.reason == "paused"
    assert standin.calls("patch") == []


async def test_paused_deployment_is_not_touched(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A Deployment paused with ``kubectl rollout pause`` is left alone."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)

    def pause(obj: dict[str, Any]) -> None:
        obj["spec"]["paused"] = True

    standin.update("deployments", NAMESPACE, NAME, pause)

    reason = await target.paused_reason()
    assert reason is not None
    assert "spec.paused" in reason
    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version=v1, from_version=v2, reason=REASON)
    assert caught.value.reason == "deployment_paused"
    assert standin.calls("patch") == []
    assert current_image(standin) == V2


# --------------------------------------------------------------------------- readiness


async def test_readiness_waits_for_the_rollout_then_reports_ready(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Verification is not ready until every pod is updated and available."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    standin.rollout = "progressing"
    await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    waiting = await target.readiness(to_version=v1)
    assert (waiting.ready, waiting.failed) == (False, False)
    assert "1 of 2 pods updated" in waiting.message

    standin.finish_rollout(NAMESPACE, NAME)
    done = await target.readiness(to_version=v1)
    assert (done.ready, done.failed) == (True, False)


async def test_status_not_yet_observed_is_not_ready(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Status from before the controller saw the rollback never counts as rolled out."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    standin.rollout = "unobserved"
    await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    readiness = await target.readiness(to_version=v1)

    assert (readiness.ready, readiness.failed) == (False, False)
    assert "controller" in readiness.message


async def test_progress_deadline_exceeded_fails_verification(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """The controller giving up on the rollout is a failed verification, with its message."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    standin.rollout = "stuck"
    await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    readiness = await target.readiness(to_version=v1)

    assert readiness.failed
    assert not readiness.ready
    assert "has timed out progressing" in readiness.message


async def test_rollout_outlasting_rollout_timeout_fails_verification(
    standin: KubeStandIn,
) -> None:
    """A rollout still unfinished after ``rollout_timeout`` fails rather than waits forever."""
    now = [datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)]
    api = api_client_from(target_config(standin))
    slow = KubernetesDeployment(
        service="codex-api",
        namespace=NAMESPACE,
        deployment=NAME,
        api_client=api,
        rollout_timeout=60.0,
        clock=lambda: now[0],
    )
    v1, v2 = await deploy_versions(standin, slow, V1, V2)
    standin.rollout = "progressing"
    await slow.rollback(to_version=v1, from_version=v2, reason=REASON)
    assert not (await slow.readiness(to_version=v1)).failed

    now[0] += timedelta(seconds=61)

    readiness = await slow.readiness(to_version=v1)
    assert readiness.failed
    assert "unfinished after 61s" in readiness.message
    api.close()


async def test_readiness_fails_when_someone_replaced_the_rollback(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A new deploy after the rollback means the rolled-back revision will never be ready."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)
    await target.rollback(to_version=v1, from_version=v2, reason=REASON)
    set_image(standin, V3)

    readiness = await target.readiness(to_version=v1)

    assert readiness.failed
    assert "changed again" in readiness.message


# --------------------------------------------------------------------------- gitops


@pytest.mark.parametrize(
    ("labels", "annotations", "tool", "app"),
    [
        ({"argocd.argoproj.io/instance": "api-prod"}, {}, "argocd", "api-prod"),
        (
            {},
            {"argocd.argoproj.io/tracking-id": "api-prod:apps/Deployment:prod/api"},
            "argocd",
            "api-prod",
        ),
        (
            {
                "kustomize.toolkit.fluxcd.io/name": "apps",
                "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
            },
            {},
            "flux",
            "flux-system/apps",
        ),
        ({"helm.toolkit.fluxcd.io/name": "api"}, {}, "flux", "api"),
    ],
    ids=["argocd-label", "argocd-tracking-id", "flux-kustomization", "flux-helmrelease"],
)
async def test_gitops_marker_is_reported_in_revision_and_rollback(
    standin: KubeStandIn,
    target: KubernetesDeployment,
    labels: dict[str, str],
    annotations: dict[str, str],
    tool: str,
    app: str,
) -> None:
    """A GitOps-managed Deployment is named as such, with what to do, before it reverts us."""
    v1, v2 = await deploy_versions(standin, target, V1, V2, labels=labels, annotations=annotations)

    revision = await target.current_revision()
    result = await target.rollback(to_version=v1, from_version=v2, reason=REASON)

    assert revision.detail["gitops"] == tool
    assert revision.detail["gitops_app"] == app
    assert result.detail["gitops"] == tool
    assert result.note.endswith(revision.detail["gitops_warning"])
    assert ("Argo CD" if tool == "argocd" else "Flux") in result.note


async def test_helm_instance_label_alone_is_not_gitops(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """``app.kubernetes.io/instance`` is set by Helm too, so alone it is not Argo CD."""
    await deploy_versions(standin, target, V1, labels={"app.kubernetes.io/instance": "api"})

    revision = await target.current_revision()

    assert "gitops" not in revision.detail


# --------------------------------------------------------------------------- config refs


async def test_edited_configmap_is_reported_as_external_config(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """An in-place ConfigMap edit keeps the revision but is flagged as unversioned config."""
    standin.create(
        "configmaps", NAMESPACE, {"metadata": {"name": "api-config"}, "data": {"TIMEOUT": "5s"}}
    )
    [v1] = await deploy_versions(standin, target, V1, config_map="api-config")
    before = await target.current_revision()
    assert before.change == "unknown"
    assert set(before.detail["config_refs"]) == {"ConfigMap/api-config"}

    def edit(obj: dict[str, Any]) -> None:
        obj["data"]["TIMEOUT"] = "1ms"

    standin.update("configmaps", NAMESPACE, "api-config", edit)

    after = await target.current_revision()
    assert after.id == v1
    assert after.change == "external_config"
    assert after.detail["config_changed"] == ["ConfigMap/api-config"]
    assert after.detail["config_fingerprint"] != before.detail["config_fingerprint"]


async def test_secrets_are_read_as_metadata_only(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """A referenced Secret's version is recorded without its values ever being fetched."""
    standin.create(
        "secrets", NAMESPACE, {"metadata": {"name": "api-creds"}, "data": {"token": "c2VjcmV0"}}
    )
    await deploy_versions(standin, target, V1, secret="api-creds")

    revision = await target.current_revision()

    assert revision.detail["config_refs"]["Secret/api-creds"].isdigit()
    assert standin.secret_data_served == 0
    assert all("PartialObjectMetadata" in r.accept for r in standin.calls("get", "secrets"))


async def test_unreadable_and_missing_config_refs_do_not_hide_the_revision(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Without permission to read a Secret, or with a ConfigMap missing, the revision stands."""
    await deploy_versions(standin, target, V1, config_map="absent", secret="api-creds")
    standin.fail(403, verb="get", resource="secrets")

    revision = await target.current_revision()

    assert revision.detail["config_refs"] == {
        "ConfigMap/absent": "missing",
        "Secret/api-creds": "unreadable",
    }


# --------------------------------------------------------------------------- by hand


async def test_rollback_hint_names_the_revision_number(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """The page carries the exact ``kubectl rollout undo`` for the last known good."""
    v1, v2 = await deploy_versions(standin, target, V1, V2)

    assert target.rollback_hint(to_version=v1, from_version=v2) == (
        f"kubectl rollout undo deployment/{NAME} -n {NAMESPACE} --to-revision=1"
    )


def test_rollback_hint_for_an_unseen_revision_looks_the_number_up(
    standin: KubeStandIn,
) -> None:
    """Before the target has read the ReplicaSets, the hint finds the number by hash."""
    api = api_client_from(target_config(standin))
    fresh = KubernetesDeployment(
        service="codex-api",
        namespace=NAMESPACE,
        deployment=NAME,
        api_client=api,
        context="prod-cluster",
    )

    hint = fresh.rollback_hint(to_version="5d8f6c7b9", from_version="x")
    api.close()

    assert hint.startswith("kubectl --context prod-cluster rollout undo deployment/api -n prod")
    assert f"get replicaset {NAME}-5d8f6c7b9" in hint


# --------------------------------------------------------------------------- permissions


async def test_target_uses_exactly_the_permissions_it_declares(
    standin: KubeStandIn, target: KubernetesDeployment
) -> None:
    """Every request the target makes is one the shipped RBAC grants, and no other."""
    standin.create("configmaps", NAMESPACE, {"metadata": {"name": "api-config"}, "data": {}})
    standin.create("secrets", NAMESPACE, {"metadata": {"name": "api-creds"}, "data": {}})
    v1, v2 = await deploy_versions(
        standin, target, V1, V2, config_map="api-config", secret="api-creds"
    )
    await target.paused_reason()
    await target.rollback(to_version=v1, from_version=v2, reason=REASON)
    await target.readiness(to_version=v1)

    assert standin.permissions_used() == REQUIRED_PERMISSIONS
