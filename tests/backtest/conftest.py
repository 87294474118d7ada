"""A real Prometheus holding a generated week of two services, and a config pointing at it.

The week (from Monday 2024-03-04, one sample a minute), as the backtests expect it:

- ``api``: v1; v2 Monday 10:00 (good); v3 Tuesday 14:00 failing 30 % of requests, which
  people rolled back to v2 at 15:00; an outage elsewhere on Thursday 11:00-11:45 (40 %
  errors, no deploy);
- ``web``: v1; v2 Wednesday 09:00 ten times slower; v3 at 12:00 fast again;
- every night (20:00-08:00) traffic drops to 0.3 requests/s, half of them failing.

The history is backfilled with promtool before Prometheus starts, so it is all there
at once; one server serves every test of this folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.backfill import backfill
from rollbackd.promserver import PrometheusServer
from tests.support.history import DAY, HOUR, MONDAY, ServicePlan, Version, generate

HERE = Path(__file__).parent
START, END = MONDAY, MONDAY + 7 * DAY
BAD_DEPLOY = MONDAY + 1 * DAY + 14 * HOUR  # api v3
PEOPLE_ROLLED_BACK = MONDAY + 1 * DAY + 15 * HOUR
SLOW_DEPLOY = MONDAY + 2 * DAY + 9 * HOUR  # web v2
OUTAGE = MONDAY + 3 * DAY + 11 * HOUR

PLANS = [
    ServicePlan(
        "api",
        [(START, "v1"), (MONDAY + 10 * HOUR, "v2"), (BAD_DEPLOY, "v3"), (PEOPLE_ROLLED_BACK, "v2")],
        versions={"v3": Version(error_ratio=0.3)},
        outages=[(OUTAGE, OUTAGE + 0.75 * HOUR, 0.4)],
    ),
    ServicePlan(
        "web",
        [(START, "v1"), (SLOW_DEPLOY, "v2"), (SLOW_DEPLOY + 3 * HOUR, "v3")],
        versions={"v2": Version(latency=0.3)},
    ),
]

CONFIG = """\
interval: 60s
rules: [{rules}]
prometheus: {{url: "{url}", scrape_interval: 60s}}
services:
  - name: api
    target: {{kind: exec, version_command: "true", rollback_command: "true"}}
  - name: web
    target: {{kind: exec, version_command: "true", rollback_command: "true"}}
backtest: {{revision_metric: app_build_info, revision_label: version}}
"""


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus serving the week; started once for the whole folder."""
    blocks = tmp_path_factory.mktemp("blocks")
    backfill(generate(PLANS, start=START, end=END), blocks)
    server = PrometheusServer(blocks=blocks, extra_args=["--storage.tsdb.retention.time=100y"])
    with server:
        yield server


@pytest.fixture(scope="session")
def config_path(history: PrometheusServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration for api and web with the minute-resolution rules of this folder."""
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(CONFIG.format(rules=HERE / "rules.yaml", url=history.url), encoding="utf-8")
    return path
