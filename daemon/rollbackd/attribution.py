"""Is a regression the newest revision's fault?

A firing rule is *deploy-related* when the service's revision changed within the
attribution window before the breach began, and the rule's own signal was not already
breached on the previous revision (its baseline). Anything else is *external*: a
regression with no recent change is an outage elsewhere, and rolling back would only
add a second change to the incident. When the revision cannot be read at all the
attribution is *unknown*, which never leads to a rollback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rollbackd.config import Rule
from rollbackd.rules import RuleStatus, breaches
from rollbackd.state import ServiceState

Kind = Literal["deploy", "external", "unknown"]


@dataclass(frozen=True)
class Attribution:
    kind: Kind
    why: str
    change: str = "unknown"  # code | config | external_config | rollback | unknown

    @property
    def deploy_related(self) -> bool:
        return self.kind == "deploy"


def attribute(
    service: ServiceState,
    status: RuleStatus,
    rule: Rule,
    *,
    now: float,
    window: float,
    tolerance: float,
) -> Attribution:
    """Attribute ``rule``'s breach on ``service``.

    ``tolerance`` (one tick) accepts a breach seen up to a tick before the change was
    noticed, since revisions are polled: the deploy may have landed between two reads.
    """
    if service.revision is None or service.revision_error:
        return Attribution("unknown", "the running revision cannot be read")
    if service.changed_at is None:
        return Attribution("external", "no revision change since rollbackd started watching")
    began = status.active_since if status.active_since is not None else now
    change = _change_kind(service)
    if began < service.changed_at - tolerance:
        return Attribution("external", "the breach began before the revision changed", change)
    if began - service.changed_at > window:
        return Attribution(
            "external", "the revision changed longer ago than the attribution window", change
        )
    if breaches(rule, status.baseline):
        return Attribution(
            "external", "the rule was already breached on the previous revision", change
        )
    return Attribution("deploy", f"revision changed from {service.previous_revision}", change)


def _change_kind(service: ServiceState) -> str:
    if service.history and service.history[-1].revision == service.revision:
        return service.history[-1].change
    return "unknown"
