"""Configuration and rule files: errors a person can act on, overrides, secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollbackd.app import load
from rollbackd.config import ConfigError, load_rules, load_settings, parse_duration
from rollbackd.secrets import SecretError, read_secret, redact

ROOT = Path(__file__).resolve().parents[2]
TARGET = "    target: {kind: exec, version_command: echo v1, rollback_command: echo}\n"


def write(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return [str(p) for p in caught.value.problems]


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    write(
        tmp_path / "rules", "rules:\n  - {name: e, impact: high, query: up, above: 1}\n", "r.yaml"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), (15, 15)]
)
def test_durations_read_as_written(text: str | int, seconds: float) -> None:
    """Durations are strings like 30s, 5m and 1h30m."""
    assert parse_duration(text) == seconds


def test_misspelt_key_reports_its_line_and_suggests_the_right_one(rules_dir: Path) -> None:
    """An unknown key is an error at its line, with a did-you-mean."""
    path = write(rules_dir, "mode: shadow\nsafety:\n  coolodwn: 5m\n")
    assert problems(path) == [f"{path}:3: unknown key 'coolodwn' (did you mean 'cooldown'?)"]


def test_bad_values_are_reported_at_their_lines(rules_dir: Path) -> None:
    """Each bad value points at its own line; all problems are reported together."""
    path = write(
        rules_dir, "mode: loud\ninterval: 15x\nservices:\n  - name: a\n    target: {kind: nope}\n"
    )
    found = problems(path)
    assert f"{path}:1: mode: Input should be 'shadow' or 'enforce'" in found
    assert any(p.startswith(f"{path}:2: interval: '15x' is not a duration") for p in found)
    assert any(p.startswith(f"{path}:5: unknown kind 'nope'") for p in found)


def test_missing_required_key_is_named(rules_dir: Path) -> None:
    """A service without a target says which key is missing and where."""
    path = write(rules_dir, "services:\n  - name: a\n")
    assert problems(path) == [f"{path}:2: missing required key 'target'"]


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    """Broken YAML is a path:line message, not a traceback."""
    path = write(tmp_path, "mode: shadow\nsafety: [\n")
    found = problems(path)
    assert len(found) == 1
    assert found[0].startswith(f"{path}:")
    assert "invalid YAML" in found[0]


def test_rule_file_errors_point_into_the_rule_file(tmp_path: Path) -> None:
    """Rule problems name the rule file and the rule's line."""
    rules = write(
        tmp_path,
        "rules:\n  - name: e\n    impact: high\n    query: up\n    abov: 1\n",
        "rules.yaml",
    )
    with pytest.raises(ConfigError) as caught:
        load_rules([str(rules)])
    assert [str(p) for p in caught.value.problems] == [
        f"{rules}:5: unknown key 'abov' (did you mean 'above'?)"
    ]


def test_rule_with_two_conditions_is_reported_at_the_rule(tmp_path: Path) -> None:
    """A rule must have exactly one condition."""
    rules = write(
        tmp_path,
        "rules:\n  - {name: e, impact: high, query: up, above: 1, below: 2}\n",
        "rules.yaml",
    )
    with pytest.raises(ConfigError, match=r"rules.yaml:2: a rule has exactly one condition"):
        load_rules([str(rules)])


def test_unknown_placeholder_in_a_rule_is_found_by_check(tmp_path: Path) -> None:
    """Template mistakes in queries are caught by check."""
    (tmp_path / "rules").mkdir()
    write(
        tmp_path / "rules",
        "rules:\n  - {name: e, impact: high, query: 'x{ {{selectr}} }', above: 1}\n",
        "r.yaml",
    )
    path = write(tmp_path, "mode: shadow\n")
    assert any("unknown placeholder {{selectr}}" in p for p in problems(path))


def test_environment_overrides_the_file(rules_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ROLLBACKD_<KEY> (nested with __) wins over the file."""
    path = write(rules_dir, "mode: shadow\nsafety: {cooldown: 5m}\n")
    monkeypatch.setenv("ROLLBACKD_MODE", "enforce")
    monkeypatch.setenv("ROLLBACKD_SAFETY__COOLDOWN", "1m")
    settings = load_settings(path)
    assert settings.mode == "enforce"
    assert settings.safety.cooldown == 60


def test_relative_paths_are_relative_to_the_config_file(rules_dir: Path) -> None:
    """state, audit_log and rules resolve next to the config, wherever rollbackd runs."""
    path = write(rules_dir, "state: data/state.db\n")
    assert load(path).settings.state == str(rules_dir / "data" / "state.db")


def test_secret_from_env_is_read_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret read once is masked in anything written afterwards."""
    monkeypatch.setenv("MY_TOKEN", "s3cr3t-token-value")
    assert read_secret(env="MY_TOKEN", file=None, what="token") == "s3cr3t-token-value"
    assert redact({"url": "https://x/?k=s3cr3t-token-value"}) == {"url": "https://x/?k=[REDACTED]"}


def test_missing_secret_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret variable that is not set says which one."""
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    with pytest.raises(SecretError, match="NOPE_TOKEN is not set"):
        read_secret(env="NOPE_TOKEN", file=None, what="token")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollbackd.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_exits_1_and_run_exits_2_on_bad_config_without_traceback(
    rules_dir: Path,
) -> None:
    """check exits 1, run exits 2; both print path:line: message and no traceback."""
    path = write(rules_dir, "services:\n  - name: a\n" + TARGET + "    helth: {url: x}\n")
    checked = run_cli("check", "-c", str(path), cwd=rules_dir)
    ran = run_cli("run", "-c", str(path), "--once", cwd=rules_dir)
    expected = f"{path}:4: unknown key 'helth' (did you mean 'health'?)"
    assert (checked.returncode, checked.stderr.strip()) == (1, expected)
    assert (ran.returncode, ran.stderr.strip()) == (2, expected)
    assert "Traceback" not in checked.stderr + ran.stderr


def test_example_configuration_is_valid() -> None:
    """config.example.yaml passes check, as README promises."""
    result = run_cli("check", "-c", "config.example.yaml", cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_config_defaults_to_rollbackd_config_variable(rules_dir: Path) -> None:
    """Without -c, $ROLLBACKD_CONFIG names the file."""
    path = write(rules_dir, "mode: enforce\n", "custom.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "rollbackd.cli", "check"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"ROLLBACKD_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "mode enforce" in result.stdout


def test_check_finds_a_broken_notification_template(rules_dir: Path) -> None:
    """A template mistake is reported by check at the channel's line, not at 3 a.m."""
    path = write(
        rules_dir,
        "notify:\n  - kind: log\n    templates:\n      page: 'Service {{ servce }} {% if %}'\n",
    )
    result = run_cli("check", "-c", str(path), cwd=rules_dir)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{path}:3: ")
    assert "page" in result.stderr
    assert "Traceback" not in result.stderr


def test_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    """A binary or mis-encoded file is a path:line message, not a traceback."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"mode: shadow\n\xff\xfe")
    assert problems(path) == [f"{path}:2: not UTF-8 text"]


def test_command_that_cannot_be_split_is_found_by_check(rules_dir: Path) -> None:
    """An unterminated quote in a command is reported before any rollback needs it."""
    path = write(
        rules_dir,
        "services:\n  - name: a\n    target: {kind: exec, version_command: "
        "echo v1, rollback_command: 'deploy \"v1'}\n",
    )
    [found] = problems(path)
    assert found.startswith(f"{path}:3: rollback_command: cannot split the command")
