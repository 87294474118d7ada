"""``rollbackd demo``: the whole loop on this machine, with nothing to set up.

It starts a real Prometheus scraping a simulated ``codex-api`` that runs a healthy v1,
runs the daemon in enforce mode with an exec target whose commands talk to the
simulator, waits for v1 to become last known good, deploys a v2 that fails 30 % of
its requests, and narrates what the daemon does: detection, the decision, the
rollback, the verification. Everything it started is stopped before it returns.

The embedded rules are the shipped ones with short windows (10 s rates, 3 s holds) so
the story takes well under two minutes instead of the quarter hour the production
defaults would need.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import click

from rollbackd import app
from rollbackd.config import ConfigError, LogChannel
from rollbackd.loop import Daemon
from rollbackd.notify.base import Notification
from rollbackd.notify.dispatch import routes
from rollbackd.notify.templates import render
from rollbackd.promserver import PrometheusNotInstalled, PrometheusServer
from rollbackd.record import configure_logging
from rollbackd.sim import Behaviour, Fleet

DEADLINE = 110.0
SERVICE = "codex-api"

RULES_TEMPLATE = """\
group: GROUP
rules:
  - name: error-rate-high
    impact: high
    query: |
      sum {{by}} (rate(http_requests_total{ {{selector}}, code=~"5.." }[10s]))
        / sum {{by}} (rate(http_requests_total{ {{selector}} }[10s]))
    above: 0.10
    for: HOLD
    min_traffic: 'sum {{by}} (rate(http_requests_total{ {{selector}} }[10s])) > 1'
  - name: latency-regression
    impact: medium
    query: |
      histogram_quantile(0.95,
        sum {{by_le}} (rate(http_request_duration_seconds_bucket{ {{selector}} }[10s])))
    above_baseline: 1.5
    for: 5s
  - name: health-failing
    impact: high
    probe: health
    failure_ratio_above: 0.5
    window: 10s
    for: 3s
"""


def demo_rules(*, hold: str = "3s", group: str = "demo") -> str:
    """The shipped rules with short windows: 10 s rates, ``hold`` on the error rate.

    The integration tests use them too, so the demo and the tests tell one story.
    """
    return RULES_TEMPLATE.replace("GROUP", group).replace("HOLD", hold)


def _config(folder: Path, *, fleet: Fleet, prometheus_url: str) -> Path:
    python = shlex.quote(sys.executable)
    sim = f"{python} -m rollbackd.sim"
    config = {
        "mode": "enforce",
        "interval": "1s",
        "rules": ["rules.yaml"],
        "state": "state.db",
        "audit_log": "audit.jsonl",
        "reports": "reports",
        "listen": "127.0.0.1:0",
        "prometheus": {"url": prometheus_url, "timeout": "3s"},
        "services": [
            {
                "name": SERVICE,
                "health": {"url": fleet.health_url(SERVICE), "timeout": "1s"},
                "target": {
                    "kind": "exec",
                    "version_command": f"{sim} version --url {fleet.url} --service {SERVICE}",
                    "rollback_command": (
                        f"{sim} deploy --url {fleet.url} --service {SERVICE} {{to_version}}"
                    ),
                    "timeout": "30s",
                },
            }
        ],
        "safety": {
            "bake_time": "5s",
            "attribution_window": "5m",
            "cooldown": "5m",
            "max_rollbacks_per_hour": 3,
            "pause_file": "PAUSE",
            "blind_after": "30s",
        },
        "verify": {
            "timeout": "60s",
            "checks": [
                {"name": "health", "http": {"url": fleet.health_url(SERVICE)}},
                {
                    "name": "metrics collecting",
                    "query": "sum(rate(http_requests_total{ {{selector}} }[10s])) > 0",
                },
            ],
        },
    }
    (folder / "rules.yaml").write_text(demo_rules(), encoding="utf-8")
    path = folder / "config.yaml"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


class Narrator:
    """Turns events into short lines a person can follow."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.events: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def say(self, text: str) -> None:
        click.echo(f"[{time.monotonic() - self.started:5.1f}s] {text}")

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.queue.put_nowait(event)
        line = describe(event)
        if line:
            self.say(line)

    async def wait_for(self, name: str, timeout: float, **match: Any) -> dict[str, Any]:
        for seen in self.events:
            if seen["event"] == name and all(seen.get(k) == v for k, v in match.items()):
                return seen
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {name} event within {timeout:.0f}s")
            event = await asyncio.wait_for(self.queue.get(), remaining)
            if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                return event


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "n/a"


