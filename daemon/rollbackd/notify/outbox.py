"""The durable outbox: every message to every channel, until it is delivered or given up.

One row per (notification, channel) in the table ``outbox`` of the state database.
A row is ``pending`` until the channel accepts it (``delivered``) or the dispatcher
gives up on it (``failed``, with the reason). Rows are written before delivery starts,
so a message survives a crash, a restart or a channel that is down for hours.

The outbox opens its own sqlite3 connection to the file the loop also uses. It sets
WAL mode (readers never wait for a writer) and a busy timeout, and every change is one
short autocommit statement, so the two connections only ever wait for each other for
the length of a single write. Calls are synchronous and quick; they run on the event
loop's thread.

The order of messages matters (a resolve must not overtake its trigger), so the
dispatcher delivers the rows of one (channel, incident) strictly in ``id`` order: the
*head* of a group is its oldest pending row.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rollbackd.notify.base import Notification

Status = Literal["pending", "delivered", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    channel      TEXT    NOT NULL,
    incident     TEXT    NOT NULL,
    service      TEXT    NOT NULL,
    stage        TEXT    NOT NULL,
    dedup        TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    created      REAL    NOT NULL,
    next_attempt REAL    NOT NULL,
    finished     REAL,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS outbox_by_status ON outbox (status, next_attempt);
CREATE INDEX IF NOT EXISTS outbox_by_incident ON outbox (channel, incident, id);
"""


@dataclass(frozen=True)
class Row:
    """One message to one channel, as stored."""

    id: int
    channel: str
    incident: str
    service: str
    stage: str
    status: Status
    attempts: int
    created: float
    next_attempt: float
    finished: float | None
    last_error: str | None
    body: str

    @property
    def notification(self) -> Notification:
        return Notification(**json.loads(self.body))


