"""Settings and rule files: loading, validation, and errors a person can act on.

Both kinds of file are YAML read with ruamel.yaml, which keeps the line of every key,
and validated with pydantic models that forbid unknown keys. A validation error is
reported as ``path:line: message`` pointing at the offending key, with a "did you
mean" suggestion when an unknown key is close to a known one.

Settings go through pydantic-settings so that any key can be overridden by an
environment variable ``ROLLBACKD_<KEY>`` (nested keys joined with ``__``); the
environment wins over the file. Secrets never live in the file: a ``*_env`` key names
an environment variable and a ``*_file`` key names a file, read when the plug-in that
needs the secret is built.

Error tree::

    ConfigError            one or more problems, each a ``Problem(path, line, message)``
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

# --------------------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """Return seconds for ``30s``, ``5m``, ``1h30m``, ``500ms``; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration is a string such as 30s, 5m or 1h")
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"'{value}' is not a duration; write it as 30s, 5m, 1h or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The shortest of ``1h``, ``5m``, ``30s``, ``1.5s`` that states ``seconds`` exactly."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# --------------------------------------------------------------------------- targets


def _split_command(value: str | None) -> str | None:
    """A command template must split into arguments the way a shell would."""
    if value is None:
        return None
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot split the command into arguments: {exc}") from exc
    if not argv:
        raise ValueError("the command is empty")
    return value


Command = Annotated[str, AfterValidator(_split_command)]


class ExecTarget(Strict):
    """Reads the revision and rolls back by running the operator's own commands."""

    kind: Literal["exec"]
    version_command: Command | None = Field(
        None, description="Prints the running revision; surrounding white space is stripped."
    )
    version_url: str | None = Field(
        None, description="GET returns the running revision as text (instead of a command)."
    )
    rollback_command: Command = Field(
        description="Rolls back; placeholders {service}, {from_version}, {to_version}."
    )
    timeout: Duration = Field(300.0, description="Longest a rollback command may run (s).")
    version_timeout: Duration = Field(10.0, description="Longest reading the revision may take.")

    @model_validator(mode="after")
    def _one_version_source(self) -> ExecTarget:
        if (self.version_command is None) == (self.version_url is None):
            raise ValueError("set exactly one of version_command and version_url")
        return self


class KubernetesTarget(Strict):
    """A Deployment rolled back to the pod template of its last known good ReplicaSet."""

    kind: Literal["kubernetes"]
    namespace: str
    deployment: str
    container: str | None = Field(None, description="Container whose image names the code.")
    kubeconfig: str | None = None
    context: str | None = None
    api_url: str | None = Field(None, description="API server URL overriding the kubeconfig.")
    rollout_timeout: Duration = Field(600.0, description="Longest wait for a rollout (s).")
    request_timeout: Duration = Field(10.0, description="Longest one API call may take (s).")


class CloudRunTarget(Strict):
    """A Cloud Run service rolled back by a traffic shift or a re-deploy."""

    kind: Literal["cloudrun"]
    project: str
    region: str
    service: str
    strategy: Literal["traffic", "redeploy"] = "traffic"
    api_endpoint: str | None = Field(None, description="Regional or private endpoint.")
    credentials_file: str | None = Field(None, description="Service-account key file.")
    operation_timeout: Duration = Field(300.0, description="Longest wait for an operation.")
    poll_interval: Duration = Field(
        2.0, description="First wait between polls of an operation (s); it grows to 5x."
    )

    @field_validator("api_endpoint")
    @classmethod
    def _no_plain_http_off_loopback(cls, value: str | None) -> str | None:
        # Plain http is for a local stand-in only: credentials must never cross a network
        # in clear text.
        if value and value.startswith("http://"):
            host = value.removeprefix("http://").split("/")[0].rsplit(":", 1)[0].strip("[]")
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError("plain http is allowed only on 127.0.0.1 or localhost")
        return value


