"""Several replicas, one leader: a Lease for leadership and a ConfigMap for shared state.

Leader election
    ``LeaseElector`` follows client-go's algorithm over a ``coordination.k8s.io/v1``
    Lease, written with resourceVersion checks so two replicas can never both win:

    - a replica takes the Lease when it is free (no holder) or when the holder has not
      renewed it for ``lease_duration``, measured on the replica's own clock from the
      moment it last saw the record change (no trust in other machines' clocks);
    - the leader renews every ``retry_period`` and considers itself a follower again as
      soon as ``renew_deadline`` (shorter than ``lease_duration``) passes without a
      successful renewal, so it stops acting before anyone else may start;
    - on stop the leader releases the Lease, so another replica takes over within one
      ``retry_period`` instead of waiting for it to expire.

    The library's own ``kubernetes.leaderelection`` is not used: it builds its client
    from the process-wide default configuration, exits the process on invalid
    settings, and blocks its thread.

Shared state
    ``ConfigMapStateStore`` keeps the daemon's state document as JSON under
    ``data["state.json"]`` of one ConfigMap, with the same ``load``/``save`` pair as
    the SQLite store. Every write names the resourceVersion last read or written, so a
    write based on stale state fails with ``StateConflict`` instead of erasing another
    replica's newer state.

Errors::

    StateError            (rollbackd.state) the state could not be read or written
    └── StateConflict     someone else wrote the state since we last read it
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes.client import ApiClient, CoordinationV1Api, CoreV1Api

from rollbackd.config import HighAvailability
from rollbackd.kube import (
    KUBE_ERRORS,
    api_client_from,
    call_json,
    failure_of,
    format_time,
    request_json,
)
from rollbackd.state import StateError

__all__ = [
    "REQUIRED_PERMISSIONS",
    "ConfigMapStateStore",
    "LeaseElector",
    "StateConflict",
    "api_client_from",
    "elector_from",
    "identity_from",
    "state_store_from",
]

log = structlog.get_logger()

ELECTION_PERMISSIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    }
)
STATE_PERMISSIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("", "configmaps", "get"),
        ("", "configmaps", "create"),
        ("", "configmaps", "update"),
    }
)
# (API group, resource, verb) for every call this module makes, in the ha namespace.
REQUIRED_PERMISSIONS = ELECTION_PERMISSIONS | STATE_PERMISSIONS

STATE_KEY = "state.json"
STATE_SCHEME = "kubernetes://"
# A ConfigMap holds at most 1 MiB; leave room for its metadata.
STATE_LIMIT_BYTES = 1_000_000


class StateConflict(StateError):
    """The stored state changed since we read it: reload, re-apply, and save again."""


def identity_from(ha: HighAvailability) -> str:
    """This replica's name in the Lease: ``$POD_NAME`` (``identity_env``), else the host."""
    return os.environ.get(ha.identity_env, "").strip() or socket.gethostname()


def elector_from(ha: HighAvailability, *, api_client: ApiClient | None = None) -> LeaseElector:
    """A ``LeaseElector`` configured by the ``ha`` section."""
    return LeaseElector(
        api_client=api_client or api_client_from(ha),
        name=ha.lease,
        namespace=ha.namespace,
        identity=identity_from(ha),
        lease_duration=ha.lease_duration,
        renew_deadline=ha.renew_deadline,
        retry_period=ha.retry_period,
    )


