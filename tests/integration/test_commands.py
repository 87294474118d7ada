"""The command line as an operator meets it: exit statuses and error messages.

These run the real ``rollbackd`` process; none of them needs Prometheus.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.daemon import REPO

pytestmark = pytest.mark.integration

SERVICE = """\
services:
  - name: codex-api
    target:
      kind: exec
      version_command: echo v1
      rollback_command: "true"
"""


def rollbackd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollbackd.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_run_with_misspelt_key_exits_2_with_path_and_line(tmp_path: Path) -> None:
    """`rollbackd run` on a misspelt key exits 2 naming file, line and the likely key."""
    config = tmp_path / "config.yaml"
    config.write_text(f"mode: enforce\nintervall: 1s\nrules: []\n{SERVICE}", encoding="utf-8")

    result = rollbackd("run", "-c", str(config), "--once")

    assert result.returncode == 2, result.stderr
    pattern = rf"^{re.escape(str(config))}:2: .*'intervall'.*did you mean 'interval'"
    assert re.search(pattern, result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_run_with_bad_rule_file_exits_2_with_path_and_line(tmp_path: Path) -> None:
    """`rollbackd run` on a rule with two conditions exits 2 pointing into the rule file."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "group: g\nrules:\n  - name: r\n    impact: high\n    query: up\n"
        "    above: 1\n    below: 0\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text(f"mode: enforce\nrules: [rules.yaml]\n{SERVICE}", encoding="utf-8")

    result = rollbackd("run", "-c", str(config), "--once")

    assert result.returncode == 2, result.stderr
    assert re.search(rf"^{re.escape(str(rules))}:\d+: ", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.stderr


def test_check_accepts_the_example_configuration() -> None:
    """`rollbackd check -c config.example.yaml` from the repository root exits 0."""
    result = rollbackd("check", "-c", "config.example.yaml")

    assert result.returncode == 0, result.stderr
    assert "config.example.yaml: ok" in result.stdout
