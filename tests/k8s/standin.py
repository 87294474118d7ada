"""A local stand-in for the Kubernetes API server, spoken to by the official client.

No real API server can run on these machines, so this one serves the small part of the
API rollbackd uses, over real HTTP on 127.0.0.1, with the real server's rules where
they matter to the code under test:

- objects carry ``resourceVersion`` (one counter for everything, as etcd's revision);
  an update or patch whose resulting object names an older version is a 409 Conflict,
  a create of an existing name is a 409 AlreadyExists, a missing object a 404; errors
  are ``Status`` objects;
- PATCH understands JSON patch, JSON merge patch and (a simplified) strategic merge
  patch, chosen by ``Content-Type`` as the client sends it;
- a small deployment controller runs after every Deployment write: it creates a
  ReplicaSet per new pod template with the next ``deployment.kubernetes.io/revision``,
  re-uses the ReplicaSet of a template seen before (bumping its revision and recording
  the old one in ``revision-history``), and writes the rollout status according to
  ``rollout`` (``complete``, ``progressing``, ``stuck``) or leaves it unobserved;
- Secrets can be read as ``PartialObjectMetadata`` (metadata only), as the real server
  does when asked through ``Accept``.

Tests steer it directly: seed and change objects (``create``, ``update``), inject
failures (``fail``), run a hook just before a matching request (``before``), and read
back every request as (group, resource, verb) for permission checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
HASH_LABEL = "pod-template-hash"
# The alphabet Kubernetes uses for generated names (no vowels, no look-alikes).
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    resource: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


KINDS = {
    (k.group, k.resource): k
    for k in (
        Kind("apps", "v1", "deployments", "Deployment"),
        Kind("apps", "v1", "replicasets", "ReplicaSet"),
        Kind("", "v1", "events", "Event"),
        Kind("", "v1", "configmaps", "ConfigMap"),
        Kind("", "v1", "secrets", "Secret"),
        Kind("coordination.k8s.io", "v1", "leases", "Lease"),
    )
}


@dataclass(frozen=True)
class Request:
    """One request as RBAC sees it, plus what the tests want to know about it."""

    group: str
    resource: str
    verb: str
    namespace: str
    name: str
    content_type: str
    accept: str


class ApiError(Exception):
    """Becomes a ``Status`` response."""

    def __init__(
        self, code: int, reason: str, message: str, kind: Kind | None = None, name: str = ""
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.kind, self.name = (
            code,
            reason,
            message,
            kind,
            name,
        )

    def status(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self.kind is not None:
            details = {"name": self.name, "group": self.kind.group, "kind": self.kind.resource}
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": details,
            "code": self.code,
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hash(template: dict[str, Any]) -> str:
    """A pod-template-hash-like name: stable for a template, in Kubernetes' alphabet."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:10])


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    (template.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    return template


# --------------------------------------------------------------------------- patches


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 (add, remove, replace, test, copy, move) on a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        path = [_unescape(s) for s in op["path"].split("/")[1:]]
        kind = op["op"]
        if kind == "test":
            if _get(doc, path) != op["value"]:
                raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
            continue
        if kind in ("copy", "move"):
            source = [_unescape(s) for s in op["from"].split("/")[1:]]
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                _remove(doc, source)
            doc = _add(doc, path, value)
            continue
        if kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        else:
            raise ApiError(400, "BadRequest", f"unknown JSON patch op {kind!r}")
    return doc


def _get(doc: Any, path: list[str]) -> Any:
    for part in path:
        try:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"path /{'/'.join(path)} does not exist") from exc
    return doc


def _remove(doc: Any, path: list[str]) -> None:
    parent = _get(doc, path[:-1])
    try:
        if isinstance(parent, list):
            parent.pop(int(path[-1]))
        else:
            del parent[path[-1]]
    except (KeyError, IndexError, ValueError) as exc:
        raise ApiError(422, "Invalid", f"path /{'/'.join(path)} does not exist") from exc


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    if isinstance(parent, list):
        index = len(parent) if path[-1] == "-" else int(path[-1])
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[path[-1]] = value
    else:
        raise ApiError(422, "Invalid", f"cannot add at /{'/'.join(path)}")
    return doc


