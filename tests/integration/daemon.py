"""Run ``rollbackd run`` as a process and follow its events, for the integration tests.

The daemon writes one JSON object per line on stdout; a reader thread parses each line
into a queue-backed list, so a test waits on *events* ("the decision arrived") rather
than on time. Every wait is bounded, and a wait that runs out fails the test with the
last events seen and the end of the daemon's stderr, which is what one needs to read
to understand why.

``write_config`` builds the configuration the tests share: one service of a simulated
``Fleet`` with an exec target whose commands are the simulator's own command line, the
shipped rules with short windows (1 s ticks, 10 s rates), and every path inside the
test's temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollbackd.demo import demo_rules
from rollbackd.sim import Fleet

__all__ = [
    "REPO",
    "DaemonProcess",
    "free_port",
    "http_status",
    "iter_audit",
    "wait_until",
    "write_config",
]

# SIGTERM must end the daemon within this many seconds (DESIGN.md).
STOP_LIMIT = 10.0
TAIL_EVENTS = 25
TAIL_STDERR = 3000
POLL = 0.1
REPO = Path(__file__).resolve().parents[2]

# The shipped rules (rules/default.yaml) with windows short enough for a test:


def write_config(
    folder: Path,
    *,
    fleet: Fleet,
    prometheus_url: str,
    service: str,
    mode: str = "enforce",
    hold: str = "2s",
    bake_time: str = "5s",
    blind_after: str = "30s",
    listen: str = "127.0.0.1:0",
    rollback_command: str | None = None,
) -> Path:
    """A configuration for one simulated ``service``; returns its path.

    The default rollback command deploys ``{to_version}`` through the simulator's
    command line, as an operator's script would; ``rollback_command`` replaces it.
    ``log_level`` is debug so that every tick shows up as a ``tick_finished`` line.
    """
    sim = f"{shlex.quote(sys.executable)} -m rollbackd.sim"
    rollback = rollback_command or (
        f"{sim} deploy --url {fleet.url} --service {service} {{to_version}}"
    )
    config = {
        "mode": mode,
        "interval": "1s",
        "log_level": "debug",
        "rules": ["rules.yaml"],
        "state": "state.db",
        "audit_log": "audit.jsonl",
        "listen": listen,
        "prometheus": {"url": prometheus_url, "timeout": "2s", "retries": 1},
        "services": [
            {
                "name": service,
                "health": {"url": fleet.health_url(service), "timeout": "1s"},
                "target": {
                    "kind": "exec",
                    "version_command": f"{sim} version --url {fleet.url} --service {service}",
                    "rollback_command": rollback,
                    "timeout": "20s",
                },
            }
        ],
        "safety": {
            "bake_time": bake_time,
            "attribution_window": "5m",
            "cooldown": "5m",
            "max_rollbacks_per_hour": 3,
            "pause_file": "PAUSE",
            "blind_after": blind_after,
        },
        "verify": {
            "timeout": "40s",
            "checks": [
                {"name": "health", "http": {"url": fleet.health_url(service)}},
                {
                    "name": "metrics collecting",
                    "query": "sum(rate(http_requests_total{ {{selector}} }[10s])) > 0",
                },
            ],
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rules.yaml").write_text(demo_rules(hold=hold, group="integration"), encoding="utf-8")
    path = folder / "config.yaml"
    # JSON is YAML; no writer needed.
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


Match = Any  # a value compared with ==, or a one-argument predicate


def _matches(event: dict[str, Any], name: str, match: dict[str, Match]) -> bool:
    if event.get("event") != name:
        return False
    for key, wanted in match.items():
        value = event.get(key)
        if callable(wanted):
            if not wanted(value):
                return False
        elif value != wanted:
            return False
    return True


class DaemonProcess:
    """``rollbackd run -c CONFIG`` as a child process, with its events collected.

    Example::

        with DaemonProcess(config) as daemon:
            daemon.wait_for("last_known_good", timeout=20, revision="v1")
            ...
            daemon.stop()  # SIGTERM; asserts exit 0 within 10 s
    """

    def __init__(self, config: Path, *, args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.args = args
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self.returncode: int | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr_path = config.parent / f"stderr-{os.getpid()}-{id(self)}.txt"
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> DaemonProcess:
        command = [
            sys.executable,
            "-m",
            "rollbackd.cli",
            "run",
            "-c",
            str(self.config),
            *self.args,
        ]
        with self._stderr_path.open("w", encoding="utf-8") as stderr:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name="daemon-stdout", daemon=True)
        self._reader.start()
        return self

    def stop(self) -> int:
        """SIGTERM; assert the daemon exits 0 within 10 s; returns the exit status."""
        process = self._require()
        if process.poll() is None:
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_LIMIT)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"the daemon did not exit within {STOP_LIMIT:.0f}s of SIGTERM")
            took = time.monotonic() - started
            assert took < STOP_LIMIT, f"SIGTERM took {took:.1f}s"
        self._finish_reading()
        self.returncode = process.returncode
        assert self.returncode == 0, f"exit status {self.returncode}\n{self.describe()}"
        return self.returncode

    def kill(self) -> None:
        """Kill the daemon's process group, whatever state it is in (cleanup only)."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        self._finish_reading()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ events

    def wait_for(
        self, name: str, *, timeout: float, since: int = 0, **match: Match
    ) -> dict[str, Any]:
        """The first event ``name`` (from index ``since``) whose fields match; bounded.

        A match value is compared with ``==``, or called when it is a function.
        """
        return self.events[self._wait_index(name, timeout, since, match)]

    def wait_ticks(self, count: int, *, timeout: float) -> None:
        """Wait until ``count`` more ticks have finished (each within ``timeout``)."""
        index = self.mark()
        for _ in range(count):
            index = self._wait_index("tick_finished", timeout, index, {}) + 1

    def _wait_index(self, name: str, timeout: float, since: int, match: dict[str, Match]) -> int:
        deadline = time.monotonic() + timeout
        index = since
        while True:
            while index < len(self.events):
                if _matches(self.events[index], name, match):
                    return index
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                wanted = ", ".join(f"{k}={v!r}" for k, v in match.items())
                pytest.fail(f"no {name} event ({wanted}) within {timeout:g}s\n{self.describe()}")
            if not self._pull(remaining):
                pytest.fail(f"the daemon exited while waiting for {name}\n{self.describe()}")

    def mark(self) -> int:
        """The index of the next event, for ``wait_for(since=...)`` and ``named(since=...)``."""
        self._drain()
        return len(self.events)

    def named(self, name: str, *, since: int = 0, **match: Match) -> list[dict[str, Any]]:
        """Every event seen so far (from ``since``) called ``name`` with matching fields."""
        self._drain()
        return [e for e in self.events[since:] if _matches(e, name, match)]

    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        """The last events and the end of stderr: the context a failure message needs."""
        self._drain()
        lines = [json.dumps(e, default=str)[:400] for e in self.events[-TAIL_EVENTS:]]
        code = self._process.poll() if self._process else None
        return (
            f"daemon exit status: {code}\n"
            f"last {len(lines)} of {len(self.events)} events:\n  "
            + "\n  ".join(lines)
            + f"\nstdout lines that were not JSON: {self.other_lines[-5:]}"
            + f"\nstderr (tail):\n{self.stderr()[-TAIL_STDERR:]}"
        )

    # ------------------------------------------------------------------ internals

    def _require(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise RuntimeError("the daemon was not started")
        return self._process

    def _read(self) -> None:
        process = self._require()
        assert process.stdout is not None
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                self._queue.put(event)
            else:
                self._queue.put({"event": "_text", "line": line})
        self._queue.put(None)

    def _pull(self, timeout: float) -> bool:
        """Move queued lines into ``events``; False once stdout closed and all is read."""
        try:
            item = self._queue.get(timeout=min(timeout, 1.0))
        except queue.Empty:
            return True
        if item is None:
            self._queue.put(None)  # keep the end marker for later calls
            return False
        self._keep(item)
        return True

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._queue.put(None)
                return
            self._keep(item)

    def _keep(self, item: dict[str, Any]) -> None:
        if item.get("event") == "_text":
            self.other_lines.append(str(item.get("line")))
        else:
            self.events.append(item)

    def _finish_reading(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._drain()


def wait_until(
    condition: Callable[[], bool], *, timeout: float, what: str, context: Callable[[], str]
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {timeout:g}s\n{context()}")
        time.sleep(POLL)


def http_status(url: str) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError:
        return None


def free_port() -> int:
    """A port free right now (the daemon binds it a moment later: a small, accepted race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def iter_audit(path: Path) -> Iterator[dict[str, Any]]:
    """The audit log's events, in order."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)
