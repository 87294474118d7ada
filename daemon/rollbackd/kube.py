"""Kubernetes API access shared by the Deployment target, leader election and the state store.

All three use the official client's synchronous ``ApiClient``, built once per configured
access by ``api_client_from``. Async callers run each call in a worker thread
(``asyncio.to_thread``) so the event loop never blocks, and every call carries a timeout.

Objects travel as plain JSON dictionaries (``_preload_content=False``), not as the
client's generated models: a pod template copied from a ReplicaSet back into its
Deployment must keep every field, including fields newer than this client knows about,
and a round trip through the models would silently drop those.

A failed call is described by ``failure_of`` as a ``Failure``: a short reason, whether
retrying later may help, and the API server's own message. Each caller turns that into
its own error tree (``TargetError`` for the target, ``StateError`` for the store).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import urllib3
import yaml
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

__all__ = [
    "KUBE_ERRORS",
    "Failure",
    "KubeAccess",
    "KubeAccessError",
    "api_client_from",
    "call_json",
    "failure_of",
    "format_time",
    "parse_time",
    "request_json",
]

# What a call through the client can raise besides our own errors: an HTTP error status,
# or a transport failure (refused, reset, timed out) after urllib3's own retries.
KUBE_ERRORS: tuple[type[Exception], ...] = (ApiException, urllib3.exceptions.HTTPError, OSError)

# The API server's Status reasons for errors worth another try.
_TEMPORARY_STATUS = {409, 429, 500, 502, 503, 504}
_REASONS = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    410: "gone",
    422: "invalid",
    429: "throttled",
}
MESSAGE_CHARS = 300


class KubeAccess(Protocol):
    """The settings that say how to reach a cluster (a target's or the ``ha`` section)."""

    @property
    def kubeconfig(self) -> str | None: ...

    @property
    def context(self) -> str | None: ...

    @property
    def api_url(self) -> str | None: ...


class KubeAccessError(Exception):
    """No usable credentials: the kubeconfig or the in-cluster service account is missing."""


def api_client_from(access: KubeAccess) -> ApiClient:
    """An API client for ``access``: a kubeconfig (and context), else in-cluster credentials.

    ``api_url`` overrides the server address of either; set alone, it reaches an API
    server without credentials (a local proxy such as ``kubectl proxy``, or a test
    stand-in). The client never touches the library's process-wide default
    configuration, so several clusters can be used side by side.
    """
    configuration = Configuration()
    # The client's config loaders carry no type hints; hence the ignores below.
    try:
        if access.kubeconfig or access.context:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=access.kubeconfig,
                context=access.context,
                client_configuration=configuration,
                persist_config=False,
            )
        elif not access.api_url:
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (kube_config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        if access.kubeconfig or access.context:
            where = access.kubeconfig or "the default kubeconfig ($KUBECONFIG or ~/.kube/config)"
        else:
            where = "the in-cluster service account"
        raise KubeAccessError(f"cannot load Kubernetes credentials from {where}: {exc}") from exc
    if access.api_url:
        configuration.host = access.api_url.rstrip("/")
    return ApiClient(configuration)


def call_json(fn: Callable[..., Any], /, *args: Any, timeout: float, **kwargs: Any) -> Any:
    """Call a generated client method and return the response body as parsed JSON.

    Raises what the client raises (see ``KUBE_ERRORS``); a non-2xx status arrives as
    ``ApiException`` with ``.status``.
    """
    response = fn(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
    try:
        return json.loads(response.data or b"null")
    finally:
        response.release_conn()


async def request_json(fn: Callable[..., Any], /, *args: Any, timeout: float, **kwargs: Any) -> Any:
    """``call_json`` in a worker thread, so a slow API server never stalls the event loop."""
    return await asyncio.to_thread(call_json, fn, *args, timeout=timeout, **kwargs)


@dataclass(frozen=True)
class Failure:
    """A failed API call, in terms a caller can act on.

    ``reason`` is one of ``conflict``, ``already_exists``, ``not_found``, ``forbidden``,
    ``unauthorized``, ``invalid``, ``gone``, ``throttled``, ``unavailable`` (5xx) or
    ``unreachable`` (no answer at all). ``temporary`` says whether the same call may
    succeed later without anyone changing anything.
    """

    reason: str
    temporary: bool
    status: int | None
    message: str


def failure_of(exc: BaseException) -> Failure:
    """Describe an exception raised by a client call (one of ``KUBE_ERRORS``)."""
    if isinstance(exc, ApiException):
        status = int(exc.status) if exc.status else None
        message, status_reason = _status_message(exc)
        if status is None or status >= 500:
            reason = "unavailable"
        elif status == 409 and status_reason == "AlreadyExists":
            reason = "already_exists"
        else:
            reason = _REASONS.get(status, "invalid")
        temporary = status is None or status in _TEMPORARY_STATUS
        if reason == "already_exists":
            temporary = False
        return Failure(reason, temporary, status, message)
    # Transport errors: the message names the host and the OS error, never credentials.
    return Failure("unreachable", True, None, _short(f"{type(exc).__name__}: {exc}"))


def _status_message(exc: ApiException) -> tuple[str, str]:
    """The Status object's message and reason, or the HTTP reason phrase without one."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        status = json.loads(body) if body else None
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        return _short(str(status.get("message") or exc.reason)), str(status.get("reason") or "")
    return _short(f"HTTP {exc.status} {exc.reason}"), ""


def _short(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, the form of Lease ``MicroTime`` fields."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    """Parse an API server timestamp (``Time`` or ``MicroTime``); ``None`` when absent."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
