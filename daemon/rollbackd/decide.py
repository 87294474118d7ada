"""One tick's decisions: pure functions of measured values, state and time.

``Decider.tick`` takes what the loop measured for every service (revision, rule
readings, probe samples) and returns a ``Plan``: events to record, notifications to
send and rollbacks to start. It mutates only the ``DaemonState`` it is given and does
no I/O, so the live loop, ``rollbackd test`` and ``backtest`` share it, and unit tests
drive it with a fake clock.

The order inside a tick, per service:

1. note the revision (a change records baselines and restarts the bake clock);
2. judge every rule and move its state machine;
3. work out blindness (monitoring unavailable holds rollbacks and pages once);
4. for every rule that started firing: attribute, choose the action, pass the guards;
5. promote the revision to last known good after ``bake_time`` without a firing
   high-impact rule; resolve the incident when nothing fires any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rollbackd.attribution import Attribution, attribute
from rollbackd.config import LoadedRule, Rule, Safety
from rollbackd.rules import Reading, Verdict, failure_ratio, judge, step
from rollbackd.state import (
    DaemonState,
    Incident,
    RevisionRecord,
    RollbackIntent,
    RollbackRecord,
    ServiceState,
    Verification,
)

SEVERITY = {"high": "critical", "medium": "warning", "low": "info"}
GUARDS = (
    "paused",
    "not_leader",
    "blind",
    "no_last_known_good",
    "at_last_known_good",
    "already_rolled_back",
    "cooldown",
    "budget",
)
PROBE_KEEP = 3600.0  # longest probe window we keep samples for


@dataclass(frozen=True)
class RevisionReading:
    """A target's answer: the revision id and facts, or why it could not tell."""

    id: str | None
    change: str = "unknown"
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Observation:
    """Everything measured for one service in one tick."""

    revision: RevisionReading
    readings: dict[str, Reading] = field(default_factory=dict)
    probe_ok: bool | None = None  # this tick's health sample; None: no probe result
    history_baselines: dict[str, float] = field(default_factory=dict)
    paused: str | None = None  # a target-level pause (an annotation), with its reason
    rollback_hint: str = ""  # the command a person would run to roll back by hand


@dataclass(frozen=True)
class Event:
    name: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Page:
    """A message for people; ``stage`` names the template, ``incident`` groups pages."""

    stage: str
    service: str
    severity: str
    summary: str
    incident: str
    fields: dict[str, Any] = field(default_factory=dict)
    resolve: bool = False
    impact: str | None = None
    action: str | None = None


@dataclass(frozen=True)
class RollbackOrder:
    service: str
    to_version: str
    from_version: str
    rule: str
    decision: dict[str, Any]


@dataclass
class Plan:
    events: list[Event] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    rollbacks: list[RollbackOrder] = field(default_factory=list)
    closed: list[tuple[str, Incident]] = field(default_factory=list)  # resolved this tick

    def event(self, name: str, **fields: Any) -> None:
        self.events.append(Event(name, fields))


@dataclass(frozen=True)
class TickContext:
    now: float
    mode: str
    paused: bool = False
    leader: bool = True
    prometheus_down: bool = False


