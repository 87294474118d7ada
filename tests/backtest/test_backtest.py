"""Backtests over a real Prometheus holding a generated week (see conftest.py).

The week has a good deploy, a bad deploy that people rolled back after an hour, an
outage with no deploy, a latency regression, and quiet nights; each test asserts what
the backtest reports about one of them, at the time it happened.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from rollbackd import app
from rollbackd.backtest import (
    BacktestResult,
    format_table,
    parse_time,
    run_backtest,
    suggest_grid,
    summarize,
)
from rollbackd.measure import measure
from rollbackd.plot import figure, write_plot
from rollbackd.promserver import PrometheusServer
from rollbackd.replay import RangeSignals, groups_of
from tests.backtest.conftest import (
    BAD_DEPLOY,
    END,
    OUTAGE,
    PEOPLE_ROLLED_BACK,
    SLOW_DEPLOY,
    START,
)
from tests.support.history import HOUR, MONDAY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MINUTE = 60.0


async def _backtest(config_path: Path, **kwargs: Any) -> BacktestResult:
    loaded = app.load(config_path)
    settings = loaded.settings
    if "mode" in kwargs:
        settings = settings.model_copy(update={"mode": kwargs.pop("mode")})
    async with app.prometheus_client(settings) as client:
        return await run_backtest(settings, loaded.rules, prometheus=client, **kwargs)


@pytest.fixture(scope="module")
def week(config_path: Path) -> BacktestResult:
    """The whole week, replayed once for this module, with readings recorded."""
    return asyncio.run(_backtest(config_path, start=START, end=END, record=True))


def decisions(result: BacktestResult, **match: Any) -> list[dict[str, Any]]:
    return [d for d in result.decisions() if all(d[k] == v for k, v in match.items())]


def test_bad_deploy_would_be_rolled_back_to_the_last_known_good(week: BacktestResult) -> None:
    """Minutes after v3 starts failing a third of api's requests, a rollback to v2 is decided."""
    (rollback,) = decisions(week, service="api", action="rollback")
    assert BAD_DEPLOY + 5 * MINUTE <= rollback["at"] <= BAD_DEPLOY + 10 * MINUTE
    assert rollback["outcome"] == "would_execute"  # the config is in shadow mode
    assert rollback["attribution"] == "deploy"
    assert (rollback["revision"], rollback["rollback_to"]) == ("v3", "v2")
    assert rollback["value"] == pytest.approx(0.3, abs=0.01)


def test_outage_without_a_deploy_pages_and_never_rolls_back(week: BacktestResult) -> None:
    """Thursday's errors come with no revision change: a critical page, no rollback."""
    (page,) = decisions(week, service="api", action="page")
    assert OUTAGE + 5 * MINUTE <= page["at"] <= OUTAGE + 10 * MINUTE
    assert page["attribution"] == "external"
    assert page["outcome"] == "executed"
    assert all(d["at"] < OUTAGE for d in decisions(week, action="rollback"))


def test_latency_regression_pages_against_the_baseline(week: BacktestResult) -> None:
    """web's slow v2 pages (medium impact) once p95 has stayed above 1.5x the v1 baseline."""
    (page,) = decisions(week, service="web")
    assert page["rule"] == "latency-regression"
    assert SLOW_DEPLOY + 10 * MINUTE <= page["at"] <= SLOW_DEPLOY + 20 * MINUTE
    assert (page["action"], page["attribution"], page["outcome"]) == ("page", "deploy", "executed")
    assert page["value"] > 1.5 * page["baseline"]


def test_quiet_nights_decide_nothing(week: BacktestResult) -> None:
    """Half of the night's few requests fail, but below min_traffic that is no data."""
    hours = [datetime.fromtimestamp(d["at"], UTC).hour for d in week.decisions()]
    assert len(hours) == 3
    assert all(8 <= hour < 20 for hour in hours)


def test_revisions_come_from_the_build_info_metric(week: BacktestResult) -> None:
    """Deploys and the people's own rollback are read from app_build_info{version}."""
    changes = [(c["service"], c["revision"], c["at"]) for c in week.revision_changes()]
    assert ("api", "v2", MONDAY + 10 * HOUR) in changes
    assert ("api", "v3", BAD_DEPLOY) in changes
    # After the would-be rollback the replay keeps seeing what really happened.
    assert ("api", "v2", PEOPLE_ROLLED_BACK) in changes
    assert ("web", "v2", SLOW_DEPLOY) in changes


def test_summary_counts_firings_pending_time_rollbacks_and_pages(week: BacktestResult) -> None:
    """Per rule: two firings of the error rule, one of latency; the probe rule skipped."""
    summary = summarize(week)
    errors, latency = summary["error-rate-high"], summary["latency-regression"]
    assert (errors.firings, errors.rollbacks, errors.pages) == (2, 1, 1)
    assert errors.pending_seconds == pytest.approx(2 * 5 * MINUTE)  # for: 5m, twice
    assert (latency.firings, latency.rollbacks, latency.pages) == (1, 0, 1)
    assert summary["health-failing"].skipped is not None
    table = format_table(week)
    assert "health-failing: skipped" in table
    assert "would_execute" in table