class GitHubActionsTarget(Strict):
    """Rolls back by dispatching (or re-running) the deploy workflow for a version."""

    kind: Literal["github-actions"]
    repo: str
    workflow: str
    ref: str = "main"
    inputs: dict[str, str] = Field(default_factory=dict)
    mode: Literal["dispatch", "rerun"] = "dispatch"
    token_env: str = "GITHUB_TOKEN"  # noqa: S105 (the name of a variable, not a token)
    api_url: str = "https://api.github.com"
    version_command: Command | None = None
    version_url: str | None = None
    version_timeout: Duration = 10.0
    run_timeout: Duration = Field(1800.0, description="Longest wait for the workflow run.")
    poll_interval: Duration = Field(5.0, description="Wait between polls of the run (s).")
    max_retry_wait: Duration = Field(
        60.0, description="Longest wait for a rate limit before giving up for this tick (s)."
    )

    @model_validator(mode="after")
    def _one_version_source(self) -> GitHubActionsTarget:
        if (self.version_command is None) == (self.version_url is None):
            raise ValueError("set exactly one of version_command and version_url")
        return self


TargetConfig = Annotated[
    ExecTarget | KubernetesTarget | CloudRunTarget | GitHubActionsTarget,
    Field(discriminator="kind"),
]

# --------------------------------------------------------------------------- notifiers

Impact = Literal["high", "medium", "low"]
ActionName = Literal["rollback", "page", "notify", "none"]
Mode = Literal["shadow", "enforce"]


class ChannelBase(Strict):
    """Routing shared by every channel: an empty list means no restriction."""

    impact: list[Impact] = Field(default_factory=list)
    action: list[ActionName] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    mode: list[Mode] = Field(default_factory=list)
    templates: dict[str, str] = Field(
        default_factory=dict, description="Jinja2 templates overriding the defaults."
    )
    timeout: Duration = 10.0
    name: str | None = Field(
        None, description="Names the channel in events and the outbox; defaults to its kind."
    )
    retries: int = Field(
        2, ge=0, le=10, description="Immediate retries of a temporary failure in one attempt."
    )
    repeat_interval: Duration | None = Field(
        None, description="Re-notify an unresolved incident this often (s); unset: never."
    )
    incident_commander: str = Field(
        "the on-call engineer", description="Who leads the response, as messages name them."
    )
    eta: Duration | None = Field(
        None, description="Expected time to restore service, stated when the loop gives none."
    )
    links: dict[str, str] = Field(
        default_factory=dict, description="Link text to URL (a Jinja2 template) in messages."
    )


class LogChannel(ChannelBase):
    kind: Literal["log"]


class SlackChannel(ChannelBase):
    kind: Literal["slack"]
    webhook_url_env: str | None = None
    webhook_url_file: str | None = None


class PagerDutyChannel(ChannelBase):
    kind: Literal["pagerduty"]
    routing_key_env: str | None = None
    routing_key_file: str | None = None
    events_url: str = "https://events.pagerduty.com/v2/enqueue"
    change_url: str = "https://events.pagerduty.com/v2/change/enqueue"
    change_events: bool = False


class AlertmanagerChannel(ChannelBase):
    kind: Literal["alertmanager"]
    url: str
    repeat_interval: Duration | None = Field(
        60.0, description="Re-post a firing alert this often (s) so Alertmanager keeps it."
    )


class WebhookChannel(ChannelBase):
    kind: Literal["webhook"]
    url: str
    secret_env: str | None = None
    secret_file: str | None = None


ChannelConfig = Annotated[
    LogChannel | SlackChannel | PagerDutyChannel | AlertmanagerChannel | WebhookChannel,
    Field(discriminator="kind"),
]


def _default_channels() -> list[ChannelConfig]:
    return [LogChannel(kind="log")]


# --------------------------------------------------------------------------- sections


class HealthProbe(Strict):
    url: str
    expect_status: int = 200
    timeout: Duration = Field(5.0, description="A probe slower than this is a failure (s).")


