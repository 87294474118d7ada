"""The Cloud Run target against a local Cloud Run API stand-in, through the real client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from rollbackd.config import CloudRunTarget, Service
from rollbackd.targets import build_target
from rollbackd.targets.base import PermanentTargetError, Target, TemporaryTargetError
from rollbackd.targets.cloudrun import CloudRunServiceTarget, create
from tests.targets.standins.cloudrun import CloudRunStandIn

SERVICE = "codex-api"
REASON: dict[str, Any] = {"rule": "error-rate-high", "value": 0.31}


@pytest.fixture
def standin() -> Iterator[CloudRunStandIn]:
    with CloudRunStandIn(operation_polls=3) as server:
        yield server


def target_for(standin: CloudRunStandIn, **overrides: Any) -> CloudRunServiceTarget:
    settings: dict[str, Any] = {
        "kind": "cloudrun",
        "project": standin.project,
        "region": standin.region,
        "service": SERVICE,
        "api_endpoint": standin.url,
        "operation_timeout": "10s",
        "poll_interval": "10ms",
    }
    return create(CloudRunTarget(**(settings | overrides)), service=SERVICE)


def patches(standin: CloudRunStandIn) -> int:
    return sum(1 for method, _ in standin.requests if method == "PATCH")


async def test_revision_is_the_one_serving_traffic_with_its_image(
    standin: CloudRunStandIn,
) -> None:
    """The revision reported is the one taking the traffic, with its container image."""
    revs = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    target = target_for(standin)

    revision = await target.current_revision()

    assert revision.id == revs[1]
    assert revision.detail["image"] == "img:v2"
    assert revision.detail["pinned"] is False
    assert "split" not in revision.detail
    await target.aclose()


async def test_revision_history_lists_revisions_by_creation(standin: CloudRunStandIn) -> None:
    """Backtests get every revision Cloud Run keeps, oldest first, dated by creation."""
    revs = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.deploy(SERVICE, "img:v3")
    target = target_for(standin)

    history = await target.revision_history()
    await target.aclose()

    names = [revision for _at, revision in history]
    assert names[:2] == [r.rsplit("/", 1)[-1] for r in revs]
    assert len(names) == 3
    assert [at for at, _ in history] == sorted(at for at, _ in history)


async def test_split_traffic_is_reported_and_attributed_to_the_newest_revision(
    standin: CloudRunStandIn,
) -> None:
    """A canary split is reported as such; attribution goes to the revision added last."""
    revs = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.split(SERVICE, {revs[0]: 90, revs[1]: 10})
    target = target_for(standin)

    revision = await target.current_revision()

    assert revision.id == revs[1]
    assert revision.detail["split"] == {revs[0]: 90, revs[1]: 10}
    assert revision.detail["image"] == "img:v2"
    await target.aclose()


async def test_a_new_image_is_reported_as_a_code_change(standin: CloudRunStandIn) -> None:
    """A deploy with a new image between two reads is a code change."""
    standin.add_service(SERVICE, ["img:v1"])
    target = target_for(standin)
    await target.current_revision()

    new = standin.deploy(SERVICE, "img:v2")
    revision = await target.current_revision()

    assert (revision.id, revision.change) == (new, "code")
    await target.aclose()


async def test_revision_can_be_read_with_read_only_permissions(standin: CloudRunStandIn) -> None:
    """A viewer role is enough to watch (shadow mode); changing traffic is refused."""
    revs = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.read_only = True
    target = target_for(standin)

    assert (await target.current_revision()).id == revs[1]
    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version=revs[0], from_version=revs[1], reason=REASON)

    assert caught.value.reason == "permission_denied"
    assert standin.serving(SERVICE) == {revs[1]: 100}
    await target.aclose()


async def test_permission_denied_on_read_is_permanent(standin: CloudRunStandIn) -> None:
    """Without even read access the target says so rather than guessing a revision."""
    standin.add_service(SERVICE, ["img:v1"])
    standin.deny_all = True
    target = target_for(standin)

    with pytest.raises(PermanentTargetError) as caught:
        await target.current_revision()

    assert caught.value.reason == "permission_denied"
    assert "Permission denied" in caught.value.detail
    await target.aclose()


async def test_unreachable_api_is_temporary() -> None:
    """An API that does not answer is worth another try later."""
    with CloudRunStandIn() as closed:
        url = closed.url
    config = CloudRunTarget(
        kind="cloudrun", project="p", region="r", service=SERVICE, api_endpoint=url
    )
    target = create(config, service=SERVICE)

    with pytest.raises(TemporaryTargetError) as caught:
        await target.current_revision()

    assert caught.value.reason == "unreachable"
    await target.aclose()


async def test_traffic_rollback_sends_all_traffic_to_the_last_known_good_revision(
    standin: CloudRunStandIn,
) -> None:
    """The bad revision stops serving; the good one takes 100 % once the operation is done."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    target = target_for(standin)
    etag = standin.service(SERVICE).etag

    result = await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert result.changed
    assert standin.serving(SERVICE) == {good: 100}
    assert standin.updates[-1]["etag"] == etag
    operation_polls = [p for m, p in standin.requests if "/operations/" in p]
    assert len(operation_polls) == 3
    assert result.detail["pinned"] is True
    unpin = "gcloud run services update-traffic codex-api --to-latest"
    assert unpin in result.note
    assert "--region us-central1 --project demo-project" in result.note
    assert (await target.readiness(to_version=good)).ready
    assert (await target.current_revision()).id == good
    await target.aclose()


