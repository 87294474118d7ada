"""The ``rollbackd`` command: run, check, test, backtest, demo.

Exit statuses are part of the contract: ``run`` exits 2 on a bad configuration,
``check`` 1 on any problem, ``test`` 1 when any expectation fails. Problems are
printed as ``path:line: message``, never as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click

from rollbackd.config import ConfigError, default_config_path
from rollbackd.record import configure_logging


def _config_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Configuration file [default: $ROLLBACKD_CONFIG, then ./config.yaml]",
    )(func)


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        click.echo(str(problem), err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rollbackd")
def main() -> None:
    """Monitoring-driven rollbacks: watch, attribute, roll back or page."""


@main.command()
@_config_option
@click.option(
    "--mode",
    type=click.Choice(["shadow", "enforce"]),
    default=None,
    help="Override the configured mode.",
)
@click.option("--once", is_flag=True, help="Run one tick and exit.")
def run(config_path: Path | None, mode: str | None, once: bool) -> None:
    """Run the daemon."""
    from rollbackd import app
    from rollbackd.endpoints import Endpoints

    path = config_path or default_config_path()
    try:
        loaded = app.load(path, mode=mode)
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(2)
    configure_logging(loaded.settings.log_level)
    try:
        daemon, recorder = app.build(loaded)
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(2)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        endpoints = None
        if not once:
            try:
                endpoints = Endpoints(
                    loaded.settings.listen,
                    healthy=daemon.healthy,
                    ready=daemon.ready,
                    registry=daemon.metrics.registry,
                )
            except OSError as exc:
                click.echo(f"{path}: listen {loaded.settings.listen}: {exc.strerror}", err=True)
                sys.exit(2)
            endpoints.start()
        run_elector = getattr(daemon.leadership, "run", None)
        stop_elector = asyncio.Event()
        electing = asyncio.create_task(run_elector(stop_elector)) if run_elector else None
        recorder.event(
            "daemon_started",
            service="*",
            mode=daemon.mode,
            services=len(daemon.services),
            rules=len(daemon.rules),
            listen=loaded.settings.listen if endpoints else None,
        )
        try:
            await daemon.run(stop, once=once)
        finally:
            if electing is not None:
                # Releasing the Lease lets another replica take over at once.
                stop_elector.set()
                await asyncio.wait({electing}, timeout=3)
            if endpoints is not None:
                endpoints.stop()
            await daemon.aclose()
            recorder.event("daemon_stopped", service="*", ticks=daemon.ticks)
            recorder.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@main.command()
@_config_option
def check(config_path: Path | None) -> None:
    """Validate the configuration and every rule file."""
    from rollbackd import app

    path = config_path or default_config_path()
    configure_logging("error", stream=sys.stderr)  # rejected queries are reported as problems
    try:
        loaded, warnings = app.check(path)
    except ConfigError as exc:
        _print_problems(exc)
        sys.exit(1)
    for warning in warnings:
        click.echo(str(warning), err=True)
    click.echo(
        f"{path}: ok ({len(loaded.settings.services)} services, {len(loaded.rules)} rules, "
        f"mode {loaded.settings.mode})"
    )


@main.command("test")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--prometheus",
    "prometheus_url",
    default=None,
    help="Use this Prometheus, which already holds the series, instead of starting one.",
)
@click.option(
    "--write-blocks",
    "write_blocks",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Only write the tests' series as TSDB blocks here (for --prometheus), run nothing.",
)
def test_cmd(
    files: tuple[Path, ...], prometheus_url: str | None, write_blocks: Path | None
) -> None:
    """Run rule unit tests on synthetic series."""
    try:
        from rollbackd.ruletest import main as run_tests
    except ImportError:
        click.echo("rollbackd test is not available in this build", err=True)
        sys.exit(2)
    configure_logging("warning", stream=sys.stderr)  # results own stdout
    sys.exit(run_tests(list(files), prometheus_url=prometheus_url, write_blocks=write_blocks))


@main.command(context_settings={"ignore_unknown_options": False})
@_config_option
@click.option("--start", required=True, help="Start: RFC 3339, unix seconds, or -7d.")
@click.option("--end", required=True, help="End: RFC 3339, unix seconds, or now.")
@click.option("--step", default=None, help="Evaluation step [default: the interval].")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--suggest", "suggest_rule", default=None, help="Sweep thresholds of a rule.")
def backtest(
    config_path: Path | None,
    start: str,
    end: str,
    step: str | None,
    plot_path: Path | None,
    fmt: str,
    suggest_rule: str | None,
) -> None:
    """Replay the rules over Prometheus history."""
    try:
        from rollbackd.backtest import main as run_backtest
    except ImportError:
        click.echo("rollbackd backtest is not available in this build", err=True)
        sys.exit(2)
    configure_logging("warning", stream=sys.stderr)  # results own stdout
    path = config_path or default_config_path()
    sys.exit(
        run_backtest(
            path, start=start, end=end, step=step, plot=plot_path, fmt=fmt, suggest=suggest_rule
        )
    )


@main.command()
@click.option(
    "--keep",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the demo's files (events, state, report) in this folder.",
)
def demo(keep: Path | None) -> None:
    """Run the whole loop on this machine: a service, a bad deploy, a rollback."""
    from rollbackd.demo import run_demo

    sys.exit(run_demo(keep=keep))


if __name__ == "__main__":
    main()
