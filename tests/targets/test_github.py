"""The GitHub Actions target against a local GitHub API stand-in, through httpx."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from rollbackd.config import GitHubActionsTarget, Service
from rollbackd.targets import build_target
from rollbackd.targets.base import PermanentTargetError, Target, TemporaryTargetError
from rollbackd.targets.github import GitHubActionsDeployTarget, create
from tests.targets.standins.github import GitHubStandIn

SERVICE = "codex-api"
REASON: dict[str, Any] = {"rule": "error-rate-high", "value": 0.31}


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubStandIn]:
    monkeypatch.setenv("GITHUB_TOKEN", "write-token")
    with GitHubStandIn() as server:
        yield server


def target_for(github: GitHubStandIn, **overrides: Any) -> GitHubActionsDeployTarget:
    settings: dict[str, Any] = {
        "kind": "github-actions",
        "repo": github.repo,
        "workflow": "deploy.yml",
        "inputs": {"tag": "{to_version}", "service": "{service}"},
        "api_url": github.url,
        "version_url": f"{github.url}/version",
        "poll_interval": "10ms",
        "run_timeout": "10s",
    }
    return create(GitHubActionsTarget(**(settings | overrides)), service=SERVICE)


def python_printing(text: str) -> str:
    return shlex.join([sys.executable, "-c", f"print({text!r})"])


async def test_dispatch_runs_the_deploy_workflow_and_follows_it_to_success(
    github: GitHubStandIn,
) -> None:
    """The workflow is dispatched with the good version, and the result links to its run."""
    target = target_for(github)

    result = await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert github.dispatches == [{"ref": "main", "inputs": {"tag": "v1", "service": SERVICE}}]
    (run,) = github.runs.values()
    assert result.detail["url"] == github.html_url(run.id)
    assert result.detail["url"] in result.note
    assert run.seen_statuses[0] == "queued"
    assert "in_progress" in run.seen_statuses
    assert run.seen_statuses[-1] == "completed"
    await target.aclose()


async def test_a_run_from_before_the_dispatch_is_not_taken_for_ours(
    github: GitHubStandIn,
) -> None:
    """An earlier dispatched run of the workflow is not mistaken for the new one."""
    target = target_for(github)
    await target.rollback(to_version="v1", from_version="v2", reason=REASON)
    first = max(github.runs)

    result = await target.rollback(to_version="v3", from_version="v1", reason=REASON)

    assert result.detail["run_id"] == max(github.runs) != first
    await target.aclose()


async def test_a_failing_workflow_is_a_permanent_error_with_the_run_url(
    github: GitHubStandIn,
) -> None:
    """A deploy run that fails is reported with its URL, so the page links to the logs."""
    github.conclusion = "failure"
    target = target_for(github)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    (run_id,) = github.runs
    assert caught.value.reason == "workflow_failed"
    assert caught.value.detail == github.html_url(run_id)
    await target.aclose()


async def test_a_run_that_outlasts_run_timeout_is_not_dispatched_again(
    github: GitHubStandIn,
) -> None:
    """A slow deploy ends the wait with its URL and a permanent error (no second deploy)."""
    github.in_progress_polls = 10_000
    target = target_for(github, run_timeout="300ms")

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert caught.value.reason == "run_timeout"
    assert caught.value.detail == github.html_url(max(github.runs))
    assert len(github.dispatches) == 1
    await target.aclose()


async def test_rerun_reruns_the_newest_successful_run_of_that_version(
    github: GitHubStandIn,
) -> None:
    """Re-run mode picks the last good deploy of the version and waits for the new attempt."""
    github.add_run("Deploy v1")
    newest_good = github.add_run("Deploy v1")
    github.add_run("Deploy v1.2")
    github.add_run("Deploy v1", conclusion="failure")
    github.add_run("Deploy v2")
    target = target_for(github, mode="rerun")

    result = await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert github.reruns == [newest_good]
    assert result.detail["url"] == github.html_url(newest_good)
    assert result.detail["attempt"] == 2
    run = github.runs[newest_good]
    assert (run.run_attempt, run.status, run.conclusion) == (2, "completed", "success")
    assert github.dispatches == []
    await target.aclose()


async def test_rerun_finds_a_run_by_commit_sha(github: GitHubStandIn) -> None:
    """A version that is a commit SHA matches the run's head commit."""
    sha = "3f9c2e1" + "a" * 33
    run_id = github.add_run("Deploy main", head_sha=sha)
    github.add_run("Deploy main", head_sha="b" * 40)
    target = target_for(github, mode="rerun")

    await target.rollback(to_version="3f9c2e1", from_version="b" * 7, reason=REASON)

    assert github.reruns == [run_id]
    await target.aclose()


async def test_rerun_without_a_good_run_of_the_version_is_permanent(
    github: GitHubStandIn,
) -> None:
    """With nothing to re-run, the target says so instead of re-running something else."""
    github.add_run("Deploy v2")
    github.add_run("Deploy v1", conclusion="failure")
    target = target_for(github, mode="rerun")

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert caught.value.reason == "no_run_for_version"
    assert github.reruns == []
    await target.aclose()


