"""How long a backtest of a week at 15 s steps takes for 100 services.

Generates a week of history for N services (one sample a minute: counters, a latency
histogram and app_build_info; a few bad deploys and outages among quiet services),
backfills it with promtool into a fresh Prometheus, and times:

- generating and backfilling the history (not part of a backtest, shown for scale);
- fetching the signals alone (range queries, chunked by day);
- the whole backtest: fetching plus the Decider at every step for every service.

Run from the repository root: ``python bench/backtest_bench.py [--services 100]
[--days 7] [--step 15s]``. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support.history

from rollbackd.backfill import backfill
from rollbackd.backtest import run_backtest, summarize
from rollbackd.config import Settings, load_rules, parse_duration
from rollbackd.promserver import PrometheusServer
from rollbackd.replay import RangeSignals, ReplaySetup, groups_of
from rollbackd.signals.prometheus import PrometheusClient
from tests.support.history import (
    DAY,
    HOUR,
    MONDAY,
    ServicePlan,
    Version,
    generate,
    week_of,
)

RULES = Path(__file__).resolve().parents[1] / "tests" / "backtest" / "rules.yaml"


def plans(count: int) -> list[ServicePlan]:
    """Quiet services; every tenth gets a bad deploy and every tenth an outage, spread out."""
    out = []
    for index in range(count):
        plan = week_of(f"svc-{index:03d}")
        day = MONDAY + (index // 10 % 7) * DAY + (9 + index // 10 % 8) * HOUR
        if index % 10 == 1:
            plan.deploys += [(day, "v2"), (day + HOUR, "v3")]
            plan.versions["v2"] = Version(error_ratio=0.3)
        elif index % 10 == 2:
            plan.outages.append((day + 2 * HOUR, day + 2.5 * HOUR, 0.4))
        out.append(plan)
    return out


def settings_for(count: int, url: str, interval: float) -> Settings:
    services = [
        {
            "name": f"svc-{i:03d}",
            "target": {"kind": "exec", "version_command": "true", "rollback_command": "true"},
        }
        for i in range(count)
    ]
    return Settings(
        interval=interval,
        rules=[str(RULES)],
        prometheus={"url": url, "scrape_interval": 60.0, "timeout": 60.0},
        services=services,
        backtest={"revision_metric": "app_build_info"},
    )


async def fetch_only(settings: Settings, start: float, end: float, step: float) -> float:
    """Seconds to read every step's readings, without deciding anything."""
    setup = ReplaySetup.from_settings(settings, load_rules(settings.rules))
    began = time.perf_counter()
    async with PrometheusClient(settings.prometheus.url, timeout=60.0) as client:
        signals = RangeSignals(
            client, setup.query_rules, groups_of(setup), start=start, end=end, step=step
        )
        at = start
        while at <= end:
            await signals.measure(at)
            at += step
    return time.perf_counter() - began


async def backtest(settings: Settings, start: float, end: float, step: float) -> tuple[float, int]:
    rules = load_rules(settings.rules)
    began = time.perf_counter()
    async with PrometheusClient(settings.prometheus.url, timeout=60.0) as client:
        result = await run_backtest(
            settings, rules, prometheus=client, start=start, end=end, step=step
        )
    seconds = time.perf_counter() - began
    summary = summarize(result)
    decisions = len(result.decisions())
    print(
        f"  decisions: {decisions}; firings: "
        + ", ".join(f"{name} {s.firings}" for name, s in summary.items() if not s.skipped)
    )
    return seconds, len(result.replay.times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--step", default="15s")
    args = parser.parse_args()
    step = parse_duration(args.step)
    start, end = MONDAY, MONDAY + args.days * DAY

    with tempfile.TemporaryDirectory(prefix="rollbackd-bench-") as scratch:
        blocks = Path(scratch) / "blocks"
        began = time.perf_counter()
        samples = backfill(generate(plans(args.services), start=start, end=end), blocks)
        loaded = time.perf_counter() - began
        print(
            f"history: {args.services} services, {args.days:g} days, {samples:,} samples "
            f"generated and backfilled in {loaded:.1f}s"
        )
        with PrometheusServer(
            blocks=blocks, extra_args=["--storage.tsdb.retention.time=100y"]
        ) as server:
            settings = settings_for(args.services, server.url, step)
            fetched = asyncio.run(fetch_only(settings, start, end, step))
            print(f"signals only (range queries, chunked by day): {fetched:.1f}s")
            seconds, ticks = asyncio.run(backtest(settings, start, end, step))
    service_ticks = ticks * args.services
    print(
        f"backtest {args.days:g} days at {args.step} steps for {args.services} services: "
        f"{seconds:.1f}s ({ticks:,} ticks, {service_ticks / seconds:,.0f} service-ticks/s, "
        f"{1e6 * seconds / service_ticks:.1f} us each)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
