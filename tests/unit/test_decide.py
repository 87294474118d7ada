"""The decision model of DESIGN.md, driven tick by tick with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from rollbackd.config import LoadedRule, Rule, Safety
from rollbackd.decide import Decider, Observation, Plan, RevisionReading, TickContext
from rollbackd.rules import Reading
from rollbackd.state import DaemonState, from_document, to_document

INTERVAL = 10.0


def rule(**kwargs: Any) -> LoadedRule:
    defaults: dict[str, Any] = {"name": "errors", "impact": "high", "query": "q", "above": 0.1}
    defaults.update(kwargs)
    return LoadedRule(Rule(**defaults), "g", "rules.yaml", 1)


class World:
    """A service, its rules and a clock, advanced one tick at a time."""

    def __init__(self, *rules: LoadedRule, mode: str = "enforce", **safety: Any) -> None:
        settings = {
            "bake_time": 60,
            "attribution_window": 600,
            "cooldown": 300,
            "max_rollbacks_per_hour": 3,
            "blind_after": 60,
            **safety,
        }
        self.decider = Decider(
            list(rules) or [rule()], safety=Safety(**settings), interval=INTERVAL
        )
        self.state = DaemonState()
        self.now = 1_000_000.0
        self.mode = mode
        self.revision = "v1"
        self.plans: list[Plan] = []

    def tick(self, value: float | None = 0.0, *, service: str = "api", **ctx: Any) -> Plan:
        self.now += INTERVAL
        readings = {}
        for r in self.decider.rules:
            if r.query:
                readings[r.name] = (
                    Reading(value=value) if value is not None else Reading(no_data="empty")
                )
        obs = Observation(
            revision=RevisionReading(self.revision)
            if self.revision
            else RevisionReading(None, error="unreadable"),
            readings=ctx.pop("readings", readings),
            probe_ok=ctx.pop("probe_ok", None),
            paused=ctx.pop("target_paused", None),
        )
        context = TickContext(now=self.now, mode=ctx.pop("mode", self.mode), **ctx)
        plan = self.decider.tick(self.state, {service: obs}, context)
        self.plans.append(plan)
        return plan

    def run(self, ticks: int, value: float | None = 0.0, **ctx: Any) -> None:
        for _ in range(ticks):
            self.tick(value, **ctx)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e.fields for p in self.plans for e in p.events if e.name == name]

    def decisions(self) -> list[dict[str, Any]]:
        return self.events("decision")

    def baked(self) -> World:
        """Run healthy until v1 is last known good."""
        self.run(8)
        assert self.state.service("api").last_known_good == "v1"
        return self

    def finish_rollbacks(self, error: str | None = None) -> None:
        for plan in list(self.plans):
            for order in plan.rollbacks:
                done = Plan()
                self.decider.rollback_done(
                    self.state,
                    order,
                    now=self.now,
                    mode=self.mode,
                    error=error,
                    verify_timeout=120,
                    plan=done,
                )
                self.plans.append(done)
            plan.rollbacks.clear()


def test_first_revision_is_not_a_change_and_bakes_into_last_known_good() -> None:
    """The revision found at start is not blamed, and becomes last known good after bake_time."""
    world = World()
    world.run(5)
    assert world.state.service("api").last_known_good is None
    world.run(2)
    svc = world.state.service("api")
    assert svc.last_known_good == "v1"
    assert svc.changed_at is None
    assert world.events("last_known_good")[0]["revision"] == "v1"


def test_bad_deploy_rolls_back_to_last_known_good() -> None:
    """A high-impact rule firing after a revision change rolls back to last known good."""
    world = World(rule(for_=20)).baked()
    world.revision = "v2"
    world.tick(0.0)
    world.tick(0.5)  # pending
    world.tick(0.5)
    assert world.decisions() == []
    plan = world.tick(0.5)  # held 20 s: firing
    assert [o.to_version for o in plan.rollbacks] == ["v1"]
    world.finish_rollbacks()
    decision = world.decisions()[-1]
    assert decision["action"] == "rollback"
    assert decision["outcome"] == "executed"
    assert decision["attribution"] == "deploy"
    assert decision["revision"] == "v2"
    assert decision["rollback_to"] == "v1"
    assert decision["baseline"] == 0.0
    assert world.state.service("api").verification is not None


def test_rollback_targets_last_known_good_not_merely_previous_revision() -> None:
    """v1 good, v2 never baked, v3 bad: the rollback goes to v1."""
    world = World().baked()
    world.revision = "v2"
    world.run(2)
    world.revision = "v3"
    plan = world.tick(0.5)
    assert [o.to_version for o in plan.rollbacks] == ["v1"]


def test_shadow_mode_records_would_execute_and_orders_nothing() -> None:
    """In shadow mode a rollback is logged and notified as would_execute, nothing runs."""
    world = World(mode="shadow").baked()
    world.revision = "v2"
    plan = world.tick(0.5)
    assert plan.rollbacks == []
    assert world.decisions()[-1]["outcome"] == "would_execute"
    assert [p.stage for p in pages_of(plan)] == ["would_rollback"]


def test_regression_without_revision_change_pages_and_never_rolls_back() -> None:
    """An outage with no deploy is external: a critical page, no rollback."""
    world = World().baked()
    plan = world.tick(0.5)
    assert plan.rollbacks == []
    decision = world.decisions()[-1]
    assert (decision["action"], decision["attribution"], decision["outcome"]) == (
        "page",
        "external",
        "executed",
    )
    assert plan.pages[0].severity == "critical"


def test_breach_already_present_on_previous_revision_is_not_blamed_on_deploy() -> None:
    """If the baseline already breached the rule, the new revision is not the cause."""
    world = World(rule(for_=30)).baked()
    world.tick(0.5)  # pending on v1
    world.revision = "v2"
    world.run(3, 0.5)
    decision = world.decisions()[-1]
    assert decision["attribution"] == "external"
    assert decision["action"] == "page"


def test_change_older_than_attribution_window_is_not_blamed() -> None:
    """A revision that ran fine longer than the window is not the cause of a new breach."""
    world = World(attribution_window=30).baked()
    world.revision = "v2"
    world.run(5)
    plan = world.tick(0.5)
    assert plan.rollbacks == []
    assert world.decisions()[-1]["attribution"] == "external"


@pytest.mark.parametrize(
    ("impact", "expected_action", "severity"),
    [("medium", "page", "warning"), ("low", "notify", "info")],
)
def test_medium_pages_with_the_rollback_command_and_low_notifies(
    impact: str, expected_action: str, severity: str
) -> None:
    """Medium impact pages a human even for a deploy; low impact only notifies."""
    world = World(rule(impact=impact)).baked()
    world.revision = "v2"
    world.tick(0.0)
    plan = world.tick(0.5)
    assert plan.rollbacks == []
    assert world.decisions()[-1]["action"] == expected_action
    assert plan.pages[0].severity == severity


def test_medium_page_carries_the_exact_rollback_command() -> None:
    """The page for a deploy-related medium regression includes the command to run."""
    world = World(rule(impact="medium")).baked()
    world.revision = "v2"
    world.tick(0.0)
    world.now += INTERVAL
    obs = Observation(
        revision=RevisionReading("v2"),
        readings={"errors": Reading(value=0.5)},
        rollback_hint="deploy.sh v1",
    )
    plan = world.decider.tick(world.state, {"api": obs}, TickContext(now=world.now, mode="enforce"))
    assert plan.pages[0].fields["command"] == "deploy.sh v1"


def test_rule_action_override_pages_instead_of_rolling_back() -> None:
    """`action: page` (a database migration signal) never rolls back."""
    world = World(rule(action="page")).baked()
    world.revision = "v2"
    plan = world.tick(0.5)
    assert plan.rollbacks == []
    assert world.decisions()[-1]["action"] == "page"


def pages_of(plan: Plan) -> list[Any]:
    """The plan's pages about the incident, without deploy notices."""
    return [p for p in plan.pages if p.fields.get("change") != "deploy"]


