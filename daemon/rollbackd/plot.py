"""Pictures of a backtest: why each rule fired, at a glance.

One panel per service per query rule, stacked on a shared time axis: the rule's signal,
its threshold (for baseline rules the baseline and the band up to the threshold), the
pending and firing spans shaded, stretches of no data greyed, revision changes as
dashed lines, and every decision marked (a rollback as a red triangle, a page as an
orange dot, a notification as a blue dot, a blocked rollback as a grey cross).

``.png`` is rendered by matplotlib's Agg backend; ``.svg`` is matplotlib's SVG; ``.html``
is a self-contained page with that SVG inline, the summary and the decisions table.
Inline SVG rather than plotly: matplotlib is already the PNG dependency, the page needs
no JavaScript and no network, and it stays a few hundred kilobytes where an embedded
plotly bundle alone is several megabytes.

matplotlib's ``Figure`` is used without pyplot, so nothing global (no GUI backend, no
figure registry) is touched, which keeps the command and tests free of side effects.

Limits: with more than ``max_services`` services only those with the most decisions
(then firing time) are drawn, and the title says how many were left out.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollbackd.backtest import BacktestResult, summarize
from rollbackd.config import format_duration
from rollbackd.replay import Trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["figure", "panels", "write_plot"]

MAX_SERVICES = 12
DAY = 86400.0
PANEL_HEIGHT = 2.1  # inches
WIDTH = 13.0
MARKERS = {
    "rollback": ("v", "#c62828", "rollback"),
    "page": ("o", "#ef6c00", "page"),
    "notify": ("o", "#1565c0", "notify"),
    "blocked": ("X", "#616161", "blocked rollback"),
}


def panels(result: BacktestResult, *, max_services: int = MAX_SERVICES) -> list[tuple[str, str]]:
    """The (service, rule) pairs drawn, in order: chosen services times query rules."""
    services = list(result.setup.services)
    if len(services) > max_services:
        weight: dict[str, tuple[int, float]] = {}
        for name in services:
            decisions = sum(1 for d in result.decisions() if d["service"] == name)
            firing = 0
            for rule in result.query_rules:
                trace = result.replay.traces.get((name, rule.name))
                if trace is not None:
                    firing += trace.states.count(2)
            weight[name] = (decisions, firing)
        chosen = set(sorted(services, key=lambda n: weight[n], reverse=True)[:max_services])
        services = [s for s in services if s in chosen]
    return [(s, r.name) for s in services for r in result.query_rules]


def figure(result: BacktestResult, *, max_services: int = MAX_SERVICES) -> Figure:
    """Draw the backtest; one axes per panel (``len(fig.axes) == len(panels(result))``)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    pairs = panels(result, max_services=max_services)
    if not result.replay.traces:
        raise ValueError("the backtest recorded no readings (record=True is needed to plot)")
    count = max(1, len(pairs))
    fig = Figure(figsize=(WIDTH, 1.2 + PANEL_HEIGHT * count), layout="constrained")
    axes = fig.subplots(count, 1, sharex=True, squeeze=False)[:, 0]
    # matplotlib's date numbers: days since 1970-01-01 UTC.
    times = [t / DAY for t in result.replay.times]
    decisions = result.decisions()
    changes = result.revision_changes()
    rules = {r.name: r for r in result.query_rules}

    for ax, (service, rule_name) in zip(axes, pairs, strict=False):
        trace = result.replay.traces[(service, rule_name)]
        rule = rules[rule_name]
        _signal(ax, times, trace, uses_baseline=rule.uses_baseline)
        _spans(ax, times, trace)
        for change in changes:
            if change["service"] == service:
                _revision(ax, change)
        for row in decisions:
            if row["service"] == service and row["rule"] == rule_name:
                _decision(ax, row)
        condition = f"{rule.condition} {rule.threshold:g}"
        hold = format_duration(rule.for_) if rule.for_ else "0s"
        ax.set_title(f"{service} · {rule_name} ({condition}, for {hold})", loc="left", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.25)

    if not pairs:
        axes[0].text(0.5, 0.5, "no query rules to draw", ha="center", transform=axes[0].transAxes)
    axes[-1].xaxis_date(tz=UTC)
    locator = AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    axes[-1].xaxis.set_major_locator(locator)
    formatter = ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
    axes[-1].xaxis.set_major_formatter(formatter)
    _legend(fig)
    left_out = len(result.setup.services) - len({s for s, _ in pairs})
    title = (
        f"rollbackd backtest {_clock(result.start)} .. {_clock(result.end)} UTC, "
        f"step {format_duration(result.step)}, mode {result.setup.mode}"
    )
    if left_out > 0:
        title += f" ({left_out} quieter services not drawn)"
    fig.suptitle(title, fontsize=10)
    return fig


def _signal(ax: Axes, times: Sequence[float], trace: Trace, *, uses_baseline: bool) -> None:
    ax.plot(times, list(trace.values), color="#263238", linewidth=0.9, label="signal")
    thresholds = list(trace.thresholds)
    if uses_baseline:
        baselines = list(trace.baselines)
        ax.plot(times, baselines, color="#00897b", linestyle=":", linewidth=0.9, label="baseline")
        ax.fill_between(
            times, baselines, thresholds, color="#00897b", alpha=0.12, step="post", linewidth=0
        )
    ax.plot(
        times,
        thresholds,
        color="#c62828",
        linestyle="--",
        linewidth=0.9,
        drawstyle="steps-post",
        label="threshold",
    )