class Service(Strict):
    name: str
    selector: str | None = Field(
        None, description='PromQL matchers; defaults to <service_label>="<name>".'
    )
    health: HealthProbe | None = None
    target: TargetConfig

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._:/-]+", value):
            raise ValueError("a service name may use letters, digits and . _ : / -")
        return value


class Prometheus(Strict):
    url: str = "http://127.0.0.1:9090"
    timeout: Duration = Field(10.0, description="One query's time limit (s).")
    retries: int = Field(2, ge=0, le=10, description="Retries of a failed query in a tick.")
    retry_backoff: Duration = Field(0.2, description="First wait between retries (s).")
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None
    scrape_interval: Duration = Field(
        15.0, description="How often Prometheus scrapes the services (s); check lints against it."
    )


class Backtest(Strict):
    """Where ``rollbackd backtest`` finds each service's revision history."""

    revision_metric: str | None = Field(
        None,
        description="A gauge with one series per running revision (app_build_info), carrying "
        "the labels of the service selectors; unset: revisions are unknown.",
    )
    revision_label: str = Field("version", description="The label of revision_metric naming it.")


class Safety(Strict):
    bake_time: Duration = 600.0
    attribution_window: Duration = 1800.0
    cooldown: Duration = 900.0
    max_rollbacks_per_hour: int = Field(3, ge=0)
    pause_file: str = ".rollbackd/PAUSE"
    blind_after: Duration = Field(
        120.0, description="Monitoring unavailable this long makes a service blind (s)."
    )


class HttpCheck(Strict):
    url: str
    expect_status: int = 200
    timeout: Duration = 5.0


class VerifyCheck(Strict):
    name: str
    http: HttpCheck | None = None
    query: str | None = Field(None, description="PromQL; passes when it returns a series.")

    @model_validator(mode="after")
    def _one_kind(self) -> VerifyCheck:
        if (self.http is None) == (self.query is None):
            raise ValueError("a check has exactly one of http and query")
        return self


class Verify(Strict):
    timeout: Duration = 300.0
    checks: list[VerifyCheck] = Field(default_factory=list)


class HighAvailability(Strict):
    lease: str = "rollbackd"
    namespace: str = "rollbackd"
    identity_env: str = "POD_NAME"
    kubeconfig: str | None = None
    context: str | None = None
    api_url: str | None = None
    lease_duration: Duration = 15.0
    renew_deadline: Duration = 10.0
    retry_period: Duration = 2.0


