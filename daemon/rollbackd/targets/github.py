"""GitHub Actions target: roll back by running the deploy workflow for a version.

The revision comes from the service itself (a ``version_command`` or a ``version_url``),
as with the exec target: GitHub knows what was deployed last, not what is running.

Two ways to roll back, both followed until the run completes (``run_timeout``):

``dispatch`` (default)
    ``POST /repos/{repo}/actions/workflows/{workflow}/dispatches`` with ``ref`` and
    ``inputs``, where ``{to_version}``, ``{from_version}`` and ``{service}`` are filled
    in. GitHub answers 204 without the run's id, so the run is found by listing the
    workflow's ``workflow_dispatch`` runs created since just before the dispatch and
    taking the one that was not there before (on ``ref``'s branch when it shows).

``rerun``
    Re-run the newest *successful* run of the workflow for the version: the run whose
    ``head_sha`` starts with the version (a commit SHA of 7 or more hex digits), or
    whose ``display_title`` holds the version as a separate word. A workflow shows its
    version in the title with ``run-name: Deploy ${{ inputs.tag }}``. Only the newest
    300 successful runs are searched.

The token (``token_env``) is read when first needed, sent as ``Authorization: Bearer``
to the GitHub API only (never to ``version_url``), and never logged. Rate limits are
honoured: a 403 or 429 with ``Retry-After``, or with ``x-ratelimit-remaining: 0`` and
``x-ratelimit-reset``, waits as long as GitHub asks, up to ``max_retry_wait``, then
retries; a longer wait gives up for now with a temporary error.

Errors (see ``rollbackd.targets.base``)::

    PermanentTargetError  unauthorized (401), forbidden (403), not_found (404),
                          rejected (422), no_token, bad_template, unsafe_version,
                          no_run_for_version, run_not_found, workflow_failed (detail:
                          the run's URL), run_timeout (a re-dispatch would deploy twice),
                          version_command_failed (the command cannot start)
    TemporaryTargetError  rate_limited, unavailable (5xx, network), version_timeout,
                          version_command_failed, version_url_failed, empty_version
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from rollbackd.config import GitHubActionsTarget
from rollbackd.secrets import SecretError, read_secret
from rollbackd.targets.base import (
    PermanentTargetError,
    Readiness,
    Revision,
    RollbackResult,
    TemporaryTargetError,
    check_version,
)

log = structlog.get_logger()

API_VERSION = "2022-11-28"
ATTEMPTS = 4
# Runs created this long before our dispatch are still looked at: clocks differ.
CLOCK_SKEW = timedelta(minutes=2)
RERUN_PAGES = 3
_SHA = re.compile(r"[0-9a-fA-F]{7,40}")
_T = TypeVar("_T")


def create(config: GitHubActionsTarget, *, service: str) -> GitHubActionsDeployTarget:
    """The factory's entry point."""
    return GitHubActionsDeployTarget(config, service=service)


