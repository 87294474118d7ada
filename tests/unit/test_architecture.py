"""The direction of dependencies in DESIGN.md, checked on the source's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "rollbackd"


def imports_of(path: Path) -> set[str]:
    """Every rollbackd module a file imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.startswith("rollbackd")}


def module_files(*names: str) -> list[Path]:
    files: list[Path] = []
    for name in names:
        target = PACKAGE / name
        files.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return files


DECISIONS = ("rules.py", "attribution.py", "decide.py")
FORBIDDEN_FOR_DECISIONS = (
    "rollbackd.targets",
    "rollbackd.notify",
    "rollbackd.signals",
    "rollbackd.loop",
    "rollbackd.kube",
    "rollbackd.ha",
    "rollbackd.app",
)


@pytest.mark.parametrize("path", module_files(*DECISIONS), ids=lambda p: p.name)
def test_decision_code_imports_no_clients_targets_or_notifiers(path: Path) -> None:
    """Decisions are pure: no target, notifier, client or loop import."""
    bad = sorted(m for m in imports_of(path) if m.startswith(FORBIDDEN_FOR_DECISIONS))
    assert bad == []


@pytest.mark.parametrize(
    "path", module_files("targets", "notify", "signals"), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_plugins_never_import_the_loop_or_decisions(path: Path) -> None:
    """Targets, notifiers and signals never reach back into the loop or the decisions."""
    forbidden = ("rollbackd.loop", "rollbackd.decide", "rollbackd.app", "rollbackd.cli")
    assert sorted(m for m in imports_of(path) if m.startswith(forbidden)) == []


def test_targets_and_notifiers_do_not_import_each_other() -> None:
    """Acting and paging meet only in the loop."""
    crossing = [
        (p.name, m)
        for p in module_files("targets")
        for m in imports_of(p)
        if m.startswith("rollbackd.notify")
    ] + [
        (p.name, m)
        for p in module_files("notify")
        for m in imports_of(p)
        if m.startswith("rollbackd.targets")
    ]
    assert crossing == []
