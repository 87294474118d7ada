"""A simulated fleet of services, for the demo, the integration tests and the benchmark.

One stdlib HTTP server on 127.0.0.1 pretends to be N services. Each service runs a
version; each version has a ``Behaviour`` (share of failing requests, latency, health).
No traffic is generated: the counters are computed from elapsed time times requests per
second times the behaviour in force during each stretch of time, so they are exact,
monotonic across deploys, and cost nothing to keep for a thousand services.

Endpoints (service names are path segments)::

    GET  /metrics                     exposition for every service, job="<service>" on
                                      every series (scrape with honor_labels: true)
    GET  /<service>/metrics           the same for one service (a scrape job per service,
                                      so that up{job="<service>"} exists)
    GET  /<service>/healthz           200, or 503 when down or the version is unhealthy
    GET  /<service>/version           the running version, as text
    POST /<service>/deploy?version=V  switch version
    POST /<service>/outage?on=1|0     fail requests whatever the version
    POST /<service>/down?on=1|0       fail the health endpoint

Command line (``python -m rollbackd.sim``)::

    serve --port P --services N | --names a,b  [--bad v2=0.3] [--slow v2=0.5] ...
    deploy --url BASE --service S VERSION
    version --url BASE --service S
    outage|down --url BASE --service S on|off

``deploy`` and ``version`` are what an exec target's ``rollback_command`` and
``version_command`` call, so they import nothing but the stdlib and httpx, print one
line, and exit non-zero with a one-line message on failure.

Limits: every request of a stretch takes exactly the behaviour's ``latency``, so a
histogram quantile lands inside that latency's bucket (by interpolation) rather than
on the latency itself; state lives in memory and starts over with the process.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

__all__ = ["BUCKETS", "HEALTHY", "Behaviour", "Fleet", "main"]

# The prometheus_client default buckets, so the shipped latency rule reads familiar data.
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
# Same shape as rollbackd.targets.base.VERSION_PATTERN; repeated so that the command line
# stays importable without the rest of the package. Also keeps label values unescaped.
VERSION_PATTERN = re.compile(r"[A-Za-z0-9._:@/+-]+")
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
EXPOSITION_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Behaviour:
    """How a version behaves: share of requests answered 500, seconds each, health."""

    error_ratio: float = 0.0
    latency: float = 0.02
    healthy: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_ratio <= 1.0:
            raise ValueError(f"error_ratio must be within 0..1, not {self.error_ratio}")
        if self.latency < 0:
            raise ValueError(f"latency must not be negative, not {self.latency}")


HEALTHY = Behaviour()


class _Service:
    """One service's counters: totals up to ``since`` plus the stretch running now."""

    def __init__(self, name: str, version: str, behaviour: Behaviour, now: float) -> None:
        self.name = name
        self.version = version
        self.outage = False
        self.down = False
        self.ok = 0.0
        self.errors = 0.0
        self.latency_sum = 0.0
        self.buckets = [0.0] * len(BUCKETS)
        self.since = now
        self.error_ratio = behaviour.error_ratio
        self.latency = behaviour.latency
        self.healthy = behaviour.healthy
        # The label prefixes never change; building them once keeps /metrics cheap.
        job = f'job="{name}"'
        self.ok_prefix = f'http_requests_total{{{job},code="200"}} '
        self.err_prefix = f'http_requests_total{{{job},code="500"}} '
        self.bucket_prefixes = [
            f'http_request_duration_seconds_bucket{{{job},le="{le}"}} ' for le in BUCKETS
        ]
        self.inf_prefix = f'http_request_duration_seconds_bucket{{{job},le="+Inf"}} '
        self.sum_prefix = f"http_request_duration_seconds_sum{{{job}}} "
        self.count_prefix = f"http_request_duration_seconds_count{{{job}}} "

    def settle(self, now: float, rps: float) -> None:
        """Fold the running stretch into the totals, so the behaviour can change now."""
        ok, errors, requests = self._stretch(now, rps)
        self.ok += ok
        self.errors += errors
        self.latency_sum += requests * self.latency
        first = _first_bucket(self.latency)
        for i in range(first, len(BUCKETS)):
            self.buckets[i] += requests
        self.since = now

    def render(self, now: float, rps: float, counters: list[str], histograms: list[str]) -> None:
        """Append this service's samples, as of ``now``, to the two families' lines."""
        ok, errors, requests = self._stretch(now, rps)
        total = self.ok + self.errors + requests
        first = _first_bucket(self.latency)
        counters.append(f"{self.ok_prefix}{self.ok + ok:.3f}\n")
        counters.append(f"{self.err_prefix}{self.errors + errors:.3f}\n")
        for i, prefix in enumerate(self.bucket_prefixes):
            count = self.buckets[i] + (requests if i >= first else 0.0)
            histograms.append(f"{prefix}{count:.3f}\n")
        histograms.append(f"{self.inf_prefix}{total:.3f}\n")
        histograms.append(f"{self.sum_prefix}{self.latency_sum + requests * self.latency:.6f}\n")
        histograms.append(f"{self.count_prefix}{total:.3f}\n")

    def _stretch(self, now: float, rps: float) -> tuple[float, float, float]:
        requests = max(now - self.since, 0.0) * rps
        errors = requests * self.error_ratio
        return requests - errors, errors, requests


