"""Events and logs: one JSON object per line on stdout, and the audit log.

Every state change is an *event* (``decision``, ``rule_state``, ``revision_change``,
``last_known_good``, ``rollback_started``, ``rollback_finished``, ``verification``,
``notification``, ...): written through structlog to stdout and appended, flushed, to
the audit log, so the audit log is a faithful subset of what stdout showed. Ordinary
log lines (debug detail, warnings about retries) go to stdout only.

Every line passes through the secret scrubber, and NaN or infinite numbers become
``null`` so each line stays valid JSON.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from rollbackd.secrets import redact

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def utc_iso(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(at, UTC) if at is not None else datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_clean(v) for v in value]
    return value


def _stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("ts", utc_iso())
    return event


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    cleaned: dict[str, Any] = redact(_clean(dict(event)))
    # The keys a reader scans for come first, as in the documented examples.
    first: dict[str, Any] = {k: cleaned.pop(k) for k in ("event", "ts", "service") if k in cleaned}
    return {**first, **cleaned}


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stdout), filtered at ``level``."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _stamp,
            structlog.processors.format_exc_info,
            _scrub,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


class Recorder:
    """Writes events to stdout (structlog) and appends them to the audit log."""

    def __init__(self, audit_log: str | Path | None, *, clock: Any = None) -> None:
        self._lock = threading.Lock()
        self._audit: TextIO | None = None
        if audit_log:
            path = Path(audit_log)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._audit = path.open("a", encoding="utf-8")
        self._log = structlog.get_logger("rollbackd")
        self._clock = clock
        self.listeners: list[Any] = []

    def event(self, name: str, *, at: float | None = None, **fields: Any) -> dict[str, Any]:
        """Record one event; returns it as written (scrubbed), for listeners and tests."""
        if at is None and self._clock is not None:
            at = self._clock()
        context = structlog.contextvars.get_contextvars()
        record: dict[str, Any] = {"event": name, "ts": utc_iso(at), **context, **fields}
        record = redact(_clean(record))
        with self._lock:
            if self._audit is not None:
                self._audit.write(json.dumps(record, default=str) + "\n")
                self._audit.flush()
        # The bound context is already in the record; structlog would add it again.
        payload = {k: v for k, v in record.items() if k != "event" and k not in context}
        self._log.info(name, **payload)
        for listener in self.listeners:
            listener(record)
        return record

    def close(self) -> None:
        with self._lock:
            if self._audit is not None:
                self._audit.close()
                self._audit = None