def describe(e: dict[str, Any]) -> str:
    kind = e["event"]
    if kind == "revision_change":
        if e.get("first_seen"):
            return f"{e['service']} is running {e['revision']}"
        return f"revision change: {e['previous']} -> {e['revision']} ({e.get('change')})"
    if kind == "last_known_good":
        return f"{e['revision']} stayed healthy: it is now the last known good revision"
    if kind == "rule_state":
        value = _num(e.get("value"))
        return (
            f"rule {e['rule']}: {e['previous']} -> {e['state']} (value {value}, "
            f"threshold {_num(e.get('threshold'))})"
        )
    if kind == "decision":
        return (
            f"decision: {e['rule']} ({e['impact']}, attributed: {e['attribution']}) -> "
            f"{e['action']} {e.get('revision')} -> {e.get('rollback_to')}: {e['outcome']}"
        )
    if kind == "rollback_started":
        return f"rolling back {e['revision']} -> {e['rollback_to']} through the exec target"
    if kind == "rollback_finished":
        return f"rollback finished: {e['outcome']} in {e['seconds']:.1f}s"
    if kind == "verification":
        return f"verification {e['outcome']}: {e.get('detail')}"
    if kind == "notification" and e.get("outcome") != "delivered":
        return f"message to {e.get('channel')} not delivered yet: {e.get('reason')}"
    if kind == "incident_resolved":
        return f"incident {e.get('incident')} resolved"
    if kind == "incident_report":
        return f"incident report written: {e.get('path')}"
    return ""


def show_messages(daemon: Daemon, narrator: Narrator) -> None:
    """Print each message as the channels would send it, as well as sending it."""
    submit = daemon.pager.submit
    style = LogChannel(kind="log")

    channels = daemon.settings.notify

    def submit_and_show(notification: Notification) -> Any:
        if any(routes(channel, notification) for channel in channels):
            text = render(style, notification)
            narrator.say("message:\n" + textwrap.indent(text, "          | "))
        return submit(notification)

    daemon.pager.submit = submit_and_show  # type: ignore[method-assign]


async def _story(folder: Path, narrator: Narrator, *, keep: Path | None) -> int:
    bad = Behaviour(error_ratio=0.3, latency=0.02)
    with (
        Fleet([SERVICE], bad_versions={"v2": bad}) as fleet,
        PrometheusServer([fleet.address]) as prom,
    ):
        narrator.say(f"simulated {SERVICE} at {fleet.url}, Prometheus at {prom.url}")
        prom.wait_ready(timeout=20)
        await asyncio.to_thread(prom.wait_for, "rate(http_requests_total[10s]) > 0", 30)
        narrator.say("Prometheus has data; starting rollbackd in enforce mode")

        path = _config(folder, fleet=fleet, prometheus_url=prom.url)
        loaded = app.load(path)
        daemon, recorder = app.build(loaded)
        recorder.listeners.append(narrator)
        show_messages(daemon, narrator)
        stop = asyncio.Event()
        running = asyncio.create_task(daemon.run(stop))
        try:
            await narrator.wait_for("last_known_good", 30, revision="v1")
            narrator.say("deploying v2, which fails 30 % of requests")
            fleet.deploy(SERVICE, "v2")
            decision = await narrator.wait_for("decision", 45, action="rollback")
            verification = await narrator.wait_for("verification", 75)
            await narrator.wait_for("incident_resolved", 20)
            report = await narrator.wait_for("incident_report", 5)
        finally:
            stop.set()
            await running
            await daemon.aclose()
            recorder.close()
        running_now = fleet.version(SERVICE)

    ok = decision["outcome"] == "executed" and verification["outcome"] == "passed"
    click.echo("")
    click.echo("Summary")
    click.echo("  bad deploy:    v1 -> v2 (30 % errors)")
    click.echo(
        f"  detected by:   {decision['rule']} = {_num(decision['value'])} "
        f"(threshold {_num(decision['threshold'])})"
    )
    click.echo(
        f"  decision:      {decision['action']} to {decision['rollback_to']}: {decision['outcome']}"
    )
    click.echo(f"  verification:  {verification['outcome']}")
    click.echo(f"  running now:   {running_now}")
    click.echo(f"  report:        {report['path']}")
    if keep is None:
        click.echo("")
        click.echo(Path(report["path"]).read_text(encoding="utf-8"))  # noqa: ASYNC240 (all stopped)
    return 0 if ok and running_now == "v1" else 1


def run_demo(*, keep: Path | None = None) -> int:
    folder = Path(tempfile.mkdtemp(prefix="rollbackd-demo-")) if keep is None else keep
    folder.mkdir(parents=True, exist_ok=True)
    log_file = (folder / "daemon.log").open("w", encoding="utf-8")
    configure_logging("info", stream=log_file)
    narrator = Narrator(time.monotonic())
    try:
        status = asyncio.run(asyncio.wait_for(_story(folder, narrator, keep=keep), DEADLINE))
        if keep is not None:
            click.echo(f"  files:         {folder} (audit.jsonl, daemon.log, reports/)")
        return status
    except PrometheusNotInstalled as exc:
        click.echo(f"demo: {exc}", err=True)
        return 2
    except ConfigError as exc:
        click.echo(f"demo: bad embedded configuration:\n{exc}", err=True)
        return 2
    except TimeoutError as exc:
        click.echo(f"demo: the story did not finish: {exc or 'out of time'}", err=True)
        return 1
    finally:
        log_file.close()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
