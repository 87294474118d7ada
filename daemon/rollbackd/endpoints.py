"""``/healthz``, ``/readyz`` and ``/metrics`` on a small threaded HTTP server.

The server runs in its own thread so that a slow tick never makes liveness time out:
``/healthz`` answers from what the loop last recorded, without waiting on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Endpoints:
    def __init__(
        self,
        listen: str,
        *,
        healthy: Callable[[], bool],
        ready: Callable[[], tuple[bool, str]],
        registry: CollectorRegistry,
    ) -> None:
        host, _, port = listen.rpartition(":")
        handler = _handler(healthy, ready, registry)
        self.server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="rollbackd-endpoints"
        )

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Endpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(
    healthy: Callable[[], bool],
    ready: Callable[[], tuple[bool, str]],
    registry: CollectorRegistry,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok = healthy()
                self._reply(200 if ok else 503, "ok\n" if ok else "not ticking\n")
            elif path == "/readyz":
                ok, why = ready()
                self._reply(200 if ok else 503, why + "\n")
            elif path == "/metrics":
                self._reply(200, generate_latest(registry).decode(), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, "not found\n")

        def _reply(self, status: int, body: str, ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return  # probes every few seconds would drown the event stream

    return Handler