async def test_a_bad_token_is_unauthorized_and_never_logged(
    github: GitHubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected token is a permanent error; the token appears in no log line or error."""
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_wrongwrongwrong")
    target = target_for(github)

    with structlog.testing.capture_logs() as logs, pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert caught.value.reason == "unauthorized"
    assert "Bad credentials" in caught.value.detail
    assert "ghp_wrongwrongwrong" not in str(caught.value)
    assert "ghp_wrongwrongwrong" not in repr(logs)
    assert github.requests[-1][2] == "Bearer ghp_wrongwrongwrong"
    await target.aclose()


async def test_an_unknown_workflow_is_not_found(github: GitHubStandIn) -> None:
    """A misspelt workflow file is a permanent error naming the request."""
    target = target_for(github, workflow="deploy-prod.yml")

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert caught.value.reason == "not_found"
    assert "deploy-prod.yml" in caught.value.detail
    await target.aclose()


async def test_a_missing_token_is_permanent(
    github: GitHubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the token variable nothing is sent, and the error names the variable."""
    monkeypatch.delenv("GITHUB_TOKEN")
    target = target_for(github)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert caught.value.reason == "no_token"
    assert "GITHUB_TOKEN" in caught.value.detail
    assert github.requests == []
    await target.aclose()


@pytest.mark.parametrize(("status", "style"), [(403, "retry-after"), (429, "reset")])
async def test_a_rate_limit_is_waited_out_then_the_rollback_goes_on(
    github: GitHubStandIn, status: int, style: str
) -> None:
    """Over the rate limit, the target waits as long as GitHub asks and then carries on."""
    github.rate_limit(count=1, seconds=1, status=status, style=style)
    target = target_for(github)

    started = time.monotonic()
    result = await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert time.monotonic() - started >= 0.9
    assert github.rate_limited_answers == 1
    assert result.detail["url"] == github.html_url(max(github.runs))
    assert len(github.dispatches) == 1
    await target.aclose()


async def test_a_rate_limit_longer_than_max_retry_wait_gives_up_for_now(
    github: GitHubStandIn,
) -> None:
    """A long rate limit is a temporary error at once, not a tick spent sleeping."""
    github.rate_limit(count=1, seconds=3600)
    target = target_for(github, max_retry_wait="5s")

    started = time.monotonic()
    with pytest.raises(TemporaryTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert caught.value.reason == "rate_limited"
    assert "3600s" in caught.value.detail
    assert time.monotonic() - started < 2
    await target.aclose()


async def test_version_is_read_from_the_version_url(github: GitHubStandIn) -> None:
    """The revision is what the service reports, stripped of white space."""
    github.version = "  v2.4.1 "
    target = target_for(github)

    assert (await target.current_revision()).id == "v2.4.1"
    await target.aclose()


async def test_version_is_read_from_a_command_without_a_shell(github: GitHubStandIn) -> None:
    """A version command's output is stripped; shell syntax is passed on as plain text."""
    target = target_for(github, version_url=None, version_command=python_printing("  v7 \n"))
    literal = target_for(github, version_url=None, version_command="echo v7 ; echo v8")

    assert (await target.current_revision()).id == "v7"
    assert (await literal.current_revision()).id == "v7 ; echo v8"
    await target.aclose()
    await literal.aclose()


async def test_a_failing_version_command_is_temporary(github: GitHubStandIn) -> None:
    """A version command that fails this time is retried next tick; a missing one is not."""
    failing = target_for(github, version_url=None, version_command="false")
    missing = target_for(github, version_url=None, version_command="/nonexistent/print-version")

    with pytest.raises(TemporaryTargetError) as temporary:
        await failing.current_revision()
    with pytest.raises(PermanentTargetError) as permanent:
        await missing.current_revision()

    assert temporary.value.reason == permanent.value.reason == "version_command_failed"
    await failing.aclose()
    await missing.aclose()


async def test_revision_is_read_with_a_read_only_token_and_a_write_is_refused(
    github: GitHubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watching needs no write access (shadow mode); a dispatch with read access fails."""
    monkeypatch.setenv("GITHUB_TOKEN", "read-token")
    target = target_for(github)

    assert (await target.current_revision()).id == "v2"
    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1", from_version="v2", reason=REASON)

    assert caught.value.reason == "forbidden"
    assert github.dispatches == []
    await target.aclose()


async def test_readiness_waits_for_the_service_to_report_the_version(
    github: GitHubStandIn,
) -> None:
    """Verification waits until the service itself reports the rolled-back version."""
    target = target_for(github)

    before = await target.readiness(to_version="v1")
    github.version = "v1"
    after = await target.readiness(to_version="v1")

    assert (before.ready, after.ready) == (False, True)
    assert "v2" in before.message
    await target.aclose()


async def test_an_unsafe_version_is_refused_before_any_call(github: GitHubStandIn) -> None:
    """A version that could smuggle text into the workflow's inputs is never sent."""
    target = target_for(github)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1 && curl evil", from_version="v2", reason=REASON)

    assert caught.value.reason == "unsafe_version"
    assert github.requests == []
    await target.aclose()


async def test_rollback_hint_is_the_gh_command(github: GitHubStandIn) -> None:
    """The page carries the exact gh command for each mode."""
    dispatch = target_for(github)
    rerun = target_for(github, mode="rerun")

    assert dispatch.rollback_hint(to_version="v1", from_version="v2") == (
        "gh workflow run deploy.yml --repo acme/codex-api --ref main -f tag=v1 -f service=codex-api"
    )
    hint = rerun.rollback_hint(to_version="v1", from_version="v2")
    assert hint.startswith(
        'gh run rerun "$(gh run list --repo acme/codex-api --workflow deploy.yml'
    )
    assert 'contains("v1")' in hint
    await dispatch.aclose()
    await rerun.aclose()


async def test_the_factory_builds_a_github_actions_target(github: GitHubStandIn) -> None:
    """``kind: github-actions`` yields this plug-in, honouring the Protocol."""
    config = target_for(github).config
    target = build_target(Service(name=SERVICE, target=config))

    assert isinstance(target, Target)
    assert (await target.current_revision()).id == "v2"
    await target.aclose()
