"""Leader election over a Lease and state in a ConfigMap, against the API stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from kubernetes.client import ApiClient

from rollbackd.config import HighAvailability
from rollbackd.ha import (
    REQUIRED_PERMISSIONS,
    ConfigMapStateStore,
    LeaseElector,
    StateConflict,
    elector_from,
    state_store_from,
)
from rollbackd.state import StateError
from tests.k8s.standin import KubeStandIn

HA_NAMESPACE = "rollbackd"
# Short periods keep the tests fast; the ratios are the defaults' (15s / 10s / 2s).
FAST: dict[str, float] = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.1}


async def eventually(condition: Callable[[], bool], *, within: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Fails after ``within``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def elector(api_client: ApiClient, identity: str, **periods: float) -> LeaseElector:
    return LeaseElector(
        api_client=api_client,
        name="rollbackd",
        namespace=HA_NAMESPACE,
        identity=identity,
        **(FAST | periods),
    )


@asynccontextmanager
async def running(candidate: LeaseElector) -> AsyncIterator[asyncio.Event]:
    """Run an elector in the background; setting the yielded event stops it."""
    stop = asyncio.Event()
    task = asyncio.create_task(candidate.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


def lease_holder(standin: KubeStandIn) -> Any:
    lease = standin.get("leases", HA_NAMESPACE, "rollbackd")
    return None if lease is None else lease["spec"].get("holderIdentity")


# --------------------------------------------------------------------------- election


async def test_only_one_of_two_replicas_leads_and_the_other_takes_over_when_it_stops(
    standin: KubeStandIn, api_client: ApiClient
) -> None:
    """Two daemons share a Lease: one acts; stopping it hands over well before expiry."""
    # A long lease: a take-over faster than it proves the leader released the Lease.
    periods = {"lease_duration": 5.0, "renew_deadline": 3.0, "retry_period": 0.1}
    candidates = [elector(api_client, name, **periods) for name in ("pod-a", "pod-b")]
    stops = {c.identity: asyncio.Event() for c in candidates}
    tasks = [asyncio.create_task(c.run(stops[c.identity])) for c in candidates]
    try:
        await eventually(
            lambda: any(c.is_leader for c in candidates), within=5, what="a leader is elected"
        )
        leader, follower = sorted(candidates, key=lambda c: not c.is_leader)
        # Many renewals later there is still exactly one leader.
        for _ in range(30):
            assert [c.is_leader for c in (leader, follower)] == [True, False]
            await asyncio.sleep(0.01)
        assert lease_holder(standin) == leader.identity
        assert follower.holder == leader.identity

        stops[leader.identity].set()
        took = await eventually(
            lambda: follower.is_leader,
            within=periods["lease_duration"] / 2,
            what="the follower takes over",
        )
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)

    assert took < periods["lease_duration"] / 2
    assert not leader.is_leader
    assert follower.term == 1


async def test_crashed_leaders_lease_is_taken_over_after_it_expires(
    standin: KubeStandIn, api_client: ApiClient
) -> None:
    """A leader that vanished without releasing is replaced once its Lease has expired."""
    standin.create(
        "leases",
        HA_NAMESPACE,
        {
            "metadata": {"name": "rollbackd"},
            "spec": {
                "holderIdentity": "pod-gone",
                "leaseDurationSeconds": 1,
                "renewTime": "2026-01-01T00:00:00.000000Z",
                "leaseTransitions": 3,
            },
        },
    )
    successor = elector(api_client, "pod-b")

    async with running(successor):
        took = await eventually(
            lambda: successor.is_leader, within=5, what="the successor takes over"
        )

    # Expiry is measured from when the successor first saw the record, on its own clock.
    assert took >= 1.0
    lease = standin.get("leases", HA_NAMESPACE, "rollbackd")
    assert lease is not None
    assert lease["spec"]["leaseTransitions"] == 4


async def test_leader_that_cannot_renew_steps_down_and_returns(
    standin: KubeStandIn, api_client: ApiClient
) -> None:
    """An API outage longer than the renew deadline stops the leader from acting."""
    leader = elector(api_client, "pod-a")

    async with running(leader):
        await eventually(lambda: leader.is_leader, within=5, what="leader elected")
        with standin.outage():
            await eventually(
                lambda: not leader.is_leader,
                within=5,
                what="the leader steps down during the outage",
            )
        await eventually(lambda: leader.is_leader, within=5, what="leadership regained")

    assert leader.term == 2


async def test_stopped_leader_releases_the_lease(
    standin: KubeStandIn, api_client: ApiClient
) -> None:
    """After a clean stop the Lease has no holder, so nobody waits for it to expire."""
    leader = elector(api_client, "pod-a")

    async with running(leader):
        await eventually(lambda: leader.is_leader, within=5, what="leader elected")

    assert not leader.is_leader
    assert lease_holder(standin) is None


def test_periods_out_of_order_are_refused(api_client: ApiClient) -> None:
    """A renew deadline not shorter than the lease could let two replicas lead at once."""
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        elector(api_client, "pod-a", lease_duration=5.0, renew_deadline=5.0)


def test_identity_comes_from_the_pod_name(
    standin: KubeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each replica is named in the Lease by its pod, from the downward API variable."""
    monkeypatch.setenv("POD_NAME", "rollbackd-7c9d5-x2x4q")

    built = elector_from(HighAvailability(api_url=standin.url))

    assert built.identity == "rollbackd-7c9d5-x2x4q"
    assert (built.name, built.namespace) == ("rollbackd", "rollbackd")


