"""Message text: built-in templates per stage and channel style, and the user's overrides.

Every message is rendered by Jinja2 in a sandbox with ``StrictUndefined``, so a
template that names a variable that does not exist is an error, and ``rollbackd
check`` finds it by rendering each override against a sample notification of every
stage it applies to (``check_templates``), rather than at 3 a.m.

Styles follow what each channel shows its reader:

* ``chat`` (Slack): the runbook's alert, a bold headline and one line per fact,
  Service, Issue, Impact, ETA, Incident Commander, in Slack's mrkdwn; every value
  printed with ``{{ }}`` is escaped for Slack (``&``, ``<``, ``>``);
* ``text`` (log, webhook, the Alertmanager description): the same facts, plain;
* ``summary`` (the PagerDuty summary, the Alertmanager summary): one line, at most
  1024 characters;
* ``status``: a sentence for a public status page, with no internal detail.

Overrides live in a channel's ``templates``, keyed by a stage name or ``default``
(the main message), and ``status_page`` (the status text of a webhook). Block tags on
their own line take no space (``trim_blocks``). A template that fails at run time,
for instance by formatting a value the loop left empty, falls back to the built-in
text and logs ``template_failed``: a message in the default wording beats no message.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any, get_args

import structlog
from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rollbackd.config import ChannelBase, format_duration
from rollbackd.notify._http import channel_name
from rollbackd.notify.base import Notification, Stage

log = structlog.get_logger()

STAGES: tuple[str, ...] = get_args(Stage)
OVERRIDE_KEYS: tuple[str, ...] = (*STAGES, "default", "status_page")
RESOLVING_STAGES = ("resolved", "verification_passed", "sight_restored")
SUMMARY_LIMIT = 1024

STYLE_OF_KIND = {
    "slack": "chat",
    "pagerduty": "summary",
    "alertmanager": "text",
    "webhook": "text",
    "log": "text",
}

KNOWN_FIELDS = (
    "rule",
    "value",
    "threshold",
    "baseline",
    "condition",
    "revision",
    "rollback_to",
    "outcome",
    "command",
    "reason",
    "report",
    "description",
    "attribution",
    "guard",
    "checks",
)
"""Facts from ``Notification.fields`` that templates may name directly (None if absent)."""

_HEADLINES = {
    "rollback_started": ("🚨", "ROLLBACK IN PROGRESS"),
    "would_rollback": ("🔎", "WOULD ROLL BACK (shadow mode, nothing changed)"),
    "rollback_finished": ("🔄", "ROLLBACK DONE, verifying"),
    "rollback_failed": ("❌", "ROLLBACK FAILED, a person is needed"),
    "blocked": ("⛔", "ROLLBACK BLOCKED, a person is needed"),
    "page": ("📟", "ATTENTION NEEDED"),
    "notify": ("ℹ️", "FOR YOUR INFORMATION"),
    "verification_passed": ("✅", "SERVICE VERIFIED after the rollback"),
    "verification_failed": ("❌", "VERIFICATION FAILED after the rollback, escalating"),
    "blind": ("🙈", "MONITORING UNAVAILABLE"),
    "sight_restored": ("👀", "MONITORING RESTORED"),
    "resolved": ("✅", "RESOLVED"),
    "reminder": ("⏰", "STILL OPEN"),
}

# One body serves chat and text: b() and code() format a label and a command per style.
_BODY = """\
{{ title }}
{{ b("Service") }} {{ service }}
{{ b("Issue") }} {{ summary }}
{% if rule %}
{{ b("Signal") }} {{ rule }} at {{ value|num }}, threshold {{ threshold|num }}\
{{ ", before the change " ~ (baseline|num) if baseline is not none else "" }}
{% endif %}
{{ b("Impact") }} {{ impact or "not rated" }}{{ ": " ~ description if description else "" }}
{% if revision %}
{{ b("Revision") }} {{ revision }}{{ " → " ~ rollback_to if rollback_to else "" }}
{% endif %}
{% if reason %}
{{ b("Reason") }} {{ reason }}
{% endif %}
{% if command and not resolve %}
{{ b("Roll back by hand") }} {{ code(command) }}
{% endif %}
{% if not resolve %}
{{ b("ETA") }} {{ eta or "not estimated" }}
{% endif %}
{{ b("Incident Commander") }} {{ incident_commander }}
{% if report %}
{{ b("Report") }} {{ report }}
{% endif %}
{% for text, url in links.items() %}
{{ b(text) }} {{ url }}
{% endfor %}
{{ b("Incident") }} {{ incident }} ({{ mode }} mode)
"""

_SUMMARY = "{{ headline }}: {{ service }}: {{ summary }}"

_STATUS = """\
{% if stage in ("resolved", "verification_passed") %}
{{ service }} is working normally again. A summary of what happened will follow.
{% elif stage in ("rollback_started", "rollback_finished") %}
{{ service }} is having problems, and we are returning it to its previous stable \
version. We expect it to work normally again {{ "within " ~ eta if eta else "shortly" }}.
{% else %}
We are looking into problems with {{ service }} and will post another update soon.
{% endif %}
"""

_DEFAULTS = {"chat": _BODY, "text": _BODY, "summary": _SUMMARY, "status": _STATUS}


# --------------------------------------------------------------------------- environment


def _num(value: Any) -> str:
    """A measured value as people read it: four significant digits, ``n/a`` when absent."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def _duration(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(float(value))
    return str(value)