async def test_rollback_to_the_revision_already_pinned_changes_nothing(
    standin: CloudRunStandIn,
) -> None:
    """A second rollback to the same revision is a no-op, not a second update."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    target = target_for(standin)
    await target.rollback(to_version=good, from_version=bad, reason=REASON)

    again = await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert not again.changed
    assert patches(standin) == 1
    await target.aclose()


async def test_a_deploy_after_a_traffic_pin_is_flagged_for_a_reminder(
    standin: CloudRunStandIn,
) -> None:
    """A revision deployed after the pin gets no traffic: the target flags it, not the bad one."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    target = target_for(standin)
    await target.rollback(to_version=good, from_version=bad, reason=REASON)

    after_rollback = await target.current_revision()
    assert "unserved_revision" not in after_rollback.detail
    assert target.pinned_reminder(after_rollback) is None

    fixed = standin.deploy(SERVICE, "img:v3")
    revision = await target.current_revision()

    assert revision.id == good
    assert revision.detail["unserved_revision"] == fixed
    reminder = target.pinned_reminder(revision)
    assert reminder is not None
    assert fixed in reminder
    assert revision.detail["unpin_command"] in reminder
    await target.aclose()


async def test_redeploy_makes_a_new_revision_from_the_good_image(
    standin: CloudRunStandIn,
) -> None:
    """Redeploy puts the good image back as a new revision and sends traffic to latest."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    target = target_for(standin, strategy="redeploy")

    result = await target.rollback(to_version=good, from_version=bad, reason=REASON)

    new = result.detail["revision"]
    assert new not in (good, bad)
    assert standin.serving(SERVICE) == {new: 100}
    assert standin.service(SERVICE).revisions[new].image == "img:v1"
    assert standin.service(SERVICE).traffic == [{"type": 1, "percent": 100}]
    assert (await target.readiness(to_version=good)).ready
    await target.aclose()


async def test_deleted_last_known_good_revision_falls_back_to_redeploy_and_says_so(
    standin: CloudRunStandIn,
) -> None:
    """A deleted revision cannot take traffic; its image is re-deployed and the note says so."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.delete_revision(SERVICE, good)
    target = target_for(standin)

    result = await target.rollback(
        to_version=good, from_version=bad, reason=REASON | {"to_image": "img:v1"}
    )

    new = result.detail["revision"]
    assert result.detail["fallback"] is True
    assert f"Revision {good} no longer exists" in result.note
    assert new in result.note
    assert standin.serving(SERVICE) == {new: 100}
    assert standin.service(SERVICE).revisions[new].image == "img:v1"
    await target.aclose()


async def test_deleted_revision_seen_earlier_is_redeployed_from_memory(
    standin: CloudRunStandIn,
) -> None:
    """The image of a revision the daemon saw serving is remembered for a later fallback."""
    (good,) = standin.add_service(SERVICE, ["img:v1"])
    target = target_for(standin)
    await target.current_revision()
    bad = standin.deploy(SERVICE, "img:v2")
    standin.delete_revision(SERVICE, good)

    result = await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert result.detail["image"] == "img:v1"
    assert standin.service(SERVICE).revisions[result.detail["revision"]].image == "img:v1"
    await target.aclose()


async def test_deleted_revision_with_unknown_image_is_a_permanent_error(
    standin: CloudRunStandIn,
) -> None:
    """Without the image a deleted revision cannot be restored; nothing is changed."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.delete_revision(SERVICE, good)
    target = target_for(standin)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert caught.value.reason == "image_unknown"
    assert patches(standin) == 0
    await target.aclose()


async def test_a_failed_operation_is_reported_and_traffic_stays(
    standin: CloudRunStandIn,
) -> None:
    """When Cloud Run fails the rollout, the error says why and readiness reports failure."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.fail_next_operation("Revision 'x' is not ready and cannot serve traffic.")
    target = target_for(standin)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert caught.value.reason == "operation_failed"
    assert "cannot serve traffic" in caught.value.detail
    assert standin.serving(SERVICE) == {bad: 100}
    readiness = await target.readiness(to_version=good)
    assert readiness.failed
    assert "cannot serve traffic" in readiness.message
    await target.aclose()


