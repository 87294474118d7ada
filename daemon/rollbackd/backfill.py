"""History for a Prometheus that never scraped it: OpenMetrics, promtool, stale markers.

``rollbackd test`` loads its synthetic series this way, and the backtest tests and the
benchmark load a generated week the same way: samples are written as OpenMetrics text
and turned into TSDB blocks by ``promtool tsdb create-blocks-from openmetrics``; blocks
copied into a data folder before Prometheus starts are served at once.

Facts checked by hand with the Debian prometheus 2.42 (they shape the code below):

- promtool accepts any timestamps: the epoch, five minutes ago, an hour in the future.
  Nothing refuses data close to now.
- Prometheus keeps blocks by *time retention counted from its newest block*, not from
  the clock: a block from 1970 next to one from today is deleted at start-up, while
  blocks that all sit in 2024 are kept. So a server for test data holds test data only.
- promtool cuts blocks on 2-hour boundaries and re-reads the whole input file for every
  2-hour window between the first and the last sample. A long file is therefore split
  here into one file per window, each read once, and promtool runs in parallel.
- Samples of a series must be in time order; an OpenMetrics family must be contiguous.
- A block cannot hold a *stale marker* (a special NaN that ends a series at once): the
  text format has no spelling for it. ``send_stale_markers`` writes them through the
  remote-write receiver of a Prometheus started with ``--web.enable-remote-write-receiver``
  and an ``out_of_order_time_window`` that reaches back to them; queries then merge the
  markers with the blocks exactly as they would merge scraped data.

Errors::

    BackfillError    promtool is missing or failed, or Prometheus refused the markers
"""

from __future__ import annotations

import math
import shutil
import struct
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

__all__ = [
    "BLOCK_SECONDS",
    "BackfillError",
    "SeriesKey",
    "backfill",
    "find_promtool",
    "send_stale_markers",
    "write_openmetrics",
]

BLOCK_SECONDS = 7200  # promtool's block length; files are split on these boundaries
STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus's staleness marker

Samples = Mapping["SeriesKey", Sequence[tuple[float, float]]]


class BackfillError(RuntimeError):
    """History could not be loaded: promtool missing or failing, or markers refused."""