class Decider:
    """The decision model of DESIGN.md over a fixed set of rules and safety settings."""

    def __init__(self, rules: Sequence[LoadedRule], *, safety: Safety, interval: float) -> None:
        # High-impact rules decide first, so a rollback is chosen before a page for the
        # same service in the same tick.
        order = {"high": 0, "medium": 1, "low": 2}
        self.rules = sorted((r.rule for r in rules), key=lambda r: order[r.impact])
        self.safety = safety
        self.interval = interval

    # ------------------------------------------------------------------ the tick

    def resume(self, state: DaemonState, *, now: float) -> None:
        """After downtime, restart what needs watching: pending timers and bake clocks.

        A rule pending when the daemon stopped was not watched since, so its breach is
        not known to have held; a revision baking was not seen healthy either. Both
        start again. Firing rules stay firing, so no decision is repeated.
        """
        gap_allowed = 3 * self.interval
        for svc in state.services.values():
            if svc.revision_seen_at is None or now - svc.revision_seen_at <= gap_allowed:
                continue
            svc.bake_since = None
            for status in svc.rules.values():
                if status.state in ("pending", "resolved"):
                    status.state, status.active_since = "inactive", None

    def tick(
        self, state: DaemonState, observations: dict[str, Observation], ctx: TickContext
    ) -> Plan:
        plan = Plan()
        state.forget_rollbacks_before(ctx.now - 3600)
        for name, obs in observations.items():
            self._service_tick(name, state.service(name), obs, state, ctx, plan)
        return plan

    def _service_tick(
        self,
        name: str,
        svc: ServiceState,
        obs: Observation,
        state: DaemonState,
        ctx: TickContext,
        plan: Plan,
    ) -> None:
        self._note_revision(name, svc, obs, ctx, plan)
        fired = self._judge_rules(name, svc, obs, ctx, plan)
        self._note_blindness(name, svc, ctx, plan)
        rollback_chosen = False
        for rule in fired:
            rollback_chosen |= self._decide(
                name, svc, rule, obs, state, ctx, plan, rollback_chosen=rollback_chosen
            )
        self._bake(name, svc, ctx, plan)
        self._maybe_resolve(name, svc, ctx, plan)

    # ------------------------------------------------------------------ revisions

    def _note_revision(
        self, name: str, svc: ServiceState, obs: Observation, ctx: TickContext, plan: Plan
    ) -> None:
        reading = obs.revision
        if reading.id is None:
            if svc.revision_error is None:
                svc.revision_error_since = ctx.now
            svc.revision_error = reading.error or "unreadable"
            return
        svc.revision_error = None
        svc.revision_error_since = None
        svc.revision_error_paged = False
        if reading.detail.get("image"):
            svc.images[reading.id] = str(reading.detail["image"])

        self._remind_unserved(name, svc, reading, ctx, plan)
        if svc.revision is None:
            # The revision found at first start is not a change; it bakes like any other.
            svc.revision, svc.revision_since, svc.bake_since = reading.id, ctx.now, ctx.now
            svc.revision_detail = dict(reading.detail)
            svc.history.append(RevisionRecord(reading.id, ctx.now, "initial", dict(reading.detail)))
            plan.event(
                "revision_change",
                service=name,
                revision=reading.id,
                previous=None,
                change="initial",
                first_seen=True,
                **_detail(reading.detail),
            )
        elif reading.id != svc.revision:
            self._revision_changed(name, svc, obs, ctx, plan)
        elif _config_edited(svc.revision_detail, reading.detail):
            # Same pod template, edited ConfigMap or Secret: a change Kubernetes does not
            # version. It is blamed like a deploy, but paged, never rolled back.
            self._revision_changed(name, svc, obs, ctx, plan, change="external_config")
        elif reading.detail:
            svc.revision_detail = dict(reading.detail)
        svc.revision_seen_at = ctx.now

    def _remind_unserved(
        self,
        name: str,
        svc: ServiceState,
        reading: RevisionReading,
        ctx: TickContext,
        plan: Plan,
    ) -> None:
        """A deploy that gets no traffic because a rollback pinned it: remind once."""
        unserved = reading.detail.get("unserved_revision")
        if not unserved or unserved == svc.reminded_unserved:
            return
        svc.reminded_unserved = str(unserved)
        unpin = reading.detail.get("unpin_command", "")
        plan.event(
            "unserved_revision",
            service=name,
            revision=reading.id,
            unserved=unserved,
            unpin_command=unpin,
        )
        plan.pages.append(
            self._page(
                name,
                svc,
                "reminder",
                "warning",
                f"{name}: revision {unserved} was deployed but receives no traffic; traffic is "
                f"pinned to {reading.id} since a rollback. To serve the latest: {unpin}",
                ctx,
                revision=reading.id,
                unserved=unserved,
                command=unpin,
            )
        )

    def _revision_changed(
        self,
        name: str,
        svc: ServiceState,
        obs: Observation,
        ctx: TickContext,
        plan: Plan,
        *,
        change: str | None = None,
    ) -> None:
        reading = obs.revision
        assert reading.id is not None
        change = change or reading.change
        rolling_to = svc.intent or svc.verification
        if rolling_to is not None and rolling_to.to_version == reading.id:
            change = "rollback"
        if svc.history:
            svc.history[-1].until = ctx.now
        svc.history.append(RevisionRecord(reading.id, ctx.now, change, dict(reading.detail)))
        del svc.history[:-50]

        # Baselines: each rule's value just before the change, as the daemon saw it or
        # as Prometheus remembers it when the daemon was not looking.
        fresh_after = (svc.revision_seen_at or ctx.now) - 2 * self.interval
        for rule in self.rules:
            status = svc.rule(rule.name)
            if status.last_value_at is not None and status.last_value_at >= fresh_after:
                status.baseline = status.last_value
            elif rule.name in obs.history_baselines:
                status.baseline = obs.history_baselines[rule.name]
            else:
                status.baseline = None

        previous = svc.revision
        svc.previous_revision, svc.revision = previous, reading.id
        svc.revision_detail = dict(reading.detail)
        svc.revision_since = svc.changed_at = ctx.now
        unobserved = (
            svc.revision_seen_at is not None and ctx.now - svc.revision_seen_at > 3 * self.interval
        )
        if unobserved:
            # The change happened while we were not looking, at some point since we last
            # saw the old revision. Blame needs the earliest such time: an outage after a
            # restart is not pinned on a deploy that may be hours old.
            svc.changed_at = svc.revision_seen_at
        svc.bake_since = ctx.now
        if change != "rollback":
            # A deploy notice: routed only to PagerDuty's change timeline, never a page.
            plan.pages.append(
                self._page(
                    name,
                    svc,
                    "notify",
                    "info",
                    f"{name}: {reading.id} deployed (was {previous})",
                    ctx,
                    change="deploy",
                    kind=change,
                    revision=reading.id,
                    previous=previous,
                )
            )
        plan.event(
            "revision_change",
            service=name,
            revision=reading.id,
            previous=previous,
            change=change,
            unobserved=unobserved,
            last_known_good=svc.last_known_good,
            baselines={r.name: svc.rule(r.name).baseline for r in self.rules},
            **_detail(reading.detail),
        )

    # ------------------------------------------------------------------ rules

    def _judge_rules(
        self, name: str, svc: ServiceState, obs: Observation, ctx: TickContext, plan: Plan
    ) -> list[Rule]:
        fired: list[Rule] = []
        for rule in self.rules:
            status = svc.rule(rule.name)
            if rule.probe is not None:
                if obs.probe_ok is not None:
                    status.samples.append((ctx.now, obs.probe_ok))
                keep = max(rule.window, self.interval)
                status.samples = [s for s in status.samples if s[0] > ctx.now - keep]
                reading = failure_ratio(status.samples, now=ctx.now, window=rule.window)
                if obs.probe_ok is None and rule.name not in obs.readings:
                    reading = Reading(no_data="no_samples")
            else:
                reading = obs.readings.get(rule.name, Reading(no_data="empty"))
            verdict = judge(rule, reading, baseline=status.baseline)
            transition = step(status, verdict, now=ctx.now, hold=rule.for_)
            if transition is None:
                continue
            plan.event(
                "rule_state",
                service=name,
                rule=rule.name,
                impact=rule.impact,
                state=transition.current,
                previous=transition.previous,
                value=verdict.value,
                threshold=verdict.threshold,
                baseline=status.baseline,
                no_data=verdict.no_data,
                revision=svc.revision,
            )
            if transition.current == "firing":
                fired.append(rule)
                self._open_incident(name, svc, rule, verdict, ctx)
        return fired

    def _open_incident(
        self, name: str, svc: ServiceState, rule: Rule, verdict: Verdict, ctx: TickContext
    ) -> None:
        if svc.incident is None:
            status = svc.rule(rule.name)
            began = status.active_since if status.active_since is not None else ctx.now
            svc.incident = Incident(id=f"{name}-{int(ctx.now)}", opened_at=ctx.now)
            # Times stay numbers here; the loop turns them into timestamps for reports.
            svc.incident.timeline.append({"at": began, "event": "detected", "rule": rule.name})
        if rule.name not in svc.incident.rules:
            svc.incident.rules.append(rule.name)
        facts = svc.incident.facts
        facts.setdefault("rules", []).append(
            {
                "rule": rule.name,
                "impact": rule.impact,
                "value": verdict.value,
                "threshold": verdict.threshold,
                "baseline": svc.rule(rule.name).baseline,
                "condition": rule.condition,
            }
        )
        facts.setdefault("revision", svc.revision)
        facts.setdefault("last_known_good", svc.last_known_good)

    # ------------------------------------------------------------------ blindness

    def _note_blindness(self, name: str, svc: ServiceState, ctx: TickContext, plan: Plan) -> None:
        """Monitoring unavailable holds rollbacks at once and pages once it lasts."""
        since: list[float] = [s.error_since for s in svc.rules.values() if s.error_since]
        if svc.revision_error_since is not None:
            since.append(svc.revision_error_since)
        if not since and not ctx.prometheus_down:
            if svc.blind_since is not None:
                plan.event("blind", service=name, blind=False, lasted=ctx.now - svc.blind_since)
                if svc.blind_paged:
                    # Resolves the blind page's own incident, never a rule's incident.
                    plan.pages.append(
                        self._page(
                            name,
                            svc,
                            "sight_restored",
                            "info",
                            f"{name}: monitoring is back; automatic rollbacks are possible again",
                            ctx,
                            resolve=True,
                            incident=_blind_incident(name, svc.blind_since),
                        )
                    )
            svc.blind_since, svc.blind_paged = None, False
            return
        began = min(since) if since else ctx.now
        if svc.blind_since is None:
            svc.blind_since = began
            plan.event("blind", service=name, blind=True, reason=self._blind_reason(svc, ctx))
        lasted = ctx.now - svc.blind_since
        immediate = svc.revision_error is not None
        if not svc.blind_paged and (immediate or lasted >= self.safety.blind_after):
            svc.blind_paged = True
            svc.revision_error_paged = svc.revision_error is not None
            reason = self._blind_reason(svc, ctx)
            plan.pages.append(
                self._page(
                    name,
                    svc,
                    "blind",
                    "warning",
                    f"{name}: rollbackd is blind ({reason}); automatic rollbacks are on hold",
                    ctx,
                    incident=_blind_incident(name, svc.blind_since),
                    reason=reason,
                )
            )

    @staticmethod
    def _blind_reason(svc: ServiceState, ctx: TickContext) -> str:
        if svc.revision_error is not None:
            return f"cannot read the running revision: {svc.revision_error}"
        if ctx.prometheus_down:
            return "Prometheus is unreachable"
        failing = sorted(n for n, s in svc.rules.items() if s.error_since is not None)
        return "queries failing: " + ", ".join(failing)

    # ------------------------------------------------------------------ actions

    def _decide(
        self,
        name: str,
        svc: ServiceState,
        rule: Rule,
        obs: Observation,
        state: DaemonState,
        ctx: TickContext,
        plan: Plan,
        *,
        rollback_chosen: bool,
    ) -> bool:
        """Choose and record the action for a rule that just fired; True if it rolls back."""
        status = svc.rule(rule.name)
        why = attribute(
            svc,
            status,
            rule,
            now=ctx.now,
            window=self.safety.attribution_window,
            tolerance=self.interval,
        )
        action = self.action_for(rule, why)
        decision: dict[str, Any] = {
            "service": name,
            "rule": rule.name,
            "impact": rule.impact,
            "value": status.last_value,
            "threshold": status.threshold,
            "baseline": status.baseline,
            "attribution": why.kind,
            "attribution_reason": why.why,
            "change": why.change,
            "revision": svc.revision,
            "previous_revision": svc.previous_revision,
            "rollback_to": svc.last_known_good,
            "action": action,
            "mode": ctx.mode,
            "incident": svc.incident.id if svc.incident else None,
        }
        # What the target knows of both revisions (images, revision numbers) goes along,
        # so a decision names what is running and what it would go back to.
        if svc.revision_detail:
            decision["revision_detail"] = _detail(svc.revision_detail)
        if svc.last_known_good_detail:
            decision["rollback_to_detail"] = _detail(svc.last_known_good_detail)
        if svc.revision_detail.get("gitops_warning"):
            decision["warning"] = svc.revision_detail["gitops_warning"]
        if why.change == "external_config" and action == "rollback":
            # Kubernetes does not version ConfigMaps and Secrets: undoing the pod
            # template would not undo the change that hurt, so a person must.
            action = decision["action"] = "page"
            decision["attribution_reason"] += "; the change lives outside the pod template"

        if action != "rollback":
            outcome = "executed" if ctx.leader else "blocked:not_leader"
            self._record(plan, svc, decision, outcome, ctx)
            if action in ("page", "notify") and ctx.leader:
                page = self._decision_page(name, svc, rule, decision, why, ctx, obs.rollback_hint)
                plan.pages.append(page)
            return False

        guard = None if not rollback_chosen else "cooldown"
        guard = guard or self.guard(name, svc, state, ctx, paused=obs.paused)
        if guard is not None:
            self._record(plan, svc, decision, f"blocked:{guard}", ctx)
            if guard != "not_leader" and not rollback_chosen:
                decision_page = {
                    **decision,
                    "action": "page",
                    "blocked_by": guard,
                    "command": obs.rollback_hint,
                }
                self._record(plan, svc, decision_page, "executed", ctx)
                plan.pages.append(
                    self._page(
                        name,
                        svc,
                        "blocked",
                        SEVERITY[rule.impact],
                        f"{name}: {rule.name} fired; automatic rollback blocked ({guard})",
                        ctx,
                        impact=rule.impact,
                        action="page",
                        **_page_fields(decision_page),
                    )
                )
            return False

        if ctx.mode == "shadow":
            self._record(plan, svc, decision, "would_execute", ctx)
            svc.last_rollback["shadow"] = ctx.now
            state.rollbacks.append(RollbackRecord(name, ctx.now, "shadow", "would_execute"))
            plan.pages.append(
                self._page(
                    name,
                    svc,
                    "would_rollback",
                    SEVERITY[rule.impact],
                    f"{name}: {rule.name} fired; shadow mode would roll back "
                    f"{svc.revision} -> {svc.last_known_good}",
                    ctx,
                    impact=rule.impact,
                    action="rollback",
                    **_page_fields(decision),
                )
            )
            return True

        assert svc.revision is not None
        assert svc.last_known_good is not None
        svc.intent = RollbackIntent(svc.last_known_good, svc.revision, rule.name, ctx.now, ctx.mode)
        plan.rollbacks.append(
            RollbackOrder(name, svc.last_known_good, svc.revision, rule.name, decision)
        )
        return True

    @staticmethod
    def action_for(rule: Rule, why: Attribution) -> str:
        if rule.action is not None:
            return rule.action
        if rule.impact == "high":
            return "rollback" if why.deploy_related else "page"
        return "page" if rule.impact == "medium" else "notify"

    def guard(
        self,
        name: str,
        svc: ServiceState,
        state: DaemonState,
        ctx: TickContext,
        *,
        paused: str | None = None,
    ) -> str | None:
        """The first guard that blocks a rollback of ``name`` now, or None."""
        mode = ctx.mode
        checks = {
            "paused": ctx.paused or paused is not None,
            "not_leader": not ctx.leader,
            "blind": svc.blind_since is not None or ctx.prometheus_down,
            "no_last_known_good": svc.last_known_good is None,
            "at_last_known_good": svc.last_known_good == svc.revision,
            "already_rolled_back": svc.revision in svc.rolled_back,
            "cooldown": (
                svc.intent is not None
                or ctx.now - svc.last_rollback.get(mode, float("-inf")) < self.safety.cooldown
            ),
            "budget": state.rollbacks_since(ctx.now - 3600, mode=mode)
            >= self.safety.max_rollbacks_per_hour,
        }
        return next((g for g in GUARDS if checks[g]), None)

    def _record(
        self,
        plan: Plan,
        svc: ServiceState,
        decision: dict[str, Any],
        outcome: str,
        ctx: TickContext,
    ) -> None:
        plan.event("decision", **{**decision, "outcome": outcome})
        if svc.incident is not None:
            facts = svc.incident.facts
            if outcome.startswith("blocked:"):
                facts.setdefault("guards", []).append(outcome.split(":", 1)[1])
            # The report states the incident's main decision: a rollback over a page.
            if decision["action"] == "rollback" or "action" not in facts:
                for key in ("action", "attribution", "mode", "rollback_to", "command"):
                    if decision.get(key) is not None:
                        facts[key] = decision[key]
                facts["outcome"] = outcome

    def _decision_page(
        self,
        name: str,
        svc: ServiceState,
        rule: Rule,
        decision: dict[str, Any],
        why: Attribution,
        ctx: TickContext,
        hint: str,
    ) -> Page:
        action = decision["action"]
        stage = "page" if action == "page" else "notify"
        severity = SEVERITY[rule.impact] if action == "page" else "info"
        if rule.impact == "high" and action == "page":
            severity = "critical"
        fields = _page_fields(decision)
        if why.deploy_related and svc.last_known_good and svc.last_known_good != svc.revision:
            fields["command"] = hint
        summary = f"{name}: {rule.name} fired ({why.kind})"
        return self._page(
            name, svc, stage, severity, summary, ctx, impact=rule.impact, action=action, **fields
        )

    # ------------------------------------------------------------------ outcomes

    def rollback_done(
        self,
        state: DaemonState,
        order: RollbackOrder,
        *,
        now: float,
        mode: str,
        error: str | None,
        verify_timeout: float,
        plan: Plan,
    ) -> None:
        """Record a finished rollback: cooldown, budget, verification or a page.

        A ``conflict`` (someone changed the deployment between our read and our write)
        is not a failed attempt: nothing was changed, so it costs no cooldown or budget,
        and the rule goes back to pending to be decided again on the next tick, against
        the revision that is running now.
        """
        svc = state.service(order.service)
        svc.intent = None
        if error == "conflict":
            self._record(
                plan, svc, order.decision, "failed:conflict", TickContext(now=now, mode=mode)
            )
            status = svc.rule(order.rule)
            if status.state == "firing":
                status.state, status.fired_at = "pending", None
            return
        svc.last_rollback[mode] = now
        outcome = "executed" if error is None else f"failed:{error}"
        state.rollbacks.append(RollbackRecord(order.service, now, mode, outcome))
        self._record(plan, svc, order.decision, outcome, TickContext(now=now, mode=mode))
        if error is None:
            if order.from_version not in svc.rolled_back:
                svc.rolled_back.append(order.from_version)
            for record in reversed(svc.history):
                if record.revision == order.from_version:
                    record.outcome = "rolled_back"
                    break
            svc.verification = Verification(
                started_at=now,
                deadline=now + verify_timeout,
                to_version=order.to_version,
                from_version=order.from_version,
                rules=list(svc.incident.rules if svc.incident else [order.rule]),
                mode=mode,
                incident=svc.incident.id if svc.incident else None,
            )
            return
        plan.pages.append(
            self._page(
                order.service,
                svc,
                "rollback_failed",
                "critical",
                f"{order.service}: rollback {order.from_version} -> {order.to_version} failed "
                f"({error}); act by hand",
                TickContext(now=now, mode=mode),
                impact="high",
                action="rollback",
                **_page_fields({**order.decision, "outcome": outcome}),
            )
        )

    def verification_done(
        self,
        state: DaemonState,
        name: str,
        *,
        passed: bool,
        now: float,
        detail: str,
        plan: Plan,
    ) -> None:
        svc = state.service(name)
        ver = svc.verification
        if ver is None:
            return
        svc.verification = None
        plan.event(
            "verification",
            service=name,
            passed=passed,
            outcome="passed" if passed else "failed",
            revision=ver.to_version,
            rolled_back_from=ver.from_version,
            rules=ver.rules,
            detail=detail,
            took=now - ver.started_at,
        )
        ctx = TickContext(now=now, mode=ver.mode)
        if svc.incident is not None:
            svc.incident.facts["checks"] = [
                {"name": "verification", "passed": passed, "detail": detail}
            ]
        if passed:
            plan.pages.append(
                self._page(
                    name,
                    svc,
                    "verification_passed",
                    "info",
                    f"{name}: rollback to {ver.to_version} verified",
                    ctx,
                    revision=ver.to_version,
                    rolled_back_from=ver.from_version,
                    detail=detail,
                )
            )
        else:
            plan.pages.append(
                self._page(
                    name,
                    svc,
                    "verification_failed",
                    "critical",
                    f"{name}: still unhealthy after rolling back to {ver.to_version}; the "
                    "regression is probably not the deploy",
                    ctx,
                    impact="high",
                    revision=ver.to_version,
                    rolled_back_from=ver.from_version,
                    detail=detail,
                )
            )

    def interrupted(self, state: DaemonState, name: str, *, now: float, plan: Plan) -> None:
        """A rollback intent survived a crash: never repeat it blindly; page instead."""
        svc = state.service(name)
        intent = svc.intent
        if intent is None:
            return
        svc.intent = None
        svc.last_rollback[intent.mode] = now
        state.rollbacks.append(RollbackRecord(name, now, intent.mode, "failed:interrupted"))
        decision = {
            "service": name,
            "rule": intent.rule,
            "impact": "high",
            "value": None,
            "threshold": None,
            "baseline": None,
            "attribution": "deploy",
            "revision": intent.from_version,
            "rollback_to": intent.to_version,
            "action": "rollback",
            "mode": intent.mode,
        }
        ctx = TickContext(now=now, mode=intent.mode)
        self._record(plan, svc, decision, "failed:interrupted", ctx)
        plan.pages.append(
            self._page(
                name,
                svc,
                "rollback_failed",
                "critical",
                f"{name}: a rollback {intent.from_version} -> {intent.to_version} was interrupted "
                "by a restart and was not repeated; check the service by hand",
                ctx,
                impact="high",
                action="rollback",
                **_page_fields(decision),
            )
        )

    # ------------------------------------------------------------------ bake, resolve

    def _bake(self, name: str, svc: ServiceState, ctx: TickContext, plan: Plan) -> None:
        # A pending high-impact rule is a breach on its way to firing: a revision in that
        # state is not healthy, so the bake clock stops as it does for a firing rule.
        high_breached = any(
            svc.rule(r.name).state in ("pending", "firing")
            for r in self.rules
            if r.impact == "high"
        )
        if svc.revision is None or high_breached or svc.blind_since is not None:
            svc.bake_since = None
            return
        if svc.bake_since is None:
            svc.bake_since = ctx.now
        if svc.last_known_good == svc.revision:
            return
        if ctx.now - svc.bake_since >= self.safety.bake_time:
            previous = svc.last_known_good
            svc.last_known_good = svc.revision
            svc.last_known_good_detail = dict(svc.revision_detail)
            if svc.history and svc.history[-1].revision == svc.revision:
                svc.history[-1].outcome = "last_known_good"
            plan.event(
                "last_known_good",
                service=name,
                revision=svc.revision,
                previous=previous,
                baked_for=ctx.now - svc.bake_since,
            )

    def _maybe_resolve(self, name: str, svc: ServiceState, ctx: TickContext, plan: Plan) -> None:
        if svc.incident is None or svc.verification is not None or svc.intent is not None:
            return
        if any(s.state in ("firing", "pending") for s in svc.rules.values()):
            return
        incident = svc.incident
        incident.timeline.append({"at": ctx.now, "event": "resolved"})
        incident.facts["status"] = "resolved"
        plan.closed.append((name, incident))
        plan.event(
            "incident_resolved",
            service=name,
            incident=incident.id,
            rules=incident.rules,
            lasted=ctx.now - incident.opened_at,
        )
        plan.pages.append(
            self._page(
                name,
                svc,
                "resolved",
                "info",
                f"{name}: recovered; incident resolved",
                ctx,
                resolve=True,
                rules=incident.rules,
            )
        )
        svc.incident = None

    # ------------------------------------------------------------------ helpers

    def _page(
        self,
        name: str,
        svc: ServiceState,
        stage: str,
        severity: str,
        summary: str,
        ctx: TickContext,
        *,
        resolve: bool = False,
        impact: str | None = None,
        action: str | None = None,
        incident: str | None = None,
        **fields: Any,
    ) -> Page:
        if incident is None:
            incident = svc.incident.id if svc.incident else f"{name}-{stage}-{int(ctx.now)}"
        return Page(stage, name, severity, summary, incident, dict(fields), resolve, impact, action)


def _blind_incident(name: str, since: float) -> str:
    """One incident per blind spell, apart from any regression's incident."""
    return f"{name}-blind-{int(since)}"


def _config_edited(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether configuration outside the revision (its fingerprint) changed."""
    old, new = before.get("config_fingerprint"), now.get("config_fingerprint")
    return bool(old) and bool(new) and old != new


def _detail(detail: dict[str, Any]) -> dict[str, Any]:
    """Target facts for an event, without keys that would clash with the event's own."""
    reserved = {"service", "revision", "previous", "change", "event", "ts"}
    return {k: v for k, v in detail.items() if k not in reserved}


def _page_fields(decision: dict[str, Any]) -> dict[str, Any]:
    """Decision facts for a page; service, impact and action travel as the page's own."""
    return {k: v for k, v in decision.items() if k not in ("service", "impact", "action")}