def _first_bucket(latency: float) -> int:
    """Index of the first bucket a request of ``latency`` seconds counts in."""
    for i, le in enumerate(BUCKETS):
        if latency <= le:
            return i
    return len(BUCKETS)


class Fleet:
    """N simulated services behind one local HTTP server.

    ``services`` is a count (named ``svc-0``, ``svc-1``, ...) or a list of names. Every
    version behaves like ``healthy`` unless ``bad_versions`` says otherwise;
    ``set_behaviour`` overrides one service's version. ``outage_error_ratio`` is the
    share of failing requests while an outage is on. ``clock`` (monotonic seconds) is a
    parameter so tests can move time by hand.

    Example::

        fleet = Fleet(3, bad_versions={"v2": Behaviour(error_ratio=0.3)})
        base = fleet.start()            # http://127.0.0.1:<port>
        fleet.deploy("svc-1", "v2")
        fleet.stop()
    """

    def __init__(
        self,
        services: int | Sequence[str] = 1,
        *,
        bad_versions: dict[str, Behaviour] | None = None,
        healthy: Behaviour = HEALTHY,
        initial_version: str = "v1",
        rps: float = 20.0,
        outage_error_ratio: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [f"svc-{i}" for i in range(services)] if isinstance(services, int) else services
        for name in names:
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"service name {name!r} must match {NAME_PATTERN.pattern}")
        _check_version(initial_version)
        self.rps = rps
        self.outage_error_ratio = outage_error_ratio
        self._healthy = healthy
        self._bad = dict(bad_versions or {})
        self._overrides: dict[tuple[str, str], Behaviour] = {}
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._services = {
            name: _Service(name, initial_version, self.behaviour(name, initial_version), now)
            for name in names
        }
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Life cycle

    def start(self) -> str:
        """Serve in a background thread; returns the base URL."""
        if self._server is None:
            self._server = _Server(self._address, _Handler, self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="sim-fleet",
                daemon=True,
            )
            self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and release the port; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fleet is not serving; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def address(self) -> str:
        """``host:port``, as a Prometheus scrape target."""
        return self.url.removeprefix("http://")

    @property
    def services(self) -> list[str]:
        return list(self._services)

    def health_url(self, service: str) -> str:
        self._get(service)
        return f"{self.url}/{service}/healthz"

    def version_url(self, service: str) -> str:
        self._get(service)
        return f"{self.url}/{service}/version"

    # Behaviour

    def behaviour(self, service: str, version: str) -> Behaviour:
        """What ``version`` of ``service`` does when it runs."""
        return self._overrides.get((service, version), self._bad.get(version, self._healthy))

    def set_behaviour(self, service: str, version: str, behaviour: Behaviour) -> None:
        """Make one service's ``version`` behave differently from the fleet-wide rule."""
        with self._lock:
            self._overrides[(service, version)] = behaviour
            self._refresh(self._get(service))

    def deploy(self, service: str, version: str) -> None:
        """Switch ``service`` to ``version`` from now on."""
        _check_version(version)
        with self._lock:
            svc = self._get(service)
            svc.version = version
            self._refresh(svc)

    def version(self, service: str) -> str:
        with self._lock:
            return self._get(service).version

    def set_outage(self, service: str, on: bool) -> None:
        """Fail ``outage_error_ratio`` of requests, whatever version runs."""
        with self._lock:
            svc = self._get(service)
            svc.outage = on
            self._refresh(svc)

    def set_down(self, service: str, on: bool) -> None:
        """Make the health endpoint answer 503 (requests keep their behaviour)."""
        with self._lock:
            self._get(service).down = on

    def healthy(self, service: str) -> bool:
        with self._lock:
            svc = self._get(service)
            return svc.healthy and not svc.down

    def metrics_text(self, services: Iterable[str] | None = None) -> str:
        """The exposition text, as of now, for ``services`` (all when None)."""
        counters: list[str] = []
        histograms: list[str] = []
        with self._lock:
            now = self._clock()
            chosen = (
                list(self._services.values())
                if services is None
                else [self._get(name) for name in services]
            )
            for svc in chosen:
                svc.render(now, self.rps, counters, histograms)
            builds = [f'app_build_info{{job="{s.name}",version="{s.version}"}} 1\n' for s in chosen]
        # Each family's samples stay together under its TYPE line, as the format wants.
        return "".join(
            [
                "# TYPE http_requests_total counter\n",
                *counters,
                "# TYPE http_request_duration_seconds histogram\n",
                *histograms,
                "# TYPE app_build_info gauge\n",
                *builds,
            ]
        )

    def _get(self, service: str) -> _Service:
        try:
            return self._services[service]
        except KeyError:
            raise KeyError(f"unknown service {service!r}") from None

    def _refresh(self, svc: _Service) -> None:
        """Close the running stretch and start one with the behaviour now in force."""
        svc.settle(self._clock(), self.rps)
        behaviour = self.behaviour(svc.name, svc.version)
        svc.error_ratio = (
            max(behaviour.error_ratio, self.outage_error_ratio)
            if svc.outage
            else behaviour.error_ratio
        )
        svc.latency = behaviour.latency
        svc.healthy = behaviour.healthy