def _spans(ax: Axes, times: Sequence[float], trace: Trace) -> None:
    """Shade runs of pending (amber) and firing (red) ticks, and of no data (grey)."""
    colours = {1: ("#ffb300", 0.25), 2: ("#e53935", 0.22)}
    for code, (colour, alpha) in colours.items():
        for first, last in _runs([s == code for s in trace.states]):
            ax.axvspan(
                times[first],
                times[min(last + 1, len(times) - 1)],
                color=colour,
                alpha=alpha,
                linewidth=0,
            )
    for first, last in _runs([math.isnan(v) for v in trace.values]):
        ax.axvspan(
            times[first],
            times[min(last + 1, len(times) - 1)],
            color="#9e9e9e",
            alpha=0.08,
            linewidth=0,
        )


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for index, flag in enumerate(flags):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


def _revision(ax: Axes, change: dict[str, Any]) -> None:
    at = change["at"] / DAY
    ax.axvline(at, color="#5e35b1", linestyle="--", linewidth=0.8)
    ax.annotate(
        str(change["revision"]),
        xy=(at, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(2, -10),
        textcoords="offset points",
        fontsize=7,
        color="#5e35b1",
    )


def _decision(ax: Axes, row: dict[str, Any]) -> None:
    outcome = str(row["outcome"] or "")
    kind = "blocked" if outcome.startswith("blocked:") else str(row["action"])
    marker, colour, _label = MARKERS.get(kind, ("o", "#616161", kind))
    at = row["at"] / DAY
    ax.plot(
        [at],
        [0.93],
        marker=marker,
        color=colour,
        markersize=8,
        transform=ax.get_xaxis_transform(),
        linestyle="none",
        clip_on=False,
    )


def _legend(fig: Figure) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], color="#263238", label="signal"),
        Line2D([], [], color="#c62828", linestyle="--", label="threshold"),
        Patch(color="#ffb300", alpha=0.4, label="pending"),
        Patch(color="#e53935", alpha=0.35, label="firing"),
        Patch(color="#9e9e9e", alpha=0.2, label="no data"),
        Line2D([], [], color="#5e35b1", linestyle="--", label="revision change"),
    ]
    for marker, colour, label in MARKERS.values():
        handles.append(Line2D([], [], marker=marker, color=colour, linestyle="none", label=label))
    # Below the panels, so it never hides a marker.
    fig.legend(handles=handles, loc="outside lower center", fontsize=7, ncol=len(handles))


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


# ----------------------------------------------------------------------------- files


def write_plot(result: BacktestResult, path: Path, *, max_services: int = MAX_SERVICES) -> Figure:
    """Write ``path`` as PNG, SVG or a self-contained HTML page; returns the figure."""
    fig = figure(result, max_services=max_services)
    suffix = path.suffix.lower()
    if suffix == ".png":
        fig.savefig(path, format="png", dpi=100)
    elif suffix == ".svg":
        fig.savefig(path, format="svg")
    elif suffix in (".html", ".htm"):
        path.write_text(html_page(result, fig), encoding="utf-8")
    else:
        raise ValueError(f"cannot write a plot as {suffix or 'a file without a suffix'}")
    return fig


def html_page(result: BacktestResult, fig: Figure) -> str:
    """A page with the figure as inline SVG, the summary and the decisions."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype: not allowed inline
    esc = html.escape

    summary_rows = []
    for s in summarize(result).values():
        if s.skipped:
            cells = [s.rule, s.impact, f"skipped: {s.skipped}", "", "", "", ""]
        else:
            cells = [
                s.rule,
                s.impact,
                str(s.firings),
                format_duration(round(s.pending_seconds)),
                str(s.rollbacks),
                str(s.pages),
                str(s.blocked),
            ]
        summary_rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    decision_rows = []
    for d in result.decisions():
        cells = [
            d["ts"],
            d["service"],
            d["rule"],
            _num(d["value"]),
            _num(d["threshold"]),
            d["attribution"],
            d["action"],
            d["outcome"],
            d["rollback_to"] or "",
        ]
        decision_rows.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    title = f"rollbackd backtest {_clock(result.start)} – {_clock(result.end)} UTC"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #212121; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #bdbdbd; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #eeeeee; }}
svg {{ max-width: 100%; height: auto; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>Step {esc(format_duration(result.step))}, mode {esc(result.setup.mode)},
{len(result.setup.services)} services. What rollbackd would have decided; after a would-be
rollback the history shown is what really happened next.</p>
<h2>Summary per rule</h2>
<table id="summary">
<tr><th>rule</th><th>impact</th><th>firings</th><th>pending</th><th>rollbacks</th>
<th>pages</th><th>blocked</th></tr>
{"".join(summary_rows)}
</table>
<h2>Signals</h2>
<figure id="plot">
{svg}
</figure>
<h2>Decisions</h2>
<table id="decisions">
<tr><th>time (UTC)</th><th>service</th><th>rule</th><th>value</th><th>threshold</th>
<th>attribution</th><th>action</th><th>outcome</th><th>rollback to</th></tr>
{"".join(decision_rows)}
</table>
</body>
</html>
"""


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
