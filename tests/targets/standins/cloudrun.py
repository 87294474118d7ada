"""A local stand-in for the Cloud Run Admin API v2, spoken to by the real ``run_v2`` client.

It serves the REST paths the client's ``rest`` transport uses and behaves like the real
API where rollbackd depends on it:

- a service has revisions, a ``traffic`` spec and the observed ``trafficStatuses``; a
  ``LATEST`` status names no revision, as the real API reports it;
- every update changes the ``etag``; an update that carries a stale etag is refused with
  ``ABORTED`` (409) or ``FAILED_PRECONDITION`` (400), whichever the test chooses;
- an update returns a long-running operation (``done: false``, metadata typed
  ``google.cloud.run.v2.Service``) that completes after a few polls, or fails when told;
  until then the service is ``reconciling`` and its traffic statuses are the old ones;
- a changed template makes a new revision; a template naming an existing revision is
  refused, as Cloud Run refuses to reuse a revision name;
- errors are Google's ``{"error": {"code", "message", "status"}}`` with the HTTP status
  the real API uses (403 PERMISSION_DENIED, 404 NOT_FOUND, ...).

Enums travel as integers, which is how the client asks for them.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

LATEST = 1
REVISION = 2
CONDITION_RECONCILING = 2
CONDITION_FAILED = 3
CONDITION_SUCCEEDED = 4
SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"

_STATUS_HTTP = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "UNAVAILABLE": 503,
}
_STATUS_CODE = {
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class ApiError(Exception):
    """An error answer in Google's JSON shape."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class StandInRevision:
    name: str
    image: str
    created: datetime
    deleted: bool = False


@dataclass
class StandInService:
    name: str
    template: dict[str, Any]
    traffic: list[dict[str, Any]]
    revisions: dict[str, StandInRevision] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    generation: int = 1
    observed_generation: int = 1
    etag: str = ""
    latest_created: str = ""
    latest_ready: str = ""
    reconciling: bool = False
    terminal_state: int = CONDITION_SUCCEEDED
    terminal_message: str = ""
    statuses: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StandInOperation:
    name: str
    service: str
    polls_left: int
    error: tuple[str, str] | None = None
    done: bool = False