def blocked_by(world: World, **ctx: Any) -> str:
    world.revision = "v2"
    plan = world.tick(0.5, **ctx)
    assert plan.rollbacks == []
    outcomes = [d["outcome"] for d in world.decisions() if d["action"] == "rollback"]
    return outcomes[-1]


def test_pause_file_blocks_rollback_and_pages_why() -> None:
    """The kill switch turns a rollback into a page that names the guard."""
    world = World().baked()
    assert blocked_by(world, paused=True) == "blocked:paused"
    [page] = pages_of(world.plans[-1])
    assert page.stage == "blocked"
    assert page.fields["blocked_by"] == "paused"


def test_target_pause_annotation_blocks_rollback() -> None:
    """A target-level pause (a Deployment annotation) blocks like the pause file."""
    assert blocked_by(World().baked(), target_paused="annotation") == "blocked:paused"


def test_follower_does_not_roll_back_or_page() -> None:
    """Only the leader acts; a follower records blocked:not_leader and sends nothing."""
    world = World().baked()
    assert blocked_by(world, leader=False) == "blocked:not_leader"
    assert pages_of(world.plans[-1]) == []


def test_no_last_known_good_blocks_rollback() -> None:
    """Without a revision that stayed healthy there is nothing safe to go back to."""
    world = World()
    world.run(2)
    assert blocked_by(world) == "blocked:no_last_known_good"


