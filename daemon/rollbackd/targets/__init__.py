"""Deployment targets: one module per kind, each with ``create(config, *, service)``.

The factory imports a kind's module only when a service uses it, so the Kubernetes and
Cloud Run client libraries are not loaded by a daemon that does not need them.
"""

from __future__ import annotations

import importlib

from rollbackd.config import Service
from rollbackd.targets.base import Target

_MODULES = {
    "exec": "rollbackd.targets.exec",
    "kubernetes": "rollbackd.targets.kubernetes",
    "cloudrun": "rollbackd.targets.cloudrun",
    "github-actions": "rollbackd.targets.github",
}


def build_target(service: Service) -> Target:
    """The target plug-in for ``service``; an unknown kind is an error, never a fallback."""
    kind = service.target.kind
    if kind not in _MODULES:
        raise ValueError(f"unknown target kind '{kind}'")
    module = importlib.import_module(_MODULES[kind])
    target: Target = module.create(service.target, service=service.name)
    return target