def state_store_from(
    location: str, ha: HighAvailability, *, api_client: ApiClient | None = None
) -> ConfigMapStateStore:
    """The store named by ``state: kubernetes://NAMESPACE/NAME`` (a ConfigMap)."""
    path = location.removeprefix(STATE_SCHEME)
    namespace, _, name = path.partition("/")
    if not location.startswith(STATE_SCHEME) or not namespace or not name or "/" in name:
        raise StateError(f"'{location}' is not kubernetes://NAMESPACE/NAME")
    return ConfigMapStateStore(
        api_client=api_client or api_client_from(ha), namespace=namespace, name=name
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- election


class LeaseElector:
    """Holds or follows one Lease; ``is_leader`` is what the loop asks before acting.

    ``clock`` is monotonic seconds (for expiry, immune to wall-clock jumps); ``now`` is
    the wall time written into the Lease for people reading it with kubectl.
    """

    def __init__(
        self,
        *,
        api_client: ApiClient,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("ha needs retry_period < renew_deadline < lease_duration")
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._api = CoordinationV1Api(api_client)
        self._clock = clock
        self._now = now
        # One call may take at most a retry period, so a hung API server cannot hold
        # a renewal past the renew deadline unnoticed.
        self._timeout = max(retry_period, 0.5)
        self._leading = False
        self._renewed_at = -math.inf
        self._observed: dict[str, Any] | None = None
        self._observed_at = -math.inf
        self._term = 0
        self._log = log.bind(lease=f"{namespace}/{name}", identity=identity)

    @property
    def is_leader(self) -> bool:
        """True while this replica holds a Lease it renewed within ``renew_deadline``."""
        return self._leading and self._clock() - self._renewed_at < self.renew_deadline

    @property
    def holder(self) -> str | None:
        """The holder seen last (this replica or another), for status pages and logs."""
        if self._observed is None:
            return None
        return self._observed.get("holderIdentity") or None

    @property
    def term(self) -> int:
        """How many times this replica became leader; a change means: reload shared state."""
        return self._term

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire, renew and follow until ``stop`` is set, then release if leading."""
        try:
            while not stop.is_set():
                attempted_at = self._clock()
                held = await self._acquire_or_renew()
                self._update(held, attempted_at)
                # Wake early on stop, so a shutdown releases the Lease at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.retry_period)
        finally:
            if self._leading:
                self._leading = False
                await self._release()

    def _update(self, held: bool, attempted_at: float) -> None:
        # A lapse past the renew deadline ends a term even if the next renewal succeeds:
        # the loop saw ``is_leader`` false meanwhile and must reload state when it returns.
        was_leader = self.is_leader
        if held:
            if not was_leader:
                self._term += 1
                self._log.info("leader_elected", term=self._term)
            self._leading = True
            # Counted from before the request: the conservative end of the renewal.
            self._renewed_at = attempted_at
        elif self._leading and not was_leader:
            self._leading = False
            self._log.warning("leadership_lost", holder=self.holder, next="following; acting stops")

    async def _read_lease(self) -> dict[str, Any]:
        lease: dict[str, Any] = await request_json(
            self._api.read_namespaced_lease, self.name, self.namespace, timeout=self._timeout
        )
        return lease

    async def _acquire_or_renew(self) -> bool:
        """One attempt; False when another replica holds a valid Lease or the API failed."""
        try:
            lease = await self._read_lease()
        except KUBE_ERRORS as exc:
            if failure_of(exc).reason == "not_found":
                return await self._create()
            return self._failed("read", exc)

        spec = dict(lease.get("spec") or {})
        if spec != self._observed:
            self._observed, self._observed_at = spec, self._clock()
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self._clock() < self._observed_at + duration:
            return False

        moment = format_time(self._now())
        transitions = int(spec.get("leaseTransitions") or 0)
        renewing = holder == self.identity
        lease["spec"] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.lease_duration),
            "acquireTime": spec.get("acquireTime") if renewing else moment,
            "renewTime": moment,
            "leaseTransitions": transitions if renewing else transitions + 1,
        }
        return await self._replace(lease, "renew" if renewing else "acquire")

    async def _create(self) -> bool:
        moment = format_time(self._now())
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.lease_duration),
            "acquireTime": moment,
            "renewTime": moment,
            "leaseTransitions": 0,
        }
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        try:
            created = await request_json(
                self._api.create_namespaced_lease, self.namespace, body, timeout=self._timeout
            )
        except KUBE_ERRORS as exc:
            # Another replica created it first: it leads, we follow.
            return self._failed("create", exc)
        self._observed, self._observed_at = dict(created.get("spec") or {}), self._clock()
        return True

    async def _replace(self, lease: dict[str, Any], what: str) -> bool:
        try:
            # The body carries the resourceVersion we read: a concurrent writer wins.
            replaced = await request_json(
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                lease,
                timeout=self._timeout,
            )
        except KUBE_ERRORS as exc:
            return self._failed(what, exc)
        self._observed, self._observed_at = dict(replaced.get("spec") or {}), self._clock()
        return True

    def _failed(self, what: str, exc: BaseException) -> bool:
        failure = failure_of(exc)
        if failure.reason in ("conflict", "already_exists"):
            self._log.debug("lease_contended", attempt=what)
        else:
            self._log.warning(
                "lease_call_failed",
                attempt=what,
                reason=failure.reason,
                error=failure.message,
                next=f"retrying in {self.retry_period:g}s",
            )
        return False

    async def _release(self) -> None:
        """Hand the Lease back (no holder), so a follower need not wait for it to expire."""
        try:
            lease = await self._read_lease()
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            moment = format_time(self._now())
            lease["spec"] = {
                "leaseDurationSeconds": 1,
                "acquireTime": moment,
                "renewTime": moment,
                "leaseTransitions": int(spec.get("leaseTransitions") or 0),
            }
            await request_json(
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                lease,
                timeout=self._timeout,
            )
        except KUBE_ERRORS as exc:
            self._log.warning(
                "lease_release_failed",
                error=failure_of(exc).message,
                next=f"another replica takes over when the lease expires "
                f"({self.lease_duration:g}s)",
            )
            return
        self._log.info("leadership_released")


# --------------------------------------------------------------------------- state


class ConfigMapStateStore:
    """The state document in a ConfigMap, for replicas that share it.

    ``load`` and ``save`` are synchronous like ``SqliteStore``'s; an async caller runs
    them with ``asyncio.to_thread``. A save that would not change the stored text is
    skipped. Limits: the document must fit in a ConfigMap (about 1 MiB).
    """

    def __init__(
        self,
        *,
        api_client: ApiClient,
        namespace: str,
        name: str,
        request_timeout: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.request_timeout = request_timeout
        self._core = CoreV1Api(api_client)
        self._api_client = api_client
        self._resource_version: str | None = None
        self._text: str | None = None

    def load(self) -> dict[str, Any] | None:
        """The stored document, or ``None`` when there is none yet."""
        try:
            config_map = call_json(
                self._core.read_namespaced_config_map,
                self.name,
                self.namespace,
                timeout=self.request_timeout,
            )
        except KUBE_ERRORS as exc:
            if failure_of(exc).reason == "not_found":
                self._resource_version, self._text = None, None
                return None
            raise self._error("read", exc) from exc

        self._resource_version = str(config_map["metadata"]["resourceVersion"])
        self._text = (config_map.get("data") or {}).get(STATE_KEY)
        if not self._text:
            return None
        try:
            doc = json.loads(self._text)
        except ValueError as exc:
            raise StateError(f"{self._where}: {STATE_KEY} is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise StateError(f"{self._where}: {STATE_KEY} is not a JSON object")
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        """Write ``doc`` if it changed; ``StateConflict`` if the ConfigMap moved on."""
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        if text == self._text and self._resource_version is not None:
            return
        if len(text.encode()) > STATE_LIMIT_BYTES:
            raise StateError(
                f"{self._where}: the state is {len(text.encode())} bytes; "
                f"a ConfigMap holds at most about {STATE_LIMIT_BYTES} bytes"
            )
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/name": "rollbackd",
                    "app.kubernetes.io/component": "state",
                },
            },
            "data": {STATE_KEY: text},
        }
        try:
            if self._resource_version is None:
                written = call_json(
                    self._core.create_namespaced_config_map,
                    self.namespace,
                    body,
                    timeout=self.request_timeout,
                )
            else:
                body["metadata"]["resourceVersion"] = self._resource_version
                written = call_json(
                    self._core.replace_namespaced_config_map,
                    self.name,
                    self.namespace,
                    body,
                    timeout=self.request_timeout,
                )
        except KUBE_ERRORS as exc:
            raise self._error("write", exc) from exc
        self._resource_version = str(written["metadata"]["resourceVersion"])
        self._text = text

    def close(self) -> None:
        """Nothing to release: the API client belongs to whoever passed it in."""

    @property
    def _where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def _error(self, what: str, exc: BaseException) -> StateError:
        failure = failure_of(exc)
        # A write that finds a newer version, an existing map where we expected none,
        # or no map where we read one: all mean someone else wrote in between.
        if what == "write" and failure.reason in ("conflict", "already_exists", "not_found"):
            return StateConflict(f"{self._where} changed since it was read: {failure.message}")
        return StateError(f"cannot {what} {self._where}: {failure.message}")