def test_suggest_counts_firings_for_other_thresholds_and_for_values(week: BacktestResult) -> None:
    """Raising the error threshold above 0.3 drops the bad deploy, above 0.4 the outage too."""
    grid = suggest_grid(week, "error-rate-high", thresholds=[0.1, 0.35, 0.5], holds=[300.0, 7200.0])
    assert grid.firings == [[2, 0], [1, 0], [0, 0]]
    assert grid.current == (0.1, 300.0)
    default = suggest_grid(week, "error-rate-high")
    row = default.thresholds.index(0.1)
    assert (
        default.firings[row][default.holds.index(300.0)]
        == summarize(week)["error-rate-high"].firings
    )


def test_range_readings_equal_the_loops_instant_measurement(
    week: BacktestResult, history: PrometheusServer
) -> None:
    """Readings cut from range queries are exactly what measure(at=t) gives, tick by tick."""
    rules = week.setup.query_rules
    groups = groups_of(week.setup)
    first, last = BAD_DEPLOY - 3 * MINUTE, BAD_DEPLOY + 12 * MINUTE

    async def compare() -> int:
        from rollbackd.signals.prometheus import PrometheusClient

        async with PrometheusClient(history.url) as client:
            ranged = RangeSignals(
                client, rules, groups, start=first, end=last, step=MINUTE, chunk=6 * MINUTE
            )
            compared = 0
            at = first
            while at <= last:
                expected = await measure(client, rules, groups, at=at)
                got = await ranged.measure(at)
                assert got.readings == expected.readings, at
                compared += 1
                at += MINUTE
            return compared

    assert asyncio.run(compare()) == 16


def test_enforce_mode_executes_and_verification_sees_the_real_history(config_path: Path) -> None:
    """In enforce the rollback reads executed; history still runs v3, so verification fails."""
    result = asyncio.run(
        _backtest(config_path, start=BAD_DEPLOY - HOUR, end=BAD_DEPLOY + 2 * HOUR, mode="enforce")
    )
    (rollback,) = decisions(result, action="rollback")
    assert rollback["outcome"] == "executed"
    (verification,) = result.replay.named("verification")
    assert verification.fields["passed"] is False
    assert "v3" in verification.fields["detail"]


def test_plot_has_a_panel_per_service_and_query_rule(week: BacktestResult, tmp_path: Path) -> None:
    """Two services times two query rules: four panels, in a PNG of real size."""
    from PIL import Image

    out = tmp_path / "week.png"
    fig = write_plot(week, out)
    assert len(fig.axes) == 4
    assert out.stat().st_size > 30_000
    with Image.open(out) as image:
        width, height = image.size
    assert width >= 1000
    assert height >= 4 * 150
    titles = [ax.get_title(loc="left") for ax in figure(week).axes]
    assert titles[0].startswith("api · error-rate-high")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.rows: dict[str, int] = {}
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "table":
            self._table = found.get("id")
        if tag == "tr" and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1


def test_html_plot_is_a_self_contained_page(week: BacktestResult, tmp_path: Path) -> None:
    """The HTML opens as a page with the SVG inline and a row per decision."""
    out = tmp_path / "week.html"
    write_plot(week, out)
    text = out.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert "svg" in page.tags
    assert {"summary", "decisions", "plot"} <= page.ids
    assert page.rows["decisions"] == 1 + 3  # header and three decisions
    # Nothing to fetch: no scripts, no stylesheets, no external images or links.
    assert "<script" not in text
    assert "<link" not in text
    assert not re.search(r"""(src|href)=["']https?:""", text)


def test_command_prints_json_progress_and_writes_the_plot(
    config_path: Path, tmp_path: Path
) -> None:
    """`rollbackd backtest --format json` prints the decisions; progress goes to stderr."""
    plot = tmp_path / "out.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rollbackd.cli",
            "backtest",
            "-c",
            str(config_path),
            "--start",
            "2024-03-04T00:00:00Z",
            "--end",
            str(int(END)),
            "--format",
            "json",
            "--plot",
            str(plot),
            "--suggest",
            "error-rate-high",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [d["action"] for d in doc["decisions"]] == ["rollback", "page", "page"]
    assert doc["decisions"][0]["ts"].startswith("2024-03-05T14:0")
    assert doc["summary"]["error-rate-high"]["rollbacks"] == 1
    assert doc["suggest"]["rule"] == "error-rate-high"
    assert "backtest: signals" in done.stderr
    assert plot.stat().st_size > 30_000


def test_command_rejects_a_start_it_cannot_read(config_path: Path) -> None:
    """A bad --start is a one-line error and exit 2, not a traceback."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rollbackd.cli",
            "backtest",
            "-c",
            str(config_path),
            "--start",
            "yesterday-ish",
            "--end",
            "now",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2
    assert "is not a time" in done.stderr
    assert "Traceback" not in done.stderr


def test_times_read_as_rfc3339_unix_seconds_or_relative() -> None:
    """--start and --end accept what people type."""
    now = 1_800_000_000.0
    assert parse_time("2024-03-04T00:00:00Z", now=now) == MONDAY
    assert parse_time("2024-03-04", now=now) == MONDAY
    assert parse_time(str(int(MONDAY)), now=now) == MONDAY
    assert parse_time("-7d", now=now) == now - 7 * 86400
    assert parse_time("now-1h", now=now) == now - 3600
    assert parse_time("now", now=now) == now