@dataclass(frozen=True, order=True)
class SeriesKey:
    """A series identity: metric name and sorted label pairs."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, name: str, labels: Mapping[str, str] | None = None) -> SeriesKey:
        return cls(name, tuple(sorted((labels or {}).items())))

    def render(self) -> str:
        """The series as OpenMetrics (and PromQL) writes it: ``name{a="1",b="2"}``."""
        if not self.labels:
            return self.name
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in self.labels)
        return f"{self.name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _stamp(ts: float) -> str:
    return f"{ts:.3f}".rstrip("0").rstrip(".")


def write_openmetrics(samples: Samples, out: TextIO) -> int:
    """Write ``samples`` as OpenMetrics text ending in ``# EOF``; returns the sample count.

    Families are written without ``# TYPE`` lines (as *unknown*): PromQL does not look
    at metadata, and a type would oblige counters to end in ``_total``.
    """
    count = 0
    by_name: dict[str, list[SeriesKey]] = defaultdict(list)
    for key in samples:
        by_name[key.name].append(key)
    for name in sorted(by_name):
        for key in sorted(by_name[name]):
            head = key.render()
            for ts, value in samples[key]:
                out.write(f"{head} {_number(value)} {_stamp(ts)}\n")
                count += 1
    out.write("# EOF\n")
    return count


def find_promtool() -> str:
    """The path of ``promtool``, or ``BackfillError`` saying how to get it."""
    path = shutil.which("promtool")
    if path is None:
        raise BackfillError(
            "no promtool on PATH: install the Debian package prometheus "
            "(apt-get install --no-install-recommends prometheus)"
        )
    return path


def windows(samples: Samples) -> dict[int, dict[SeriesKey, list[tuple[float, float]]]]:
    """``samples`` cut on promtool's 2-hour block boundaries, each series kept in order."""
    cut: dict[int, dict[SeriesKey, list[tuple[float, float]]]] = defaultdict(dict)
    for key, points in samples.items():
        for ts, value in sorted(points):
            window = int(ts // BLOCK_SECONDS)
            cut[window].setdefault(key, []).append((ts, value))
    return dict(cut)


def backfill(
    chunks: Samples | Iterable[Samples],
    out_dir: Path,
    *,
    promtool: str | None = None,
    jobs: int = 2,
) -> int:
    """Turn samples into TSDB blocks in ``out_dir``; returns the number of samples.

    ``chunks`` is one mapping of samples (cut into 2-hour windows here) or an iterable
    of mappings that each already lie within one window, for generators that would not
    fit in memory at once. ``jobs`` promtool processes run at a time.
    """
    binary = promtool or find_promtool()
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(chunks, Mapping):
        chunks = list(windows(chunks).values())
    total = 0
    with (
        tempfile.TemporaryDirectory(prefix="rollbackd-om-") as scratch,
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
    ):
        running: list[Future[None]] = []
        for index, chunk in enumerate(chunks):
            if not chunk:
                continue
            path = Path(scratch) / f"{index:06d}.om"
            with path.open("w", encoding="utf-8") as out:
                total += write_openmetrics(chunk, out)
            running.append(pool.submit(_promtool, binary, path, out_dir))
            # Keep the scratch folder small: wait for a file's block before piling up more.
            while len(running) > jobs:
                running.pop(0).result()
        for future in running:
            future.result()
    return total


def _promtool(binary: str, path: Path, out_dir: Path) -> None:
    command = [binary, "tsdb", "create-blocks-from", "openmetrics", "-q", str(path), str(out_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackfillError(f"promtool could not run: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-800:]
        raise BackfillError(f"promtool refused {path.name}: {detail}")
    path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- stale markers


def send_stale_markers(
    url: str, markers: Iterable[tuple[SeriesKey, float]], *, timeout: float = 10.0
) -> int:
    """Write a staleness marker for each ``(series, time)`` by remote write; returns the count.

    The request is a protobuf ``WriteRequest`` encoded by hand (four message types, all
    of them length-delimited fields, doubles and varints) and compressed as a snappy
    block made of literals only: valid snappy that needs no compression library.
    """
    by_series: dict[SeriesKey, list[float]] = defaultdict(list)
    for key, ts in markers:
        by_series[key].append(ts)
    if not by_series:
        return 0
    body = b"".join(_timeseries(key, sorted(times)) for key, times in sorted(by_series.items()))
    try:
        response = httpx.post(
            url.rstrip("/") + "/api/v1/write",
            content=_snappy_literals(body),
            headers={
                "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise BackfillError(f"cannot write stale markers to {url}: {exc}") from exc
    if response.status_code >= 300:
        raise BackfillError(
            f"Prometheus refused stale markers (HTTP {response.status_code}): "
            f"{response.text.strip()[:300]}"
        )
    return sum(len(t) for t in by_series.values())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _timeseries(key: SeriesKey, times: Sequence[float]) -> bytes:
    labels = sorted([("__name__", key.name), *key.labels])
    body = b"".join(
        _field(1, _field(1, name.encode()) + _field(2, value.encode())) for name, value in labels
    )
    for ts in times:
        sample = bytes([1 << 3 | 1]) + struct.pack("<Q", STALE_NAN_BITS)
        sample += _varint(2 << 3) + _varint(round(ts * 1000))
        body += _field(2, sample)
    return _field(1, body)


def _snappy_literals(data: bytes) -> bytes:
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), 65536):
        chunk = data[start : start + 65536]
        size = len(chunk) - 1
        if size < 60:
            out.append(size << 2)
        elif size < 256:
            out += bytes([60 << 2, size])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", size)
        out += chunk
    return bytes(out)
