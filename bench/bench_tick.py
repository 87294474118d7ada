"""How long one tick takes, and how many Prometheus queries it sends, as services grow.

For 1, 100 and 1000 services this starts a simulated fleet of that size and a real
Prometheus scraping it (one scrape target, ``honor_labels``), builds the daemon from a
generated configuration with the SHIPPED rules (``rules/default.yaml``), waits until
every service has data for every rule, then times a few ticks (``await daemon.tick()``)
and prints one row per size: tick duration (median and max), Prometheus queries per
tick, health probes per tick, and the memory of the process.

Rules are evaluated as vectors, one query (plus its ``min_traffic`` filter) per rule
per group of services, so the queries per tick must not grow with the number of
services; the last line says whether they did, and the exit status is 1 when they did.

Each size runs in a child process of its own, so its memory figure is its own; the
fleet runs in a further process, so neither its memory nor its threads are counted as
the daemon's. The daemon reads every revision over HTTP (exec targets with
``version_url``) and probes every health endpoint each tick, as a real deployment
would. Everything started is stopped before the script returns, also on Ctrl-C.

Usage: ``python bench/bench_tick.py [--sizes 1,100,1000] [--ticks 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from rollbackd import app
from rollbackd.promserver import PrometheusNotInstalled, PrometheusServer
from rollbackd.record import configure_logging

REPO = Path(__file__).resolve().parents[1]
SHIPPED_RULES = REPO / "rules" / "default.yaml"
SIZES = (1, 100, 1000)
TICKS = 5
# Bounds, not pauses: each is the longest a step may take before the run gives up.
FLEET_START = 30.0
DATA_WAIT = 90.0
CHILD_LIMIT = 300.0


# ----------------------------------------------------------------------------- the fleet


@contextlib.contextmanager
def fleet_process(size: int, folder: Path) -> Iterator[str]:
    """``python -m rollbackd.sim serve`` with ``size`` services; yields its base URL.

    Its stderr goes to a file: the stdlib server prints a traceback for every client
    that hangs up early, which is noise here unless the fleet fails to start.
    """
    log = folder / "fleet.log"
    command = [sys.executable, "-m", "rollbackd.sim", "serve", "--port", "0"]
    with log.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [*command, "--services", str(size)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    stop = atexit.register(_terminate, process)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # "sim: serving N services at URL"
        if not line.startswith("sim: serving"):
            tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
            raise RuntimeError(f"the simulated fleet did not start: {line!r}\n{tail}")
        url = line.rsplit(" ", 1)[-1]
        _wait_answering(f"{url}/svc-0/healthz", FLEET_START)
        yield url
    finally:
        _terminate(process)
        atexit.unregister(stop)


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_answering(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == httpx.codes.OK:
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:g}s")
        time.sleep(0.1)


# ----------------------------------------------------------------------------- one size


def write_config(folder: Path, *, size: int, fleet_url: str, prometheus_url: str) -> Path:
    """Shipped rules, one exec target per service reading its version over HTTP."""
    services = []
    for i in range(size):
        name = f"svc-{i}"
        services.append(
            {
                "name": name,
                "health": {"url": f"{fleet_url}/{name}/healthz", "timeout": "5s"},
                "target": {
                    "kind": "exec",
                    "version_url": f"{fleet_url}/{name}/version",
                    # Never run: nothing breaches, and the mode is shadow anyway.
                    "rollback_command": f"{sys.executable} -m rollbackd.sim deploy "
                    f"--url {fleet_url} --service {name} {{to_version}}",
                },
            }
        )
    config = {
        "mode": "shadow",
        "interval": "15s",
        "rules": [str(SHIPPED_RULES)],
        "state": str(folder / "state.db"),
        "audit_log": str(folder / "audit.jsonl"),
        "log_level": "warning",
        "prometheus": {"url": prometheus_url},
        "services": services,
        "safety": {"pause_file": str(folder / "PAUSE")},
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def rss_mib() -> float:
    """Resident memory of this process now, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def listen_overflows() -> int:
    """Connections the kernel refused since boot because a listen queue was full (Linux)."""
    lines = Path("/proc/net/netstat").read_text(encoding="utf-8").splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(fields.get("ListenOverflows", 0))
    return 0


def probe_failures(daemon: Any, since: float) -> int:
    """Failed health probes recorded at or after ``since`` (timeouts included)."""
    failed = 0
    probe_rules = [r.name for r in daemon.rules if r.probe]
    for name in daemon.services:
        svc = daemon.state.service(name)
        for rule in probe_rules:
            failed += sum(1 for at, ok in svc.rule(rule).samples if at >= since and not ok)
    return failed


def services_with_data(daemon: Any, since: float) -> int:
    """Services for which every query rule got a value at or after ``since``."""
    query_rules = [r.name for r in daemon.rules if r.query]
    count = 0
    for name in daemon.services:
        svc = daemon.state.service(name)
        fresh = [svc.rule(rule).last_value_at for rule in query_rules]
        if all(at is not None and at >= since for at in fresh):
            count += 1
    return count


