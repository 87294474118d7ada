"""`rollbackd test`: the shipped rules' unit tests pass, and broken tests fail as they should.

Every test here runs the real command, which backfills the series into a Prometheus of
its own (or uses one given with --prometheus).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollbackd.promserver import PrometheusServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SHIPPED = sorted((REPO / "rules" / "tests").glob("*.yaml"))


def rollbackd_test(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollbackd.cli", "test", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def test_every_shipped_rule_has_passing_unit_tests() -> None:
    """`rollbackd test rules/tests/*.yaml` passes, and covers each rule of rules/default.yaml."""
    assert SHIPPED
    done = rollbackd_test(*SHIPPED)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")
    tests_text = "\n".join(p.read_text(encoding="utf-8") for p in SHIPPED)
    for rule in ("error-rate-high", "latency-regression", "health-failing"):
        assert f"rule: {rule}" in tests_text


def test_stale_markers_end_a_series_where_a_gap_does_not() -> None:
    """`stale` hides the series at once; `_` leaves the last sample visible for 5 minutes."""
    done = rollbackd_test(FIXTURES / "stale_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 0 failed" in done.stdout


def test_failing_expectations_print_test_rule_service_time_expected_and_actual() -> None:
    """Both wrong expectations are reported with their line, and the command exits 1."""
    path = FIXTURES / "wrong_expectations_test.yaml"
    done = rollbackd_test(path)
    assert done.returncode == 1
    out = done.stdout
    assert f"FAIL {path}:5: low traffic is claimed to roll back" in out
    assert (
        f"{path}:15: from 0s to 30m: expected decision "
        "{rule: error-rate-high, action: rollback} was not made; no decision was made"
    ) in out
    assert f"FAIL {path}:19: a rule is claimed to fire before its for has passed" in out
    assert (
        f"{path}:29: at 15m30s: api error-rate-high: expected state firing, got pending "
        "(value 0.2, threshold 0.1)"
    ) in out
    assert out.strip().splitlines()[-1] == "0 passed, 2 failed"


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("bad_values_test.yaml", ":6: values: cannot read '0+300x'"),
        ("unknown_key_test.yaml", ":4: unknown key 'input_serie' (did you mean 'input_series'?)"),
        ("unknown_rule_test.yaml", ":9: unknown rule 'error-rate'; the rule files define"),
        ("not_a_tick_test.yaml", ":9: at 1m10s is not a tick"),
    ],
)
def test_broken_test_files_are_reported_as_path_and_line(fixture: str, message: str) -> None:
    """A test file that cannot be read fails with path:line: message, never a traceback."""
    path = FIXTURES / fixture
    done = rollbackd_test(path)
    assert done.returncode == 1
    assert f"{path}{message}" in done.stderr
    assert "Traceback" not in done.stderr


def test_given_prometheus_runs_the_tests_on_blocks_written_beforehand(tmp_path: Path) -> None:
    """--write-blocks makes the blocks; a Prometheus holding them serves --prometheus runs."""
    shipped = REPO / "rules" / "tests" / "default_test.yaml"
    written = rollbackd_test("--write-blocks", tmp_path / "blocks", shipped)
    assert written.returncode == 0, written.stderr
    with PrometheusServer(
        blocks=tmp_path / "blocks", extra_args=["--storage.tsdb.retention.time=100y"]
    ) as server:
        done = rollbackd_test("--prometheus", server.url, shipped)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed, 0 failed" in done.stdout


def test_given_prometheus_without_the_series_fails_and_says_so() -> None:
    """Pointing at an empty Prometheus fails each test with a hint, not a wrong verdict."""
    with PrometheusServer() as server:
        done = rollbackd_test("--prometheus", server.url, FIXTURES / "wrong_expectations_test.yaml")
    assert done.returncode == 1
    assert "the Prometheus holds no http_requests_total" in done.stdout
    assert "--write-blocks" in done.stdout
