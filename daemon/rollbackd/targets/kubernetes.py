"""Kubernetes Deployments: read the running ReplicaSet, roll back to a known good one.

Revisions
    A Deployment keeps one ReplicaSet per distinct pod template, labelled with that
    template's ``pod-template-hash``. The revision id is that hash: it names one pod
    template for as long as the ReplicaSet exists, and it stays put when a rollback
    re-uses an old ReplicaSet. The number ``kubectl rollout history`` shows
    (``deployment.kubernetes.io/revision``) does not: rolling back to revision 2 turns
    that ReplicaSet into revision 4. So the id is the hash, which the daemon remembers
    (last known good, already rolled back), and the revision number, the earlier
    numbers and the images go into ``Revision.detail`` for people.

    ``change`` compares the running template with the ReplicaSet that ran before it:
    ``code`` when any container image differs, ``config`` when only the rest does (env,
    config references, resources, volumes). ``external_config`` means the template is
    unchanged but a ConfigMap or Secret it reads has been edited since this process
    first saw the revision: Kubernetes does not version those, so no rollback can undo
    it, and the loop pages instead.

Rollback
    As ``kubectl rollout undo --to-revision`` does: the pod template of the chosen
    ReplicaSet, without its ``pod-template-hash`` label, replaces the Deployment's
    template in ONE JSON patch. The patch also sets ``metadata.resourceVersion`` to the
    version read, which makes the API server refuse it (409) if anyone changed the
    Deployment in between; the target then re-reads and re-decides, and never
    overwrites a newer change by someone else. The same patch writes the
    ``rollbackd.io/rolled-back-*`` annotations, and an Event on the Deployment tells
    ``kubectl describe`` what happened.

GitOps
    A Deployment managed by Argo CD or Flux is reverted by its controller to what git
    says. The markers those tools leave are reported in ``detail["gitops"]`` and in the
    rollback's ``note``; the rollback itself still happens, as a stop-gap.

Errors: API failures become ``TemporaryTargetError`` (conflict, throttled, 5xx,
unreachable) or ``PermanentTargetError`` (forbidden, not found, invalid, paused), with
the API server's message as ``detail``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api

from rollbackd.config import KubernetesTarget
from rollbackd.kube import (
    KUBE_ERRORS,
    KubeAccessError,
    api_client_from,
    failure_of,
    parse_time,
    request_json,
)
from rollbackd.targets.base import (
    PermanentTargetError,
    Readiness,
    Revision,
    RollbackResult,
    TargetError,
    TemporaryTargetError,
)

__all__ = ["REQUIRED_PERMISSIONS", "KubernetesDeployment", "create"]

log = structlog.get_logger()

# (API group, resource, verb) for every call this module makes; deploy/ grants exactly
# these in each target namespace, and tests hold the code and the Role to this set.
REQUIRED_PERMISSIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
        ("apps", "replicasets", "list"),
        ("", "events", "create"),
        ("", "configmaps", "get"),
        ("", "secrets", "get"),
    }
)

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
HASH_LABEL = "pod-template-hash"
PAUSED = "rollbackd.io/paused"
ROLLED_BACK_FROM = "rollbackd.io/rolled-back-from"
ROLLED_BACK_TO = "rollbackd.io/rolled-back-to"
ROLLED_BACK_RULE = "rollbackd.io/rolled-back-rule"
ROLLED_BACK_AT = "rollbackd.io/rolled-back-at"
EVENT_REASON = "RollbackdRollback"

# A conflict caused by an unrelated write (the controller updating status, someone
# adding a label) is retried with a fresh read; a few times is plenty.
CONFLICT_ATTEMPTS = 3

# Secrets are read as metadata only, so their values never reach this process.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

GITOPS_WARNING = {
    "argocd": (
        "managed by Argo CD: with auto-sync on, Argo CD reverts this rollback to what git "
        "says; disable auto-sync or revert the commit in git"
    ),
    "flux": (
        "managed by Flux: the next reconciliation reverts this rollback to what git says; "
        "suspend the Kustomization/HelmRelease or revert the commit in git"
    ),
}


def create(config: KubernetesTarget, *, service: str) -> KubernetesDeployment:
    """The factory's entry point: a target for ``config`` with its own API client."""
    try:
        api_client = api_client_from(config)
    except KubeAccessError as exc:
        raise PermanentTargetError("kubernetes_credentials", detail=str(exc)) from exc
    return KubernetesDeployment(
        service=service,
        namespace=config.namespace,
        deployment=config.deployment,
        container=config.container,
        context=config.context,
        rollout_timeout=config.rollout_timeout,
        request_timeout=config.request_timeout,
        api_client=api_client,
        owns_client=True,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- templates


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def revision_number(replica_set: dict[str, Any]) -> int:
    """The ReplicaSet's revision number; 0 when the annotation is missing or garbled."""
    try:
        return int(annotations_of(replica_set).get(REVISION, "0"))
    except ValueError:
        return 0


def revision_history(replica_set: dict[str, Any]) -> list[str]:
    """Earlier revision numbers of this ReplicaSet's template, oldest first."""
    text = annotations_of(replica_set).get(REVISION_HISTORY, "")
    return [part for part in text.split(",") if part]


def template_hash(replica_set: dict[str, Any]) -> str:
    return labels_of(replica_set).get(HASH_LABEL, "")


def template_of(replica_set: dict[str, Any]) -> dict[str, Any]:
    """The ReplicaSet's pod template as a Deployment carries it: without the hash label."""
    template = copy.deepcopy((replica_set.get("spec") or {}).get("template") or {})
    labels = (template.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return template


def _containers(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container of the pod template, init containers named ``init:<name>``."""
    spec = template.get("spec") or {}
    for prefix, key in (("init:", "initContainers"), ("", "containers")):
        for container in spec.get(key) or []:
            yield prefix + str(container.get("name", "")), container


def images_of(template: dict[str, Any]) -> dict[str, str]:
    return {name: str(c.get("image", "")) for name, c in _containers(template)}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two pod templates, as short paths (``containers[api].env``)."""
    changed: list[str] = []
    old_meta, new_meta = old.get("metadata") or {}, new.get("metadata") or {}
    for key in sorted(set(old_meta) | set(new_meta)):
        if old_meta.get(key) != new_meta.get(key):
            changed.append(f"metadata.{key}")

    old_containers, new_containers = dict(_containers(old)), dict(_containers(new))
    for name in sorted(set(old_containers) | set(new_containers)):
        before, after = old_containers.get(name), new_containers.get(name)
        if before is None or after is None:
            changed.append(f"containers[{name}]")
            continue
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changed.append(f"containers[{name}].{key}")

    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    for key in sorted(set(old_spec) | set(new_spec)):
        if key in ("containers", "initContainers"):
            continue
        if old_spec.get(key) != new_spec.get(key):
            changed.append(f"spec.{key}")
    return changed


def change_kind(changed: list[str]) -> str:
    """``code`` when an image changed, ``config`` for any other template difference."""
    for path in changed:
        added_or_removed = path.startswith("containers[") and path.endswith("]")
        if added_or_removed or path.endswith(".image"):
            return "code"
    return "config" if changed else "unknown"


def config_refs_of(template: dict[str, Any]) -> list[tuple[str, str]]:
    """ConfigMaps and Secrets the pods read (env, envFrom, volumes), as (kind, name)."""
    refs: set[tuple[str, str]] = set()
    for _, container in _containers(template):
        for source in container.get("envFrom") or []:
            if (source.get("configMapRef") or {}).get("name"):
                refs.add(("ConfigMap", source["configMapRef"]["name"]))
            if (source.get("secretRef") or {}).get("name"):
                refs.add(("Secret", source["secretRef"]["name"]))
        for env in container.get("env") or []:
            value_from = env.get("valueFrom") or {}
            if (value_from.get("configMapKeyRef") or {}).get("name"):
                refs.add(("ConfigMap", value_from["configMapKeyRef"]["name"]))
            if (value_from.get("secretKeyRef") or {}).get("name"):
                refs.add(("Secret", value_from["secretKeyRef"]["name"]))
    for volume in (template.get("spec") or {}).get("volumes") or []:
        if (volume.get("configMap") or {}).get("name"):
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if (volume.get("secret") or {}).get("secretName"):
            refs.add(("Secret", volume["secret"]["secretName"]))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if (source.get("configMap") or {}).get("name"):
                refs.add(("ConfigMap", source["configMap"]["name"]))
            if (source.get("secret") or {}).get("name"):
                refs.add(("Secret", source["secret"]["name"]))
    return sorted(refs)


def gitops_of(deployment: dict[str, Any]) -> tuple[str, str] | None:
    """(tool, application) when Argo CD or Flux manages the Deployment, else ``None``.

    ``app.kubernetes.io/instance`` alone is not evidence: Helm sets it too. It counts
    as Argo CD's tracking label only beside another ``argocd.argoproj.io/`` key.
    """
    labels, annotations = labels_of(deployment), annotations_of(deployment)
    keys = set(labels) | set(annotations)
    if "argocd.argoproj.io/instance" in labels:
        return "argocd", labels["argocd.argoproj.io/instance"]
    if "argocd.argoproj.io/tracking-id" in annotations:
        return "argocd", annotations["argocd.argoproj.io/tracking-id"].split(":", 1)[0]
    if any(k.startswith("argocd.argoproj.io/") for k in keys):
        return "argocd", labels.get("app.kubernetes.io/instance", "")
    for prefix in ("kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/"):
        if f"{prefix}name" in labels:
            namespace = labels.get(f"{prefix}namespace", "")
            name = labels[f"{prefix}name"]
            return "flux", f"{namespace}/{name}" if namespace else name
    return None


def progress_deadline_exceeded(deployment: dict[str, Any]) -> str | None:
    """The rollout's own failure message, when the controller has given up on it."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and (
            condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return str(condition.get("message") or "progress deadline exceeded")
    return None


def _pointer(key: str) -> str:
    """A JSON-pointer segment: ``/`` and ``~`` escaped as RFC 6901 says."""
    return key.replace("~", "~0").replace("/", "~1")


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class Snapshot:
    """A Deployment and its ReplicaSets, read together so decisions see one moment."""

    deployment: dict[str, Any]
    replica_sets: list[dict[str, Any]]  # owned by the Deployment, newest revision first

    @property
    def template(self) -> dict[str, Any]:
        return dict((self.deployment.get("spec") or {}).get("template") or {})

    @property
    def resource_version(self) -> str:
        return str(self.deployment["metadata"]["resourceVersion"])

    def current(self) -> dict[str, Any] | None:
        """The ReplicaSet running the Deployment's template; ``None`` until it exists."""
        return next((rs for rs in self.replica_sets if template_of(rs) == self.template), None)

    def by_id(self, revision_id: str) -> dict[str, Any] | None:
        return next((rs for rs in self.replica_sets if template_hash(rs) == revision_id), None)

    def before(self, replica_set: dict[str, Any]) -> dict[str, Any] | None:
        """The ReplicaSet that ran before ``replica_set`` (the next lower revision)."""
        number = revision_number(replica_set)
        older = [rs for rs in self.replica_sets if revision_number(rs) < number]
        return older[0] if older else None


# --------------------------------------------------------------------------- the target


class KubernetesDeployment:
    """One service's Deployment: its running revision, rollback, rollout progress.

    Limits: a rollback restores the pod template only. The Deployment's replica count,
    strategy and selector stay as they are, and ConfigMaps or Secrets edited in place
    cannot be restored (they are reported as ``external_config``). ``external_config``
    compares against what this process saw first for a revision, so an edit made while
    the daemon was down is found only if the loop compares ``config_fingerprint`` with
    the detail it stored.
    """

    kind = "kubernetes"

    def __init__(
        self,
        *,
        service: str,
        namespace: str,
        deployment: str,
        api_client: ApiClient,
        container: str | None = None,
        context: str | None = None,
        rollout_timeout: float = 600.0,
        request_timeout: float = 10.0,
        owns_client: bool = False,
        clock: Callable[[], datetime] = _utcnow,
        identity: str | None = None,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self.name = deployment
        self.container = container
        self.context = context
        self.rollout_timeout = rollout_timeout
        self.request_timeout = request_timeout
        self._api_client = api_client
        self._owns_client = owns_client
        self._apps = AppsV1Api(api_client)
        self._core = CoreV1Api(api_client)
        self._clock = clock
        self._identity = identity or socket.gethostname()
        self._log = log.bind(service=service, deployment=f"{namespace}/{deployment}")
        # Config references first seen for each revision, to notice in-place edits.
        self._config_seen: dict[str, dict[str, str]] = {}
        # Revision numbers of the templates seen last, for the hand-run rollback command.
        self._numbers: dict[str, int] = {}

    # ----------------------------------------------------------------- reading

    async def _call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await request_json(fn, *args, timeout=self.request_timeout, **kwargs)
        except KUBE_ERRORS as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> TargetError:
        failure = failure_of(exc)
        detail = f"{self.namespace}/{self.name}: {failure.message}"
        if failure.temporary:
            return TemporaryTargetError(failure.reason, detail=detail)
        return PermanentTargetError(failure.reason, detail=detail)

    async def _read_deployment(self) -> dict[str, Any]:
        deployment: dict[str, Any] = await self._call(
            self._apps.read_namespaced_deployment, self.name, self.namespace
        )
        return deployment

    async def _snapshot(self) -> Snapshot:
        deployment = await self._read_deployment()
        selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")
        label_selector = ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items()))
        listing = await self._call(
            self._apps.list_namespaced_replica_set,
            self.namespace,
            label_selector=label_selector or None,
        )
        # The selector may match ReplicaSets of other Deployments; ownership decides.
        uid = deployment["metadata"].get("uid")
        owned = [
            rs
            for rs in listing.get("items") or []
            if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])
        ]
        owned.sort(key=revision_number, reverse=True)
        self._numbers = {template_hash(rs): revision_number(rs) for rs in owned}
        return Snapshot(deployment, owned)

    def _current_or_pending(self, snapshot: Snapshot) -> dict[str, Any]:
        current = snapshot.current()
        if current is None:
            raise TemporaryTargetError(
                "rollout_pending",
                detail=f"{self.namespace}/{self.name}: no ReplicaSet runs the Deployment's "
                "pod template yet; the deployment controller has not caught up",
            )
        return current

    def _describe(self, replica_set: dict[str, Any]) -> dict[str, Any]:
        """Facts about one revision for events and pages: number, hash, images."""
        template = template_of(replica_set)
        images = images_of(template)
        main = self.container or next(iter(images), "")
        return {
            "revision_number": str(revision_number(replica_set)),
            "revision_history": revision_history(replica_set),
            "pod_template_hash": template_hash(replica_set),
            "replicaset": replica_set["metadata"]["name"],
            "images": images,
            "image": images.get(main, ""),
        }

    def _label(self, facts: dict[str, Any]) -> str:
        return f"revision {facts['revision_number']} ({facts['image'] or 'no image'})"

    async def revision_history(self) -> list[tuple[float, str]]:
        """When each kept ReplicaSet was created, oldest first: deploys, for backtests.

        Kubernetes keeps ``revisionHistoryLimit`` ReplicaSets and dates each by its
        creation. A rollback re-uses an old ReplicaSet and leaves no date of its own,
        so rollbacks (and anything older than the kept history) are not in it.
        """
        snapshot = await self._snapshot()
        dated = []
        for replica_set in snapshot.replica_sets:
            created = parse_time(replica_set["metadata"].get("creationTimestamp"))
            if created is not None:
                # Creation times have one-second resolution: the number breaks ties.
                number = revision_number(replica_set)
                dated.append((created.timestamp(), number, template_hash(replica_set)))
        return [(at, revision) for at, _number, revision in sorted(dated)]

    async def current_revision(self) -> Revision:
        """The ReplicaSet running the Deployment's template, with what changed."""
        snapshot = await self._snapshot()
        current = self._current_or_pending(snapshot)
        revision_id = template_hash(current)
        detail = self._describe(current)
        detail["deployment"] = f"{self.namespace}/{self.name}"

        previous = snapshot.before(current)
        change = "unknown"
        if previous is not None:
            changed = differences(template_of(previous), template_of(current))
            change = change_kind(changed)
            detail["changed"] = changed
            detail["previous_revision"] = self._describe(previous)

        refs = await self._config_refs(template_of(current))
        detail["config_refs"] = refs
        detail["config_fingerprint"] = _fingerprint(refs)
        first_seen = self._config_seen.setdefault(revision_id, refs)
        edited = sorted(
            k for k in refs.keys() | first_seen.keys() if refs.get(k) != first_seen.get(k)
        )
        if edited:
            change = "external_config"
            detail["config_changed"] = edited

        detail.update(self._gitops_detail(snapshot.deployment))
        last = self._last_rollback(snapshot.deployment)
        if last:
            detail["last_rollback"] = last
        return Revision(id=revision_id, change=change, detail=detail)

    async def _config_refs(self, template: dict[str, Any]) -> dict[str, str]:
        """``{"ConfigMap/name": resourceVersion}``; ``missing`` or ``unreadable`` otherwise.

        A Secret is read as metadata only. Without permission to read one, it is
        recorded as ``unreadable`` and the rest of the revision is still reported.
        """
        refs: dict[str, str] = {}
        for kind, name in config_refs_of(template):
            read: Callable[..., Any]
            headers: dict[str, str] | None
            if kind == "ConfigMap":
                read, headers = self._core.read_namespaced_config_map, None
            else:
                read, headers = self._core.read_namespaced_secret, {"Accept": METADATA_ONLY}
            try:
                obj = await request_json(
                    read, name, self.namespace, timeout=self.request_timeout, _headers=headers
                )
            except KUBE_ERRORS as exc:
                failure = failure_of(exc)
                if failure.reason == "not_found":
                    refs[f"{kind}/{name}"] = "missing"
                elif failure.reason in ("forbidden", "unauthorized"):
                    refs[f"{kind}/{name}"] = "unreadable"
                else:
                    raise self._error(exc) from exc
                continue
            refs[f"{kind}/{name}"] = str(obj["metadata"].get("resourceVersion", ""))
        return refs

    def _gitops_detail(self, deployment: dict[str, Any]) -> dict[str, str]:
        found = gitops_of(deployment)
        if found is None:
            return {}
        tool, app = found
        return {"gitops": tool, "gitops_app": app, "gitops_warning": GITOPS_WARNING[tool]}

    def _last_rollback(self, deployment: dict[str, Any]) -> dict[str, str]:
        annotations = annotations_of(deployment)
        keys = {
            "from": ROLLED_BACK_FROM,
            "to": ROLLED_BACK_TO,
            "rule": ROLLED_BACK_RULE,
            "at": ROLLED_BACK_AT,
        }
        return {k: annotations[a] for k, a in keys.items() if a in annotations}

    async def paused_reason(self) -> str | None:
        """Why rollbacks of this service are blocked by the cluster, or ``None``.

        The annotation ``rollbackd.io/paused: "true"`` is the operator's switch; a
        Deployment paused with ``kubectl rollout pause`` is someone mid-change, so it is
        left alone too.
        """
        deployment = await self._read_deployment()
        where = f"deployment {self.namespace}/{self.name}"
        if annotations_of(deployment).get(PAUSED, "").strip().lower() == "true":
            return f'annotation {PAUSED}="true" on {where}'
        if (deployment.get("spec") or {}).get("paused"):
            return f"{where} is paused (spec.paused; kubectl rollout resume ends it)"
        return None

    # ----------------------------------------------------------------- rolling back

    async def rollback(
        self, *, to_version: str, from_version: str, reason: dict[str, Any]
    ) -> RollbackResult:
        """Restore the pod template of revision ``to_version`` in one guarded patch."""
        log_ = self._log.bind(to_version=to_version, from_version=from_version)
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            snapshot = await self._snapshot()
            self._refuse_paused(snapshot.deployment)
            target_rs = snapshot.by_id(to_version)
            if target_rs is None:
                raise PermanentTargetError(
                    "revision_not_found",
                    detail=f"{self.namespace}/{self.name} has no ReplicaSet with "
                    f"{HASH_LABEL}={to_version}; revisionHistoryLimit may have removed it",
                )
            wanted = template_of(target_rs)
            to_facts = self._describe(target_rs)
            gitops = self._gitops_detail(snapshot.deployment)

            # Already there: say so, and change nothing.
            if snapshot.template == wanted:
                note = f"already running {self._label(to_facts)}; nothing patched"
                log_.info("rollback_skipped", why="already at the target template")
                return RollbackResult(
                    changed=False,
                    detail={"to": to_facts, **gitops},
                    note=_join(note, gitops.get("gitops_warning", "")),
                )

            # The decision was about from_version; if something else runs now, someone
            # changed the Deployment after the decision, and their change wins.
            current = snapshot.current()
            current_id = template_hash(current) if current is not None else None
            if from_version and current_id != from_version:
                raise TemporaryTargetError(
                    "conflict",
                    detail=f"{self.namespace}/{self.name} now runs "
                    f"{current_id or 'a template with no ReplicaSet yet'}, not {from_version}; "
                    "not overwriting a newer change",
                )
            from_facts = self._describe(current) if current is not None else {}

            patch = self._rollback_patch(snapshot, wanted, from_version, to_version, reason)
            try:
                patched = await request_json(
                    self._apps.patch_namespaced_deployment,
                    self.name,
                    self.namespace,
                    patch,
                    timeout=self.request_timeout,
                    _content_type="application/json-patch+json",
                )
            except KUBE_ERRORS as exc:
                if failure_of(exc).reason == "conflict" and attempt < CONFLICT_ATTEMPTS:
                    log_.info(
                        "rollback_conflict",
                        attempt=attempt,
                        next="re-reading the Deployment and deciding again",
                    )
                    continue
                raise self._error(exc) from exc

            event = await self._record_event(patched, from_facts, to_facts, reason)
            log_.info(
                "deployment_patched",
                from_revision=from_facts.get("revision_number"),
                to_revision=to_facts["revision_number"],
                resource_version=patched["metadata"].get("resourceVersion"),
            )
            detail = {"from": from_facts, "to": to_facts, "event": event, **gitops}
            return RollbackResult(
                changed=True,
                detail=detail,
                note=_join(
                    f"{self.namespace}/{self.name}: {self._label(from_facts)} -> "
                    f"{self._label(to_facts)}"
                    if from_facts
                    else "",
                    gitops.get("gitops_warning", ""),
                ),
            )
        raise TemporaryTargetError(
            "conflict", detail=f"{self.namespace}/{self.name} kept changing; try again later"
        )

    def _refuse_paused(self, deployment: dict[str, Any]) -> None:
        if (deployment.get("spec") or {}).get("paused"):
            raise PermanentTargetError(
                "deployment_paused",
                detail=f"{self.namespace}/{self.name} is paused (spec.paused); not touching it",
            )
        if annotations_of(deployment).get(PAUSED, "").strip().lower() == "true":
            raise PermanentTargetError(
                "paused", detail=f'{self.namespace}/{self.name} has {PAUSED}="true"'
            )

    def _rollback_patch(
        self,
        snapshot: Snapshot,
        template: dict[str, Any],
        from_version: str,
        to_version: str,
        reason: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """The JSON patch: precondition, template, and the record of who did it and why."""
        record = {
            ROLLED_BACK_FROM: from_version,
            ROLLED_BACK_TO: to_version,
            ROLLED_BACK_RULE: str(reason.get("rule", "")),
            ROLLED_BACK_AT: self._clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        ops: list[dict[str, Any]] = [
            # The version we read: the API server refuses the patch if it has moved on.
            {
                "op": "replace",
                "path": "/metadata/resourceVersion",
                "value": snapshot.resource_version,
            },
            {"op": "replace", "path": "/spec/template", "value": template},
        ]
        if snapshot.deployment["metadata"].get("annotations"):
            ops += [
                {"op": "add", "path": f"/metadata/annotations/{_pointer(k)}", "value": v}
                for k, v in record.items()
            ]
        else:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": record})
        return ops

    async def _record_event(
        self,
        deployment: dict[str, Any],
        from_facts: dict[str, Any],
        to_facts: dict[str, Any],
        reason: dict[str, Any],
    ) -> str | None:
        """A Warning Event on the Deployment; a failure to write it never fails the rollback."""
        message = f"rollbackd rolled back {self._label(from_facts) if from_facts else ''}"
        message = f"{message} to {self._label(to_facts)}"
        if reason.get("rule"):
            message += f": rule {reason['rule']}"
            value, threshold = reason.get("value"), reason.get("threshold")
            if isinstance(value, int | float) and isinstance(threshold, int | float):
                message += f" value {value:.4g} vs threshold {threshold:.4g}"
        stamp = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        meta = deployment["metadata"]
        name = f"{self.name}.{secrets.token_hex(8)}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": self.name,
                "namespace": self.namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": EVENT_REASON,
            "message": message.replace("  ", " "),
            "type": "Warning",
            "source": {"component": "rollbackd"},
            "reportingComponent": "rollbackd",
            "reportingInstance": self._identity,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await request_json(
                self._core.create_namespaced_event,
                self.namespace,
                body,
                timeout=self.request_timeout,
            )
        except KUBE_ERRORS as exc:
            self._log.warning(
                "rollback_event_failed",
                error=failure_of(exc).message,
                next="the rollback stands; only the Kubernetes Event is missing",
            )
            return None
        return name

    # ----------------------------------------------------------------- verifying

    async def readiness(self, *, to_version: str) -> Readiness:
        """Whether the rollout to ``to_version`` finished, as ``kubectl rollout status`` says.

        The controller's own verdict (``ProgressDeadlineExceeded``) and a rollout that
        outlasts ``rollout_timeout`` are failures; status the controller has not yet
        updated for the latest spec is neither ready nor failed.
        """
        snapshot = await self._snapshot()
        deployment = snapshot.deployment
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        where = f"{self.namespace}/{self.name}"

        target_rs = snapshot.by_id(to_version)
        if target_rs is None or template_of(target_rs) != snapshot.template:
            current = snapshot.current()
            now_running = template_hash(current) if current is not None else "a new template"
            return Readiness(
                ready=False,
                failed=True,
                message=f"{where} was changed again: it now runs {now_running}, not {to_version}",
            )

        if int(status.get("observedGeneration", 0)) < int(deployment["metadata"]["generation"]):
            return self._waiting(deployment, f"{where}: waiting for the controller to see it")
        deadline = progress_deadline_exceeded(deployment)
        if deadline:
            return Readiness(ready=False, failed=True, message=f"{where}: {deadline}")

        wanted = int(spec.get("replicas", 1))
        updated = int(status.get("updatedReplicas", 0))
        replicas = int(status.get("replicas", 0))
        available = int(status.get("availableReplicas", 0))
        if updated < wanted:
            return self._waiting(deployment, f"{where}: {updated} of {wanted} pods updated")
        if replicas > updated:
            return self._waiting(
                deployment, f"{where}: {replicas - updated} old pods pending termination"
            )
        if available < wanted:
            return self._waiting(deployment, f"{where}: {available} of {wanted} pods available")
        return Readiness(ready=True, message=f"{where}: rolled out ({wanted} pods available)")

    def _waiting(self, deployment: dict[str, Any], message: str) -> Readiness:
        started = parse_time(annotations_of(deployment).get(ROLLED_BACK_AT))
        if started is not None:
            elapsed = (self._clock() - started).total_seconds()
            if elapsed > self.rollout_timeout:
                return Readiness(
                    ready=False,
                    failed=True,
                    message=f"{message}; rollout still unfinished after {elapsed:.0f}s",
                )
        return Readiness(ready=False, message=message)

    def rollback_hint(self, *, to_version: str, from_version: str) -> str:
        """``kubectl rollout undo`` to the revision number that template has now."""
        context = f" --context {self.context}" if self.context else ""
        base = f"kubectl{context} rollout undo deployment/{self.name} -n {self.namespace}"
        number = self._numbers.get(to_version)
        if number:
            return f"{base} --to-revision={number}"
        # Not seen yet: look the number up from the ReplicaSet, which is named by the hash.
        lookup = (
            f"kubectl{context} get replicaset {self.name}-{to_version} -n {self.namespace} "
            "-o jsonpath='{.metadata.annotations.deployment\\.kubernetes\\.io/revision}'"
        )
        return f"{base} --to-revision=$({lookup})"

    async def aclose(self) -> None:
        if self._owns_client:
            self._api_client.close()  # type: ignore[no-untyped-call]


def _fingerprint(refs: dict[str, str]) -> str:
    """A short digest of the config references' versions, stable across processes."""
    text = json.dumps(refs, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
