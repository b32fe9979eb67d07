"""The live view's CLI: `run JOB --dashboard [PORT]` (the option and `live`) and `watch JOB`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .clihelp import _reports_errors, _spec, db_option, job_argument
from .errors import BatchRunnerError

if TYPE_CHECKING:
    from .spec import JobSpec

dashboard_option = click.option(
    "--dashboard",
    type=click.IntRange(0, 65535),
    is_flag=False,
    flag_value=0,
    default=None,
    metavar="[PORT]",
    help="Serve a live page of the run on 127.0.0.1:PORT (no PORT or 0: a free port); needs the html extra.",
)


@contextlib.contextmanager
def live(spec: JobSpec, port: int | None) -> Iterator[None]:
    """With `port` (not None): the live page served while the block runs, stopped when it ends.
    The html extra is checked first, before anything is sent."""
    if port is None:
        yield
        return
    from .dashboard import Dashboard
    from .htmlreport import require

    require("--dashboard")
    server = Dashboard(spec, port)
    click.echo(f"dashboard: {server.start()}", err=True)
    try:
        yield
    finally:
        server.stop()


@click.command()
@job_argument
@db_option
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: a free port.")
@click.option("--until-done", is_flag=True, help="Stop once no run of the job is going (checked every second).")
@_reports_errors
def watch(job: Path, db: Path | None, port: int, until_done: bool) -> None:
    """Serve a live page of JOB's store on 127.0.0.1 (read-only) until Ctrl-C: for a run already going.

    \b
    Example:
        batchrunner watch jobs/reviews-summary.toml --until-done
    """
    from .lock import live_holder

    spec = _spec(job, db=db)
    if not spec.db_path.is_file():
        msg = f"no store at {spec.db_path} yet: start the run first (or give --db)"
        raise BatchRunnerError(msg)
    ticks = threading.Event()  # never set: a one-second tick Ctrl-C interrupts
    with live(spec, port), contextlib.suppress(KeyboardInterrupt):
        click.echo("Ctrl-C to stop." if not until_done else "Stops when the run ends (or Ctrl-C).", err=True)
        while not (until_done and live_holder(spec.db_path) is None):
            ticks.wait(1)
