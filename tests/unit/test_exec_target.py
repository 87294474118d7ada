"""The exec target: commands without a shell, timeouts, validated versions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from rollbackd.config import ExecTarget
from rollbackd.targets.base import PermanentTargetError, TemporaryTargetError
from rollbackd.targets.exec import ExecCommandTarget, create

PY = sys.executable


def target(**kwargs: Any) -> ExecCommandTarget:
    settings: dict[str, Any] = {"kind": "exec", "rollback_command": "true", **kwargs}
    return create(ExecTarget(**settings), service="api")


async def test_version_command_output_is_stripped() -> None:
    """Surrounding white space of a version_command's output is removed."""
    t = target(version_command=f"{PY} -c \"print('  v1.2.3  ')\"")
    assert (await t.current_revision()).id == "v1.2.3"


async def test_rollback_command_gets_placeholders_as_single_arguments(tmp_path: Path) -> None:
    """{service}, {from_version} and {to_version} are filled in, one argument each."""
    out = tmp_path / "args"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(repr(sys.argv[2:]))"
    t = target(
        version_command="true",
        rollback_command=f"{PY} -c '{script}' {out} {{service}} {{from_version}} "
        "--to={to_version}",
    )
    await t.rollback(to_version="v1", from_version="v2", reason={})
    assert out.read_text() == "['api', 'v2', '--to=v1']"


async def test_versions_that_could_inject_arguments_are_refused(tmp_path: Path) -> None:
    """A version with spaces, quotes or shell syntax never reaches a command."""
    marker = tmp_path / "ran"
    t = target(version_command="true", rollback_command=f"touch {marker} {{to_version}}")
    for bad in ("v1; rm -rf /", "v1 --force", "$(id)", "v1`id`", "'v1'"):
        with pytest.raises(PermanentTargetError, match="unsafe_version"):
            await t.rollback(to_version=bad, from_version="v2", reason={})
    assert not marker.exists()


async def test_commands_run_without_a_shell(tmp_path: Path) -> None:
    """Shell syntax in a command is passed literally, not interpreted."""
    out = tmp_path / "args"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(repr(sys.argv[2:]))"
    t = target(version_command="true", rollback_command=f"{PY} -c '{script}' {out} '$HOME' '|' ';'")
    await t.rollback(to_version="v1", from_version="v2", reason={})
    assert out.read_text() == "['$HOME', '|', ';']"


async def test_non_zero_exit_is_a_failure_with_the_status() -> None:
    """A rollback command that exits 3 fails with reason exit_3 and its last stderr line."""
    t = target(
        rollback_command=f"{PY} -c \"import sys; sys.exit('deploy refused')\"",
        version_command="true",
    )
    with pytest.raises(PermanentTargetError) as caught:
        await t.rollback(to_version="v1", from_version="v2", reason={})
    assert caught.value.reason == "exit_1"
    assert caught.value.detail == "deploy refused"


async def test_command_that_hangs_is_killed_at_its_timeout() -> None:
    """A rollback command outliving its timeout is killed and reported as a timeout."""
    t = target(
        rollback_command=f"{PY} -c 'import time; time.sleep(60)'",
        timeout=0.5,
        version_command="true",
    )
    with pytest.raises(TemporaryTargetError, match="rollback_timeout"):
        await t.rollback(to_version="v1", from_version="v2", reason={})


async def test_missing_command_is_reported() -> None:
    """A command that does not exist fails clearly instead of crashing the tick."""
    t = target(version_command="/nonexistent/bin/version")
    with pytest.raises(PermanentTargetError, match="command_not_found"):
        await t.current_revision()


def test_rollback_hint_is_the_exact_command() -> None:
    """The page's command is the rollback command with the versions filled in, quoted."""
    t = target(version_command="true", rollback_command="./deploy.sh {service} {to_version}")
    assert t.rollback_hint(to_version="v1", from_version="v2") == "./deploy.sh api v1"


def test_exactly_one_version_source_is_required() -> None:
    """Either version_command or version_url, not both, not neither."""
    with pytest.raises(ValueError, match="exactly one of version_command and version_url"):
        ExecTarget(kind="exec", rollback_command="x")
