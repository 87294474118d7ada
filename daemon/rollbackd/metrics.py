"""The daemon's own metrics, on a registry passed in so tests can use a fresh one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rollbackd.rules import STATES


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.ticks = Counter("rollbackd_ticks", "Evaluation ticks completed.", registry=r)
        self.tick_duration = Histogram(
            "rollbackd_tick_duration_seconds",
            "Time one tick took.",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.rule_state = Gauge(
            "rollbackd_rule_state",
            "1 for the state each rule is in, per service.",
            ["service", "rule", "state"],
            registry=r,
        )
        self.decisions = Counter(
            "rollbackd_decisions",
            "Decisions by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.rollbacks = Counter(
            "rollbackd_rollbacks",
            "Rollbacks attempted, by outcome.",
            ["service", "outcome"],
            registry=r,
        )
        self.no_data = Counter(
            "rollbackd_no_data",
            "Rule readings without data, by reason.",
            ["rule", "reason"],
            registry=r,
        )
        self.queries = Counter(
            "rollbackd_prometheus_queries", "Prometheus queries sent.", registry=r
        )
        self.prometheus_up = Gauge(
            "rollbackd_prometheus_up",
            "1 when the last tick's queries reached Prometheus.",
            registry=r,
        )
        self.blind = Gauge(
            "rollbackd_blind",
            "1 for a service whose rollbacks are held for lack of data.",
            ["service"],
            registry=r,
        )
        self.notifications = Counter(
            "rollbackd_notifications",
            "Notifications by channel and outcome.",
            ["channel", "outcome"],
            registry=r,
        )
        self.leader = Gauge("rollbackd_leader", "1 while this replica is the leader.", registry=r)

    def set_rule_state(self, service: str, rule: str, state: str) -> None:
        for candidate in STATES:
            self.rule_state.labels(service, rule, candidate).set(1 if candidate == state else 0)