class Settings(BaseSettings):
    """The daemon's configuration file, after environment overrides."""

    model_config = SettingsConfigDict(
        env_prefix="ROLLBACKD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    mode: Mode = "shadow"
    interval: Duration = 15.0
    rules: list[str] = Field(default_factory=lambda: ["rules/"])
    state: str = ".rollbackd/state.db"
    listen: str = "127.0.0.1:9105"
    audit_log: str = ".rollbackd/audit.jsonl"
    reports: str | None = Field(None, description="Folder for Markdown incident reports.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    prometheus: Prometheus = Field(default_factory=Prometheus)
    service_label: str = "job"
    services: list[Service] = Field(default_factory=list)
    ha: HighAvailability | None = None
    safety: Safety = Field(default_factory=Safety)
    notify: list[ChannelConfig] = Field(default_factory=_default_channels)
    verify: Verify = Field(default_factory=Verify)
    probe_concurrency: int = Field(64, ge=1, description="HTTP probes in flight at once.")
    backtest: Backtest | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's contents arrive as init arguments; the environment overrides them.
        return (env_settings, init_settings)

    @field_validator("services")
    @classmethod
    def _unique_names(cls, services: list[Service]) -> list[Service]:
        seen: set[str] = set()
        for service in services:
            if service.name in seen:
                raise ValueError(f"service '{service.name}' is listed twice")
            seen.add(service.name)
        return services

    def selector_of(self, service: Service) -> str:
        return service.selector or f'{self.service_label}="{service.name}"'


# --------------------------------------------------------------------------- rules


class Rule(Strict):
    name: str
    impact: Impact
    description: str = ""
    query: str | None = None
    probe: Literal["health"] | None = None
    above: float | None = None
    below: float | None = None
    above_baseline: float | None = Field(None, gt=0, description="Ratio to the baseline.")
    below_baseline: float | None = Field(None, gt=0, description="Ratio to the baseline.")
    failure_ratio_above: float | None = Field(None, ge=0, le=1)
    for_: Duration = Field(0.0, alias="for")
    window: Duration = Field(60.0, description="Probe samples considered (probe rules).")
    min_traffic: str | None = None
    action: Literal["page", "notify", "none"] | None = None

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", value):
            raise ValueError("a rule name may use letters, digits and . _ : -")
        return value

    @model_validator(mode="after")
    def _one_signal_one_condition(self) -> Rule:
        signals = [k for k in ("query", "probe") if getattr(self, k) is not None]
        if len(signals) != 1:
            raise ValueError("a rule has exactly one signal: query or probe")
        conditions = [k for k in CONDITIONS if getattr(self, k) is not None]
        if len(conditions) != 1:
            raise ValueError("a rule has exactly one condition: " + ", ".join(CONDITIONS))
        if self.probe and conditions[0] != "failure_ratio_above":
            raise ValueError("a probe rule's condition is failure_ratio_above")
        if self.query and conditions[0] == "failure_ratio_above":
            raise ValueError("failure_ratio_above applies to probe rules")
        if self.probe and self.min_traffic:
            raise ValueError("min_traffic applies to query rules")
        return self

    # Asked for every rule, service and tick, so plain attribute tests; not cached,
    # because model_copy(update=...) would carry a cached answer over to the copy.
    @property
    def condition(self) -> str:
        if self.above is not None:
            return "above"
        if self.failure_ratio_above is not None:
            return "failure_ratio_above"
        if self.above_baseline is not None:
            return "above_baseline"
        if self.below is not None:
            return "below"
        return "below_baseline"

    @property
    def threshold(self) -> float:
        value = getattr(self, self.condition)
        assert value is not None
        return float(value)

    @property
    def uses_baseline(self) -> bool:
        return self.condition in ("above_baseline", "below_baseline")


CONDITIONS = ("above", "below", "above_baseline", "below_baseline", "failure_ratio_above")


class RuleFile(Strict):
    group: str = "default"
    rules: list[Rule] = Field(default_factory=list)


@dataclass(frozen=True)
class LoadedRule:
    """A rule with the file and line it came from, for messages that point at it."""

    rule: Rule
    group: str
    path: str
    line: int


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.message}"
            if self.line
            else (f"{self.path}: {self.message}")
        )


class ConfigError(Exception):
    """Invalid configuration or rules; ``problems`` lists every one found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- loading

_yaml = YAML(typ="rt")


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(str(path), bad_line, "not UTF-8 text")]) from exc
    try:
        return _yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError([Problem(str(path), line, f"invalid YAML: {exc.problem}")]) from exc


def _line_of(tree: Any, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest key or item of ``loc`` present in the YAML tree."""
    line: int | None = None
    node = tree
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedMap) and isinstance(part, str):
            # A tag of a discriminated union ("exec") or a model name: not in the file.
            continue
        else:
            break
    if line is None and isinstance(tree, CommentedMap | CommentedSeq):
        line = tree.lc.line + 1
    return line


