"""The one interface every deployment target implements, and its error tree.

A target answers two questions for one service: which revision is running now, and
"put revision X back". Everything else (when, whether, guards) is decided elsewhere;
a target never imports the loop or the decision code.

Errors::

    TargetError                 anything a target could not do; ``reason`` is short
    ├── TemporaryTargetError    worth another try later (timeouts, 5xx, rate limits)
    └── PermanentTargetError    retrying will not help (bad config, 403, 404)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

VERSION_PATTERN = re.compile(r"[A-Za-z0-9._:@/+-]+")


class TargetError(Exception):
    """A target could not read or change the revision. ``reason`` goes into events."""

    def __init__(self, reason: str, *, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TemporaryTargetError(TargetError):
    """Retrying later may succeed."""


class PermanentTargetError(TargetError):
    """Retrying will not help until someone changes something."""


@dataclass(frozen=True)
class Revision:
    """What is running: ``id`` is the version users and commands see (a tag, a revision).

    ``change`` says what differs from the previous revision when the target can tell:
    ``code`` (the image changed), ``config`` (only configuration), or ``unknown``.
    ``detail`` carries target-specific facts (images, revision numbers) for events.
    """

    id: str
    change: str = "unknown"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did. ``changed`` is false when the target was already there."""

    changed: bool = True
    detail: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Readiness:
    """Whether the rolled-back revision is fully serving, for verification."""

    ready: bool
    failed: bool = False
    message: str = ""


@runtime_checkable
class Target(Protocol):
    """One service's deployment mechanism."""

    kind: str

    async def current_revision(self) -> Revision:
        """The revision serving now; raises ``TargetError`` when it cannot tell."""
        ...

    async def rollback(
        self, *, to_version: str, from_version: str, reason: dict[str, Any]
    ) -> RollbackResult:
        """Make ``to_version`` serve again; raises ``TargetError`` on failure.

        ``reason`` has the rule, value and time, for annotations and audit trails.
        """
        ...

    async def readiness(self, *, to_version: str) -> Readiness:
        """After a rollback: is the target done rolling out? Plain targets say yes."""
        ...

    def rollback_hint(self, *, to_version: str, from_version: str) -> str:
        """The exact command a person would run to do this rollback by hand."""
        ...

    async def aclose(self) -> None:
        """Release clients and connections."""
        ...


def check_version(version: str) -> str:
    """Refuse a version string that could smuggle arguments or paths into a command."""
    if not VERSION_PATTERN.fullmatch(version):
        raise PermanentTargetError("unsafe_version", detail=f"refusing version {version!r}")
    return version