class _RateLimited(Exception):
    """GitHub asked us to wait ``wait`` seconds before the next request."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited for {wait:g}s")
        self.wait = wait


class _Unavailable(Exception):
    """A 5xx answer or a network failure: worth a quick retry."""


class GitHubActionsDeployTarget:
    """One service deployed by a GitHub Actions workflow."""

    kind = "github-actions"

    def __init__(
        self,
        config: GitHubActionsTarget,
        *,
        service: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.service = service
        self._clock = clock
        self._log = log.bind(service=service, target="github-actions", repo=config.repo)
        self._api = httpx.AsyncClient(
            base_url=config.api_url.rstrip("/"),
            timeout=30.0,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "rollbackd",
            },
        )
        # The service's own endpoint gets no GitHub headers and never the token.
        self._http = httpx.AsyncClient(timeout=config.version_timeout)
        self._token: str | None = None

    # ------------------------------------------------------------------ Target protocol

    async def current_revision(self) -> Revision:
        """The version the service reports; needs no GitHub token at all."""
        if self.config.version_command:
            version = await self._version_from_command(self.config.version_command)
            source = "version_command"
        elif self.config.version_url:
            version = await self._version_from_url(self.config.version_url)
            source = "version_url"
        else:
            raise PermanentTargetError("no_version_source", detail="set version_command or _url")
        if not version:
            raise TemporaryTargetError("empty_version", detail=f"{source} printed nothing")
        return Revision(id=version, detail={"source": source})

    async def rollback(
        self, *, to_version: str, from_version: str, reason: dict[str, Any]
    ) -> RollbackResult:
        """Dispatch or re-run the deploy workflow for ``to_version``; wait for its end."""
        check_version(to_version)
        deadline = time.monotonic() + self.config.run_timeout
        if self.config.mode == "dispatch":
            run = await self._dispatch(to_version, from_version, deadline)
            attempt = 1
        else:
            run = await self._rerun(to_version)
            attempt = int(run.get("run_attempt") or 1) + 1
        run = await self._follow(run, attempt=attempt, deadline=deadline)

        url = str(run.get("html_url", ""))
        detail = {
            "url": url,
            "run_id": run["id"],
            "attempt": run.get("run_attempt", 1),
            "mode": self.config.mode,
        }
        note = f"Deploy workflow run for {to_version} succeeded: {url}"
        return RollbackResult(changed=True, detail=detail, note=note)

    async def readiness(self, *, to_version: str) -> Readiness:
        """Ready once the service itself reports ``to_version``."""
        try:
            current = await self.current_revision()
        except (TemporaryTargetError, PermanentTargetError) as exc:
            return Readiness(ready=False, message=f"cannot read the version: {exc}")
        if current.id == to_version:
            return Readiness(ready=True, message=f"the service reports {to_version}")
        return Readiness(ready=False, message=f"the service still reports {current.id}")

    def rollback_hint(self, *, to_version: str, from_version: str) -> str:
        """The ``gh`` command a person would run for this rollback."""
        repo = shlex.quote(self.config.repo)
        workflow = shlex.quote(self.config.workflow)
        if self.config.mode == "dispatch":
            values = self._values(to_version, from_version)
            ref = _fill_for_people(self.config.ref, values)
            fields = " ".join(
                f"-f {shlex.quote(f'{key}={_fill_for_people(value, values)}')}"
                for key, value in self.config.inputs.items()
            )
            command = f"gh workflow run {workflow} --repo {repo} --ref {shlex.quote(ref)}"
            return f"{command} {fields}".rstrip()
        select = (
            f'[.[] | select((.displayTitle | contains("{to_version}")) '
            f'or (.headSha | startswith("{to_version}")))][0].databaseId'
        )
        find = (
            f"gh run list --repo {repo} --workflow {workflow} --status success --limit 100 "
            f"--json databaseId,displayTitle,headSha --jq {shlex.quote(select)}"
        )
        return f'gh run rerun "$({find})" --repo {repo}'

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._http.aclose()

    # ------------------------------------------------------------------ dispatch and rerun

    async def _dispatch(
        self, to_version: str, from_version: str, deadline: float
    ) -> dict[str, Any]:
        values = self._values(to_version, from_version)
        ref = _fill(self.config.ref, values)
        inputs = {key: _fill(value, values) for key, value in self.config.inputs.items()}
        since = datetime.fromtimestamp(self._clock(), UTC) - CLOCK_SKEW
        known = {run["id"] for run in await self._dispatch_runs(since)}

        response = await self._request(
            "POST",
            f"{self._workflow_path()}/dispatches",
            json={"ref": ref, "inputs": inputs},
        )
        self._log.info("workflow_dispatched", workflow=self.config.workflow, ref=ref)
        # Newer GitHub versions may name the run in the answer; use it when they do.
        if response.status_code == 200 and response.content:
            run_id = response.json().get("workflow_run_id")
            if run_id:
                return await self._get_run(int(run_id))
        return await self._find_new_run(known, since, ref, deadline)

    async def _find_new_run(
        self, known: set[int], since: datetime, ref: str, deadline: float
    ) -> dict[str, Any]:
        """The run our dispatch created: new since the dispatch, on ``ref`` when it shows."""
        branch = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        while True:
            listed = await self._poll(self._dispatch_runs(since), fallback=[])
            fresh = [run for run in listed if run["id"] not in known]
            ours = [run for run in fresh if run.get("head_branch") in (branch, None)] or fresh
            if ours:
                run = min(ours, key=lambda r: int(r["id"]))
                self._log.info("workflow_run_found", run_id=run["id"], url=run.get("html_url"))
                return run
            if time.monotonic() >= deadline:
                raise PermanentTargetError(
                    "run_not_found",
                    detail=f"no run of {self.config.workflow} appeared after the dispatch",
                )
            await asyncio.sleep(self.config.poll_interval)

    async def _dispatch_runs(self, since: datetime) -> list[dict[str, Any]]:
        params = {
            "event": "workflow_dispatch",
            "created": f">={since.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "per_page": "100",
        }
        response = await self._request("GET", f"{self._workflow_path()}/runs", params=params)
        runs: list[dict[str, Any]] = response.json().get("workflow_runs", [])
        return runs

    async def _rerun(self, version: str) -> dict[str, Any]:
        run = await self._last_success_of(version)
        await self._request("POST", f"/repos/{self.config.repo}/actions/runs/{run['id']}/rerun")
        self._log.info("workflow_rerun_requested", run_id=run["id"], url=run.get("html_url"))
        return run

    async def _last_success_of(self, version: str) -> dict[str, Any]:
        """The newest successful run of the workflow for ``version`` (see module doc)."""
        for page in range(1, RERUN_PAGES + 1):
            params = {"status": "success", "per_page": "100", "page": str(page)}
            response = await self._request("GET", f"{self._workflow_path()}/runs", params=params)
            runs = response.json().get("workflow_runs", [])
            for run in runs:
                if run.get("conclusion") == "success" and _run_is_for(run, version):
                    return dict(run)
            if len(runs) < 100:
                break
        raise PermanentTargetError(
            "no_run_for_version",
            detail=f"no successful run of {self.config.workflow} for {version} to re-run",
        )

    async def _follow(
        self, run: dict[str, Any], *, attempt: int, deadline: float
    ) -> dict[str, Any]:
        """Poll the run until attempt ``attempt`` completes; success or a permanent error.

        Right after a re-run GitHub may still show the previous, completed attempt, so a
        run counts as done only once its ``run_attempt`` reached ``attempt``.
        """
        url = str(run.get("html_url", ""))
        status = ""
        while True:
            current = int(run.get("run_attempt") or 1) >= attempt
            if current and run.get("status") != status:
                status = str(run.get("status"))
                self._log.info("workflow_run_status", run_id=run["id"], status=status, url=url)
            if current and status == "completed":
                break
            if time.monotonic() >= deadline:
                raise PermanentTargetError("run_timeout", detail=url)
            await asyncio.sleep(self.config.poll_interval)
            run = await self._poll(self._get_run(int(run["id"])), fallback=run)

        conclusion = run.get("conclusion")
        self._log.info("workflow_run_finished", run_id=run["id"], conclusion=conclusion, url=url)
        if conclusion != "success":
            raise PermanentTargetError("workflow_failed", detail=url)
        return run

    async def _poll(self, call: Awaitable[_T], *, fallback: _T) -> _T:
        """One poll after the workflow started; a temporary failure is waited out.

        Raising it would let the caller retry the rollback and deploy a second time.
        """
        try:
            return await call
        except TemporaryTargetError as exc:
            self._log.warning("workflow_poll_failed", reason=exc.reason, detail=exc.detail)
            return fallback

    async def _get_run(self, run_id: int) -> dict[str, Any]:
        response = await self._request("GET", f"/repos/{self.config.repo}/actions/runs/{run_id}")
        run: dict[str, Any] = response.json()
        return run

    # ------------------------------------------------------------------ HTTP with retries

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """One API call, retried on rate limits (as long as GitHub asks) and on 5xx."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((_RateLimited, _Unavailable)),
            wait=self._wait,
            stop=stop_after_attempt(ATTEMPTS),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._send(method, path, params=params, json=json)
        except _RateLimited as exc:
            raise TemporaryTargetError("rate_limited", detail=f"{method} {path}: {exc}") from exc
        except _Unavailable as exc:
            raise TemporaryTargetError("unavailable", detail=f"{method} {path}: {exc}") from exc
        raise AssertionError("tenacity ends with a result or an exception")  # pragma: no cover

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None,
        json: dict[str, Any] | None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._read_token()}"}
        try:
            response = await self._api.request(
                method, path, params=params, json=json, headers=headers
            )
        except httpx.HTTPError as exc:
            raise _Unavailable(type(exc).__name__) from exc
        status = response.status_code
        if status < 300:
            return response

        message = _message(response)
        where = f"{method} {path}"
        if status in (403, 429):
            wait = self._rate_limit_wait(response, message)
            if wait is not None:
                if wait > self.config.max_retry_wait:
                    raise TemporaryTargetError(
                        "rate_limited", detail=f"{where}: GitHub asks to wait {wait:.0f}s"
                    )
                raise _RateLimited(wait)
        if status == 401:
            raise PermanentTargetError("unauthorized", detail=f"{where}: {message}")
        if status == 403:
            raise PermanentTargetError("forbidden", detail=f"{where}: {message}")
        if status == 404:
            raise PermanentTargetError("not_found", detail=f"{where}: {message}")
        if status == 422:
            raise PermanentTargetError("rejected", detail=f"{where}: {message}")
        if status >= 500:
            raise _Unavailable(f"HTTP {status}")
        raise PermanentTargetError("api_error", detail=f"{where}: HTTP {status}: {message}")

    def _rate_limit_wait(self, response: httpx.Response, message: str) -> float | None:
        """Seconds GitHub asks us to wait, or ``None`` when this is not a rate limit."""
        retry_after = response.headers.get("retry-after", "")
        if retry_after.isdigit():
            return float(retry_after)
        reset = response.headers.get("x-ratelimit-reset", "")
        if response.headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
            return max(float(reset) - self._clock(), 1.0)
        if response.status_code == 429 or "rate limit" in message.lower():
            # GitHub's advice for a secondary limit without headers: at least a minute.
            return 60.0
        return None

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _RateLimited):
            return float(error.wait)
        return min(0.5 * 2.0 ** (state.attempt_number - 1), 5.0)

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        self._log.warning(
            "github_request_retried",
            attempt=state.attempt_number,
            of=ATTEMPTS,
            retry_in=round(delay, 2),
            error=str(error),
        )

    def _read_token(self) -> str:
        if self._token is None:
            try:
                self._token = read_secret(
                    env=self.config.token_env, file=None, what=f"GitHub token for {self.service}"
                )
            except SecretError as exc:
                raise PermanentTargetError("no_token", detail=str(exc)) from exc
        return self._token

    # ------------------------------------------------------------------ the service's version

    async def _version_from_command(self, command: str) -> str:
        """Run ``command`` without a shell; its stripped output is the version."""
        argv = shlex.split(command)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            raise PermanentTargetError(
                "version_command_failed", detail=f"cannot run {argv[0]}: {exc.strerror}"
            ) from exc
        try:
            out, err = await asyncio.wait_for(
                process.communicate(), timeout=self.config.version_timeout
            )
        except TimeoutError as exc:
            process.kill()
            await process.wait()
            raise TemporaryTargetError(
                "version_timeout",
                detail=f"{argv[0]} took over {self.config.version_timeout:g}s",
            ) from exc
        if process.returncode != 0:
            tail = err.decode(errors="replace").strip()[-200:]
            raise TemporaryTargetError(
                "version_command_failed", detail=f"{argv[0]} exited {process.returncode}: {tail}"
            )
        return out.decode(errors="replace").strip()

    async def _version_from_url(self, url: str) -> str:
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise TemporaryTargetError(
                "version_url_failed", detail=f"{url}: {type(exc).__name__}"
            ) from exc
        if response.status_code >= 300:
            raise TemporaryTargetError(
                "version_url_failed", detail=f"{url}: HTTP {response.status_code}"
            )
        return response.text.strip()

    # ------------------------------------------------------------------ helpers

    def _workflow_path(self) -> str:
        return f"/repos/{self.config.repo}/actions/workflows/{self.config.workflow}"

    def _values(self, to_version: str, from_version: str) -> dict[str, str]:
        return {"to_version": to_version, "from_version": from_version, "service": self.service}


def _fill(template: str, values: dict[str, str]) -> str:
    """``template`` with ``{to_version}``, ``{from_version}``, ``{service}`` filled in."""
    if "{from_version}" in template:
        check_version(values["from_version"])
    try:
        return template.format_map(values)
    except (KeyError, ValueError, IndexError) as exc:
        raise PermanentTargetError(
            "bad_template",
            detail=f"{template!r}: use only {{to_version}}, {{from_version}}, {{service}}",
        ) from exc


def _fill_for_people(template: str, values: dict[str, str]) -> str:
    """As ``_fill``, but a hint shows the raw template rather than fail."""
    try:
        return _fill(template, values)
    except PermanentTargetError:
        return template


def _run_is_for(run: dict[str, Any], version: str) -> bool:
    """Whether ``run`` deployed ``version`` (the rule in the module docstring)."""
    sha = str(run.get("head_sha") or "")
    if _SHA.fullmatch(version) and sha.lower().startswith(version.lower()):
        return True
    title = str(run.get("display_title") or "")
    word = rf"(?<![A-Za-z0-9._-]){re.escape(version)}(?![A-Za-z0-9_-]|\.[A-Za-z0-9])"
    return re.search(word, title) is not None


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else ""