def test_cooldown_blocks_second_rollback_of_a_service() -> None:
    """A second rollback within cooldown is blocked and pages."""
    world = World().baked()
    world.revision = "v2"
    world.tick(0.5)
    world.finish_rollbacks()
    world.revision = "v1"
    world.run(8)  # v1 back and healthy
    world.revision = "v3"
    world.tick(0.5)
    assert world.decisions()[-2]["outcome"] == "blocked:cooldown"


def test_budget_blocks_rollbacks_beyond_max_per_hour() -> None:
    """The global hourly budget holds across services."""
    world = World(max_rollbacks_per_hour=1, cooldown=0).baked()
    world.revision = "v2"
    world.tick(0.5)
    world.finish_rollbacks()
    world.revision = "v1"
    world.run(8)
    world.revision = "v3"
    world.tick(0.5)
    assert world.decisions()[-2]["outcome"] == "blocked:budget"


def test_revision_rolled_back_once_is_never_rolled_back_again() -> None:
    """A person redeploying a revision we rolled back gets a page, not a second rollback."""
    world = World(cooldown=0).baked()
    world.revision = "v2"
    world.tick(0.5)
    world.finish_rollbacks()
    world.revision = "v1"
    world.run(8)
    world.revision = "v2"
    world.tick(0.5)
    assert world.decisions()[-2]["outcome"] == "blocked:already_rolled_back"


def test_at_last_known_good_blocks_rollback() -> None:
    """A breach on the last known good revision itself has nowhere to roll back to."""
    world = World(attribution_window=10_000).baked()
    world.revision = "v2"
    world.run(1)
    world.revision = "v1"  # a person went back by hand; v1 is a fresh change again
    assert blocked_by_current(world) == "blocked:at_last_known_good"


def blocked_by_current(world: World) -> str:
    world.tick(0.5)
    return [d["outcome"] for d in world.decisions() if d["action"] == "rollback"][-1]


def test_failed_rollback_is_recorded_and_pages() -> None:
    """A rollback whose command fails becomes failed:<reason> and a critical page."""
    world = World().baked()
    world.revision = "v2"
    world.tick(0.5)
    world.finish_rollbacks(error="exit_3")
    assert world.decisions()[-1]["outcome"] == "failed:exit_3"
    assert world.plans[-1].pages[-1].stage == "rollback_failed"
    assert world.state.service("api").verification is None


