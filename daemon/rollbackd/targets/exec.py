"""``kind: exec``: the operator's own commands read the revision and roll back.

Command templates are split into arguments with ``shlex`` *before* placeholders are
filled in, and run without a shell, so a version string can never add an argument or
a pipe. Versions are also checked against ``[A-Za-z0-9._:@/+-]+`` before they are
substituted. A command that outlives its timeout is killed with its process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from typing import Any

import httpx
import structlog

from rollbackd.config import ExecTarget
from rollbackd.targets.base import (
    PermanentTargetError,
    Readiness,
    Revision,
    RollbackResult,
    TemporaryTargetError,
    check_version,
)

log = structlog.get_logger("rollbackd.targets.exec")
OUTPUT_LIMIT = 4000


class ExecCommandTarget:
    kind = "exec"

    def __init__(self, config: ExecTarget, *, service: str) -> None:
        self.config = config
        self.service = service
        self._http: httpx.AsyncClient | None = None
        self._owns_http = False

    async def current_revision(self) -> Revision:
        if self.config.version_url:
            text = await self._get_version_url(self.config.version_url)
        else:
            assert self.config.version_command is not None
            argv = fill(self.config.version_command, service=self.service)
            text = await run_command(argv, timeout=self.config.version_timeout, what="version")
        version = text.strip()
        if not version:
            raise TemporaryTargetError("empty_version", detail="the version source printed nothing")
        return Revision(id=check_version(version))

    def use_http(self, client: httpx.AsyncClient) -> None:
        """Share the daemon's HTTP client: one connection pool for every service."""
        self._http = client
        self._owns_http = False

    async def _get_version_url(self, url: str) -> str:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.version_timeout)
            self._owns_http = True
        try:
            response = await self._http.get(url, timeout=self.config.version_timeout)
        except httpx.HTTPError as exc:
            raise TemporaryTargetError("version_unreachable", detail=type(exc).__name__) from exc
        if response.status_code != 200:
            raise TemporaryTargetError("version_unreachable", detail=f"HTTP {response.status_code}")
        return response.text

    async def rollback(
        self, *, to_version: str, from_version: str, reason: dict[str, Any]
    ) -> RollbackResult:
        argv = fill(
            self.config.rollback_command,
            service=self.service,
            to_version=check_version(to_version),
            from_version=check_version(from_version),
        )
        output = await run_command(argv, timeout=self.config.timeout, what="rollback")
        return RollbackResult(changed=True, detail={"output": output[-OUTPUT_LIMIT:]})

    async def readiness(self, *, to_version: str) -> Readiness:
        return Readiness(ready=True)

    def rollback_hint(self, *, to_version: str, from_version: str) -> str:
        try:
            argv = fill(
                self.config.rollback_command,
                service=self.service,
                to_version=check_version(to_version),
                from_version=check_version(from_version),
            )
        except PermanentTargetError:
            return ""
        return shlex.join(argv)

    async def aclose(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()


def fill(template: str, **values: str) -> list[str]:
    """Split ``template`` like a shell would, then fill ``{name}`` in each argument."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise PermanentTargetError("bad_command", detail=str(exc)) from exc
    filled = []
    for arg in argv:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        filled.append(arg)
    if not filled:
        raise PermanentTargetError("bad_command", detail="the command is empty")
    return filled


async def run_command(argv: list[str], *, timeout: float, what: str) -> str:
    """Run ``argv`` without a shell; its stdout, or a ``TargetError`` saying why not."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # so a timeout can kill the whole process group
        )
    except FileNotFoundError as exc:
        raise PermanentTargetError("command_not_found", detail=argv[0]) from exc
    except PermissionError as exc:
        raise PermanentTargetError("command_not_executable", detail=argv[0]) from exc
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        _kill_group(process)
        await process.wait()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise TemporaryTargetError(
            f"{what}_timeout", detail=f"no exit after {timeout:g}s"
        ) from None
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        log.warning(
            f"{what}_command_failed",
            argv0=argv[0],
            exit_status=process.returncode,
            stderr=tail[0][:300],
        )
        raise PermanentTargetError(f"exit_{process.returncode}", detail=tail[0][:300])
    return stdout.decode(errors="replace")


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def create(config: ExecTarget, *, service: str) -> ExecCommandTarget:
    return ExecCommandTarget(config, service=service)