class Outbox:
    """The ``outbox`` table in the SQLite file at ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), timeout=5.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        # A message written must survive a power cut, not only a crash.
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)

    # ----------------------------------------------------------------------- writing

    def add(
        self, channel: str, notification: Notification, *, dedup: str, now: float
    ) -> int | None:
        """Store a message for ``channel``; None if an equal one (``dedup``) is already in.

        Messages with the same channel, incident and ``dedup`` are one message: the loop
        may hand the same stage of an incident over on every tick, and it is sent once.
        Messages without an incident are never merged.
        """
        body = json.dumps(asdict(notification), default=str)
        with self._lock:
            if (
                notification.incident
                and self._db.execute(
                    "SELECT 1 FROM outbox WHERE channel = ? AND incident = ? AND dedup = ?",
                    (channel, notification.incident, dedup),
                ).fetchone()
            ):
                return None
            cursor = self._db.execute(
                "INSERT INTO outbox (channel, incident, service, stage, dedup, body,"
                " created, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    channel,
                    notification.incident,
                    notification.service,
                    notification.stage,
                    dedup,
                    body,
                    now,
                    now,
                ),
            )
            return int(cursor.lastrowid or 0)

    def delivered(self, row_id: int, *, now: float) -> None:
        self._execute(
            "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, finished = ?,"
            " last_error = NULL WHERE id = ?",
            (now, row_id),
        )

    def failed(self, row_id: int, *, reason: str, now: float, attempted: bool = True) -> None:
        """Give up on a row; it stays in the table, marked, with the reason."""
        self._execute(
            "UPDATE outbox SET status = 'failed', attempts = attempts + ?, finished = ?,"
            " last_error = ? WHERE id = ?",
            (int(attempted), now, reason, row_id),
        )

    def postpone(self, row_id: int, *, reason: str, until: float) -> None:
        self._execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
            " WHERE id = ?",
            (until, reason, row_id),
        )

    def requeue_failed(self, *, since: float, now: float) -> int:
        """Make failed rows created after ``since`` pending again; how many there were.

        A failed row of an incident whose channel has since accepted a later message
        stays failed: sending it now would put an old stage (a trigger) after a newer
        one (its resolve).
        """
        with self._lock:
            cursor = self._db.execute(
                "UPDATE outbox SET status = 'pending', next_attempt = ?, finished = NULL"
                " WHERE status = 'failed' AND created >= ? AND (incident = '' OR NOT EXISTS ("
                "  SELECT 1 FROM outbox AS later WHERE later.channel = outbox.channel"
                "  AND later.incident = outbox.incident AND later.id > outbox.id"
                "  AND later.status = 'delivered'))",
                (now, since),
            )
            return cursor.rowcount

    def prune(self, *, before: float) -> int:
        """Forget delivered rows finished before ``before``; failed rows are kept."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM outbox WHERE status = 'delivered' AND finished < ?", (before,)
            )
            return cursor.rowcount

    # ----------------------------------------------------------------------- reading

    def head(self, channel: str, incident: str) -> Row | None:
        """The oldest pending row of a (channel, incident) group: the next to deliver."""
        return self._one(
            "SELECT * FROM outbox WHERE channel = ? AND incident = ? AND status = 'pending'"
            " ORDER BY id LIMIT 1",
            (channel, incident),
        )

    def due(self, *, now: float) -> list[tuple[str, str]]:
        """The (channel, incident) groups whose head is due for delivery."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.channel, o.incident FROM outbox AS o JOIN ("
                "  SELECT min(id) AS id FROM outbox WHERE status = 'pending'"
                "  GROUP BY channel, incident"
                ") AS h ON o.id = h.id WHERE o.next_attempt <= ? ORDER BY o.id",
                (now,),
            ).fetchall()
        return [(r["channel"], r["incident"]) for r in rows]

    def pending(self, channel: str | None = None) -> list[Row]:
        """Pending rows, oldest first (of one channel, or all)."""
        if channel is None:
            return self._all("SELECT * FROM outbox WHERE status = 'pending' ORDER BY id", ())
        return self._all(
            "SELECT * FROM outbox WHERE status = 'pending' AND channel = ? ORDER BY id",
            (channel,),
        )

    def rows(self, *, incident: str | None = None) -> list[Row]:
        """Every row (of one incident), oldest first: for reports, tests and inspection."""
        if incident is None:
            return self._all("SELECT * FROM outbox ORDER BY id", ())
        return self._all("SELECT * FROM outbox WHERE incident = ? ORDER BY id", (incident,))

    def channels(self) -> set[str]:
        with self._lock:
            found = self._db.execute("SELECT DISTINCT channel FROM outbox").fetchall()
        return {r["channel"] for r in found}

    def history(self, channel: str, incident: str) -> tuple[int, float | None, bool, bool]:
        """For reminders: rows so far, when the last was queued, any pending, any resolve."""
        with self._lock:
            found = self._db.execute(
                "SELECT count(*) AS n, max(created) AS last,"
                " sum(status = 'pending') AS waiting, sum(dedup = 'resolve') AS resolved"
                " FROM outbox WHERE channel = ? AND incident = ?",
                (channel, incident),
            ).fetchone()
        return (
            int(found["n"]),
            found["last"],
            bool(found["waiting"]),
            bool(found["resolved"]),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------------- helpers

    def _execute(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def _one(self, sql: str, args: tuple[Any, ...]) -> Row | None:
        with self._lock:
            found = self._db.execute(sql, args).fetchone()
        return _row(found) if found else None

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        with self._lock:
            found = self._db.execute(sql, args).fetchall()
        return [_row(r) for r in found]


def _row(found: sqlite3.Row) -> Row:
    return Row(
        id=found["id"],
        channel=found["channel"],
        incident=found["incident"],
        service=found["service"],
        stage=found["stage"],
        status=found["status"],
        attempts=found["attempts"],
        created=found["created"],
        next_attempt=found["next_attempt"],
        finished=found["finished"],
        last_error=found["last_error"],
        body=found["body"],
    )
