"""The daemon: ticks, measurements, actions, endpoints. The only place that acts.

A tick reads every service's revision, runs one Prometheus query per rule per service
group (plus its ``min_traffic`` filter), probes health endpoints, hands all of it to
the pure ``Decider``, and then carries out the plan: records events, saves the state
(a rollback's intent is on disk before the rollback starts), starts rollbacks as
background tasks so a slow rollback never stalls the next tick, and sends pages.
Verification of finished rollbacks runs inside later ticks.

Ticks never overlap: a tick that overruns its interval delays the next one, and the
missed slots are skipped rather than run in a burst. On SIGTERM the current tick gets
a few seconds to finish; a tick that does not is cancelled (its actions not yet
started are dropped, and a rollback under way leaves its intent on disk, which the
next start reports instead of repeating).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog

from rollbackd.config import LoadedRule, Settings
from rollbackd.decide import (
    Decider,
    Observation,
    Page,
    Plan,
    RevisionReading,
    RollbackOrder,
    TickContext,
)
from rollbackd.measure import measure
from rollbackd.metrics import Metrics
from rollbackd.notify.base import Notification
from rollbackd.record import Recorder, utc_iso
from rollbackd.report import write_report
from rollbackd.rules import Group, Reading, plan_groups, render
from rollbackd.signals.probes import probe
from rollbackd.signals.prometheus import PrometheusClient, QueryError
from rollbackd.state import (
    DaemonState,
    Incident,
    SqliteStore,
    StateError,
    StateStore,
    from_document,
    to_document,
)
from rollbackd.targets.base import Target, TargetError

log = structlog.get_logger("rollbackd.loop")

Clock = Callable[[], float]
STOP_GRACE = 6.0  # of the 10 s a SIGTERM allows: the tick's share
ROLLBACK_GRACE = 2.5
TIMELINE_LIMIT = 200  # events kept per incident for its report
READ_CONCURRENCY = 32  # revision reads in flight at once
POOL_SIZE = 8  # connections per HTTP client


class Pager(Protocol):
    """Delivers notifications: the dispatcher in production, anything alike in tests."""

    def submit(self, notification: Notification) -> Any: ...

    def remind(self, notification: Notification) -> Any: ...

    async def retry_due(self) -> Any: ...

    async def drain(self, timeout: float) -> Any: ...

    async def aclose(self) -> None: ...


class Leadership:
    """Always the leader: a single replica. The HA elector replaces it."""

    @property
    def is_leader(self) -> bool:
        return True


class Daemon:
    """One rollbackd process: settings, rules and collaborators in, ticks out."""

    def __init__(
        self,
        settings: Settings,
        rules: Sequence[LoadedRule],
        *,
        targets: dict[str, Target],
        prometheus: PrometheusClient,
        store: StateStore,
        recorder: Recorder,
        pager: Pager,
        metrics: Metrics | None = None,
        leadership: Any = None,
        clock: Clock = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.rules = [r.rule for r in rules]
        self.targets = targets
        self.prometheus = prometheus
        self.store = store
        self.recorder = recorder
        self.pager = pager
        self._latest: dict[str, Notification] = {}  # incident -> last message, for reminders
        self.metrics = metrics or Metrics()
        self.leadership = leadership or Leadership()
        self.clock = clock
        # httpcore's pool bookkeeping grows with the square of its connections, so the
        # probes and revision reads of a tick are spread over several small pools.
        in_flight = settings.probe_concurrency + READ_CONCURRENCY
        self._clients = (
            [http]
            if http
            else [
                httpx.AsyncClient(
                    follow_redirects=False,
                    limits=httpx.Limits(
                        max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE
                    ),
                )
                for _ in range(max(1, -(-in_flight // POOL_SIZE)))
            ]
        )
        self.http = self._clients[0]
        self._client_of = {
            s.name: self._clients[i % len(self._clients)] for i, s in enumerate(settings.services)
        }
        for name, target in targets.items():
            share = getattr(target, "use_http", None)
            if share is not None:
                share(self._client_of.get(name, self.http))
        self.decider = Decider(rules, safety=settings.safety, interval=settings.interval)
        self.mode = settings.mode
        selectors = {s.name: settings.selector_of(s) for s in settings.services}
        self.groups: list[Group] = plan_groups(selectors, service_label=settings.service_label)
        self.group_of = {name: g for g in self.groups for name in g.services}
        self.services = {s.name: s for s in settings.services}
        self.state: DaemonState = from_document(store.load())
        # Shared state (a ConfigMap under HA) is written by the leader only; followers
        # reload it every tick so that a failover starts from what the leader knew.
        self.shared_state = not isinstance(store, SqliteStore)
        self.decider.resume(self.state, now=clock())
        self._was_leader = False
        self._reload = False
        self.last_tick_at: float | None = None
        self.started_at = time.monotonic()
        self.prometheus_up = False
        self.ticks = 0
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._limit = asyncio.Semaphore(READ_CONCURRENCY)
        self._probe_limit = asyncio.Semaphore(settings.probe_concurrency)
        for name in self.services:
            svc = self.state.service(name)
            for rule in self.rules:
                self.metrics.set_rule_state(name, rule.name, svc.rule(rule.name).state)

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Tick every ``interval`` until ``stop`` is set (or once)."""
        if not self.shared_state:
            self.recover()  # with shared state, the replica that becomes leader does this
        interval = self.settings.interval
        next_at = time.monotonic()
        while not stop.is_set():
            tick = asyncio.create_task(self.tick())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({tick, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not tick.done():
                # SIGTERM mid-tick: let it finish briefly, then abandon it safely.
                done, _ = await asyncio.wait({tick}, timeout=STOP_GRACE)
                if not done:
                    tick.cancel()
                    log.warning("tick_abandoned", reason="shutdown")
                    with contextlib.suppress(asyncio.CancelledError):
                        await tick
                    break
            if tick.done() and not tick.cancelled() and tick.exception() is not None:
                log.error("tick_failed", error=repr(tick.exception()))
            if once:
                await self.wait_for_rollbacks(None)
                break
            next_at += interval
            now = time.monotonic()
            if next_at < now:
                skipped = int((now - next_at) // interval) + 1
                log.debug("ticks_skipped", count=skipped)
                next_at += skipped * interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - now))
        await self.wait_for_rollbacks(ROLLBACK_GRACE)
        self.save()
        await self.pager.drain(1.0)

    async def wait_for_rollbacks(self, timeout: float | None) -> None:
        tasks = list(self._inflight.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("rollbacks_abandoned", services=sorted(self._inflight))
            await asyncio.wait(pending, timeout=1.0)

    def recover(self) -> None:
        """Report rollbacks that a crash interrupted; never repeat them blindly."""
        plan = Plan()
        for name, svc in self.state.services.items():
            if svc.intent is not None and name not in self._inflight:
                self.decider.interrupted(self.state, name, now=self.clock(), plan=plan)
        if plan.events or plan.pages:
            self.apply(plan, now=self.clock())
            self.save()

    # ------------------------------------------------------------------ one tick

    async def tick(self) -> Plan:
        # Every line of this tick, and of the rollbacks it starts, carries its number.
        with structlog.contextvars.bound_contextvars(tick=self.ticks + 1):
            return await self._tick()

    async def _tick(self) -> Plan:
        started = time.monotonic()
        now = self.clock()
        leader = bool(self.leadership.is_leader)
        self.metrics.leader.set(1 if leader else 0)
        self._follow_leadership(leader)
        # One stat call per tick: cheap enough to keep the kill switch instant.
        ctx_paused = Path(self.settings.safety.pause_file).exists()  # noqa: ASYNC240

        revisions, readings, probes = await asyncio.gather(
            self._read_revisions(), self._measure(), self._probe_all()
        )
        readings_by_service, prometheus_down = readings
        baselines = await self._history_baselines(revisions)

        observations: dict[str, Observation] = {}
        for name in self.services:
            revision, paused = revisions[name]
            observations[name] = Observation(
                revision=revision,
                readings=readings_by_service.get(name, {}),
                probe_ok=probes.get(name),
                history_baselines=baselines.get(name, {}),
                paused=paused,
                rollback_hint=self._hint(name, revision),
            )
        ctx = TickContext(
            now=now,
            mode=self.mode,
            paused=ctx_paused,
            leader=leader,
            prometheus_down=prometheus_down,
        )
        plan = self.decider.tick(self.state, observations, ctx)
        if leader:  # a follower's copy of the state is the leader's to change
            await self._verify(now, plan)
        self.apply(plan, now=now, leader=leader)
        self.save()
        for order in plan.rollbacks:
            self._start_rollback(order)
        if leader:
            await self._remind_and_retry()

        self.ticks += 1
        self.last_tick_at = time.monotonic()
        self.metrics.ticks.inc()
        self.metrics.tick_duration.observe(self.last_tick_at - started)
        log.debug(
            "tick_finished",
            seconds=round(self.last_tick_at - started, 4),
            services=len(self.services),
            queries=self.prometheus.queries,
        )
        return plan

    def apply(self, plan: Plan, *, now: float, leader: bool = True) -> None:
        """Record the plan's events, write reports, send its pages (a follower sends none)."""
        closed = dict(plan.closed)
        touched: set[str] = set()
        for event in plan.events:
            self.event(event.name, at=now, closing=closed, **event.fields)
            if event.name in ("decision", "verification", "incident_resolved"):
                touched.add(event.fields["service"])
        if not leader:
            return
        reports = self._write_reports(touched, closed)
        for page in plan.pages:
            if page.resolve and page.service in reports:
                page.fields["report"] = reports[page.service]
            self._send(page, now)

    def event(
        self,
        name: str,
        *,
        at: float | None = None,
        closing: dict[str, Incident] | None = None,
        **fields: Any,
    ) -> None:
        """Record one event, count it, and add it to its service's open incident."""
        at = self.clock() if at is None else at
        self.recorder.event(name, at=at, **fields)
        self._count(name, fields)
        service = fields.get("service")
        svc = self.state.services.get(service) if isinstance(service, str) else None
        incident = svc.incident if svc is not None else None
        if incident is None and closing and isinstance(service, str):
            incident = closing.get(service)
        if incident is not None:
            entry = {k: v for k, v in fields.items() if k not in ("service", "baselines")}
            incident.timeline.append({"at": at, "event": name, **entry})
            del incident.timeline[:-TIMELINE_LIMIT]

    def _write_reports(self, services: set[str], closed: dict[str, Incident]) -> dict[str, str]:
        """Rewrite the report of each incident that moved on; the paths, by service."""
        folder = self.settings.reports
        if not folder:
            return {}
        paths: dict[str, str] = {}
        for name in services | set(closed):
            svc = self.state.services.get(name)
            incident = closed.get(name) or (svc.incident if svc else None)
            if incident is None:
                continue
            timeline = [
                {"ts": utc_iso(e["at"]), **{k: v for k, v in e.items() if k != "at"}}
                for e in incident.timeline
            ]
            facts = {"mode": self.mode, **incident.facts}
            try:
                path = write_report(
                    folder, incident=incident.id, service=name, timeline=timeline, facts=facts
                )
            except OSError as exc:
                log.error("report_failed", service=name, incident=incident.id, error=exc.strerror)
                continue
            paths[name] = str(path)
            if name in closed:
                self.recorder.event(
                    "incident_report", service=name, incident=incident.id, path=str(path)
                )
        return paths

    def _count(self, name: str, fields: dict[str, Any]) -> None:
        if name == "rule_state":
            self.metrics.set_rule_state(fields["service"], fields["rule"], fields["state"])
        elif name == "decision":
            self.metrics.decisions.labels(fields["action"], fields["outcome"]).inc()
            if fields["action"] == "rollback" and not fields["outcome"].startswith(
                ("blocked:", "would_")
            ):
                self.metrics.rollbacks.labels(fields["service"], fields["outcome"]).inc()
        elif name == "blind":
            self.metrics.blind.labels(fields["service"]).set(1 if fields.get("blind") else 0)

    def _send(self, page: Page, now: float) -> None:
        notification = Notification(
            stage=page.stage,  # type: ignore[arg-type]
            service=page.service,
            incident=page.incident,
            severity=page.severity,  # type: ignore[arg-type]
            summary=page.summary,
            fields=page.fields,
            resolve=page.resolve,
            impact=page.impact,
            action=page.action,
            mode=self.mode,
            ts=utc_iso(now),
        )
        self.pager.submit(notification)
        if page.resolve:
            self._latest.pop(page.incident, None)
        else:
            self._latest[page.incident] = notification

    async def _remind_and_retry(self) -> None:
        """Re-notify open incidents whose channels ask for it; retry undelivered messages."""
        open_incidents = {
            svc.incident.id for svc in self.state.services.values() if svc.incident is not None
        }
        for incident in list(self._latest):
            if incident in open_incidents:
                self.pager.remind(self._latest[incident])
            else:
                del self._latest[incident]
        await self.pager.retry_due()

    def _follow_leadership(self, leader: bool) -> None:
        if leader != self._was_leader and not isinstance(self.leadership, Leadership):
            self.recorder.event("leadership", service="*", leader=leader, mode=self.mode)
        if self.shared_state and (not leader or not self._was_leader or self._reload):
            try:
                self.state = from_document(self.store.load())
                self._reload = False
            except StateError as exc:
                log.error("state_load_failed", error=str(exc))
        if leader and not self._was_leader and self.shared_state:
            # A new leader finishes nothing it did not start: rollbacks the previous
            # leader left half done are reported, not repeated.
            self.recover()
        self._was_leader = leader

    def save(self) -> None:
        if self.shared_state and not self._was_leader:
            return
        try:
            self.store.save(to_document(self.state))
        except StateError as exc:
            # Someone else wrote the shared state (or the store is down): reload before
            # the next decision rather than overwrite what we did not see.
            log.error("state_save_failed", error=str(exc))
            self._reload = True

    # ------------------------------------------------------------------ revisions

    async def _read_revisions(self) -> dict[str, tuple[RevisionReading, str | None]]:
        names = list(self.services)
        results = await asyncio.gather(*(self._read_revision(n) for n in names))
        return dict(zip(names, results, strict=True))

    async def _read_revision(self, name: str) -> tuple[RevisionReading, str | None]:
        target = self.targets[name]
        # The tick waits for its slowest read, so reads are bounded by the interval, with a
        # floor for commands that must start an interpreter.
        timeout = max(2.0, min(30.0, self.settings.interval))
        paused: str | None = None
        async with self._limit:
            try:
                revision = await asyncio.wait_for(target.current_revision(), timeout)
                paused_reason = getattr(target, "paused_reason", None)
                if paused_reason is not None:
                    paused = await asyncio.wait_for(paused_reason(), timeout)
            except TargetError as exc:
                log.warning("revision_unreadable", service=name, reason=exc.reason)
                return RevisionReading(None, error=exc.reason), None
            except TimeoutError:
                log.warning("revision_unreadable", service=name, reason="timeout")
                return RevisionReading(None, error="timeout"), None
            except Exception as exc:  # a plug-in bug must not take the tick down
                log.error("revision_read_crashed", service=name, error=repr(exc))
                return RevisionReading(None, error="crashed"), None
        return RevisionReading(revision.id, revision.change, dict(revision.detail)), paused

    def _hint(self, name: str, revision: RevisionReading) -> str:
        svc = self.state.services.get(name)
        if svc is None or svc.last_known_good is None or revision.id is None:
            return ""
        try:
            return self.targets[name].rollback_hint(
                to_version=svc.last_known_good, from_version=revision.id
            )
        except Exception:  # a hint is a courtesy; never let it break a tick
            return ""

    # ------------------------------------------------------------------ measuring

    async def _measure(self) -> tuple[dict[str, dict[str, Reading]], bool]:
        """Every query rule for every group: one query (and its filter) per pair."""
        result = await measure(self.prometheus, self.rules, self.groups)
        for readings in result.readings.values():
            for rule_name, reading in readings.items():
                if reading.no_data is not None:
                    self.metrics.no_data.labels(rule_name, reading.no_data).inc()
        if not result.attempted:
            # Only probe rules: there is no Prometheus to wait for.
            self.prometheus_up = True
        else:
            self.prometheus_up = not result.prometheus_down
            self.metrics.prometheus_up.set(0 if result.prometheus_down else 1)
        return result.readings, result.prometheus_down

    async def _probe_all(self) -> dict[str, bool | None]:
        async def one(name: str) -> tuple[str, bool | None]:
            health = self.services[name].health
            if health is None:
                return name, None
            async with self._probe_limit:
                try:
                    result = await probe(
                        self._client_of[name],
                        health.url,
                        expect_status=health.expect_status,
                        timeout=health.timeout,
                    )
                except Exception as exc:  # a crashed probe is no data, never a failure
                    log.error("probe_crashed", service=name, error=repr(exc))
                    return name, None
            if not result.ok:
                log.debug("probe_failed", service=name, error=result.error, status=result.status)
            return name, result.ok

        return dict(await asyncio.gather(*(one(n) for n in self.services)))

    async def _history_baselines(
        self, revisions: dict[str, tuple[RevisionReading, str | None]]
    ) -> dict[str, dict[str, float]]:
        """Baselines from Prometheus for services that changed while we were not looking."""
        wanted: list[tuple[str, str, float]] = []
        fresh = 2 * self.settings.interval
        for name, (reading, _) in revisions.items():
            svc = self.state.services.get(name)
            if svc is None or svc.revision is None or reading.id in (None, svc.revision):
                continue
            seen = svc.revision_seen_at or self.clock()
            for rule in self.rules:
                status = svc.rules.get(rule.name)
                if rule.query and (
                    status is None
                    or status.last_value_at is None
                    or status.last_value_at < seen - fresh
                ):
                    wanted.append((name, rule.name, seen))
        found: dict[str, dict[str, float]] = {}
        for name, rule_name, at in wanted:
            rule = next(r for r in self.rules if r.name == rule_name)
            assert rule.query is not None
            group = self.group_of[name]
            try:
                series = await self.prometheus.query(
                    render(rule.query, selector=group.selector, keys=group.keys), at=at
                )
            except QueryError:
                continue
            for s in series:
                if group.service_of(s.labels) == name and s.value == s.value:
                    found.setdefault(name, {})[rule_name] = s.value
        return found

    # ------------------------------------------------------------------ rollbacks

    def _start_rollback(self, order: RollbackOrder) -> None:
        task = asyncio.get_running_loop().create_task(self._rollback(order))
        self._inflight[order.service] = task
        name = order.service

        def forget(_task: asyncio.Task[None]) -> None:
            self._inflight.pop(name, None)

        task.add_done_callback(forget)

    async def _rollback(self, order: RollbackOrder) -> None:
        target = self.targets[order.service]
        started = self.clock()
        self.event(
            "rollback_started",
            service=order.service,
            rule=order.rule,
            revision=order.from_version,
            rollback_to=order.to_version,
            mode=self.mode,
            target=target.kind,
        )
        incident = order.decision.get("incident") or f"{order.service}-{int(started)}"
        self._send(
            Page(
                "rollback_started",
                order.service,
                "critical",
                f"{order.service}: rolling back {order.from_version} -> "
                f"{order.to_version} ({order.rule})",
                incident,
                {**order.decision, "outcome": "in_progress"},
                impact="high",
                action="rollback",
            ),
            started,
        )
        error: str | None = None
        detail: dict[str, Any] = {}
        note = ""
        try:
            result = await target.rollback(
                to_version=order.to_version,
                from_version=order.from_version,
                reason={
                    "rule": order.rule,
                    "value": order.decision.get("value"),
                    "at": utc_iso(started),
                    "service": order.service,
                    "to_image": self.state.service(order.service).images.get(order.to_version),
                },
            )
            detail, note = dict(result.detail), result.note
        except TargetError as exc:
            error = exc.reason
            log.warning(
                "rollback_failed", service=order.service, reason=exc.reason, detail=exc.detail
            )
        except asyncio.CancelledError:
            # Shutdown mid-rollback: the intent stays on disk; the next start reports it.
            log.warning("rollback_abandoned", service=order.service)
            raise
        except Exception as exc:
            error = "crashed"
            log.error("rollback_crashed", service=order.service, error=repr(exc))
        finished = self.clock()
        self.event(
            "rollback_finished",
            service=order.service,
            rule=order.rule,
            revision=order.from_version,
            rollback_to=order.to_version,
            outcome="executed" if error is None else f"failed:{error}",
            seconds=round(finished - started, 3),
            note=note,
            detail=detail,
        )
        plan = Plan()
        if note:
            order.decision["note"] = note
        self.decider.rollback_done(
            self.state,
            order,
            now=finished,
            mode=self.mode,
            error=error,
            verify_timeout=self.settings.verify.timeout,
            plan=plan,
        )
        if error is None:
            self._send(
                Page(
                    "rollback_finished",
                    order.service,
                    "warning",
                    f"{order.service}: rolled back to {order.to_version}; verifying",
                    incident,
                    {**order.decision, "outcome": "executed", "note": note},
                    impact="high",
                    action="rollback",
                ),
                finished,
            )
        self.apply(plan, now=finished)
        self.save()

    # ------------------------------------------------------------------ verification

    async def _verify(self, now: float, plan: Plan) -> None:
        open_ = [
            name
            for name, svc in self.state.services.items()
            if svc.verification is not None and name not in self._inflight and name in self.services
        ]
        results = await asyncio.gather(*(self._verify_one(name, now) for name in open_))
        for name, (passed, detail, hopeless) in zip(open_, results, strict=True):
            ver = self.state.services[name].verification
            assert ver is not None
            if passed:
                self.decider.verification_done(
                    self.state, name, passed=True, now=now, detail=detail, plan=plan
                )
            elif hopeless or now >= ver.deadline:
                self.decider.verification_done(
                    self.state, name, passed=False, now=now, detail=detail, plan=plan
                )

    async def _verify_one(self, name: str, now: float) -> tuple[bool, str, bool]:
        """Passed, what failed, and whether waiting longer cannot help (a failed rollout)."""
        svc = self.state.services[name]
        ver = svc.verification
        assert ver is not None
        service = self.services[name]
        group = self.group_of[name]
        selector = self.settings.selector_of(service)
        failures: list[str] = []
        hopeless = False

        async def check(entry: Any) -> None:
            if entry.http is not None:
                result = await probe(
                    self.http,
                    entry.http.url,
                    expect_status=entry.http.expect_status,
                    timeout=entry.http.timeout,
                )
                if not result.ok:
                    failures.append(f"{entry.name}: {result.error or result.status}")
                return
            promql = render(entry.query, selector=selector, keys=group.keys, service=name)
            try:
                series = await self.prometheus.query(promql)
            except QueryError as exc:
                failures.append(f"{entry.name}: query failed ({exc.reason})")
                return
            if not series:
                failures.append(f"{entry.name}: no series")

        async def ready() -> None:
            try:
                readiness = await self.targets[name].readiness(to_version=ver.to_version)
            except TargetError as exc:
                failures.append(f"rollout: {exc.reason}")
                return
            if readiness.failed:
                nonlocal hopeless
                hopeless = True
                failures.append(f"rollout failed: {readiness.message}")
            elif not readiness.ready:
                failures.append(f"rollout: {readiness.message or 'not complete'}")

        await asyncio.gather(*(check(c) for c in self.settings.verify.checks), ready())
        still = [r for r in ver.rules if svc.rule(r).state in ("firing", "pending")]
        if still:
            failures.append("still firing: " + ", ".join(still))
        detail = "; ".join(failures) if failures else "all checks passed"
        return not failures, detail, hopeless

    # ------------------------------------------------------------------ status

    @property
    def http_clients(self) -> list[httpx.AsyncClient]:
        """Every HTTP client the daemon probes and reads revisions with."""
        return list(self._clients)

    def healthy(self) -> bool:
        """Liveness: the loop ticked recently (or has only just started)."""
        allowed = max(3 * self.settings.interval, 30.0)
        last = self.last_tick_at if self.last_tick_at is not None else self.started_at
        return time.monotonic() - last <= allowed

    def ready(self) -> tuple[bool, str]:
        if not self.prometheus_up:
            return False, "Prometheus has not answered"
        return True, "ready"

    async def aclose(self) -> None:
        await self.pager.aclose()
        for client in self._clients:
            await client.aclose()
        await self.prometheus.aclose()
        for target in self.targets.values():
            with contextlib.suppress(Exception):
                await target.aclose()