def test_no_data_is_never_a_breach_and_resets_pending() -> None:
    """Empty results stop the `for` timer, so a flapping signal never fires."""
    world = World(rule(for_=20)).baked()
    world.revision = "v2"
    for _ in range(4):
        world.tick(0.5)
        world.tick(None)
    assert world.decisions() == []
    states = [e["state"] for e in world.events("rule_state")]
    assert "firing" not in states
    assert states.count("pending") == 4


@pytest.mark.parametrize("no_data", ["nan", "empty", "low_traffic", "error"])
def test_every_kind_of_no_data_is_never_a_breach(no_data: str) -> None:
    """NaN, empty results, low traffic and failed queries never fire a rule."""
    world = World().baked()
    world.revision = "v2"
    world.run(5, readings={"errors": Reading(no_data=no_data)})  # type: ignore[arg-type]
    assert world.decisions() == []
    assert world.plans[-1].rollbacks == []


def test_failed_queries_make_the_service_blind_hold_rollbacks_and_page_once() -> None:
    """Monitoring going away holds rollbacks and pages once that the daemon is blind."""
    world = World(blind_after=30).baked()
    world.run(6, readings={"errors": Reading(no_data="error")})
    blind_pages = [p for plan in world.plans for p in plan.pages if p.stage == "blind"]
    assert len(blind_pages) == 1
    world.revision = "v2"
    world.state.service("api").rule("errors").state = "inactive"
    # A probe rule could still fire while Prometheus is away: the rollback is held.
    assert (
        world.decider.guard(
            "api",
            world.state.service("api"),
            world.state,
            TickContext(now=world.now, mode="enforce"),
        )
        == "blind"
    )
    world.tick(0.0)
    restored = [p for p in world.plans[-1].pages if p.stage == "sight_restored"]
    assert len(restored) == 1


def test_prometheus_down_holds_rollback_from_probe_rule() -> None:
    """With Prometheus unreachable, even a failing health probe only pages."""
    probe_rule = LoadedRule(
        Rule(name="health", impact="high", probe="health", failure_ratio_above=0.5, window=30),
        "g",
        "r.yaml",
        1,
    )
    world = World(probe_rule)
    world.run(8, probe_ok=True)
    world.revision = "v2"
    world.tick(probe_ok=False, prometheus_down=True)
    world.tick(probe_ok=False, prometheus_down=True)
    outcomes = [d["outcome"] for d in world.decisions() if d["action"] == "rollback"]
    assert outcomes == ["blocked:blind"]


def test_unreadable_revision_pages_once_and_blocks_rollback() -> None:
    """A target that cannot tell its revision makes attribution unknown, with one page."""
    world = World().baked()
    world.revision = None  # type: ignore[assignment]
    world.run(3, 0.5)
    pages = [p for plan in world.plans for p in plan.pages if p.stage == "blind"]
    assert len(pages) == 1
    assert all(plan.rollbacks == [] for plan in world.plans)


def test_high_impact_firing_stops_a_revision_from_becoming_last_known_good() -> None:
    """A revision with a firing high-impact rule does not bake."""
    world = World(mode="shadow").baked()
    world.revision = "v2"
    world.run(10, 0.5)
    assert world.state.service("api").last_known_good == "v1"


def test_baseline_rule_compares_with_the_value_before_the_change() -> None:
    """above_baseline fires when the signal is 50 % worse than before the revision changed."""
    world = World(rule(name="latency", impact="medium", above=None, above_baseline=1.5))
    world.run(8, 0.2)
    world.revision = "v2"
    world.tick(0.25)
    assert world.decisions() == []
    world.tick(0.31)
    decision = world.decisions()[-1]
    assert decision["baseline"] == pytest.approx(0.2)
    assert decision["threshold"] == pytest.approx(0.3)


