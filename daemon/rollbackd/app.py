"""Putting a daemon together from a configuration file: validation and wiring.

``check`` finds every problem a person can fix before 3 a.m. (file syntax, keys,
templates, selectors) and reports each as ``path:line: message``. ``build`` turns a
valid configuration into a ``Daemon`` with its plug-ins, clients and stores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from rollbackd import lint
from rollbackd.config import (
    ConfigError,
    LoadedRule,
    Problem,
    Settings,
    _line_of,
    _read_yaml,
    load_rules,
    load_settings,
)
from rollbackd.kube import KubeAccessError
from rollbackd.loop import Daemon
from rollbackd.metrics import Metrics
from rollbackd.notify.dispatch import Dispatcher
from rollbackd.notify.outbox import Outbox
from rollbackd.record import Recorder
from rollbackd.rules import SelectorError, TemplateError, check_template, plan_groups
from rollbackd.secrets import SecretError, read_secret
from rollbackd.signals.prometheus import PrometheusClient
from rollbackd.state import SqliteStore, StateError, StateStore
from rollbackd.targets import build_target


@dataclass
class Loaded:
    path: Path
    settings: Settings
    rules: list[LoadedRule]


def load(path: str | Path, *, mode: str | None = None) -> Loaded:
    """Settings and rules, fully validated; raises ``ConfigError`` listing every problem."""
    path = Path(path)
    settings = load_settings(path)
    if mode is not None:
        settings = settings.model_copy(update={"mode": mode})
    problems: list[Problem] = []
    rules: list[LoadedRule] = []
    try:
        rules = load_rules(settings.rules)
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems.extend(_check_config(path, settings))
    problems.extend(_check_rules(rules))
    if problems:
        raise ConfigError(problems)
    return Loaded(path, settings, rules)


def check(path: str | Path) -> tuple[Loaded, list[Problem]]:
    """``load``, then lint the rules and validate their queries with Prometheus.

    Returns the configuration and the warnings (``path:line: warning: ...``), which
    never fail a check. Queries Prometheus rejects raise ``ConfigError`` like any other
    problem, with the warnings listed after them.
    """
    loaded = load(path)
    warnings = lint.lint_rules(loaded.settings, loaded.rules)
    try:
        client = prometheus_client(loaded.settings)
    except SecretError as exc:
        note = f"rule queries were not validated with Prometheus: {exc}"
        return loaded, [*warnings, lint.warning(str(loaded.path), None, note)]
    client.retries = 0  # a check asks once; a Prometheus that does not answer is a warning

    async def validate() -> tuple[list[Problem], list[Problem]]:
        async with client:
            return await lint.validate_queries(
                loaded.settings, loaded.rules, prometheus=client, config_path=str(loaded.path)
            )

    problems, found = asyncio.run(validate())
    warnings.extend(found)
    if problems:
        raise ConfigError([*problems, *warnings])
    return loaded, warnings


def _check_config(path: Path, settings: Settings) -> list[Problem]:
    tree = _read_yaml(path)
    problems: list[Problem] = []
    selectors = {}
    for index, service in enumerate(settings.services):
        line = _line_of(tree, ("services", index, "selector")) if tree else None
        selectors[service.name] = settings.selector_of(service)
        try:
            plan_groups(
                {service.name: selectors[service.name]}, service_label=settings.service_label
            )
        except SelectorError as exc:
            problems.append(Problem(str(path), line, f"selector of '{service.name}': {exc}"))
    if not problems:
        try:
            plan_groups(selectors, service_label=settings.service_label)
        except SelectorError as exc:
            problems.append(Problem(str(path), _line_of(tree, ("services",)), str(exc)))
    for index, check in enumerate(settings.verify.checks):
        if check.query:
            try:
                check_template(check.query)
            except TemplateError as exc:
                line = _line_of(tree, ("verify", "checks", index, "query"))
                problems.append(Problem(str(path), line, f"check '{check.name}': {exc}"))
    problems.extend(_check_notify(path, tree, settings))
    return problems


def _check_notify(path: Path, tree: Any, settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    try:
        from rollbackd.notify.templates import check_templates
    except ImportError:  # the templates module arrives with the notification channels
        return problems
    for index, channel in enumerate(settings.notify):
        line = _line_of(tree, ("notify", index, "templates")) or _line_of(tree, ("notify", index))
        for message in check_templates(channel, where=""):
            problems.append(Problem(str(path), line, message))
    return problems


def _check_rules(rules: list[LoadedRule]) -> list[Problem]:
    problems = []
    for loaded in rules:
        for what in ("query", "min_traffic"):
            text = getattr(loaded.rule, what)
            if not text:
                continue
            try:
                check_template(text)
            except TemplateError as exc:
                problems.append(
                    Problem(loaded.path, loaded.line, f"rule '{loaded.rule.name}' {what}: {exc}")
                )
    return problems


def prometheus_client(settings: Settings) -> PrometheusClient:
    headers: dict[str, str] = {}
    prom = settings.prometheus
    if prom.bearer_token_env or prom.bearer_token_file:
        token = read_secret(
            env=prom.bearer_token_env, file=prom.bearer_token_file, what="prometheus bearer token"
        )
        headers["Authorization"] = f"Bearer {token}"
    return PrometheusClient(
        prom.url,
        timeout=prom.timeout,
        retries=prom.retries,
        backoff=prom.retry_backoff,
        headers=headers,
    )


def build(
    loaded: Loaded,
    *,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
) -> tuple[Daemon, Recorder]:
    """The daemon for a loaded configuration, with its recorder (caller closes both)."""
    settings = loaded.settings
    recorder = Recorder(settings.audit_log)
    try:
        targets = {s.name: build_target(s) for s in settings.services}
        prometheus = prometheus_client(settings)
    except SecretError as exc:
        recorder.close()
        raise ConfigError([Problem(str(loaded.path), None, str(exc))]) from exc
    try:
        store, leadership = _state_and_leadership(settings)
    except (StateError, KubeAccessError, ValueError) as exc:
        recorder.close()
        raise ConfigError([Problem(str(loaded.path), None, str(exc))]) from exc
    metrics = Metrics(registry)
    sink = _EventSink(recorder)
    pager = Dispatcher(
        settings.notify, outbox=Outbox(outbox_path(settings)), on_event=sink, clock=clock
    )
    daemon = Daemon(
        settings,
        loaded.rules,
        targets=targets,
        prometheus=prometheus,
        store=store,
        recorder=recorder,
        pager=pager,
        metrics=metrics,
        clock=clock,
        leadership=leadership,
    )
    sink.daemon = daemon
    return daemon, recorder


def _state_and_leadership(settings: Settings) -> tuple[StateStore, Any]:
    """SQLite and sole leadership, or, with ``ha``, a Lease and optionally a ConfigMap."""
    shared = settings.state.startswith("kubernetes://")
    if settings.ha is None:
        if shared:
            raise StateError("state: kubernetes://... needs the ha section")
        return SqliteStore(settings.state), None
    from rollbackd.ha import elector_from, state_store_from
    from rollbackd.kube import api_client_from

    client = api_client_from(settings.ha)
    elector = elector_from(settings.ha, api_client=client)
    if shared:
        return state_store_from(settings.state, settings.ha, api_client=client), elector
    return SqliteStore(settings.state), elector


def outbox_path(settings: Settings) -> str:
    """Undelivered messages live beside the state, or in the audit folder for shared state."""
    if "://" in settings.state:
        return str(Path(settings.audit_log).with_name("outbox.db"))
    return settings.state


class _EventSink:
    """Delivery events go through the daemon, so they join their incident's timeline."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.daemon: Daemon | None = None

    def __call__(self, event: str, /, **fields: Any) -> None:
        if self.daemon is None:
            self.recorder.event(event, **fields)
            return
        if event == "notification":
            self.daemon.metrics.notifications.labels(
                str(fields.get("channel")), str(fields.get("outcome"))
            ).inc()
        self.daemon.event(event, **fields)
