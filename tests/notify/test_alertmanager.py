"""The alertmanager channel against a real Alertmanager and its own routing.

Each test module run starts the Debian ``prometheus-alertmanager`` on 127.0.0.1 with
gossip off, 100 ms grouping, and a webhook receiver that is a local server, so what
the receiver gets is what an operator's Alertmanager would route onward.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollbackd.config import AlertmanagerChannel
from rollbackd.notify.dispatch import Dispatcher
from rollbackd.notify.outbox import Outbox
from tests.notify.conftest import Events, FakeClock, eventually, notification
from tests.notify.standins import Receiver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus-alertmanager") is None,
        reason="apt-get install -y --no-install-recommends prometheus-alertmanager",
    ),
]

CONFIG = """
route:
  receiver: rollbackd-test
  group_by: [incident]
  group_wait: 100ms
  group_interval: 100ms
  repeat_interval: 1h
receivers:
  - name: rollbackd-test
    webhook_configs:
      - url: {url}/alerts
        send_resolved: true
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    """Alertmanager's webhook receiver: what Alertmanager decided to send on."""
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alertmanager(hook: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a running Alertmanager that routes every alert to ``hook``."""
    folder = tmp_path_factory.mktemp("alertmanager")
    config = folder / "alertmanager.yml"
    config.write_text(CONFIG.format(url=hook.url))
    port = _free_port()
    process = subprocess.Popen(
        [
            "prometheus-alertmanager",
            f"--config.file={config}",
            f"--storage.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "alertmanager.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, folder / "alertmanager.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"alertmanager exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("alertmanager did not become ready within 15 s")


def _groups(hook: Receiver, incident: str, status: str) -> list[dict[str, Any]]:
    found = [r.json for r in hook.accepted if r.path == "/alerts"]
    return [
        g for g in found if g["groupLabels"].get("incident") == incident and g["status"] == status
    ]


def _held(alertmanager: str, incident: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{alertmanager}/api/v2/alerts", params={"filter": f'incident="{incident}"'})
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()
    return result


def _dispatcher(alertmanager: str, tmp_path: Path, events: Events) -> Dispatcher:
    channel = AlertmanagerChannel(kind="alertmanager", url=alertmanager, retries=0)
    return Dispatcher([channel], outbox=Outbox(tmp_path / "state.db"), on_event=events)


async def test_trigger_and_resolve_arrive_through_alertmanager_routing(
    alertmanager: str, hook: Receiver, tmp_path: Path, events: Events
) -> None:
    """A rollback shows up as a firing alert downstream, and its end as resolved."""
    d = _dispatcher(alertmanager, tmp_path, events)
    d.submit(notification("rollback_started", incident="am-1"))
    await eventually(lambda: bool(_groups(hook, "am-1", "firing")), timeout=10)

    [firing] = _groups(hook, "am-1", "firing")[0]["alerts"]
    assert firing["labels"] == {
        "alertname": "rollbackd_error_rate_high",
        "service": "codex-api",
        "severity": "critical",
        "incident": "am-1",
    }
    assert firing["annotations"]["summary"].startswith("ROLLBACK IN PROGRESS: codex-api")
    assert firing["annotations"]["rollback_to"] == "v1"

    d.submit(notification("resolved", incident="am-1", resolve=True))
    await eventually(lambda: bool(_groups(hook, "am-1", "resolved")), timeout=10)
    [resolved] = _groups(hook, "am-1", "resolved")[0]["alerts"]
    assert resolved["labels"] == firing["labels"]
    assert _held(alertmanager, "am-1") == []
    assert len(events.named("notification", outcome="delivered")) == 2
    await d.aclose()


async def test_later_stages_update_the_same_alert(
    alertmanager: str, hook: Receiver, tmp_path: Path, events: Events
) -> None:
    """Rollback started, finished and verified are one alert in Alertmanager, not three."""
    d = _dispatcher(alertmanager, tmp_path, events)
    for stage in ("rollback_started", "rollback_finished", "verification_failed"):
        d.submit(notification(stage, incident="am-2"))
    await d.drain(5)

    [alert] = _held(alertmanager, "am-2")
    assert alert["annotations"]["stage"] == "verification_failed"
    await d.aclose()


async def test_resolve_ends_every_alert_of_the_incident_even_after_a_severity_change(
    alertmanager: str, hook: Receiver, tmp_path: Path, events: Events
) -> None:
    """An incident escalated from warning to critical leaves nothing firing at resolve."""
    d = _dispatcher(alertmanager, tmp_path, events)
    d.submit(notification("page", incident="am-3", severity="warning", impact="medium"))
    d.submit(notification("verification_failed", incident="am-3", severity="critical"))
    await d.drain(5)
    assert {a["labels"]["severity"] for a in _held(alertmanager, "am-3")} == {
        "warning",
        "critical",
    }

    d.submit(notification("resolved", incident="am-3", resolve=True, severity="info"))
    await d.drain(5)
    assert _held(alertmanager, "am-3") == []
    await d.aclose()


async def test_firing_alert_lapses_unless_reposted(
    alertmanager: str, tmp_path: Path, events: Events
) -> None:
    """A firing alert ends by itself a few minutes after rollbackd stops re-posting it."""
    d = _dispatcher(alertmanager, tmp_path, events)
    d.submit(notification("rollback_started", incident="am-4"))
    await d.drain(5)

    [alert] = _held(alertmanager, "am-4")
    starts = alert["startsAt"]
    ends = alert["endsAt"]
    assert starts.startswith("2026-12-01T03:15:00")
    lapse = datetime.fromisoformat(ends.replace("Z", "+00:00")) - datetime.now(UTC)
    assert 200 < lapse.total_seconds() <= 240
    await d.aclose()


async def test_reminder_refreshes_the_alert_as_it_stood(
    alertmanager: str, tmp_path: Path, events: Events, clock: FakeClock
) -> None:
    """Every repeat_interval the alert is re-posted unchanged, so it does not lapse."""
    channel = AlertmanagerChannel(kind="alertmanager", url=alertmanager, retries=0)
    d = Dispatcher([channel], outbox=Outbox(tmp_path / "state.db"), on_event=events, clock=clock)
    d.submit(notification("rollback_finished", incident="am-5"))
    await d.drain(5)
    clock.advance(30)
    assert d.remind(notification("rollback_finished", incident="am-5")) == []
    clock.advance(31)
    assert d.remind(notification("rollback_finished", incident="am-5")) == ["alertmanager"]
    await d.drain(5)

    [alert] = _held(alertmanager, "am-5")
    assert alert["annotations"]["stage"] == "rollback_finished"
    assert len(events.named("notification", outcome="delivered", stage="reminder")) == 1
    await d.aclose()
