"""Cloud Run target: read the serving revision, roll back by traffic shift or re-deploy.

The official ``google.cloud.run_v2`` client is used over its REST transport (the gRPC
transport cannot reach a plain-http stand-in, and REST is what runs everywhere). The
client is synchronous, so every call runs in a worker thread; the event loop never
blocks on Cloud Run.

Two strategies, both read-modify-write with the service's ``etag`` so a concurrent
change (a deploy by CI, a person shifting traffic) makes the update fail instead of
being overwritten:

``traffic`` (default)
    100 % of traffic to the last known good revision, which Cloud Run still holds.
    Nothing is built or created, so it is the fastest. Afterwards traffic is *pinned*:
    a later deploy creates a revision that gets no traffic until someone runs
    ``gcloud run services update-traffic SERVICE --to-latest``. The rollback records
    the newest revision at the time of the pin in the service annotation
    ``rollbackd.dev/latest-at-pin``, so ``current_revision`` can tell a revision
    deployed *after* the pin (``detail["unserved_revision"]``) from the bad one it
    replaced.

``redeploy``
    The last known good image on the service template, which makes a new revision, and
    traffic back to the latest revision, as ``gcloud run deploy --image`` does. A
    ``traffic`` rollback whose revision was deleted falls back to this, and says so.

Credentials: Application Default Credentials unless ``credentials_file`` names a
service-account key. An ``api_endpoint`` of plain ``http://`` on loopback is a local
stand-in and gets anonymous credentials (the config refuses plain http elsewhere).

Errors (see ``rollbackd.targets.base``)::

    PermanentTargetError  permission_denied, not_found, concurrent_change, rejected,
                          operation_failed, image_unknown, no_credentials, api_error
    TemporaryTargetError  unavailable, unreachable, operation_timeout, no_serving_revision,
                          operation_failed (when the operation's code is a transient one)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import google.auth
import requests
import structlog
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.future import polling
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import run_v2
from google.oauth2 import service_account

from rollbackd.config import CloudRunTarget
from rollbackd.targets.base import (
    PermanentTargetError,
    Readiness,
    Revision,
    RollbackResult,
    TargetError,
    TemporaryTargetError,
    check_version,
)

log = structlog.get_logger()

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
PIN_ANNOTATION = "rollbackd.dev/latest-at-pin"
_T = TypeVar("_T")
_LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
_BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
_FAILED = run_v2.Condition.State.CONDITION_FAILED
# Over REST, errors arrive as the class of their HTTP status (a 400 FAILED_PRECONDITION
# is a BadRequest); an operation's error arrives as the class of its gRPC code, and
# those are subclasses of the HTTP ones. So the HTTP classes are the ones to test.
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.InternalServerError,
    gexc.TooManyRequests,
    gexc.BadGateway,
)


def create(config: CloudRunTarget, *, service: str) -> CloudRunServiceTarget:
    """The factory's entry point."""
    return CloudRunServiceTarget(config, service=service)


@dataclass(frozen=True)
class _Serving:
    """What a service serves now, resolved from its traffic statuses."""

    percents: dict[str, int]
    pinned: bool
    latest_ready: str
    latest_created: str
    pinned_at: str