def _slack_escape(value: Any) -> Any:
    """Slack reads ``&``, ``<`` and ``>`` as markup; printed values must not be."""
    if isinstance(value, str):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


def _environment(finalize: Callable[[Any], Any] | None) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=finalize,
    )
    env.filters["num"] = _num
    env.filters["duration"] = _duration
    return env


_ENVIRONMENTS = {"plain": _environment(None), "slack": _environment(_slack_escape)}


@functools.lru_cache(maxsize=256)
def _compile(source: str, flavour: str) -> Template:
    return _ENVIRONMENTS[flavour].from_string(source)


# --------------------------------------------------------------------------- context


def _eta(config: ChannelBase, notification: Notification) -> str | None:
    given = notification.fields.get("eta")
    if given is not None and given != "":
        return _duration(given)
    return format_duration(config.eta) if config.eta is not None else None


def _headline(notification: Notification) -> tuple[str, str]:
    emoji, text = _HEADLINES.get(notification.stage, ("", notification.stage.upper()))
    if notification.stage == "page" and notification.fields.get("command"):
        text = "ROLLBACK RECOMMENDED, a person decides"
    return emoji, text


def _context(
    config: ChannelBase, notification: Notification, *, style: str, check: bool = False
) -> dict[str, Any]:
    """Everything a template may name: the notification, its known facts, and helpers.

    With ``check``, links are placeholders: their templates are checked on their own.
    """
    fields = dict(notification.fields)
    emoji, headline = _headline(notification)
    chat = style == "chat"
    context: dict[str, Any] = {key: fields.get(key) for key in KNOWN_FIELDS}
    context.update(
        stage=notification.stage,
        service=notification.service,
        incident=notification.incident,
        severity=notification.severity,
        summary=notification.summary,
        resolve=notification.resolve,
        impact=notification.impact,
        action=notification.action,
        mode=notification.mode,
        ts=notification.ts,
        fields=fields,
        channel=channel_name(config),
        eta=_eta(config, notification),
        incident_commander=fields.get("incident_commander") or config.incident_commander,
        headline=headline,
        emoji=emoji,
        title=f"{emoji} *{headline}* {emoji}".strip() if chat else headline,
        b=(lambda label: f"*{label}:*") if chat else (lambda label: f"{label}:"),
        code=(lambda text: f"`{text}`") if chat else (lambda text: str(text)),
        links={},
    )
    if check:
        context["links"] = dict.fromkeys(config.links, "https://example.invalid/")
    else:
        context["links"] = _render_links(config, context)
    return context


def _render_links(config: ChannelBase, context: dict[str, Any]) -> dict[str, str]:
    links: dict[str, str] = {}
    for text, source in config.links.items():
        try:
            links[text] = _compile(source, "plain").render(context).strip()
        except TemplateError as exc:
            log.warning(
                "template_failed",
                channel=channel_name(config),
                template=f"links.{text}",
                reason=_describe(exc),
            )
    return links


