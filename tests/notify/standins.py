"""Local stand-ins for the notification APIs, real HTTP servers on 127.0.0.1.

They check payloads the way the real services do where rollbackd depends on it:

- ``PagerDutyStandIn``: Events API v2 (``/v2/enqueue``) and Change Events
  (``/v2/change/enqueue``). A routing key is 32 characters; ``event_action`` is
  ``trigger``, ``acknowledge`` or ``resolve``; ``dedup_key`` is at most 255 characters
  and required to acknowledge or resolve; a trigger needs ``payload.summary`` (at most
  1024 characters), ``payload.source`` and ``payload.severity`` (critical, error,
  warning, info). A bad event is 400 ``{"status": "invalid event", "errors": [...]}``;
  a good one 202 ``{"status": "success", "dedup_key": ...}``.
- ``SlackStandIn``: incoming webhooks at ``/services/T.../B.../<token>``; an unknown
  hook is 404 ``no_service``, a body that is not JSON 400 ``invalid_payload``, a message
  with neither ``text`` nor ``blocks`` 400 ``no_text``, a section longer than 3000
  characters 400 ``invalid_blocks``; a good one 200 ``ok``.
- ``Receiver``: any path, 200, for webhooks and for Alertmanager's webhook receiver.

Every stand-in records what it accepted, can be told to answer the next requests
with a canned failure (``fail_next``, for 429 with ``Retry-After`` or 5xx), can hold
requests until released (``hold``, a slow channel), and can be stopped and started
again on the same port (a channel that is down: connection refused).
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Answer:
    status: int
    body: Any = ""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, dict | list):
            return json.dumps(self.body).encode(), "application/json"
        return str(self.body).encode(), "text/plain; charset=utf-8"


class StandIn:
    """A threaded HTTP server whose answers come from ``answer(request)``."""

    def __init__(self) -> None:
        self.received: list[Request] = []
        self.accepted: list[Request] = []
        self.fail_next: list[Answer] = []
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        handler = self._handler_class()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: clients now get connection refused on this port."""
        self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ behaviour

    def answer(self, request: Request) -> Answer:
        return Answer(200, "ok")

    def _respond(self, request: Request) -> Answer:
        with self._lock:
            self.received.append(request)
            canned = self.fail_next.pop(0) if self.fail_next else None
        self.hold.wait(timeout=30)
        if canned is not None:
            return canned
        result = self.answer(request)
        if 200 <= result.status < 300:
            with self._lock:
                self.accepted.append(request)
        return result

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, dict(self.headers.items()), raw)
                result = standin._respond(request)
                body, content_type = result.encoded()
                # The client may have given up waiting (a timeout under test).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(result.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in result.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


class Receiver(StandIn):
    """Accepts anything: a webhook endpoint, or Alertmanager's webhook receiver."""


# --------------------------------------------------------------------------- PagerDuty

SEVERITIES = {"critical", "error", "warning", "info"}


def _invalid(*errors: str) -> Answer:
    return Answer(
        400,
        {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)},
    )


class PagerDutyStandIn(StandIn):
    def answer(self, request: Request) -> Answer:
        if request.method != "POST":
            return Answer(405, "")
        try:
            body = request.json
        except ValueError:
            return _invalid("the body is not JSON")
        if not isinstance(body, dict):
            return _invalid("the body is not a JSON object")
        if request.path == "/v2/enqueue":
            errors = self._event_errors(body)
        elif request.path == "/v2/change/enqueue":
            errors = self._change_errors(body)
        else:
            return Answer(404, {"status": "not found"})
        if errors:
            return _invalid(*errors)
        return Answer(
            202,
            {
                "status": "success",
                "message": "Event processed",
                "dedup_key": body.get("dedup_key", "generated"),
            },
        )

    @staticmethod
    def _key_errors(body: dict[str, Any]) -> list[str]:
        key = body.get("routing_key")
        if not isinstance(key, str) or len(key) != 32:
            return ["'routing_key' must be a 32 character integration key"]
        return []

    def _event_errors(self, body: dict[str, Any]) -> list[str]:
        errors = self._key_errors(body)
        action = body.get("event_action")
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("'event_action' must be trigger, acknowledge or resolve")
        dedup = body.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or not 0 < len(dedup) <= 255):
            errors.append("'dedup_key' must be a string of 1 to 255 characters")
        if action in ("acknowledge", "resolve") and not dedup:
            errors.append("'dedup_key' is required to acknowledge or resolve")
        if action == "trigger":
            errors += self._payload_errors(body.get("payload"))
            for link in body.get("links", []):
                if not isinstance(link, dict) or not isinstance(link.get("href"), str):
                    errors.append("each of 'links' needs an 'href'")
        return errors

    @staticmethod
    def _payload_errors(payload: Any) -> list[str]:
        if not isinstance(payload, dict):
            return ["'payload' is required to trigger"]
        errors = []
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) > 1024:
            errors.append("'payload.summary' must be 1 to 1024 characters")
        if not isinstance(payload.get("source"), str) or not payload["source"]:
            errors.append("'payload.source' is required")
        if payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' must be critical, error, warning or info")
        if "timestamp" in payload:
            try:
                datetime.fromisoformat(payload["timestamp"])
            except (TypeError, ValueError):
                errors.append("'payload.timestamp' must be ISO 8601")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            errors.append("'payload.custom_details' must be an object")
        return errors

    def _change_errors(self, body: dict[str, Any]) -> list[str]:
        errors = self._key_errors(body)
        payload = body.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is required"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) > 1024:
            errors.append("'payload.summary' must be 1 to 1024 characters")
        return errors

    def events(self, action: str | None = None) -> list[dict[str, Any]]:
        found = [r.json for r in self.accepted if r.path == "/v2/enqueue"]
        return [e for e in found if action is None or e["event_action"] == action]

    def changes(self) -> list[dict[str, Any]]:
        return [r.json for r in self.accepted if r.path == "/v2/change/enqueue"]


# --------------------------------------------------------------------------- Slack


class SlackStandIn(StandIn):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.hook_path = f"/services/T0001/B0001/{token}"

    @property
    def hook_url(self) -> str:
        return self.url + self.hook_path

    def answer(self, request: Request) -> Answer:
        if request.path != self.hook_path:
            return Answer(404, "no_service")
        try:
            body = request.json
        except ValueError:
            return Answer(400, "invalid_payload")
        if not isinstance(body, dict):
            return Answer(400, "invalid_payload")
        if not body.get("text") and not body.get("blocks"):
            return Answer(400, "no_text")
        for block in body.get("blocks", []):
            if not isinstance(block, dict) or "type" not in block:
                return Answer(400, "invalid_blocks")
            text = block.get("text", {}).get("text", "")
            if block["type"] == "section" and len(text) > 3000:
                return Answer(400, "invalid_blocks")
        return Answer(200, "ok")

    def texts(self) -> list[str]:
        return [r.json["text"] for r in self.accepted]