class CloudRunServiceTarget:
    """One Cloud Run service (``project``/``region``/``service`` of the config)."""

    kind = "cloudrun"

    def __init__(self, config: CloudRunTarget, *, service: str) -> None:
        self.config = config
        self.name = f"projects/{config.project}/locations/{config.region}/services/{config.service}"
        self._log = log.bind(service=service, target="cloudrun", cloudrun_service=config.service)
        self._clients: tuple[run_v2.ServicesClient, run_v2.RevisionsClient] | None = None
        self._clients_lock = threading.Lock()
        # Images of revisions seen, so a deleted revision can still be re-deployed.
        self._images: dict[str, str] = {}
        # After a redeploy the serving revision is a new one; readiness waits for it.
        self._expected: dict[str, str] = {}
        self._last: Revision | None = None

    # ------------------------------------------------------------------ Target protocol

    async def current_revision(self) -> Revision:
        """The serving revision; with a split, the one that took traffic last.

        ``detail`` carries ``image`` (keep it with the revision: a later rollback to a
        deleted revision needs it as ``reason["to_image"]``), ``split`` (revision ->
        percent) when traffic is split, ``pinned``, and ``unserved_revision`` when a
        revision deployed after a traffic pin gets no traffic.
        """
        service, created = await self._run(self._read_serving, action="read service")
        serving = _serving(service)
        if not serving.percents:
            raise TemporaryTargetError("no_serving_revision", detail=f"{self.name} serves none")

        # The revision that took traffic last is the newest one that has traffic.
        current = max(serving.percents, key=lambda rev: (created.get(rev, _NEVER), rev))
        detail: dict[str, Any] = {
            "image": self._images.get(current, ""),
            "pinned": serving.pinned,
            "latest_created": serving.latest_created,
            "latest_ready": serving.latest_ready,
        }
        if len(serving.percents) > 1:
            detail["split"] = dict(serving.percents)
        unserved = _unserved(serving)
        if serving.pinned:
            detail["unpin_command"] = self.unpin_command()
        if unserved:
            detail["unserved_revision"] = unserved

        revision = Revision(id=current, change=self._change(current), detail=detail)
        self._last = revision
        return revision

    async def rollback(
        self, *, to_version: str, from_version: str, reason: dict[str, Any]
    ) -> RollbackResult:
        """Shift traffic to ``to_version`` or re-deploy its image, per ``strategy``."""
        check_version(to_version)
        self._log.info(
            "cloudrun_rollback_requested",
            strategy=self.config.strategy,
            to_version=to_version,
            from_version=from_version,
        )
        if self.config.strategy == "traffic":
            result = await self._run(
                self._shift_traffic, to_version, reason, action="shift traffic"
            )
        else:
            result = await self._run(self._redeploy, to_version, reason, "", action="redeploy")
        self._log.info("cloudrun_rollback_done", to_version=to_version, **result.detail)
        return result

    async def readiness(self, *, to_version: str) -> Readiness:
        """Whether Cloud Run finished rolling out and the expected revision takes 100 %.

        One look, not a wait: the caller polls until its verification timeout.
        """
        service = await self._run(self._get_service, action="read service")
        expected = self._expected.get(to_version, to_version)
        percents = _serving(service).percents
        condition = service.terminal_condition
        if not service.reconciling and condition.state == _FAILED:
            return Readiness(ready=False, failed=True, message=condition.message)
        if service.reconciling or service.observed_generation != service.generation:
            return Readiness(ready=False, message="Cloud Run is still rolling out")
        if percents == {expected: 100}:
            return Readiness(ready=True, message=f"{expected} serves 100 % of traffic")
        # Reconciliation is over and someone else's traffic stands: it will not converge.
        return Readiness(
            ready=False,
            failed=True,
            message=f"traffic is {_describe(percents)}, not 100 % on {expected}",
        )

    def rollback_hint(self, *, to_version: str, from_version: str) -> str:
        """The gcloud command for this rollback."""
        where = self._where()
        if self.config.strategy == "traffic":
            return (
                f"gcloud run services update-traffic {self.config.service} "
                f"--to-revisions {shlex.quote(to_version)}=100 {where}"
            )
        image = self._images.get(to_version)
        if image:
            image_arg = shlex.quote(image)
        else:
            image_arg = (
                f'"$(gcloud run revisions describe {shlex.quote(to_version)} {where} '
                "--format='value(spec.containers[0].image)')\""
            )
        return f"gcloud run deploy {self.config.service} --image {image_arg} {where}"

    def unpin_command(self) -> str:
        """The command that sends traffic to the latest revision again after a pin."""
        return (
            f"gcloud run services update-traffic {self.config.service} --to-latest {self._where()}"
        )

    def pinned_reminder(self, revision: Revision) -> str | None:
        """The reminder for a revision deployed after a traffic pin that gets no traffic.

        ``None`` when there is nothing to remind of. The caller reminds once per
        ``revision.detail["unserved_revision"]``.
        """
        unserved = revision.detail.get("unserved_revision")
        if not unserved:
            return None
        return (
            f"Cloud Run service {self.config.service}: traffic is pinned to {revision.id} "
            f"since a rollback, so the newer revision {unserved} gets no traffic. "
            f"To serve the latest revision again run: {self.unpin_command()}"
        )

    async def aclose(self) -> None:
        if self._clients is not None:
            services, revisions = self._clients
            self._clients = None
            await asyncio.to_thread(_close, services, revisions)

    # ------------------------------------------------------------------ the work (threads)

    async def revision_history(self) -> list[tuple[float, str]]:
        """When each revision Cloud Run keeps was created, oldest first: for backtests.

        Creation is when a deploy made the revision; traffic shifts (a rollback, a
        canary) leave no date, so the history assumes each revision served from its
        creation until the next one was created.
        """
        return await self._run(self._list_history, action="list revisions")

    def _list_history(self) -> list[tuple[float, str]]:
        history = [
            (revision.create_time.timestamp(), _short(revision.name))
            for revision in self._revisions().list_revisions(parent=self.name)
        ]
        return sorted(history)

    def _read_serving(self) -> tuple[run_v2.Service, dict[str, datetime]]:
        """The service and the creation time of each revision with traffic."""
        service = self._get_service()
        created: dict[str, datetime] = {}
        for rev in _serving(service).percents:
            try:
                revision = self._revisions().get_revision(name=self._revision_name(rev))
            except gexc.NotFound:
                continue
            created[rev] = revision.create_time
            self._remember_image(rev, revision)
        return service, created

    def _shift_traffic(self, to_version: str, reason: dict[str, Any]) -> RollbackResult:
        service = self._get_service()
        serving = _serving(service)
        if serving.pinned and serving.percents == {to_version: 100}:
            return RollbackResult(
                changed=False,
                detail=self._traffic_detail(to_version),
                note=self._pin_note(to_version),
            )
        try:
            revision = self._revisions().get_revision(name=self._revision_name(to_version))
        except gexc.NotFound:
            return self._redeploy_deleted(to_version, reason)
        self._remember_image(to_version, revision)

        pin = run_v2.TrafficTarget(type_=_BY_REVISION, revision=to_version, percent=100)
        service.traffic = [pin, *_tags_only(service)]
        service.annotations[PIN_ANNOTATION] = serving.latest_created
        try:
            self._update(service, action=f"traffic to {to_version}")
        except gexc.NotFound:
            # Deleted between the look-up and the update.
            return self._redeploy_deleted(to_version, reason)
        self._expected.pop(to_version, None)
        return RollbackResult(
            changed=True, detail=self._traffic_detail(to_version), note=self._pin_note(to_version)
        )

    def _redeploy_deleted(self, to_version: str, reason: dict[str, Any]) -> RollbackResult:
        self._log.warning("cloudrun_revision_deleted", revision=to_version, fallback="redeploy")
        note = f"Revision {to_version} no longer exists, so its image was re-deployed instead"
        return self._redeploy(to_version, reason, note)

    def _redeploy(self, to_version: str, reason: dict[str, Any], note: str) -> RollbackResult:
        image = self._image_of(to_version, reason)
        service = self._get_service()
        container = _ingress_container(service)
        serving = _serving(service)
        if (
            container.image == image
            and not serving.pinned
            and serving.percents == {serving.latest_ready: 100}
        ):
            self._expected[to_version] = serving.latest_ready
            detail: dict[str, Any] = {
                "strategy": "redeploy",
                "revision": serving.latest_ready,
                "image": image,
            }
            return RollbackResult(changed=False, detail=detail, note=note)

        container.image = image
        # A fixed revision name would collide with the existing revision of that name.
        service.template.revision = ""
        latest = run_v2.TrafficTarget(type_=_LATEST, percent=100)
        service.traffic = [latest, *_tags_only(service)]
        service.annotations.pop(PIN_ANNOTATION, None)
        updated = self._update(service, action=f"redeploy of {image}")

        new_revision = _short(updated.latest_created_revision)
        self._images[new_revision] = image
        self._expected[to_version] = new_revision
        detail = {
            "strategy": "redeploy",
            "revision": new_revision,
            "image": image,
            "fallback": bool(note),
        }
        if note:
            note = f"{note}: {image} now serves as new revision {new_revision}."
        return RollbackResult(changed=True, detail=detail, note=note)

    def _update(self, service: run_v2.Service, *, action: str) -> run_v2.Service:
        """Write ``service`` guarded by its etag and wait for the operation."""
        etag = service.etag
        try:
            operation = self._services().update_service(service=service)
        except (gexc.Conflict, gexc.BadRequest) as exc:
            # ABORTED (409) or FAILED_PRECONDITION (400) for a stale etag.
            raise self._conflict(etag, action, exc) from exc
        self._log.info(
            "cloudrun_operation_started", operation=operation.operation.name, action=action
        )

        delay = self.config.poll_interval
        policy = polling.DEFAULT_POLLING.with_delay(
            initial=delay, maximum=delay * 5, multiplier=1.5
        ).with_timeout(self.config.operation_timeout)
        try:
            # The api_core future is untyped; its result is the updated Service.
            wait = operation.result
            updated: run_v2.Service = wait(polling=policy)  # type: ignore[no-untyped-call]
        except concurrent.futures.TimeoutError as exc:
            raise TemporaryTargetError(
                "operation_timeout",
                detail=f"{action}: {operation.operation.name} not done after "
                f"{self.config.operation_timeout:g}s",
            ) from exc
        except gexc.GoogleAPICallError as exc:
            error = TemporaryTargetError if isinstance(exc, _TRANSIENT) else PermanentTargetError
            raise error("operation_failed", detail=f"{action}: {exc.message}") from exc
        self._log.info("cloudrun_operation_done", operation=operation.operation.name, action=action)
        return updated

    def _conflict(self, etag: str, action: str, exc: gexc.GoogleAPICallError) -> TargetError:
        """Re-read after a refused update, to say why; never retry over someone's change."""
        try:
            now = self._get_service()
        except gexc.GoogleAPICallError:
            now = None
        if now is None or now.etag == etag:
            return PermanentTargetError("rejected", detail=f"{action}: {exc.message}")
        self._log.warning(
            "cloudrun_concurrent_change", action=action, etag_read=etag, etag_now=now.etag
        )
        return PermanentTargetError(
            "concurrent_change",
            detail=f"{action}: the service changed while rolling back (now serving "
            f"{_describe(_serving(now).percents)}); nothing was overwritten",
        )

    def _image_of(self, revision: str, reason: dict[str, Any]) -> str:
        """The image of ``revision``: from the caller, from memory, or from Cloud Run."""
        given = reason.get("to_image")
        if isinstance(given, str) and given:
            return given
        if revision in self._images:
            return self._images[revision]
        try:
            found = self._revisions().get_revision(name=self._revision_name(revision))
        except gexc.NotFound as exc:
            raise PermanentTargetError(
                "image_unknown",
                detail=f"revision {revision} was deleted and its image is not known",
            ) from exc
        return self._remember_image(revision, found)

    def _get_service(self) -> run_v2.Service:
        return self._services().get_service(name=self.name)

    def _remember_image(self, name: str, revision: run_v2.Revision) -> str:
        images = [c.image for c in revision.containers if c.ports] or [
            c.image for c in revision.containers
        ]
        if images:
            self._images[name] = images[0]
        return self._images.get(name, "")

    # ------------------------------------------------------------------ helpers

    async def _run(self, func: Callable[..., _T], *args: Any, action: str) -> _T:
        """Run a blocking client call in a thread and translate its errors."""
        try:
            return await asyncio.to_thread(func, *args)
        except TargetError:
            raise
        except Exception as exc:
            raise _translate(exc, action=action) from exc

    def _services(self) -> run_v2.ServicesClient:
        return self._ensure_clients()[0]

    def _revisions(self) -> run_v2.RevisionsClient:
        return self._ensure_clients()[1]

    def _ensure_clients(self) -> tuple[run_v2.ServicesClient, run_v2.RevisionsClient]:
        # Built on first use, in a worker thread: finding ADC may ask the metadata server.
        # The lock keeps a rollback and a revision read from building two pairs at once.
        with self._clients_lock:
            return self._build_clients()

    def _build_clients(self) -> tuple[run_v2.ServicesClient, run_v2.RevisionsClient]:
        if self._clients is None:
            options = ClientOptions(api_endpoint=self.config.api_endpoint)
            try:
                credentials = _credentials(self.config)
            except (auth_exc.GoogleAuthError, OSError, ValueError) as exc:
                raise PermanentTargetError("no_credentials", detail=str(exc)) from exc
            self._clients = (
                run_v2.ServicesClient(
                    transport="rest", client_options=options, credentials=credentials
                ),
                run_v2.RevisionsClient(
                    transport="rest", client_options=options, credentials=credentials
                ),
            )
        return self._clients

    def _revision_name(self, revision: str) -> str:
        return f"{self.name}/revisions/{revision}"

    def _where(self) -> str:
        return f"--region {self.config.region} --project {self.config.project}"

    def _change(self, current: str) -> str:
        if self._last is None or self._last.id == current:
            return self._last.change if self._last else "unknown"
        before, after = self._last.detail.get("image"), self._images.get(current)
        if not before or not after:
            return "unknown"
        return "config" if before == after else "code"

    def _traffic_detail(self, to_version: str) -> dict[str, Any]:
        return {
            "strategy": "traffic",
            "revision": to_version,
            "image": self._images.get(to_version, ""),
            "pinned": True,
            "unpin_command": self.unpin_command(),
        }

    def _pin_note(self, to_version: str) -> str:
        return (
            f"Traffic is pinned to {to_version}: later deploys get no traffic until someone "
            f"runs {self.unpin_command()}"
        )