async def measure_size(size: int, ticks: int) -> dict[str, Any]:
    """One row of the table: start everything for ``size`` services, tick, stop."""
    configure_logging("warning")
    with (
        tempfile.TemporaryDirectory(prefix="rollbackd-bench-") as tmp,
        fleet_process(size, Path(tmp)) as fleet_url,
        PrometheusServer([fleet_url]) as prom,
    ):
        # Two scrapes of every service: enough for every rate() of the shipped rules.
        wanted = f"count(sum by (job) (rate(http_requests_total[1m])) > 1) >= {size}"
        await asyncio.to_thread(prom.wait_for, wanted, DATA_WAIT)

        path = write_config(Path(tmp), size=size, fleet_url=fleet_url, prometheus_url=prom.url)
        loaded = app.load(path)
        daemon, recorder = app.build(loaded)
        probes = 0

        async def count_probe(_request: httpx.Request) -> None:
            nonlocal probes
            probes += 1

        for client in daemon.http_clients:
            client.event_hooks["request"].append(count_probe)
        try:
            # Warm-up ticks: the first sees every revision for the first time and opens
            # the connections; keep going until every service has data for every rule.
            deadline = time.monotonic() + DATA_WAIT
            warmup = 0
            while True:
                started = time.time()
                await daemon.tick()
                warmup += 1
                if services_with_data(daemon, started) == size:
                    break
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{size} services: only {services_with_data(daemon, started)} had data "
                        f"for every rule after {warmup} ticks"
                    )

            durations: list[float] = []
            cpu: list[float] = []
            queries: list[int] = []
            probe_counts: list[int] = []
            measured_from = time.time()
            overflows = listen_overflows()
            for _ in range(ticks):
                q0, p0 = daemon.prometheus.queries, probes
                t0, c0 = time.perf_counter(), time.process_time()
                await daemon.tick()
                durations.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                queries.append(daemon.prometheus.queries - q0)
                probe_counts.append(probes - p0)
            overflows = listen_overflows() - overflows
            with_data = services_with_data(daemon, measured_from)
            failures = probe_failures(daemon, measured_from)
        finally:
            await daemon.aclose()
            recorder.close()
        return {
            "services": size,
            "ticks": ticks,
            "warmup_ticks": warmup,
            "median": statistics.median(durations),
            "max": max(durations),
            "cpu": statistics.median(cpu),
            "queries": queries,
            "probes": probe_counts,
            "probe_failures": failures,
            "listen_overflows": overflows,
            "with_data": with_data,
            "rss_mib": rss_mib(),
        }


# ----------------------------------------------------------------------------- driver


def run_child(size: int, ticks: int) -> dict[str, Any]:
    """Measure one size in a fresh interpreter, so memory figures do not accumulate."""
    command = [sys.executable, __file__, "--one", str(size), "--ticks", str(ticks)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = process.communicate(timeout=CHILD_LIMIT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the child stop its Prometheus and fleet on the way out.
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        raise SystemExit(f"bench: {size} services did not finish within {CHILD_LIMIT:g}s") from None
    if process.returncode != 0:
        raise SystemExit(f"bench: {size} services failed (exit {process.returncode})")
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return row


def print_table(rows: list[dict[str, Any]]) -> bool:
    """The table, then the check that queries per tick stay flat; True when they do."""
    header = (
        f"{'services':>8}  {'median tick':>11}  {'max tick':>10}  {'CPU/tick':>9}  "
        f"{'queries/tick':>12}  {'probes/tick':>11}  {'failed':>6}  {'with data':>9}  "
        f"{'RSS':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['services']:>8}  {_ms(row['median']):>11}  {_ms(row['max']):>10}  "
            f"{_ms(row['cpu']):>9}  {_span(row['queries']):>12}  {_span(row['probes']):>11}  "
            f"{row['probe_failures']:>6}  {row['with_data']:>9}  {row['rss_mib']:>4.0f} MiB"
        )
    print(
        "\nCPU/tick: the daemon process's own CPU time per tick (the fleet and Prometheus "
        "run\nin other processes on the same machine); failed: probes that failed during "
        "the\nmeasured ticks; with data: services that got a value for every query rule."
    )
    for row in rows:
        if row["listen_overflows"]:
            print(
                f"note: {row['services']} services: the kernel dropped "
                f"{row['listen_overflows']} connection attempts on a full listen queue "
                "during the\nmeasured ticks (the simulated fleet's backlog), so those ticks "
                "include TCP retransmit waits."
            )
    per_size = {row["services"]: max(row["queries"]) for row in rows}
    smallest = per_size[min(per_size)]
    flat = all(count <= smallest for count in per_size.values())
    counts = ", ".join(f"{n} services: {q}" for n, q in per_size.items())
    verdict = "PASS: does not grow" if flat else "FAIL: grows"
    print(f"\nPrometheus queries per tick ({counts}): {verdict} with the number of services")
    return flat


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--ticks", type=int, default=TICKS)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one is not None:
        # A child: SIGTERM unwinds like Ctrl-C, so the context managers stop everything.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            row = asyncio.run(measure_size(args.one, args.ticks))
        except PrometheusNotInstalled as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(row))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"rollbackd tick benchmark: shipped rules ({SHIPPED_RULES.relative_to(REPO)}), "
        f"{args.ticks} ticks per size, real Prometheus, {os.cpu_count()} CPUs\n"
    )
    rows = []
    for size in sizes:
        started = time.monotonic()
        rows.append(run_child(size, args.ticks))
        print(f"  {size} services measured in {time.monotonic() - started:.0f}s", flush=True)
    print()
    return 0 if print_table(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