async def test_an_operation_that_outlasts_the_timeout_is_temporary(
    standin: CloudRunStandIn,
) -> None:
    """A slow rollout ends the wait with a retryable error; readiness says it is still going."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.operation_polls = 10_000
    target = target_for(standin, operation_timeout="200ms")

    with pytest.raises(TemporaryTargetError) as caught:
        await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert caught.value.reason == "operation_timeout"
    readiness = await target.readiness(to_version=good)
    assert (readiness.ready, readiness.failed) == (False, False)
    await target.aclose()


@pytest.mark.parametrize("status", ["ABORTED", "FAILED_PRECONDITION"])
async def test_a_concurrent_change_is_never_overwritten(
    standin: CloudRunStandIn, status: str
) -> None:
    """A deploy that lands between our read and write wins; we report it and do not retry."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.etag_conflict_status = status
    standin.deploy_before_next_update(SERVICE, "img:v3")
    target = target_for(standin)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert caught.value.reason == "concurrent_change"
    assert "nothing was overwritten" in caught.value.detail
    latest = standin.service(SERVICE).latest_created
    assert standin.serving(SERVICE) == {latest: 100}
    assert standin.service(SERVICE).revisions[latest].image == "img:v3"
    assert patches(standin) == 1
    await target.aclose()


async def test_an_unsafe_version_is_refused_before_any_call(standin: CloudRunStandIn) -> None:
    """A version that is not a plain revision name never reaches the API."""
    standin.add_service(SERVICE, ["img:v1"])
    target = target_for(standin)

    with pytest.raises(PermanentTargetError) as caught:
        await target.rollback(to_version="v1 --to-latest", from_version="v2", reason=REASON)

    assert caught.value.reason == "unsafe_version"
    assert standin.requests == []
    await target.aclose()


async def test_rollback_hint_is_the_gcloud_command(standin: CloudRunStandIn) -> None:
    """The page carries the exact gcloud command for each strategy."""
    (good,) = standin.add_service(SERVICE, ["img:v1"])
    traffic, redeploy = target_for(standin), target_for(standin, strategy="redeploy")
    await redeploy.current_revision()

    assert traffic.rollback_hint(to_version=good, from_version="x") == (
        f"gcloud run services update-traffic codex-api --to-revisions {good}=100 "
        "--region us-central1 --project demo-project"
    )
    assert redeploy.rollback_hint(to_version=good, from_version="x") == (
        "gcloud run deploy codex-api --image img:v1 --region us-central1 --project demo-project"
    )
    await traffic.aclose()
    await redeploy.aclose()


async def test_the_factory_builds_a_cloudrun_target(standin: CloudRunStandIn) -> None:
    """``kind: cloudrun`` in a service's config yields this plug-in, honouring the Protocol."""
    (rev,) = standin.add_service(SERVICE, ["img:v1"])
    config = target_for(standin).config
    target = build_target(Service(name=SERVICE, target=config))

    assert isinstance(target, Target)
    assert (await target.current_revision()).id == rev
    await target.aclose()


def test_plain_http_endpoint_off_loopback_is_a_config_error() -> None:
    """Credentials never go in clear text to a remote endpoint."""
    with pytest.raises(ValidationError, match="plain http"):
        CloudRunTarget(
            kind="cloudrun", project="p", region="r", service="s", api_endpoint="http://10.1.2.3"
        )


async def test_a_traffic_rollback_keeps_tagged_urls(standin: CloudRunStandIn) -> None:
    """Tagged revision URLs (blue/green, previews) survive a rollback at 0 % traffic."""
    good, bad = standin.add_service(SERVICE, ["img:v1", "img:v2"])
    standin.split(SERVICE, {bad: 100}, tags={"green": bad})
    target = target_for(standin)

    await target.rollback(to_version=good, from_version=bad, reason=REASON)

    assert standin.serving(SERVICE) == {good: 100}
    traffic = standin.service(SERVICE).traffic
    assert {"type": 2, "revision": bad, "tag": "green"} in traffic


async def test_a_missing_key_file_is_a_permanent_credentials_error(
    standin: CloudRunStandIn,
) -> None:
    """A credentials_file that cannot be read is reported as such, not as an outage."""
    standin.add_service(SERVICE, ["img:v1"])
    target = target_for(standin, credentials_file="/nonexistent/rollbackd-sa.json")

    with pytest.raises(PermanentTargetError) as caught:
        await target.current_revision()

    assert caught.value.reason == "no_credentials"
    assert standin.requests == []
    await target.aclose()