# --------------------------------------------------------------------------- state


def store(api_client: ApiClient) -> ConfigMapStateStore:
    return ConfigMapStateStore(
        api_client=api_client, namespace=HA_NAMESPACE, name="rollbackd-state"
    )


DOC: dict[str, Any] = {
    "version": 1,
    "services": {"codex-api": {"last_known_good": "5d8f"}},
    "rollbacks": [],
}


def test_state_round_trips_through_a_configmap(standin: KubeStandIn, api_client: ApiClient) -> None:
    """What one replica saves, the next leader loads."""
    writer, reader = store(api_client), store(api_client)
    assert writer.load() is None

    writer.save(DOC)

    assert reader.load() == DOC
    saved = standin.get("configmaps", HA_NAMESPACE, "rollbackd-state")
    assert saved is not None
    assert set(saved["data"]) == {"state.json"}


def test_unchanged_state_is_not_written_again(standin: KubeStandIn, api_client: ApiClient) -> None:
    """A quiet tick writes nothing to the API server."""
    writer = store(api_client)
    writer.load()
    writer.save(DOC)
    writes = len(standin.calls("update")) + len(standin.calls("create"))

    writer.save(dict(DOC))

    assert len(standin.calls("update")) + len(standin.calls("create")) == writes


def test_stale_state_write_is_a_conflict(standin: KubeStandIn, api_client: ApiClient) -> None:
    """A replica writing state it read before another replica wrote is refused."""
    first, second = store(api_client), store(api_client)
    first.load()
    second.load()
    first.save(DOC)

    with pytest.raises(StateConflict):
        second.save({**DOC, "rollbacks": [{"service": "codex-api"}]})

    # Reloading picks up the newer state; now the write goes through.
    assert second.load() == DOC
    second.save({**DOC, "rollbacks": []} | {"services": {}})
    with pytest.raises(StateConflict):
        first.save({**DOC, "services": {"other": {}}})
    assert store(api_client).load() == {**DOC, "services": {}}


def test_state_store_outage_is_a_state_error_not_a_conflict(
    standin: KubeStandIn, api_client: ApiClient
) -> None:
    """A 5xx while saving is reported as unavailable state, which a retry may fix."""
    writer = store(api_client)
    writer.load()
    standin.fail(503, verb="create", resource="configmaps")

    with pytest.raises(StateError) as caught:
        writer.save(DOC)

    assert not isinstance(caught.value, StateConflict)
    assert standin.get("configmaps", HA_NAMESPACE, "rollbackd-state") is None


def test_oversized_state_is_refused_before_it_is_sent(
    standin: KubeStandIn, api_client: ApiClient
) -> None:
    """A state document too big for a ConfigMap fails with its size, not a server error."""
    writer = store(api_client)
    writer.load()

    with pytest.raises(StateError, match="bytes"):
        writer.save({"services": {"x": "y" * 1_100_000}})

    assert standin.calls("create") == []


def test_corrupt_state_is_a_state_error(standin: KubeStandIn, api_client: ApiClient) -> None:
    """A hand-edited, broken state document is reported, not silently replaced."""
    standin.create(
        "configmaps",
        HA_NAMESPACE,
        {"metadata": {"name": "rollbackd-state"}, "data": {"state.json": "{not json"}},
    )

    with pytest.raises(StateError, match="not JSON"):
        store(api_client).load()


def test_state_location_names_namespace_and_configmap(standin: KubeStandIn) -> None:
    """``state: kubernetes://NAMESPACE/NAME`` selects that ConfigMap; anything else is refused."""
    ha = HighAvailability(api_url=standin.url)

    built = state_store_from("kubernetes://ops/rollbackd-state", ha)

    assert (built.namespace, built.name) == ("ops", "rollbackd-state")
    for bad in ("kubernetes://ops", "kubernetes:///x", "kubernetes://a/b/c", "ops/x"):
        with pytest.raises(StateError):
            state_store_from(bad, ha)


# --------------------------------------------------------------------------- permissions


async def test_election_and_state_use_exactly_the_declared_permissions(
    standin: KubeStandIn, api_client: ApiClient
) -> None:
    """Every request for leadership and state is one the shipped Role grants, and no other."""
    leader = elector(api_client, "pod-a")
    async with running(leader):
        await eventually(lambda: leader.is_leader, within=5, what="leader elected")
        await eventually(
            lambda: len(standin.calls("update", "leases")) >= 2,
            within=5,
            what="the lease is renewed",
        )
    writer = store(api_client)
    writer.load()
    writer.save(DOC)
    writer.save({**DOC, "rollbacks": [{"service": "codex-api"}]})

    assert standin.permissions_used() == REQUIRED_PERMISSIONS
