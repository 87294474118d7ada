"""A local stand-in for the parts of the GitHub REST API a deploy workflow uses.

It behaves like github.com where rollbackd depends on it:

- ``POST .../workflows/{workflow}/dispatches`` answers 204 with no body, and the run it
  creates shows up in the runs list only after a short lag, as on GitHub;
- a run moves ``queued`` -> ``in_progress`` -> ``completed`` over successive GETs and
  ends with the conclusion the test chose;
- ``POST .../runs/{id}/rerun`` answers 201; the run keeps its id, its ``run_attempt``
  grows, and for a poll or two the old, completed attempt is still what GET returns;
- 401 ``Bad credentials`` for an unknown token, 403 ``Resource not accessible`` for a
  read-only token that tries to write, 404 ``Not Found`` for an unknown workflow or run,
  403 (or 429) for a rate limit with ``Retry-After`` or ``x-ratelimit-reset`` headers.

``GET /version`` stands for the deployed service's own version endpoint.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class StandInRun:
    id: int
    workflow: str
    display_title: str
    head_branch: str
    head_sha: str
    created_at: datetime
    status: str = "queued"
    conclusion: str | None = None
    run_attempt: int = 1
    event: str = "workflow_dispatch"
    inputs: dict[str, str] = field(default_factory=dict)
    # Polls left in the current phase, and the conclusion the run will reach.
    phase_polls: int = 0
    outcome: str = "success"
    lag_polls: int = 0
    pending_attempt: bool = False
    seen_statuses: list[str] = field(default_factory=list)


@dataclass
class RateLimit:
    count: int
    seconds: int
    status: int
    style: str


class GitHubStandIn:
    """One repository's Actions API, served on 127.0.0.1 at an ephemeral port."""

    def __init__(
        self,
        *,
        repo: str = "acme/codex-api",
        workflows: tuple[str, ...] = ("deploy.yml",),
        queued_polls: int = 1,
        in_progress_polls: int = 2,
        list_lag: int = 1,
        rerun_lag: int = 1,
    ) -> None:
        self.repo = repo
        self.workflows = workflows
        self.tokens = {"write-token": "write", "read-token": "read"}
        self.queued_polls = queued_polls
        self.in_progress_polls = in_progress_polls
        self.list_lag = list_lag
        self.rerun_lag = rerun_lag
        self.conclusion = "success"
        self.version = "v2"
        self.runs: dict[int, StandInRun] = {}
        self.dispatches: list[dict[str, Any]] = []
        self.reruns: list[int] = []
        self.requests: list[tuple[str, str, str]] = []
        self.rate_limited_answers = 0
        self._limits: list[RateLimit] = []
        self._next_id = 9000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # A short poll interval makes shutdown quick at the end of every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> GitHubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ test controls

    def add_run(
        self,
        title: str,
        *,
        head_sha: str = "0" * 40,
        conclusion: str = "success",
        workflow: str = "deploy.yml",
    ) -> int:
        """A finished run from the past, for re-runs to find."""
        with self._lock:
            run = self._new_run(workflow, title, "main", head_sha, {})
            run.status, run.conclusion, run.lag_polls = "completed", conclusion, 0
            run.outcome = conclusion
            return run.id

    def rate_limit(
        self, *, count: int = 1, seconds: int = 1, status: int = 403, style: str = "retry-after"
    ) -> None:
        """The next ``count`` API requests are refused as over the rate limit."""
        self._limits.append(RateLimit(count, seconds, status, style))

    def html_url(self, run_id: int) -> str:
        return f"https://github.com/{self.repo}/actions/runs/{run_id}"

    # ------------------------------------------------------------------ model

    def _new_run(
        self, workflow: str, title: str, ref: str, sha: str, inputs: dict[str, str]
    ) -> StandInRun:
        self._next_id += 1
        run = StandInRun(
            id=self._next_id,
            workflow=workflow,
            display_title=title,
            head_branch=ref,
            head_sha=sha,
            created_at=datetime.now(UTC),
            inputs=inputs,
            phase_polls=self.queued_polls,
            outcome=self.conclusion,
            lag_polls=self.list_lag,
        )
        self.runs[run.id] = run
        return run

    def _advance(self, run: StandInRun) -> None:
        """One GET of a run moves it along its life."""
        if run.pending_attempt:
            if run.lag_polls > 0:
                run.lag_polls -= 1
                return
            run.pending_attempt = False
            run.run_attempt += 1
            run.status, run.conclusion = "queued", None
            run.phase_polls = self.queued_polls
            return
        if run.status == "completed":
            return
        if run.phase_polls > 0:
            run.phase_polls -= 1
            return
        if run.status == "queued":
            run.status, run.phase_polls = "in_progress", self.in_progress_polls
        else:
            run.status, run.conclusion = "completed", run.outcome

    def _run_json(self, run: StandInRun) -> dict[str, Any]:
        stamp = run.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "id": run.id,
            "name": "Deploy",
            "display_title": run.display_title,
            "event": run.event,
            "status": run.status,
            "conclusion": run.conclusion,
            "head_branch": run.head_branch,
            "head_sha": run.head_sha,
            "run_number": run.id - 9000,
            "run_attempt": run.run_attempt,
            "path": f".github/workflows/{run.workflow}",
            "html_url": self.html_url(run.id),
            "url": f"https://api.github.com/repos/{self.repo}/actions/runs/{run.id}",
            "created_at": stamp,
            "updated_at": stamp,
        }

    # ------------------------------------------------------------------ API

    def _route(
        self, method: str, path: str, query: dict[str, str], body: dict[str, Any], token: str
    ) -> tuple[int, Any]:
        prefix = f"/repos/{self.repo}/actions/"
        if not path.startswith(prefix):
            return 404, {"message": "Not Found"}
        rest = path.removeprefix(prefix)
        if (m := re.fullmatch(r"workflows/([^/]+)/dispatches", rest)) and method == "POST":
            return self._dispatch(m[1], body, token)
        if (m := re.fullmatch(r"workflows/([^/]+)/runs", rest)) and method == "GET":
            return self._list(m[1], query)
        if (m := re.fullmatch(r"runs/(\d+)", rest)) and method == "GET":
            return self._get(int(m[1]))
        if (m := re.fullmatch(r"runs/(\d+)/rerun", rest)) and method == "POST":
            return self._rerun(int(m[1]), token)
        return 404, {"message": "Not Found"}

    def _dispatch(self, workflow: str, body: dict[str, Any], token: str) -> tuple[int, Any]:
        if workflow not in self.workflows:
            return 404, {"message": "Not Found"}
        if self.tokens[token] != "write":
            return 403, {"message": "Resource not accessible by personal access token"}
        if "ref" not in body:
            return 422, {"message": 'Invalid request.\n\n"ref" wasn\'t supplied.'}
        inputs = {str(k): str(v) for k, v in body.get("inputs", {}).items()}
        self.dispatches.append({"ref": body["ref"], "inputs": inputs})
        title = f"Deploy {inputs.get('tag', body['ref'])}"
        self._new_run(workflow, title, body["ref"], "f" * 40, inputs)
        return 204, None

    def _list(self, workflow: str, query: dict[str, str]) -> tuple[int, Any]:
        if workflow not in self.workflows:
            return 404, {"message": "Not Found"}
        runs = []
        for run in sorted(self.runs.values(), key=lambda r: r.id, reverse=True):
            if run.workflow != workflow:
                continue
            if run.lag_polls > 0 and not run.pending_attempt and run.status == "queued":
                # A new run is not listed at once, as on GitHub.
                run.lag_polls -= 1
                continue
            if "event" in query and run.event != query["event"]:
                continue
            if "status" in query and query["status"] not in (run.status, run.conclusion):
                continue
            if "created" in query and not _created_matches(run.created_at, query["created"]):
                continue
            runs.append(self._run_json(run))
        per_page = int(query.get("per_page", 30))
        page = int(query.get("page", 1))
        chunk = runs[(page - 1) * per_page : page * per_page]
        return 200, {"total_count": len(runs), "workflow_runs": chunk}

    def _get(self, run_id: int) -> tuple[int, Any]:
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"message": "Not Found"}
        self._advance(run)
        run.seen_statuses.append(run.status)
        return 200, self._run_json(run)

    def _rerun(self, run_id: int, token: str) -> tuple[int, Any]:
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"message": "Not Found"}
        if self.tokens[token] != "write":
            return 403, {"message": "Resource not accessible by personal access token"}
        if run.status != "completed" or run.pending_attempt:
            return 403, {"message": "This workflow is already running"}
        self.reruns.append(run_id)
        run.pending_attempt, run.lag_polls = True, self.rerun_lag
        run.outcome = self.conclusion
        return 201, {}

    def _limited(self) -> tuple[int, dict[str, str]] | None:
        if not self._limits:
            return None
        limit = self._limits[0]
        limit.count -= 1
        if limit.count <= 0:
            self._limits.pop(0)
        self.rate_limited_answers += 1
        if limit.style == "retry-after":
            return limit.status, {"Retry-After": str(limit.seconds)}
        reset = int(time.time()) + limit.seconds
        return limit.status, {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(reset),
        }

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
                headers: dict[str, str] = {}
                with standin._lock:
                    standin.requests.append((method, parts.path, auth))
                    if parts.path == "/version":
                        status, answer = 200, standin.version + "\n"
                    elif token not in standin.tokens:
                        status, answer = (
                            401,
                            {
                                "message": "Bad credentials",
                                "documentation_url": "https://docs.github.com/rest",
                            },
                        )
                    elif limited := standin._limited():
                        status, headers = limited
                        answer = {"message": "API rate limit exceeded for user ID 1."}
                    else:
                        body = json.loads(raw) if raw else {}
                        status, answer = standin._route(method, parts.path, query, body, token)
                self._reply(status, answer, headers)

            def _reply(self, status: int, answer: Any, headers: dict[str, str]) -> None:
                if isinstance(answer, str):
                    data, kind = str(answer).encode(), "text/plain"
                else:
                    data = b"" if answer is None else json.dumps(answer).encode()
                    kind = "application/json; charset=utf-8"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if data:
                    self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def _created_matches(created: datetime, condition: str) -> bool:
    """GitHub's ``created`` filter; only the ``>=`` form is needed here."""
    if not condition.startswith(">="):
        return True
    since = datetime.fromisoformat(condition[2:].replace("Z", "+00:00"))
    return created.replace(microsecond=0) >= since