# ---------------------------------------------------------------------- pure helpers

_NEVER = datetime.min.replace(tzinfo=UTC)


def _short(name: str) -> str:
    """``projects/p/locations/l/services/s/revisions/r`` -> ``r``."""
    return name.rsplit("/", 1)[-1]


def _serving(service: run_v2.Service) -> _Serving:
    latest_ready = _short(service.latest_ready_revision)
    percents: dict[str, int] = {}
    for status in service.traffic_statuses:
        # A LATEST entry names no revision: it is whatever is latest and ready.
        rev = status.revision or (latest_ready if status.type_ == _LATEST else "")
        if rev and status.percent:
            percents[rev] = percents.get(rev, 0) + status.percent
    pinned = not any(t.type_ == _LATEST and t.percent for t in service.traffic)
    return _Serving(
        percents=percents,
        pinned=pinned,
        latest_ready=latest_ready,
        latest_created=_short(service.latest_created_revision),
        pinned_at=service.annotations.get(PIN_ANNOTATION, ""),
    )


def _unserved(serving: _Serving) -> str | None:
    """A revision deployed after traffic was pinned that gets no traffic, if any.

    Without the pin annotation (a person pinned traffic), any latest revision without
    traffic counts.
    """
    latest = serving.latest_ready
    if not serving.pinned or not latest or latest in serving.percents:
        return None
    if latest == serving.pinned_at:
        return None
    return latest