def _check_version(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"version {version!r} must match {VERSION_PATTERN.pattern}")
    return version


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A thousand services probed at once overflow the default backlog of 5, and the
    # kernel's retransmit waits would show up as slow probes.
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fleet: Fleet
    ) -> None:
        self.fleet = fleet
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive matters: the benchmark probes a thousand services every tick.
    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection gives its thread back after this many seconds.
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a scrape every second for a thousand services would drown the output."""

    def do_GET(self) -> None:
        fleet = self.server.fleet
        parts, _ = self._route()
        try:
            if parts == ["metrics"]:
                self._reply(200, fleet.metrics_text(), EXPOSITION_TYPE)
            elif parts == []:
                self._reply(200, "".join(f"{name}\n" for name in fleet.services))
            elif len(parts) == 2 and parts[1] == "metrics":
                self._reply(200, fleet.metrics_text([parts[0]]), EXPOSITION_TYPE)
            elif len(parts) == 2 and parts[1] == "healthz":
                ok = fleet.healthy(parts[0])
                self._reply(200 if ok else 503, "ok\n" if ok else "unhealthy\n")
            elif len(parts) == 2 and parts[1] == "version":
                self._reply(200, fleet.version(parts[0]) + "\n")
            else:
                self._reply(404, "not found\n")
        except KeyError as exc:
            self._reply(404, f"{exc.args[0]}\n")

    def do_POST(self) -> None:
        fleet = self.server.fleet
        parts, query = self._route()
        if len(parts) != 2:
            self._reply(404, "not found\n")
            return
        service, verb = parts
        try:
            if verb == "deploy":
                version = query.get("version", "")
                fleet.deploy(service, version)
                self._reply(200, f"{service} now runs {version}\n")
            elif verb in ("outage", "down"):
                on = _switch(query.get("on", ""))
                (fleet.set_outage if verb == "outage" else fleet.set_down)(service, on)
                self._reply(200, f"{service} {verb} {'on' if on else 'off'}\n")
            else:
                self._reply(404, "not found\n")
        except KeyError as exc:
            self._reply(404, f"{exc.args[0]}\n")
        except ValueError as exc:
            self._reply(400, f"{exc}\n")

    def _route(self) -> tuple[list[str], dict[str, str]]:
        split = urlsplit(self.path)
        parts = [part for part in split.path.split("/") if part]
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        # A POST may carry a body we do not use; drain it so keep-alive stays in step.
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        return parts, query

    def _reply(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _switch(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"on= must be 1 or 0, not {value!r}")


# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rollbackd.sim``; returns the exit status."""
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rollbackd.sim", description="Simulated services for rollbackd."
    )
    verbs = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = verbs.add_parser("serve", help="serve a fleet until SIGTERM or Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    group = serve.add_mutually_exclusive_group()
    group.add_argument("--services", type=int, default=1, help="count, named svc-0, svc-1...")
    group.add_argument("--names", help="comma-separated service names")
    serve.add_argument("--initial", default="v1", help="version every service starts at")
    serve.add_argument("--rps", type=float, default=20.0, help="requests per second each")
    serve.add_argument("--latency", type=float, default=0.02, help="healthy seconds/request")
    serve.add_argument("--bad", action="append", default=[], metavar="VERSION=RATIO",
                       help="share of requests VERSION fails (repeatable)")  # fmt: skip
    serve.add_argument("--slow", action="append", default=[], metavar="VERSION=SECONDS",
                       help="latency of VERSION (repeatable)")  # fmt: skip
    serve.add_argument("--unhealthy", action="append", default=[], metavar="VERSION",
                       help="VERSION fails its health endpoint (repeatable)")  # fmt: skip
    serve.add_argument("--outage-ratio", type=float, default=1.0,
                       help="share of requests failing during an outage")  # fmt: skip
    serve.set_defaults(handler=_serve)

    for verb, text in (("deploy", "switch a service to VERSION"), ("version", "print it")):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("--url", required=True, help="base URL of a running fleet")
        sub.add_argument("--service", required=True)
        if verb == "deploy":
            sub.add_argument("version", metavar="VERSION")
        sub.set_defaults(handler=_deploy if verb == "deploy" else _version)

    for verb in ("outage", "down"):
        sub = verbs.add_parser(verb, help=f"switch a service's {verb} on or off")
        sub.add_argument("--url", required=True)
        sub.add_argument("--service", required=True)
        sub.add_argument("state", choices=["on", "off"])
        sub.set_defaults(handler=_toggle, verb=verb)
    return parser


def _serve(args: argparse.Namespace) -> int:
    healthy = Behaviour(latency=args.latency)
    try:
        bad = _behaviours(args, healthy)
        services: int | list[str] = args.names.split(",") if args.names else args.services
        fleet = Fleet(
            services,
            bad_versions=bad,
            healthy=healthy,
            initial_version=args.initial,
            rps=args.rps,
            outage_error_ratio=args.outage_ratio,
            host=args.host,
            port=args.port,
        )
    except ValueError as exc:
        print(f"sim serve: {exc}", file=sys.stderr)
        return 2

    # Block the signals before the server threads start, so they inherit the mask and
    # only this thread receives them, in sigwait.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        url = fleet.start()
    except OSError as exc:
        print(f"sim serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"sim: serving {len(fleet.services)} services at {url}", flush=True)
    signal.sigwait(stop_signals)
    fleet.stop()
    return 0


def _behaviours(args: argparse.Namespace, healthy: Behaviour) -> dict[str, Behaviour]:
    """Merge --bad, --slow and --unhealthy into one Behaviour per version."""
    fields: dict[str, dict[str, float | bool]] = {}
    for option, key in ((args.bad, "error_ratio"), (args.slow, "latency")):
        for item in option:
            version, sep, number = item.partition("=")
            try:
                value = float(number)
            except ValueError:
                raise ValueError(f"expected VERSION=NUMBER, got {item!r}") from None
            if not sep:
                raise ValueError(f"expected VERSION=NUMBER, got {item!r}")
            fields.setdefault(_check_version(version), {})[key] = value
    for version in args.unhealthy:
        fields.setdefault(_check_version(version), {})["healthy"] = False
    return {
        version: Behaviour(
            error_ratio=float(values.get("error_ratio", healthy.error_ratio)),
            latency=float(values.get("latency", healthy.latency)),
            healthy=bool(values.get("healthy", True)),
        )
        for version, values in fields.items()
    }


def _call(verb: str, method: str, url: str, params: dict[str, str] | None = None) -> str:
    """One request; raises SystemExit with a one-line message on any failure."""
    try:
        response = httpx.request(method, url, params=params, timeout=5.0)
    except httpx.HTTPError as exc:
        raise SystemExit(f"sim {verb}: cannot reach {url}: {exc}") from None
    body = response.text.strip().splitlines()
    first = body[0] if body else ""
    if response.status_code != httpx.codes.OK:
        raise SystemExit(f"sim {verb}: HTTP {response.status_code}: {first}")
    return first


def _deploy(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    url = f"{base}/{args.service}/deploy"
    print(_call("deploy", "POST", url, {"version": args.version}))
    return 0


def _version(args: argparse.Namespace) -> int:
    print(_call("version", "GET", f"{args.url.rstrip('/')}/{args.service}/version"))
    return 0


def _toggle(args: argparse.Namespace) -> int:
    url = f"{args.url.rstrip('/')}/{args.service}/{args.verb}"
    print(_call(args.verb, "POST", url, {"on": "1" if args.state == "on" else "0"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
