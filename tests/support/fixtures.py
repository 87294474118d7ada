"""Shared pytest fixtures: a simulated fleet and a real Prometheus scraping it.

Use from a test module with ``pytest_plugins = ["tests.support.fixtures"]``. Both
fixtures are module-scoped, because Prometheus takes ~5 s to its first scrape: one
server per test module. A module chooses its fleet by overriding ``fleet_options``::

    @pytest.fixture(scope="module")
    def fleet_options() -> dict[str, Any]:
        return {"services": ["codex-api"], "bad_versions": {"v2": Behaviour(0.3)}}

Tests in one module share the fleet, so a test that deploys or switches an outage on
should use a service of its own or put things back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rollbackd.promserver import PrometheusServer
from rollbackd.sim import Behaviour, Fleet

__all__ = ["fleet", "fleet_options", "prometheus"]


@pytest.fixture(scope="module")
def fleet_options() -> dict[str, Any]:
    """Keyword arguments for ``Fleet``: three services, v2 fails 30 % and is slower."""
    return {
        "services": ["codex-api", "svc-1", "svc-2"],
        "bad_versions": {"v2": Behaviour(error_ratio=0.3, latency=0.05)},
    }


@pytest.fixture(scope="module")
def fleet(fleet_options: dict[str, Any]) -> Iterator[Fleet]:
    """A started ``Fleet`` on 127.0.0.1; stopped after the module."""
    with Fleet(**fleet_options) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(fleet: Fleet) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping ``fleet`` every second, with its first scrape done."""
    with PrometheusServer([fleet.address]) as server:
        server.wait_for("app_build_info", timeout=30)
        yield server