def test_baseline_rule_without_a_revision_change_has_no_data() -> None:
    """With no baseline, a baseline rule cannot breach."""
    world = World(rule(name="latency", impact="medium", above=None, above_baseline=1.5))
    world.run(5, 100.0)
    assert world.decisions() == []


def test_incident_resolves_after_verification_and_recovery() -> None:
    """After a verified rollback and no firing rules, the incident resolves with a page."""
    world = World().baked()
    world.revision = "v2"
    world.tick(0.5)
    world.finish_rollbacks()
    world.revision = "v1"
    world.tick(0.0)
    plan = Plan()
    world.decider.verification_done(
        world.state, "api", passed=True, now=world.now, detail="ok", plan=plan
    )
    world.plans.append(plan)
    world.tick(0.0)
    assert world.events("incident_resolved")
    assert any(p.resolve for p in world.plans[-1].pages)


def test_interrupted_rollback_is_reported_not_repeated() -> None:
    """A rollback intent left by a crash becomes failed:interrupted and a page."""
    world = World().baked()
    world.revision = "v2"
    plan = world.tick(0.5)
    assert plan.rollbacks  # the intent is now in state, as saved before execution
    restarted = from_document(to_document(world.state))
    done = Plan()
    world.decider.interrupted(restarted, "api", now=world.now + 5, plan=done)
    assert [e.fields["outcome"] for e in done.events] == ["failed:interrupted"]
    assert restarted.service("api").intent is None
    assert done.pages[0].stage == "rollback_failed"


def test_state_survives_a_round_trip_through_the_document() -> None:
    """Everything decided so far is restored from the saved document."""
    world = World().baked()
    world.revision = "v2"
    world.tick(0.5)
    world.finish_rollbacks()
    restored = from_document(to_document(world.state))
    svc = restored.service("api")
    assert svc.last_known_good == "v1"
    assert svc.rolled_back == ["v2"]
    assert svc.rule("errors").state == "firing"
    assert restored.rollbacks[0].outcome == "executed"


def test_deploy_left_without_traffic_after_a_pin_is_reminded_once() -> None:
    """A Cloud Run deploy that gets no traffic because of a pin pages once, with the fix."""
    world = World().baked()
    for _ in range(3):
        world.now += INTERVAL
        obs = Observation(
            revision=RevisionReading(
                "v1", detail={"unserved_revision": "v3", "unpin_command": "gcloud run ..."}
            ),
            readings={"errors": Reading(value=0.0)},
        )
        world.plans.append(
            world.decider.tick(
                world.state, {"api": obs}, TickContext(now=world.now, mode="enforce")
            )
        )
    reminders = [p for plan in world.plans for p in plan.pages if p.stage == "reminder"]
    assert len(reminders) == 1
    assert reminders[0].fields["command"] == "gcloud run ..."


def test_pending_high_impact_rule_stops_the_bake_clock() -> None:
    """A revision whose high-impact rule is pending never becomes last known good.

    Regression: with bake_time shorter than a rule's `for`, a bad revision baked into
    last known good while its error rule was still pending, and the rollback that
    followed was blocked as at_last_known_good.
    """
    world = World(rule(for_=100), bake_time=30).baked()
    world.revision = "v2"
    world.tick(0.0)
    world.run(8, 0.5)  # pending for 80 s, longer than bake_time
    assert world.state.service("api").last_known_good == "v1"
    world.run(3, 0.5)
    assert [o.to_version for p in world.plans for o in p.rollbacks] == ["v1"]


