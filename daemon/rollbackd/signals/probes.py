"""HTTP health probes: one GET per service per tick, as a measurement.

A probe never raises: a status other than the expected one, a timeout, a refused
connection or any other transport error is a failed sample with a short ``error``, so
the rule sees a failure ratio and one broken endpoint cannot stall or crash a tick.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import httpx
import structlog

__all__ = ["ProbeResult", "describe_transport_error", "probe", "probe_all"]

log = structlog.get_logger()

# Transport errors carry the OS message ("[Errno 111] Connection refused"); keep it short.
ERROR_CHARS = 120


@dataclass(frozen=True)
class ProbeResult:
    """One probe sample: ``ok`` when the expected status came back within the timeout."""

    ok: bool
    status: int | None
    error: str | None
    seconds: float


async def probe(
    client: httpx.AsyncClient, url: str, *, expect_status: int = 200, timeout: float = 5.0
) -> ProbeResult:
    """GET ``url`` once and compare the status; ``timeout`` bounds the whole exchange.

    httpx's own timeout applies to each phase (connect, each read) separately, so a
    server that drips its body slowly could outlast it; the outer ``asyncio.timeout``
    makes ``timeout`` a bound on the whole request.
    """
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            response = await client.get(url, timeout=timeout)
        status = response.status_code
        if status != expect_status:
            error = f"status {status}, expected {expect_status}"
    except (TimeoutError, httpx.TimeoutException):
        error = f"timeout after {timeout:g}s"
    except httpx.ConnectError as exc:
        error = _short(f"connection failed: {describe_transport_error(exc)}")
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        error = _short(f"{type(exc).__name__}: {describe_transport_error(exc)}")

    result = ProbeResult(
        ok=error is None, status=status, error=error, seconds=time.monotonic() - started
    )
    if not result.ok:
        log.debug("probe_failed", url=url, status=status, error=error)
    return result


async def probe_all(
    client: httpx.AsyncClient,
    probes: dict[str, tuple[str, int, float]],
    *,
    concurrency: int,
) -> dict[str, ProbeResult]:
    """Run ``{name: (url, expect_status, timeout)}`` with at most ``concurrency`` in flight.

    The semaphore is taken before the request starts, so a probe's timeout counts only
    its own request, not its wait for a free slot.
    """
    semaphore = asyncio.Semaphore(max(concurrency, 1))
    results: dict[str, ProbeResult] = {}

    async def run(name: str, url: str, expect_status: int, timeout: float) -> None:
        async with semaphore:
            results[name] = await probe(client, url, expect_status=expect_status, timeout=timeout)

    async with asyncio.TaskGroup() as group:
        for name, (url, expect_status, timeout) in probes.items():
            group.create_task(run(name, url, expect_status, timeout))
    return {name: results[name] for name in probes}


def describe_transport_error(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("connection refused").

    httpx's async transport says only "All connection attempts failed"; the errno that
    tells a refused port from an unreachable host is further down the exception chain.
    """
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno:
            return os.strerror(current.errno).lower()
        current = current.__cause__ or current.__context__
    return str(exc) or type(exc).__name__


def _short(text: str) -> str:
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"
