"""`rollbackd check`: rule lints, and rule queries validated by a real Prometheus."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd import app
from rollbackd.backfill import backfill
from rollbackd.config import ConfigError, load_settings
from rollbackd.lint import counter_windows, lint_rules
from rollbackd.promserver import PrometheusServer
from tests.support.history import HOUR, ServicePlan, generate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

FRAGILE = """\
group: fragile
rules:
  - name: error-ratio
    impact: high
    query: |
      sum {{by}} (rate(http_requests_total{ {{selector}}, code=~"5.." }[30s]))
        / sum {{by}} (rate(http_requests_total{ {{selector}} }[30s]))
    above: 0.1
    for: 15s
  - name: queue-growth
    impact: low
    query: 'sum {{by}} (increase(jobs_total{ {{selector}} }[2m]))'
    above: 100
    for: 1m
"""

BROKEN = """\
group: broken
rules:
  - name: typo
    impact: low
    query: 'sum {{by}} (rate(http_requests_total{ {{selector}} }[5m])) +* 2'
    above: 1
    for: 5m
  - name: no-by
    impact: low
    query: 'sum(rate(http_requests_total{ {{selector}} }[5m]))'
    above: 1
    for: 5m
"""

CONFIG = """\
interval: {interval}
rules: [rules.yaml]
prometheus: {{url: "{url}", scrape_interval: {scrape}}}
services:
  - name: api
    target: {{kind: exec, version_command: "true", rollback_command: "true"}}
"""


@pytest.fixture(scope="module")
def recent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus holding the last hour of api, up to now: check queries run at now."""
    now = time.time()
    blocks = tmp_path_factory.mktemp("recent")
    plan = ServicePlan("api", [(now - HOUR, "v1")])
    backfill(generate([plan], start=now - HOUR, end=now), blocks)
    with PrometheusServer(blocks=blocks) as server:
        yield server


def write(
    tmp_path: Path, rules: str, *, url: str, interval: str = "15s", scrape: str = "15s"
) -> Path:
    (tmp_path / "rules.yaml").write_text(rules, encoding="utf-8")
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(url=url, interval=interval, scrape=scrape), encoding="utf-8")
    return path


def test_fragile_rules_get_warnings_with_their_lines(tmp_path: Path) -> None:
    """Short rate windows, a one-tick for and a ratio without min_traffic are each named."""
    path = write(tmp_path, FRAGILE, url="http://127.0.0.1:9")
    loaded = app.load(path)
    warnings = [str(w) for w in lint_rules(loaded.settings, loaded.rules)]
    rules = str(tmp_path / "rules.yaml")
    assert (
        f"{rules}:5: warning: rule 'error-ratio' query: rate() window 30s is shorter"
        in "\n".join(warnings)
    )
    assert any(w.startswith(f"{rules}:9: warning: rule 'error-ratio': for 15s") for w in warnings)
    assert any("'error-ratio' is a ratio without min_traffic" in w for w in warnings)
    assert any("increase() window 2m" in w for w in warnings) is False  # 2m >= 4 x 15s
    assert len(warnings) == 3


def test_scrape_interval_from_config_sets_the_window_floor(tmp_path: Path) -> None:
    """With a one-minute scrape, a [2m] increase() is too short as well."""
    path = write(tmp_path, FRAGILE, url="http://127.0.0.1:9", scrape="1m")
    loaded = app.load(path)
    assert load_settings(path).prometheus.scrape_interval == 60
    assert any("increase() window 2m" in str(w) for w in lint_rules(loaded.settings, loaded.rules))


def test_counter_windows_reads_only_windows_given_to_rate_or_increase() -> None:
    """A window inside max_over_time is not a rate window; nested parentheses are followed."""
    query = 'max_over_time(x[10s]) + rate(sum_total{a="(b)"}[45s]) + increase(y[1m30s])'
    assert counter_windows(query) == [("rate", 45.0), ("increase", 90.0)]


def test_shipped_rules_pass_check_without_warnings(tmp_path: Path) -> None:
    """The rules rollbackd ships are lint-clean at the default 15s scrape and tick."""
    (tmp_path / "config.yaml").write_text(
        CONFIG.replace("rules.yaml", str(REPO / "rules")).format(
            url="http://127.0.0.1:9", interval="15s", scrape="15s"
        ),
        encoding="utf-8",
    )
    loaded = app.load(tmp_path / "config.yaml")
    assert lint_rules(loaded.settings, loaded.rules) == []


def test_prometheus_rejecting_a_query_is_a_problem_at_the_rule(
    tmp_path: Path, recent: PrometheusServer
) -> None:
    """A syntax error fails check with the rule's path:line; a missing {{by}} is a warning."""
    path = write(tmp_path, BROKEN, url=recent.url, interval="1m", scrape="1m")
    with pytest.raises(ConfigError) as caught:
        app.check(path)
    lines = [str(p) for p in caught.value.problems]
    rules = str(tmp_path / "rules.yaml")
    assert any(
        line.startswith(f"{rules}:5: rule 'typo' query: Prometheus rejects it:") for line in lines
    )
    assert any(
        line.startswith(
            f"{rules}:10: warning: rule 'no-by' query returns series without the label job"
        )
        for line in lines
    )


def test_check_command_prints_warnings_and_still_exits_0(
    tmp_path: Path, recent: PrometheusServer
) -> None:
    """Warnings go to stderr as path:line: warning: ...; the exit status stays 0."""
    path = write(tmp_path, FRAGILE, url=recent.url)
    done = subprocess.run(
        [sys.executable, "-m", "rollbackd.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'rules.yaml'}:5: warning:" in done.stderr
    assert "ok (1 services, 2 rules" in done.stdout


def test_unreachable_prometheus_only_skips_validation(tmp_path: Path) -> None:
    """No Prometheus: one warning that queries were not validated, no failure."""
    path = write(tmp_path, BROKEN.replace(" +* 2", ""), url="http://127.0.0.1:9")
    _loaded, warnings = app.check(path)
    assert any("does not answer; rule queries were not validated" in str(w) for w in warnings)
