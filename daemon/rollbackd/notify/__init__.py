"""Notification channels: one module per kind, each with ``create(config)``."""

from __future__ import annotations

import importlib

from rollbackd.config import ChannelConfig
from rollbackd.notify.base import Notifier

_MODULES = {
    "log": "rollbackd.notify.log",
    "slack": "rollbackd.notify.slack",
    "pagerduty": "rollbackd.notify.pagerduty",
    "alertmanager": "rollbackd.notify.alertmanager",
    "webhook": "rollbackd.notify.webhook",
}


def build_notifier(config: ChannelConfig) -> Notifier:
    """The channel for ``config``; an unknown kind is an error, never a fallback."""
    if config.kind not in _MODULES:
        raise ValueError(f"unknown notifier kind '{config.kind}'")
    module = importlib.import_module(_MODULES[config.kind])
    notifier: Notifier = module.create(config)
    return notifier