def test_edited_configmap_is_attributed_and_paged_not_rolled_back() -> None:
    """A config change outside the pod template is a change, but only a person can undo it."""
    world = World().baked()

    def tick(fingerprint: str, value: float) -> Plan:
        world.now += INTERVAL
        obs = Observation(
            revision=RevisionReading("abc123", detail={"config_fingerprint": fingerprint}),
            readings={"errors": Reading(value=value)},
        )
        plan = world.decider.tick(
            world.state, {"api": obs}, TickContext(now=world.now, mode="enforce")
        )
        world.plans.append(plan)
        return plan

    world.state.service("api").revision = "abc123"
    world.state.service("api").last_known_good = "abc123"
    tick("cm-1", 0.0)
    plan = tick("cm-2", 0.5)
    assert plan.rollbacks == []
    change = world.events("revision_change")[-1]
    assert change["change"] == "external_config"
    decision = world.decisions()[-1]
    assert (decision["attribution"], decision["action"]) == ("deploy", "page")
    assert "outside the pod template" in decision["attribution_reason"]


def test_a_deploy_becomes_a_change_notice_and_a_rollback_does_not() -> None:
    """Revision changes are announced as deploys (for PagerDuty's timeline), rollbacks not."""
    world = World().baked()
    world.revision = "v2"
    plan = world.tick(0.0)
    notices = [p for p in plan.pages if p.fields.get("change") == "deploy"]
    assert [(p.stage, p.severity, p.fields["revision"]) for p in notices] == [
        ("notify", "info", "v2")
    ]


def test_conflicting_update_is_decided_again_against_the_newer_revision() -> None:
    """A rollback refused for a concurrent change re-decides, and never overwrites it."""
    world = World().baked()
    world.revision = "v2"
    world.tick(0.5)
    world.finish_rollbacks(error="conflict")
    assert world.decisions()[-1]["outcome"] == "failed:conflict"
    assert world.state.service("api").last_rollback == {}
    world.revision = "v3"  # the newer change someone else made
    world.tick(0.5)
    decision = world.decisions()[-1]
    assert decision["revision"] == "v3"
    assert decision["attribution"] == "external"  # the breach predates v3
    assert world.plans[-1].rollbacks == []


def test_downtime_restarts_pending_timers_and_the_bake_clock() -> None:
    """After an hour away, a pending rule and a baking revision start over."""
    world = World(rule(for_=60))
    world.run(3)  # v1 bakes for 30 s of its 60 s
    world.tick(0.5)  # pending
    restored = from_document(to_document(world.state))
    world.state = restored
    world.now += 3600
    world.decider.resume(world.state, now=world.now)
    svc = world.state.service("api")
    assert svc.rule("errors").state == "inactive"
    assert svc.bake_since is None
    world.tick(0.5)
    assert svc.rule("errors").state == "pending"  # the hold starts again, no firing
    assert world.decisions() == []


def test_deploy_made_while_the_daemon_was_down_is_not_blamed_for_a_later_outage() -> None:
    """A revision that changed during a long downtime counts as changed when last seen."""
    world = World(attribution_window=600).baked()
    world.now += 3600  # an hour away; v2 was deployed at some point in it
    world.revision = "v2"
    world.tick(0.0)
    change = world.events("revision_change")[-1]
    assert change["unobserved"] is True
    world.tick(0.5)
    decision = world.decisions()[-1]
    assert (decision["attribution"], decision["action"]) == ("external", "page")


def test_blind_page_is_its_own_incident_and_resolves_when_sight_returns() -> None:
    """The blind page and its all-clear share an incident apart from any regression."""
    world = World(blind_after=20).baked()
    world.tick(0.5)  # a regression incident is open
    world.run(4, readings={"errors": Reading(no_data="error")})
    world.tick(0.0)
    pages = [p for plan in world.plans for p in plan.pages]
    [blind] = [p for p in pages if p.stage == "blind"]
    [restored] = [p for p in pages if p.stage == "sight_restored"]
    regression = next(p for p in pages if p.stage == "page")
    assert restored.incident == blind.incident != regression.incident
    assert restored.resolve is True
    assert blind.resolve is False
