"""Secrets read from the environment or a file, and scrubbed from everything we write.

Every secret read through ``read_secret`` is remembered, and ``redact`` replaces it in
any string; the event and log pipeline runs every field through ``redact`` so a token
that slips into an error message or a URL never reaches a log line or the audit log.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_known: set[str] = set()
MASK = "[REDACTED]"


class SecretError(Exception):
    """A configured secret is missing or unreadable."""


def remember(secret: str) -> None:
    """Scrub ``secret`` from all output from now on (short strings would mask too much)."""
    if len(secret) >= 4:
        with _lock:
            _known.add(secret)


def read_secret(*, env: str | None, file: str | None, what: str) -> str:
    """The secret named by ``env`` (a variable) or ``file``; exactly one must be set."""
    if env and file:
        raise SecretError(f"{what}: set either the _env or the _file key, not both")
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise SecretError(f"{what}: environment variable {env} is not set")
    elif file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"{what}: cannot read {file}: {exc.strerror}") from exc
        if not value:
            raise SecretError(f"{what}: {file} is empty")
    else:
        raise SecretError(f"{what}: no secret configured (an _env or _file key)")
    remember(value)
    return value


def redact(value: Any) -> Any:
    """``value`` with every remembered secret masked, through dicts, lists and strings."""
    if isinstance(value, str):
        with _lock:
            secrets = sorted(_known, key=len, reverse=True)
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
