"""What the daemon remembers between ticks and across restarts.

Per service: the running revision and since when, the last known good revision, the
revision history, every rule's status and baseline, the open incident, an open
verification, the revisions it already rolled back once, and a rollback *intent*
written before a rollback starts and cleared when it ends. An intent found at start-up
means the process died mid-rollback: the loop pages instead of repeating it blindly.
Globally: the rollbacks of the last hour, for the budget.

The state is one JSON-able document. ``SqliteStore`` keeps it in SQLite (a row per
service, written only when it changed, in one transaction per tick);
a Kubernetes ConfigMap store with the same two methods serves replicas that share it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from rollbackd.rules import RuleStatus

HISTORY_LIMIT = 50
SCHEMA_VERSION = 1


@dataclass
class RevisionRecord:
    revision: str
    since: float
    change: str = "unknown"
    detail: dict[str, Any] = field(default_factory=dict)
    until: float | None = None
    outcome: str = ""  # "", "last_known_good", "rolled_back"


@dataclass
class Incident:
    id: str
    opened_at: float
    rules: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verification:
    started_at: float
    deadline: float
    to_version: str
    from_version: str
    rules: list[str]
    mode: str
    incident: str | None = None


@dataclass
class RollbackIntent:
    to_version: str
    from_version: str
    rule: str
    started_at: float
    mode: str


@dataclass
class ServiceState:
    revision: str | None = None
    revision_detail: dict[str, Any] = field(default_factory=dict)
    revision_since: float | None = None
    revision_seen_at: float | None = None
    changed_at: float | None = None  # None: the revision was there when we first looked
    previous_revision: str | None = None
    revision_error: str | None = None
    revision_error_since: float | None = None
    last_known_good: str | None = None
    last_known_good_detail: dict[str, Any] = field(default_factory=dict)
    bake_since: float | None = None
    history: list[RevisionRecord] = field(default_factory=list)
    rules: dict[str, RuleStatus] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)
    last_rollback: dict[str, float] = field(default_factory=dict)  # mode -> time
    incident: Incident | None = None
    verification: Verification | None = None
    intent: RollbackIntent | None = None
    blind_since: float | None = None
    blind_paged: bool = False
    revision_error_paged: bool = False
    images: dict[str, str] = field(default_factory=dict)  # revision -> image, when known
    reminded_unserved: str | None = None  # a deploy left without traffic, reminded once

    def rule(self, name: str) -> RuleStatus:
        status = self.rules.get(name)
        if status is None:
            status = self.rules[name] = RuleStatus()
        return status


@dataclass
class RollbackRecord:
    service: str
    at: float
    mode: str
    outcome: str


@dataclass
class DaemonState:
    services: dict[str, ServiceState] = field(default_factory=dict)
    rollbacks: list[RollbackRecord] = field(default_factory=list)

    def service(self, name: str) -> ServiceState:
        return self.services.setdefault(name, ServiceState())

    def rollbacks_since(self, since: float, *, mode: str) -> int:
        return sum(1 for r in self.rollbacks if r.at >= since and r.mode == mode)

    def forget_rollbacks_before(self, before: float) -> None:
        self.rollbacks = [r for r in self.rollbacks if r.at >= before]


# ----------------------------------------------------------------------------- codec


def _rule_from(data: dict[str, Any]) -> RuleStatus:
    known = {f.name for f in fields(RuleStatus)}
    status = RuleStatus(**{k: v for k, v in data.items() if k in known})
    status.samples = [(float(t), bool(ok)) for t, ok in status.samples]
    return status


def _pick(cls: type[Any], data: dict[str, Any] | None) -> Any:
    if data is None:
        return None
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def service_to_dict(state: ServiceState) -> dict[str, Any]:
    return asdict(state)


def service_from_dict(data: dict[str, Any]) -> ServiceState:
    state: ServiceState = _pick(ServiceState, data)
    state.rules = {name: _rule_from(r) for name, r in (data.get("rules") or {}).items()}
    state.history = [_pick(RevisionRecord, h) for h in data.get("history") or []]
    state.incident = _pick(Incident, data.get("incident"))
    state.verification = _pick(Verification, data.get("verification"))
    state.intent = _pick(RollbackIntent, data.get("intent"))
    return state


def to_document(state: DaemonState) -> dict[str, Any]:
    return {
        "version": SCHEMA_VERSION,
        "services": {name: service_to_dict(s) for name, s in state.services.items()},
        "rollbacks": [asdict(r) for r in state.rollbacks],
    }


def from_document(doc: dict[str, Any] | None) -> DaemonState:
    if not doc:
        return DaemonState()
    return DaemonState(
        services={n: service_from_dict(s) for n, s in (doc.get("services") or {}).items()},
        rollbacks=[_pick(RollbackRecord, r) for r in doc.get("rollbacks") or []],
    )


# ----------------------------------------------------------------------------- stores


class StateStore(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, doc: dict[str, Any]) -> None: ...


class StateError(Exception):
    """The state could not be read or written."""


class SqliteStore:
    """The state document in SQLite: one row per service plus the rollback ledger.

    Rows are rewritten only when their JSON changed, so a tick over a thousand quiet
    services writes little. Writes are one transaction: a crash leaves the previous
    tick's state, never half of this one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS services (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS rollbacks (
                id INTEGER PRIMARY KEY, service TEXT, at REAL, mode TEXT, outcome TEXT);
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            """
        )
        self._written: dict[str, str] = {}

    def load(self) -> dict[str, Any] | None:
        with self._lock:
            rows = self._db.execute("SELECT name, doc FROM services").fetchall()
            ledger = self._db.execute(
                "SELECT service, at, mode, outcome FROM rollbacks ORDER BY at"
            ).fetchall()
        if not rows and not ledger:
            return None
        self._written = dict(rows)
        return {
            "version": SCHEMA_VERSION,
            "services": {name: json.loads(doc) for name, doc in rows},
            "rollbacks": [
                {"service": s, "at": at, "mode": m, "outcome": o} for s, at, m, o in ledger
            ],
        }

    def save(self, doc: dict[str, Any]) -> None:
        services = {n: json.dumps(s, sort_keys=True) for n, s in doc["services"].items()}
        changed = {n: d for n, d in services.items() if self._written.get(n) != d}
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO services (name, doc) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET doc = excluded.doc",
                    list(changed.items()),
                )
                self._db.execute("DELETE FROM rollbacks")
                self._db.executemany(
                    "INSERT INTO rollbacks (service, at, mode, outcome) VALUES (?, ?, ?, ?)",
                    [(r["service"], r["at"], r["mode"], r["outcome"]) for r in doc["rollbacks"]],
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StateError(f"cannot write state to {self.path}: {exc}") from exc
        self._written.update(changed)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(location: str) -> StateStore:
    """A SQLite file path; ``kubernetes://NAMESPACE/NAME`` selects a ConfigMap store."""
    if location.startswith("kubernetes://"):
        raise StateError("kubernetes:// state needs the ha section; see the README")
    return SqliteStore(location)