def merge_patch(doc: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386; with ``strategic``, lists of named objects merge by ``name`` (simplified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif strategic and _named_list(value) and _named_list(result.get(key)):
            merged = {item["name"]: item for item in result[key]}
            for item in value:
                merged[item["name"]] = merge_patch(merged.get(item["name"]), item, strategic=True)
            result[key] = list(merged.values())
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
    return result


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


# --------------------------------------------------------------------------- selectors


def _matches_labels(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif labels.get(term) is None:
            return False
    return True


def _matches_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        path, value = term.replace("==", "=").split("=", 1)
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if str(current) != value:
            return False
    return True


# --------------------------------------------------------------------------- server


class KubeStandIn:
    """The stand-in server; ``url`` is what ``Configuration.host`` points at."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._rv = 100
        self.requests: list[Request] = []
        self.rollout = "complete"
        self.controller = True
        self.secret_data_served = 0
        self._faults: list[dict[str, Any]] = []
        self._hooks: list[dict[str, Any]] = []
        standin = self

        class Handler(_Handler):
            server_ref = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubeStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ----------------------------------------------------------------- test controls

    def fail(
        self,
        status: int = 503,
        *,
        verb: str | None = None,
        resource: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` and change nothing."""
        with self._lock:
            self._faults.append(
                {"status": status, "verb": verb, "resource": resource, "times": times}
            )

    @contextmanager
    def outage(self, status: int = 503) -> Iterator[None]:
        """Every request fails with ``status`` inside the block."""
        self.fail(status, times=10**9)
        try:
            yield
        finally:
            with self._lock:
                self._faults.clear()

    def before(self, verb: str, resource: str, hook: Callable[[], None]) -> None:
        """Run ``hook`` once, just before the next matching request is handled."""
        with self._lock:
            self._hooks.append({"verb": verb, "resource": resource, "hook": hook})

    def calls(self, verb: str | None = None, resource: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (verb is None or r.verb == verb) and (resource is None or r.resource == resource)
            ]

    def permissions_used(self) -> set[tuple[str, str, str]]:
        with self._lock:
            return {(r.group, r.resource, r.verb) for r in self.requests}

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        kind = self._kind(resource)
        with self._lock:
            obj = self._objects.get((kind.group, resource, namespace, name))
            return copy.deepcopy(obj)

    def items(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        kind = self._kind(resource)
        with self._lock:
            return [
                copy.deepcopy(o)
                for (g, r, ns, _), o in sorted(self._objects.items())
                if (g, r, ns) == (kind.group, resource, namespace)
            ]

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object as a user would (the controller reacts to Deployments)."""
        with self._lock:
            return self._create(self._kind(resource), namespace, copy.deepcopy(obj))

    def update(
        self, resource: str, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Change an object in place as another writer would: new resourceVersion."""
        with self._lock:
            kind = self._kind(resource)
            obj = self._must_get(kind, namespace, name)
            change(obj)
            return self._write(kind, namespace, name, obj)

    def finish_rollout(self, namespace: str, name: str) -> None:
        """The progressing rollout completes: all pods updated and available."""
        with self._lock:
            kind = self._kind("deployments")
            obj = self._must_get(kind, namespace, name)
            self._set_status(obj, "complete")
            self._store(kind, namespace, name, obj)

    # ----------------------------------------------------------------- request handling

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        content_type: str,
        accept: str,
    ) -> tuple[int, dict[str, Any]]:
        route = _route(path)
        if route is None:
            return 404, ApiError(
                404, "NotFound", "the server could not find the requested resource"
            ).status()
        group, resource, namespace, name = route
        verb = {
            "GET": "get" if name else "list",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }[method]
        if verb == "list" and query.get("watch") in ("true", "1"):
            verb = "watch"
        with self._lock:
            self.requests.append(
                Request(group, resource, verb, namespace, name, content_type, accept)
            )
            hook = self._take(self._hooks, verb, resource)
            fault = self._take(self._faults, verb, resource)
        if hook is not None:
            hook["hook"]()
        if fault is not None:
            code = fault["status"]
            reason = {
                500: "InternalError",
                503: "ServiceUnavailable",
                429: "TooManyRequests",
                504: "Timeout",
            }.get(code, "InternalError")
            return code, ApiError(code, reason, "injected failure").status()
        kind = KINDS.get((group, resource))
        if kind is None:
            return 404, ApiError(404, "NotFound", f"resource {resource} not served").status()
        try:
            with self._lock:
                return self._dispatch(
                    kind, verb, namespace, name, query, body, content_type, accept
                )
        except ApiError as exc:
            return exc.code, exc.status()

    def _take(
        self, entries: list[dict[str, Any]], verb: str, resource: str
    ) -> dict[str, Any] | None:
        for entry in entries:
            if entry.get("verb") in (None, verb) and entry.get("resource") in (None, resource):
                if "times" in entry:
                    entry["times"] -= 1
                    if entry["times"] <= 0:
                        entries.remove(entry)
                else:
                    entries.remove(entry)
                return entry
        return None

    def _dispatch(
        self,
        kind: Kind,
        verb: str,
        namespace: str,
        name: str,
        query: dict[str, str],
        body: Any,
        content_type: str,
        accept: str,
    ) -> tuple[int, dict[str, Any]]:
        if verb == "list":
            return 200, self._list(kind, namespace, query)
        if verb == "get":
            obj = self._must_get(kind, namespace, name)
            if "as=PartialObjectMetadata" in accept:
                return 200, {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            if kind.resource == "secrets":
                self.secret_data_served += 1
            return 200, obj
        if verb == "create":
            return 201, self._create(kind, namespace, body)
        if verb == "update":
            if (body.get("metadata") or {}).get("name") != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match")
            return 200, self._write(kind, namespace, name, body)
        if verb == "patch":
            current = self._must_get(kind, namespace, name)
            if content_type.startswith("application/json-patch+json"):
                if not isinstance(body, list):
                    raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
                patched = json_patch(current, body)
            elif content_type.startswith("application/merge-patch+json"):
                patched = merge_patch(current, body)
            elif content_type.startswith("application/strategic-merge-patch+json"):
                patched = merge_patch(current, body, strategic=True)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type}",
                )
            return 200, self._write(kind, namespace, name, patched)
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported here")

    def _list(self, kind: Kind, namespace: str, query: dict[str, str]) -> dict[str, Any]:
        items = [
            copy.deepcopy(o)
            for (g, r, ns, _), o in sorted(self._objects.items())
            if (g, r, ns) == (kind.group, kind.resource, namespace)
        ]
        if query.get("labelSelector"):
            items = [
                i
                for i in items
                if _matches_labels(i["metadata"].get("labels") or {}, query["labelSelector"])
            ]
        if query.get("fieldSelector"):
            items = [i for i in items if _matches_fields(i, query["fieldSelector"])]
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    # ----------------------------------------------------------------- storage

    def _kind(self, resource: str) -> Kind:
        return next(k for k in KINDS.values() if k.resource == resource)

    def _must_get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        obj = self._objects.get((kind.group, kind.resource, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.qualified} "{name}" not found', kind, name)
        return copy.deepcopy(obj)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, kind: Kind, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required")
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match")
        key = (kind.group, kind.resource, namespace, name)
        if key in self._objects:
            raise ApiError(
                409, "AlreadyExists", f'{kind.qualified} "{name}" already exists', kind, name
            )
        if meta.get("resourceVersion"):
            raise ApiError(
                422, "Invalid", "resourceVersion should not be set on objects to be created"
            )
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        if kind.resource == "deployments":
            meta["generation"] = 1
            obj.setdefault("status", {})
        self._store(kind, namespace, name, obj)
        if kind.resource == "deployments":
            self._reconcile(namespace, name)
        return copy.deepcopy(self._objects[key])

    def _write(self, kind: Kind, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Update with optimistic concurrency, as the API server's GuaranteedUpdate does."""
        current = self._must_get(kind, namespace, name)
        wanted_rv = (obj.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                kind,
                name,
            )
        meta = obj.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "namespace", "name"):
            meta[key] = current["metadata"][key]
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.resource == "deployments":
            # status is a subresource: writes to the main resource cannot change it.
            obj["status"] = current.get("status", {})
            generation = current["metadata"]["generation"]
            meta["generation"] = generation + (obj.get("spec") != current.get("spec"))
        self._store(kind, namespace, name, obj)
        if kind.resource == "deployments":
            self._reconcile(namespace, name)
        return copy.deepcopy(self._objects[(kind.group, kind.resource, namespace, name)])

    def _store(self, kind: Kind, namespace: str, name: str, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[(kind.group, kind.resource, namespace, name)] = obj

    # ----------------------------------------------------------------- controller

    def _reconcile(self, namespace: str, name: str) -> None:
        """What the deployment controller does after a Deployment changes."""
        if not self.controller:
            return
        deployments, replica_sets = self._kind("deployments"), self._kind("replicasets")
        deployment = self._must_get(deployments, namespace, name)
        if deployment["spec"].get("paused"):
            return
        template = deployment["spec"]["template"]
        owned = [
            rs
            for rs in self.items("replicasets", namespace)
            if any(
                ref.get("uid") == deployment["metadata"]["uid"]
                for ref in rs["metadata"].get("ownerReferences") or []
            )
        ]
        newest = max((int(rs["metadata"]["annotations"][REVISION]) for rs in owned), default=0)
        match = next(
            (rs for rs in owned if _without_hash(rs["spec"]["template"]) == template), None
        )
        if match is None:
            pod_hash = _hash(template)
            rs_template = copy.deepcopy(template)
            rs_template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
            selector = copy.deepcopy(deployment["spec"]["selector"])
            selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
            revision = newest + 1
            self._create(
                replica_sets,
                namespace,
                {
                    "metadata": {
                        "name": f"{name}-{pod_hash}",
                        "labels": rs_template["metadata"]["labels"],
                        "annotations": {REVISION: str(revision)},
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "Deployment",
                                "name": name,
                                "uid": deployment["metadata"]["uid"],
                                "controller": True,
                                "blockOwnerDeletion": True,
                            }
                        ],
                    },
                    "spec": {
                        "replicas": deployment["spec"].get("replicas", 1),
                        "selector": selector,
                        "template": rs_template,
                    },
                },
            )
        else:
            revision = int(match["metadata"]["annotations"][REVISION])
            if revision != newest:
                # An old template is back: its ReplicaSet becomes the newest revision.
                history = [
                    h
                    for h in match["metadata"]["annotations"].get(REVISION_HISTORY, "").split(",")
                    if h
                ]
                match["metadata"]["annotations"][REVISION_HISTORY] = ",".join(
                    [*history, str(revision)]
                )
                revision = newest + 1
                match["metadata"]["annotations"][REVISION] = str(revision)
                rs_name = match["metadata"]["name"]
                self._store(replica_sets, namespace, rs_name, match)

        deployment.setdefault("metadata", {}).setdefault("annotations", {})[REVISION] = str(
            revision
        )
        if self.rollout != "unobserved":
            self._set_status(deployment, self.rollout)
        self._store(deployments, namespace, name, deployment)

    def _set_status(self, deployment: dict[str, Any], rollout: str) -> None:
        wanted = int(deployment["spec"].get("replicas", 1))
        generation = deployment["metadata"]["generation"]
        status: dict[str, Any] = {"observedGeneration": generation, "replicas": wanted}
        if rollout == "complete":
            status.update(updatedReplicas=wanted, readyReplicas=wanted, availableReplicas=wanted)
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                "ReplicaSet has successfully progressed.",
            )
        elif rollout == "progressing":
            status.update(
                replicas=wanted + 1,
                updatedReplicas=1,
                readyReplicas=wanted,
                availableReplicas=wanted,
            )
            progressing = ("True", "ReplicaSetUpdated", "ReplicaSet is progressing.")
        elif rollout == "stuck":
            status.update(
                replicas=wanted + 1,
                updatedReplicas=1,
                readyReplicas=wanted,
                availableReplicas=wanted,
                unavailableReplicas=1,
            )
            progressing = (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{deployment["metadata"]["name"]}" has timed out progressing.',
            )
        else:
            raise ValueError(f"unknown rollout mode {rollout!r}")
        status["conditions"] = [
            {
                "type": "Progressing",
                "status": progressing[0],
                "reason": progressing[1],
                "message": progressing[2],
                "lastUpdateTime": _now(),
                "lastTransitionTime": _now(),
            }
        ]
        deployment["status"] = status


_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?/?$"
)


def _route(path: str) -> tuple[str, str, str, str] | None:
    match = _PATH.match(path)
    if match is None:
        return None
    return (match["group"] or "", match["resource"], match["ns"], match["name"] or "")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment: no delayed-ACK stall per request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server_ref: KubeStandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, payload = 400, ApiError(400, "BadRequest", "invalid JSON body").status()
        else:
            status, payload = self.server_ref.handle(
                self.command,
                parts.path,
                query,
                body,
                self.headers.get("Content-Type", ""),
                self.headers.get("Accept", ""),
            )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
