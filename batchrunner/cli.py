"""The `batchrunner` command: a thin layer over the library (each command calls one function).

Heavy modules (polars, httpx, aiohttp) are imported inside the commands that use them, so
`batchrunner --help`, `status` and `runs` start at once.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from .batchcli import batches, cancel
from .clihelp import _reports_errors, _spec, db_option, job_argument, prices_option
from .dashcli import dashboard_option, live, watch
from .errors import EXIT_CODE_HELP, BatchRunnerError
from .scalecli import scale_options

log = logging.getLogger("batchrunner")

_EXIT_CODES = "\n".join(f"    {int(code):>3}  {text}" for code, text in EXIT_CODE_HELP.items())


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=f"\b\nExit codes:\n{_EXIT_CODES}",
)
@click.version_option(package_name="batchrunner")
def cli() -> None:
    """Run a table of prompts through DashScope (Qwen), checkpointed and resumable.

    \b
    Example:
        batchrunner run examples/quickstart.toml --simulate
    """


@cli.command()
@job_argument
@db_option
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Output table (default: from the spec)."
)
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N requests in this run.")
@click.option("--simulate", is_flag=True, help="Use the built-in DashScope simulator (no key, no cost).")
@click.option("--retry-failed", is_flag=True, help="Send again the rows that failed in earlier runs.")
@prices_option
@click.option(
    "--max-cost",
    type=click.FloatRange(min=0, min_open=True),
    help="The job's budget in USD, over all its runs (sets [limits] max_cost_usd).",
)
@click.option(
    "--max-cost-per-run",
    type=click.FloatRange(min=0, min_open=True),
    help="A budget in USD for this run alone (sets [limits] max_cost_usd_per_run).",
)
@click.option("--write-partial", is_flag=True, help="On Ctrl-C / SIGTERM, still write the output table.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Also write log lines to this file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress display; only warnings and errors on stderr.")
@click.option("--new-store", is_flag=True, help="Start a new store in an empty store file (0 bytes, or no tables).")
@click.option(
    "--detach",
    is_flag=True,
    help="Batch modes: ingest what finished, submit what is pending, and exit (6 while batches run).",
)
@click.option(
    "--batch-check",
    is_flag=True,
    help="Send the first 100 rows as a free batch on batch-test-model and report; nothing is billed.",
)
@click.option(
    "--sim-batch-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="With --simulate: how long each simulated batch takes (default: the simulator's pace).",
)
@dashboard_option
@scale_options
@_reports_errors
def run(
    job: Path,
    db: Path | None,
    output: Path | None,
    limit: int | None,
    simulate: bool,
    retry_failed: bool,
    prices: Path | None,
    max_cost: float | None,
    max_cost_per_run: float | None,
    write_partial: bool,
    log_file: Path | None,
    log_format: str,
    quiet: bool,
    new_store: bool,
    detach: bool,
    batch_check: bool,
    sim_batch_seconds: float | None,
    dashboard: int | None,
    scale: dict[str, Any],
) -> None:
    """Run JOB (a TOML spec): send every row not yet done, then write the output table.

    Safe to kill and to run again: finished rows are never sent twice. Only one run of a
    job at a time: a second one exits with code 75.

    \b
    Example:
        DASHSCOPE_API_KEY=sk-... batchrunner run jobs/reviews-summary.toml
    """
    from .logs import configure
    from .progress import for_terminal
    from .runner import run_job

    tty = sys.stderr.isatty()
    configure(log_file=log_file, fmt="json" if log_format == "json" else "text", quiet=quiet, tty=tty)
    spec = _spec(job, db=db, output=output, max_cost=max_cost, max_cost_per_run=max_cost_per_run).with_scale(**scale)
    with live(spec, dashboard):
        summary = run_job(
            spec,
            limit=limit,
            simulate=simulate,
            retry_failed=retry_failed,
            progress=for_terminal(spec.job.name, quiet=quiet, tty=tty),
            prices=prices,
            write_partial=write_partial,
            handle_signals=True,
            new_store=new_store,
            detach=detach,
            batch_check=batch_check,
            sim_batch_seconds=sim_batch_seconds,
        )
    log.info(summary.line(), extra={"fields": summary.fields()})
    if summary.message:
        (log.warning if summary.exit_code else log.info)(summary.message)
    if summary.output_path is not None:
        table = ", ".join(f"{k} {v}" for k, v in sorted(summary.table.items()))
        click.echo(f"output table: {summary.output_path} ({table})")
    click.echo(f"database:     {summary.db_path}")
    sys.exit(summary.exit_code)


@cli.command()
@job_argument
@db_option
@_reports_errors
def status(job: Path, db: Path | None) -> None:
    """Show rows by status, error codes, and the last run's rate, ETA and exit code (read-only).

    \b
    Example:
        batchrunner status jobs/reviews-summary.toml
    """
    from .lock import live_holder
    from .status import status_text
    from .store import Store

    spec = _spec(job, db=db)
    with Store(spec.db_path, readonly=True) as store:
        click.echo(status_text(spec.job.name, store, live_holder(spec.db_path)), nl=False)


@cli.command()
@job_argument
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_reports_errors
def runs(job: Path, db: Path | None, fmt: str) -> None:
    """List the runs of JOB: start, end, status, exit code, counts and cost (read-only).

    \b
    Example:
        batchrunner runs jobs/reviews-summary.toml
    """
    from .lock import live_holder
    from .status import runs_text, shown_status
    from .store import Store

    spec = _spec(job, db=db)
    with Store(spec.db_path, readonly=True) as store:
        rows = store.runs(spec.job.name)
    holder = live_holder(spec.db_path)
    if fmt == "json":
        click.echo(json.dumps([{**r, "status": shown_status(r, holder)} for r in rows], indent=2))
    else:
        click.echo(runs_text(rows, holder), nl=False)


@cli.command()
@job_argument
@db_option
@click.option("--codes", help="Only rows that failed with these error codes (comma-separated).")
@_reports_errors
def retry(job: Path, db: Path | None, codes: str | None) -> None:
    """Re-queue failed rows of JOB (all, or those with the --codes given), so that the next
    `run` sends them again. `status` lists the error codes present.

    \b
    Example:
        batchrunner retry jobs/reviews-summary.toml
        batchrunner run jobs/reviews-summary.toml
    """
    from .lock import JobLock
    from .store import Store

    spec = _spec(job, db=db)
    with Store(spec.db_path, readonly=True) as store:  # StoreError when there is no store yet
        present = dict(store.error_counts(spec.job.name))
    wanted = [c.strip() for c in codes.split(",") if c.strip()] if codes else None
    unknown = sorted(set(wanted or ()) - set(present))
    if unknown:
        have = ", ".join(f"{code} ({n})" for code, n in present.items()) or "none: no row has failed"
        raise click.BadParameter(
            f"no failed row has code(s) {', '.join(unknown)}; codes present: {have}", param_hint="--codes"
        )
    with JobLock(spec.db_path), Store(spec.db_path) as store:
        n = store.requeue(wanted, spec.job.name)
    click.echo(f"re-queued {n} failed row(s); run `batchrunner run {job}` to send them")


@cli.command()
@job_argument
@db_option
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write (.csv, .parquet, .jsonl).",
)
@_reports_errors
def export(job: Path, db: Path | None, output: Path | None) -> None:
    """Write the output table of JOB from its store, without sending anything.

    \b
    Example:
        batchrunner export jobs/reviews-summary.toml --output reviews.csv
    """
    from .sink import export_job

    path, table = export_job(_spec(job, db=db, output=output))
    click.echo(f"output table: {path} (" + ", ".join(f"{k} {v}" for k, v in sorted(table.items())) + ")")


@cli.command()
@job_argument
@db_option
@prices_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_reports_errors
def estimate(job: Path, db: Path | None, prices: Path | None, fmt: str) -> None:
    """Project the cost and duration of what JOB has left to send. Sends nothing, needs no key.

    \b
    Example:
        batchrunner estimate jobs/reviews-summary.toml
    """
    from . import estimate as estimating
    from .runner import prices_for

    spec = _spec(job, db=db)
    result = estimating.estimate(spec, prices_for(spec, prices))
    click.echo(json.dumps(result.to_dict(), indent=2) if fmt == "json" else estimating.render(result))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--by",
    "by",
    default="model",
    show_default=True,
    help="Group by model, job, day, status and/or mode (online, batch, batch-chat), comma-separated.",
)
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC) to include.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC) to include.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "markdown", "html"]),
    default="table",
    show_default=True,
    help="html: one self-contained page of cards and charts (needs --output and the html extra).",
)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the report to this file (html: required)."
)
@_reports_errors
def report(paths: tuple[Path, ...], by: str, since: Any, until: Any, fmt: str, output: Path | None) -> None:
    """Usage and cost of one or more jobs: specs, store files or folders of stores.

    \b
    Example:
        batchrunner report jobs/ --by model,day --since 2026-11-01 --format csv
        batchrunner report jobs/ --by mode
        batchrunner report jobs/ --format html --output report.html
    """
    from . import report as reporting

    if fmt == "html":
        from .htmlreport import from_cli

        click.echo(from_cli(list(paths), output, since.date() if since else None, until.date() if until else None))
        return

    groups = [g.strip() for g in by.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(reporting.BY_KEYS))
    if unknown:
        raise click.BadParameter(f"unknown group(s) {unknown}; use {', '.join(reporting.BY_KEYS)}", param_hint="--by")
    built = reporting.build(list(paths), groups, since.date() if since else None, until.date() if until else None)
    text = reporting.render(built, reporting.as_format(fmt))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


_COUNT = click.IntRange(min=0)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute it allows (429 above).")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute it allows (429 above).")
@click.option("--latency-ms", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option(
    "--fail-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of requests answered 500.",
)
@click.option(
    "--batch-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Every batch completes this many seconds after its creation (validating for at most a tenth of them); "
    "replaces --batch-line-s.",
)
@click.option(
    "--batch-validate-s",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a batch validates.",
)
@click.option(
    "--batch-line-s", default=0.01, show_default=True, type=click.FloatRange(min=0), help="Seconds per batch line."
)
@click.option("--batch-drop-creates", default=0, type=_COUNT, help="Lose the answer of the first N batch creates.")
@click.option("--batch-throttle-creates", default=0, type=_COUNT, help="Answer 429 to the first N batch creates.")
@click.option("--batch-fail-gets", default=0, type=_COUNT, help="Answer 503 to the first N batch GETs.")
@click.option("--batch-download-503", is_flag=True, help="Answer 503 to the first download of each file.")
@click.option("--batch-cut-downloads", default=0, type=_COUNT, help="Cut the first N file downloads halfway.")
@click.option(
    "--batch-none-id",
    type=click.Choice(["null", ""]),
    default="null",
    show_default=True,
    help="How a batch without an output or error file shows its id.",
)
@_reports_errors
def simulate(host: str, port: int, **options: Any) -> None:
    """Serve the DashScope simulator (and its Batch API) until Ctrl-C.

    \b
    Example:
        batchrunner simulate --port 8000 --rpm 600 --latency-ms 800
        DASHSCOPE_BASE_URL=http://127.0.0.1:8000/api/v1 batchrunner run examples/quickstart.toml
    """
    from .simulator import SimulatorConfig, run_simulator

    none_id = options.pop("batch_none_id")
    config = SimulatorConfig(keep_log=False, batch_none_id=None if none_id == "null" else none_id, **options)
    try:
        run_simulator(
            config,
            host=host,
            port=port,
            on_ready=lambda url: click.echo(f"DashScope simulator at {url} (set DASHSCOPE_BASE_URL to it)"),
        )
    except OSError as exc:
        reason = "it is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        msg = f"cannot listen on {host}:{port} ({reason}); pick another --port (0 picks a free one)"
        raise BatchRunnerError(msg) from None


cli.add_command(batches)
cli.add_command(cancel)
cli.add_command(watch)


def main() -> None:
    cli()