def _fields_at(model: Any, loc: Sequence[int | str]) -> list[str]:
    """Names the model accepts at ``loc``, to suggest a fix for a misspelt key."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        names = []
        for name, info in current.model_fields.items():
            names.append(info.alias or name)
        return names
    return []


def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return tp


def _step(tp: Any, part: int | str) -> Any:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (list, Sequence) and isinstance(part, int):
        return typing.get_args(tp)[0]
    if origin is dict and isinstance(part, str):
        return typing.get_args(tp)[1]
    if origin in (Union, types.UnionType) and isinstance(part, str):
        for member in typing.get_args(tp):
            kind = getattr(member, "model_fields", {}).get("kind")
            if kind is not None and part in typing.get_args(kind.annotation):
                return member
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
        for name, info in tp.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
    return None


def _message(error: Any, model: Any) -> str:
    loc = tuple(error["loc"])
    key = next((p for p in reversed(loc) if isinstance(p, str)), None)
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown key '{loc[-1]}'{suggestion}"
    if kind == "missing":
        return f"missing required key '{loc[-1]}'"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"unknown kind '{ctx.get('tag')}'; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "missing required key 'kind'"
    text = str(error["msg"]).removeprefix("Value error, ")
    if key is not None and not text.startswith(("a ", "set ", "service ")):
        return f"{key}: {text}"
    return text


def _problems(exc: ValidationError, path: str, tree: Any, model: Any) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        problems.append(Problem(path, _line_of(tree, loc), _message(error, model)))
    return problems


def _plain(node: Any) -> Any:
    """ruamel's commented containers as plain dicts and lists, for pydantic."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def default_config_path() -> Path:
    return Path(os.environ.get("ROLLBACKD_CONFIG") or "config.yaml")


def load_settings(path: str | Path) -> Settings:
    """Read, override from the environment, and validate the configuration file."""
    path = Path(path)
    tree = _read_yaml(path)
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, dict):
        raise ConfigError([Problem(str(path), 1, "the configuration must be a mapping")])
    try:
        settings = Settings(**_plain(tree))
    except ValidationError as exc:
        raise ConfigError(_problems(exc, str(path), tree, Settings)) from exc
    # Relative paths in the file are relative to the file, as a reader would expect.
    return _anchor(settings, path.parent)


def _anchor(settings: Settings, base: Path) -> Settings:
    def rel(p: str) -> str:
        if "://" in p or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    safety = settings.safety.model_copy(update={"pause_file": rel(settings.safety.pause_file)})
    return settings.model_copy(
        update={
            "rules": [rel(r) for r in settings.rules],
            "state": rel(settings.state),
            "audit_log": rel(settings.audit_log),
            "reports": rel(settings.reports) if settings.reports else None,
            "safety": safety,
        }
    )


def rule_files(paths: Iterable[str]) -> list[Path]:
    """Files named directly, and the ``*.yaml``/``*.yml`` files of named folders, sorted."""
    files: list[Path] = []
    for entry in paths:
        p = Path(entry)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml")))
        else:
            files.append(p)
    return files


def load_rules(paths: Iterable[str]) -> list[LoadedRule]:
    """Every rule of every file; all problems across files are reported together."""
    loaded: list[LoadedRule] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    files = rule_files(paths)
    if not files:
        problems.append(Problem(", ".join(paths) or "rules", None, "no rule files found"))
    for file in files:
        try:
            tree = _read_yaml(file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if tree is None:
            continue
        if not isinstance(tree, dict):
            problems.append(Problem(str(file), 1, "a rule file must be a mapping"))
            continue
        try:
            parsed = RuleFile(**_plain(tree))
        except ValidationError as exc:
            problems.extend(_problems(exc, str(file), tree, RuleFile))
            continue
        for index, rule in enumerate(parsed.rules):
            line = _line_of(tree, ("rules", index)) or 1
            where = f"{file}:{line}"
            if rule.name in seen:
                problems.append(
                    Problem(
                        str(file),
                        line,
                        f"rule '{rule.name}' is already defined at {seen[rule.name]}",
                    )
                )
                continue
            seen[rule.name] = where
            loaded.append(LoadedRule(rule, parsed.group, str(file), line))
    if problems:
        raise ConfigError(problems)
    return loaded