def _tags_only(service: run_v2.Service) -> list[run_v2.TrafficTarget]:
    """The tagged traffic entries at 0 %: their URLs keep working after a rollback."""
    return [
        run_v2.TrafficTarget(type_=t.type_, revision=t.revision, tag=t.tag, percent=0)
        for t in service.traffic
        if t.tag
    ]


def _ingress_container(service: run_v2.Service) -> run_v2.Container:
    """The container that receives requests: the one with ports, or the only one."""
    containers = list(service.template.containers)
    if not containers:
        raise PermanentTargetError("no_container", detail="the service template has none")
    with_ports = [c for c in service.template.containers if c.ports]
    return with_ports[0] if with_ports else service.template.containers[0]


def _describe(percents: dict[str, int]) -> str:
    return ", ".join(f"{rev} {pct} %" for rev, pct in percents.items()) or "nothing"


def _credentials(config: CloudRunTarget) -> Credentials:
    if config.credentials_file:
        # google-auth is untyped here; both calls return Credentials.
        key_file = service_account.Credentials.from_service_account_file
        path = config.credentials_file
        creds: Credentials = key_file(path, scopes=SCOPES)  # type: ignore[no-untyped-call]
        return creds
    if config.api_endpoint and _is_loopback_http(config.api_endpoint):
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    creds, _project = google.auth.default(scopes=SCOPES)
    return creds


def _is_loopback_http(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _translate(exc: Exception, *, action: str) -> TargetError:
    """Map client-library errors to our two kinds."""
    if isinstance(exc, gexc.Forbidden | gexc.Unauthorized):
        return PermanentTargetError("permission_denied", detail=f"{action}: {exc.message}")
    if isinstance(exc, gexc.NotFound):
        return PermanentTargetError("not_found", detail=f"{action}: {exc.message}")
    if isinstance(exc, _TRANSIENT):
        return TemporaryTargetError("unavailable", detail=f"{action}: {exc.message}")
    if isinstance(exc, gexc.GoogleAPICallError):
        return PermanentTargetError("api_error", detail=f"{action}: {exc.message}")
    if isinstance(exc, auth_exc.TransportError | requests.exceptions.RequestException):
        return TemporaryTargetError("unreachable", detail=f"{action}: {type(exc).__name__}")
    if isinstance(exc, auth_exc.RefreshError):
        return PermanentTargetError("no_credentials", detail=f"{action}: {exc}")
    return TemporaryTargetError("unexpected", detail=f"{action}: {type(exc).__name__}: {exc}")


def _close(*clients: Any) -> None:
    for client in clients:
        client.transport.close()
