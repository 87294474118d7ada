"""Run a real Prometheus binary for the demo, the integration tests and the benchmark.

The Debian package starts no service, so we run the binary ourselves: a config and a
TSDB in a temporary folder, a free port on 127.0.0.1, the lifecycle API on. The process
is always reaped: ``stop()`` terminates it (and kills it after a grace period), the
context manager calls ``stop()`` whatever happens, and a finalizer does the same if the
owner is garbage-collected or the interpreter exits first.

Limits: Prometheus applies its first target set about five seconds after start, whatever
the scrape interval, so the first sample arrives ~5 s in and the first ``rate()`` ~7 s
in; use ``wait_for`` rather than a fixed pause. A process killed with SIGKILL cannot run
its finalizers, so a Prometheus it started keeps running.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from rollbackd.signals.prometheus import QueryError, Series, parse_instant

__all__ = ["PrometheusNotInstalled", "PrometheusServer", "find_prometheus"]

# How long a terminated Prometheus may take to flush before it is killed.
STOP_GRACE = 5.0
POLL_INTERVAL = 0.2
LOG_TAIL_CHARS = 1500


class PrometheusNotInstalled(RuntimeError):
    """No ``prometheus`` binary on this machine."""


def find_prometheus() -> str:
    """The path of the ``prometheus`` binary, or ``PrometheusNotInstalled`` saying how."""
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None
    )
    if path is None:
        raise PrometheusNotInstalled(
            "no prometheus binary on PATH: install the Debian package prometheus "
            "(apt-get install --no-install-recommends prometheus; make test does this)"
        )
    return path


class PrometheusServer:
    """A Prometheus process scraping ``targets`` (``host:port`` or ``http://host:port``).

    All targets form one scrape job named ``sim`` with ``honor_labels: true``, so the
    ``job`` label of each series is the one the target exposes (one per simulated
    service). ``scrape_configs`` replaces that job entirely, for layouts it cannot
    express (a job per service, other metric paths). ``port`` is chosen once, so a
    server can be stopped and started again at the same URL (with empty storage).
    ``blocks`` is a folder of TSDB blocks (from ``promtool tsdb create-blocks-from``)
    copied into the storage before start, so backfilled history is served at once;
    ``tsdb`` becomes the ``storage.tsdb`` section of the config (for example an
    ``out_of_order_time_window``).

    Example::

        with Fleet(3) as fleet, PrometheusServer([fleet.address]) as prom:
            prom.wait_for('app_build_info', timeout=20)
            client = PrometheusClient(prom.url)
    """

    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        scrape_interval: float = 1.0,
        extra_args: Sequence[str] = (),
        scrape_configs: list[dict[str, Any]] | None = None,
        port: int | None = None,
        binary: str | None = None,
        blocks: Path | None = None,
        tsdb: dict[str, Any] | None = None,
    ) -> None:
        self.targets = [_host_port(target) for target in targets]
        self.scrape_interval = scrape_interval
        self.extra_args = list(extra_args)
        self.scrape_configs = scrape_configs
        self.port = port or _free_port()
        self.binary = binary or find_prometheus()
        self.blocks = blocks
        self.tsdb = tsdb
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Write the config and launch Prometheus; returns the URL (not yet ready)."""
        if self.running:
            return self.url
        self.stop()  # a process that died on its own still has a folder to remove
        self._dir = Path(tempfile.mkdtemp(prefix="rollbackd-prometheus-"))
        config = self._dir / "prometheus.yml"
        # JSON is valid YAML, and needs no YAML writer.
        config.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        if self.blocks is not None:
            shutil.copytree(self.blocks, self._dir / "data", dirs_exist_ok=True)
        log = (self._dir / "prometheus.log").open("wb")
        command = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self._dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            *self.extra_args,
        ]
        try:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self._finalizer = weakref.finalize(self, _reap, self._process, self._dir)
        return self.url

    def config(self) -> dict[str, Any]:
        """The configuration written for Prometheus, as a dict."""
        interval = _duration(self.scrape_interval)
        jobs = self.scrape_configs
        if jobs is None:
            jobs = [
                {
                    "job_name": "sim",
                    "honor_labels": True,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ]
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": jobs,
        }
        if self.tsdb:
            config["storage"] = {"tsdb": dict(self.tsdb)}
        return config

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Return once ``/-/ready`` answers 200; raise if the process died or time ran out."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            self._check_alive()
            try:
                response = httpx.get(f"{self.url}/-/ready", timeout=1.0)
                if response.status_code == httpx.codes.OK:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Prometheus at {self.url} not ready after {timeout}s: {last}")
            time.sleep(POLL_INTERVAL)

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[Series]:
        """Poll ``promql`` until it returns something; returns that result.

        Raises ``TimeoutError`` naming the last answer (empty, or the error) when
        ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            self._check_alive()
            try:
                response = httpx.post(
                    f"{self.url}/api/v1/query", data={"query": promql}, timeout=5.0
                )
                body = response.json()
                if body.get("status") != "success":
                    last = f"HTTP {response.status_code}: {body.get('error', body)}"
                else:
                    result = parse_instant(body["data"])
                    if result:
                        return result
                    last = "an empty result"
            except (httpx.HTTPError, ValueError, KeyError, QueryError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{promql!r} gave {last} for {timeout}s")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """Terminate Prometheus (kill it after a grace period) and remove its folder."""
        if self._finalizer is not None:
            self._finalizer()  # runs _reap once, and never again at exit
            self._finalizer = None
        self._process = None
        self._dir = None

    def log_tail(self) -> str:
        """The end of Prometheus's own log, for error messages."""
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "prometheus.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:]

    def __enter__(self) -> PrometheusServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _check_alive(self) -> None:
        if self._process is None:
            raise RuntimeError("Prometheus is not started")
        code = self._process.poll()
        if code is not None:
            raise RuntimeError(f"Prometheus exited with status {code}:\n{self.log_tail()}")


def _reap(process: subprocess.Popen[bytes], folder: Path) -> None:
    """Stop ``process`` for certain and delete ``folder``; safe to call at interpreter exit."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    """A port free right now; Prometheus binds it a moment later (a small, accepted race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _host_port(target: str) -> str:
    return target.removeprefix("http://").rstrip("/")


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"