def _tidy(text: str, *, style: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    if style == "summary":
        one = " ".join(line.strip() for line in lines if line.strip())
        return one if len(one) <= SUMMARY_LIMIT else one[: SUMMARY_LIMIT - 1] + "…"
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


# --------------------------------------------------------------------------- rendering


def style_of(config: ChannelBase) -> str:
    return STYLE_OF_KIND.get(str(getattr(config, "kind", "log")), "text")


def render(config: ChannelBase, notification: Notification, *, style: str | None = None) -> str:
    """The channel's message for ``notification``: its override if any, else the default.

    ``style`` picks a built-in text other than the channel's own (a channel that sends
    both a one-line summary and a body asks for both); overrides apply to the channel's
    own style only.
    """
    own = style_of(config)
    style = style or own
    source = None
    if style == own:
        source = config.templates.get(notification.stage) or config.templates.get("default")
    return _render(config, notification, style=style, source=source, key=notification.stage)


def render_status(config: ChannelBase, notification: Notification) -> str:
    """A sentence for a public status page (the ``status_page`` override, if set)."""
    source = config.templates.get("status_page")
    return _render(config, notification, style="status", source=source, key="status_page")


def render_links(config: ChannelBase, notification: Notification) -> dict[str, str]:
    """The channel's ``links`` with their URL templates filled in."""
    return dict(_context(config, notification, style=style_of(config))["links"])


def _render(
    config: ChannelBase,
    notification: Notification,
    *,
    style: str,
    source: str | None,
    key: str,
) -> str:
    flavour = "slack" if style == "chat" else "plain"
    context = _context(config, notification, style=style)
    if source is not None:
        try:
            return _tidy(_compile(source, flavour).render(context), style=style)
        except TemplateError as exc:
            # check_templates should have caught this; send the default wording instead.
            log.warning(
                "template_failed",
                channel=channel_name(config),
                template=key,
                service=notification.service,
                reason=_describe(exc),
            )
        except (TypeError, ValueError, ArithmeticError) as exc:
            log.warning(
                "template_failed",
                channel=channel_name(config),
                template=key,
                service=notification.service,
                reason=f"{type(exc).__name__}: {exc}",
            )
    return _tidy(_compile(_DEFAULTS[style], flavour).render(context), style=style)


# --------------------------------------------------------------------------- checking


def sample_notification(stage: str) -> Notification:
    """A notification of ``stage`` with every known fact filled, to try templates on."""
    resolve = stage in RESOLVING_STAGES
    fields: dict[str, Any] = {
        "rule": "error-rate-high",
        "value": 0.31,
        "threshold": 0.1,
        "baseline": 0.002,
        "condition": "above",
        "revision": "v2",
        "rollback_to": "v1",
        "outcome": "executed",
        "command": "./scripts/deploy-rollback.sh v1",
        "reason": "cooldown: rolled back 4m ago",
        "report": "reports/codex-api-20261201T031500Z.md",
        "description": "users see errors on checkout",
        "attribution": "deploy",
        "guard": "cooldown",
        "checks": [{"name": "health", "passed": True}],
        "eta": 900,
    }
    return Notification(
        stage=stage,  # type: ignore[arg-type]
        service="codex-api",
        incident="codex-api-20261201T031500Z",
        severity="critical",
        summary="error-rate-high at 0.31, above 0.1 since v2",
        fields=fields,
        resolve=resolve,
        impact="high",
        action="rollback",
        mode="enforce",
        ts="2026-12-01T03:15:00Z",
    )


def check_templates(config: ChannelBase, *, where: str) -> list[str]:
    """Problems with the channel's overrides and link templates, one message each.

    Every override is compiled, then rendered against a sample notification of every
    stage it applies to, so syntax errors, undefined names and unsafe access show up.
    ``where`` starts each message (``config.yaml:42``); empty, messages start bare.
    """
    lead = f"{where}: " if where else ""
    name = channel_name(config)
    problems: list[str] = []
    for key, source in config.templates.items():
        if key not in OVERRIDE_KEYS:
            problems.append(
                f"{lead}notify channel '{name}': unknown template '{key}'; "
                f"use a stage ({', '.join(STAGES)}), default or status_page"
            )
            continue
        problem = _check_one(config, key, source)
        if problem:
            problems.append(f"{lead}notify channel '{name}', template '{key}': {problem}")
    for text, source in config.links.items():
        problem = _check_one(config, f"links.{text}", source)
        if problem:
            problems.append(f"{lead}notify channel '{name}', link '{text}': {problem}")
    return problems


def _check_one(config: ChannelBase, key: str, source: str) -> str | None:
    style = "status" if key == "status_page" else style_of(config)
    flavour = "slack" if style == "chat" else "plain"
    try:
        template = _compile(source, flavour)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    stages = (key,) if key in STAGES else STAGES
    for stage in stages:
        try:
            template.render(_context(config, sample_notification(stage), style=style, check=True))
        except TemplateError as exc:
            return f"{_describe(exc)} (rendering stage {stage})"
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            return f"{type(exc).__name__}: {exc} (rendering stage {stage})"
    return None


def _describe(exc: TemplateError) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"line {exc.lineno}: {exc.message}"
    return exc.message or type(exc).__name__