class CloudRunStandIn:
    """One project and region of Cloud Run, served on 127.0.0.1 at an ephemeral port."""

    def __init__(
        self,
        *,
        project: str = "demo-project",
        region: str = "us-central1",
        operation_polls: int = 2,
    ) -> None:
        self.project = project
        self.region = region
        self.operation_polls = operation_polls
        self.etag_conflict_status = "ABORTED"
        self.read_only = False
        self.deny_all = False
        self.requests: list[tuple[str, str]] = []
        self.updates: list[dict[str, Any]] = []
        self._services: dict[str, StandInService] = {}
        self._operations: dict[str, StandInOperation] = {}
        self._fail_next: tuple[str, str] | None = None
        self._before_next_update: dict[str, str] = {}
        self._clock = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # A short poll interval makes shutdown quick at the end of every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> CloudRunStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ test controls

    def add_service(self, name: str, images: list[str]) -> list[str]:
        """A service with one revision per image, the last one serving all traffic."""
        service = StandInService(
            name=name,
            template={"containers": [{"image": images[0], "ports": [{"containerPort": 8080}]}]},
            traffic=[{"type": LATEST, "percent": 100}],
        )
        with self._lock:
            self._services[name] = service
            names = [self._new_revision(service, image) for image in images]
            service.template["containers"][0]["image"] = images[-1]
            service.latest_ready = service.latest_created
            service.etag = self._new_etag()
            service.statuses = self._statuses(service)
        return names

    def deploy(self, name: str, image: str) -> str:
        """A deploy by someone else (CI, a person), finished at once; traffic spec kept."""
        with self._lock:
            return self._deploy(self._services[name], image)

    def split(
        self, name: str, percents: dict[str, int], tags: dict[str, str] | None = None
    ) -> None:
        """Pin traffic to revisions by percent, as ``update-traffic --to-revisions`` does.

        ``tags`` (tag -> revision) adds tagged entries at 0 %, as ``--set-tags`` does.
        """
        with self._lock:
            service = self._services[name]
            by_percent = [
                {"type": REVISION, "revision": rev, "percent": pct} for rev, pct in percents.items()
            ]
            by_tag = [
                {"type": REVISION, "revision": rev, "tag": tag} for tag, rev in (tags or {}).items()
            ]
            service.traffic = by_percent + by_tag
            service.generation += 1
            service.observed_generation = service.generation
            service.etag = self._new_etag()
            service.statuses = self._statuses(service)

    def delete_revision(self, name: str, revision: str) -> None:
        with self._lock:
            self._services[name].revisions[revision].deleted = True

    def fail_next_operation(self, message: str, status: str = "FAILED_PRECONDITION") -> None:
        """The next update's operation ends with this error instead of succeeding."""
        self._fail_next = (status, message)

    def deploy_before_next_update(self, name: str, image: str) -> None:
        """Someone deploys between the client's read and its write (a lost-update race)."""
        self._before_next_update[name] = image

    def serving(self, name: str) -> dict[str, int]:
        """Observed traffic by revision name, resolving ``LATEST`` as Cloud Run does."""
        with self._lock:
            service = self._services[name]
            return self._serving(service)

    def service(self, name: str) -> StandInService:
        with self._lock:
            return copy.deepcopy(self._services[name])

    # ------------------------------------------------------------------ model

    def _tick(self) -> datetime:
        self._clock += 1
        return _EPOCH + timedelta(minutes=self._clock)

    def _new_etag(self) -> str:
        return f'"{uuid.uuid4().hex[:16]}"'

    def _new_revision(self, service: StandInService, image: str) -> str:
        number = len(service.revisions) + 1
        name = f"{service.name}-{number:05d}-{uuid.uuid4().hex[:3]}"
        service.revisions[name] = StandInRevision(name, image, self._tick())
        service.latest_created = name
        return name

    def _deploy(self, service: StandInService, image: str) -> str:
        revision = self._new_revision(service, image)
        service.template["containers"][0]["image"] = image
        service.template.pop("revision", None)
        service.latest_ready = revision
        service.generation += 1
        service.observed_generation = service.generation
        service.etag = self._new_etag()
        service.statuses = self._statuses(service)
        return revision

    def _serving(self, service: StandInService) -> dict[str, int]:
        serving: dict[str, int] = {}
        for status in service.statuses:
            rev = status.get("revision") or service.latest_ready
            if status.get("percent", 0):
                serving[rev] = serving.get(rev, 0) + status["percent"]
        return serving

    @staticmethod
    def _statuses(service: StandInService) -> list[dict[str, Any]]:
        statuses = []
        for target in service.traffic:
            status = {"type": target.get("type", 0), "percent": target.get("percent", 0)}
            if target.get("type") == REVISION:
                status["revision"] = target["revision"]
            if target.get("tag"):
                status["tag"] = target["tag"]
            statuses.append(status)
        return statuses

    def _full(self, kind: str, name: str = "") -> str:
        base = f"projects/{self.project}/locations/{self.region}"
        return f"{base}/{kind}/{name}" if name else base

    def _service_json(self, service: StandInService) -> dict[str, Any]:
        full = self._full("services", service.name)
        return {
            "name": full,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, full)),
            "generation": str(service.generation),
            "annotations": dict(service.annotations),
            "template": copy.deepcopy(service.template),
            "traffic": copy.deepcopy(service.traffic),
            "observedGeneration": str(service.observed_generation),
            "terminalCondition": {
                "type": "Ready",
                "state": service.terminal_state,
                "message": service.terminal_message,
            },
            "latestReadyRevision": f"{full}/revisions/{service.latest_ready}",
            "latestCreatedRevision": f"{full}/revisions/{service.latest_created}",
            "trafficStatuses": copy.deepcopy(service.statuses),
            "uri": f"https://{service.name}-abc123-uc.a.run.app",
            "reconciling": service.reconciling,
            "etag": service.etag,
        }

    def _revision_json(self, service: StandInService, revision: StandInRevision) -> dict[str, Any]:
        full = self._full("services", service.name)
        ready = revision.name != service.latest_created or not service.reconciling
        return {
            "name": f"{full}/revisions/{revision.name}",
            "service": full,
            "generation": "1",
            "createTime": revision.created.isoformat().replace("+00:00", "Z"),
            "containers": [{"image": revision.image, "ports": [{"containerPort": 8080}]}],
            "conditions": [
                {"type": "Ready", "state": CONDITION_SUCCEEDED if ready else CONDITION_RECONCILING}
            ],
            "observedGeneration": "1",
        }

    # ------------------------------------------------------------------ API

    def get_service(self, name: str) -> dict[str, Any]:
        service = self._find_service(name)
        return self._service_json(service)

    def list_revisions(self, name: str) -> dict[str, Any]:
        service = self._find_service(name)
        revisions = [
            self._revision_json(service, rev)
            for rev in sorted(service.revisions.values(), key=lambda r: r.created, reverse=True)
            if not rev.deleted
        ]
        return {"revisions": revisions}

    def get_revision(self, name: str, revision: str) -> dict[str, Any]:
        service = self._find_service(name)
        rev = service.revisions.get(revision)
        if rev is None or rev.deleted:
            raise ApiError(
                "NOT_FOUND",
                f"Resource '{revision}' of kind 'REVISION' in region '{self.region}' "
                f"in project '{self.project}' does not exist.",
            )
        return self._revision_json(service, rev)

    def update_service(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.read_only:
            raise ApiError(
                "PERMISSION_DENIED",
                f"Permission 'run.services.update' denied on resource "
                f"'{self._full('services', name)}' (or resource may not exist).",
            )
        service = self._find_service(name)
        self.updates.append(copy.deepcopy(body))
        if name in self._before_next_update:
            self._deploy(service, self._before_next_update.pop(name))
        if body.get("etag") and body["etag"] != service.etag:
            raise ApiError(
                self.etag_conflict_status,
                "The service has been modified since it was read; etag mismatch.",
            )
        traffic = body.get("traffic") or [{"type": LATEST, "percent": 100}]
        self._check_traffic(service, traffic)
        template = body.get("template", {})
        if template.get("revision") in service.revisions:
            raise ApiError(
                "ALREADY_EXISTS",
                f"Revision named '{template['revision']}' with different configuration "
                "already exists.",
            )

        if template.get("containers") != service.template.get("containers"):
            image = _ingress_image(template)
            self._new_revision(service, image)
        service.template = copy.deepcopy(template)
        service.traffic = copy.deepcopy(traffic)
        service.annotations = dict(body.get("annotations", {}))
        service.generation += 1
        service.etag = self._new_etag()
        service.reconciling = True
        service.terminal_state = CONDITION_RECONCILING
        service.terminal_message = ""

        operation = StandInOperation(
            name=self._full("operations", str(uuid.uuid4())),
            service=name,
            polls_left=self.operation_polls,
            error=self._fail_next,
        )
        self._fail_next = None
        self._operations[operation.name] = operation
        return self._operation_json(operation)

    def get_operation(self, name: str) -> dict[str, Any]:
        operation = self._operations.get(name)
        if operation is None:
            raise ApiError("NOT_FOUND", f"Operation '{name}' not found.")
        if not operation.done:
            operation.polls_left -= 1
            if operation.polls_left <= 0:
                self._finish(operation)
        return self._operation_json(operation)

    def _finish(self, operation: StandInOperation) -> None:
        service = self._services[operation.service]
        operation.done = True
        service.reconciling = False
        if operation.error:
            # A failed rollout leaves the last serving state in place, as Cloud Run does.
            service.terminal_state = CONDITION_FAILED
            service.terminal_message = operation.error[1]
            return
        service.latest_ready = service.latest_created
        service.observed_generation = service.generation
        service.statuses = self._statuses(service)
        service.terminal_state = CONDITION_SUCCEEDED

    def _operation_json(self, operation: StandInOperation) -> dict[str, Any]:
        service = self._service_json(self._services[operation.service])
        body: dict[str, Any] = {
            "name": operation.name,
            "metadata": {"@type": SERVICE_TYPE, **service},
            "done": operation.done,
        }
        if operation.done and operation.error:
            status, message = operation.error
            body["error"] = {"code": _STATUS_CODE[status], "message": message}
        elif operation.done:
            body["response"] = {"@type": SERVICE_TYPE, **service}
        return body

    def _find_service(self, name: str) -> StandInService:
        service = self._services.get(name)
        if service is None:
            raise ApiError(
                "NOT_FOUND",
                f"Resource '{name}' of kind 'SERVICE' in region '{self.region}' "
                f"in project '{self.project}' does not exist.",
            )
        return service

    def _check_traffic(self, service: StandInService, traffic: list[dict[str, Any]]) -> None:
        if sum(t.get("percent", 0) for t in traffic) != 100:
            raise ApiError("INVALID_ARGUMENT", "Traffic percentages must add up to 100.")
        for target in traffic:
            if target.get("type") != REVISION:
                continue
            rev = service.revisions.get(target.get("revision", ""))
            if rev is None or rev.deleted:
                raise ApiError("NOT_FOUND", f"Revision '{target.get('revision')}' does not exist.")

    # ------------------------------------------------------------------ HTTP

    def _route(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.deny_all:
            raise ApiError("PERMISSION_DENIED", "Permission denied on resource project.")
        prefix = f"/v2/projects/{self.project}/locations/{self.region}/"
        if not path.startswith(prefix):
            raise ApiError("NOT_FOUND", f"Location or project in '{path}' not found.")
        rest = path.removeprefix(prefix)
        if m := re.fullmatch(r"services/([^/]+)", rest):
            if method == "GET":
                return self.get_service(m[1])
            if method == "PATCH":
                return self.update_service(m[1], body)
        if (m := re.fullmatch(r"services/([^/]+)/revisions", rest)) and method == "GET":
            return self.list_revisions(m[1])
        if (m := re.fullmatch(r"services/([^/]+)/revisions/([^/]+)", rest)) and method == "GET":
            return self.get_revision(m[1], m[2])
        if re.fullmatch(r"operations/[^/]+", rest) and method == "GET":
            return self.get_operation(path.removeprefix("/v2/"))
        raise ApiError("NOT_FOUND", f"No route for {method} {path}.")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with standin._lock:
                    standin.requests.append((method, path))
                    try:
                        body = json.loads(raw) if raw else {}
                        status, answer = 200, standin._route(method, path, body)
                    except ApiError as exc:
                        status = _STATUS_HTTP.get(exc.status, 500)
                        answer = {
                            "error": {"code": status, "message": exc.message, "status": exc.status}
                        }
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def _ingress_image(template: dict[str, Any]) -> str:
    containers = template.get("containers", [])
    for container in containers:
        if container.get("ports"):
            return str(container.get("image", ""))
    return str(containers[0].get("image", "")) if containers else ""
