"""The `batchrunner` command: a thin layer over the library (each command calls one function).

Exit codes: 0 all rows ok; 1 finished with failed rows; 2 bad spec or input (nothing sent);
3 aborted by an authentication or permission error; 4 stopped by a budget limit (resumable);
5 stopped by the circuit breaker, the service looks down (resumable); 75 the job is already
running elsewhere (nothing done); 130 interrupted (resumable).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from . import runner, sink
from .errors import BatchRunnerError, StoreError
from .source import Source
from .spec import load
from .store import Store

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("batchrunner")


def _reports_errors(func: F) -> F:
    """Turn expected errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BatchRunnerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


db_option = click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), help="Store file (default: from the spec)."
)
prices_option = click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML price file that overrides or adds models.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrunner")
def cli() -> None:
    """Run a table of prompts through DashScope (Qwen), checkpointed and resumable.

    \b
    Example:
        batchrunner run examples/quickstart.toml --simulate
    """


@cli.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output table (default: from the spec).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Send at most N requests in this run.")
@click.option("--simulate", is_flag=True, help="Use the built-in DashScope simulator (no key, no cost).")
@click.option("--retry-failed", is_flag=True, help="Send again the rows that failed in earlier runs.")
@prices_option
@click.option(
    "--max-cost", type=click.FloatRange(min=0, min_open=True), help="Stop before this run could spend more (USD)."
)
@click.option("--write-partial", is_flag=True, help="On Ctrl-C / SIGTERM, still write the output table.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Also write log lines to this file.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress display; only warnings and errors on stderr.")
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
    write_partial: bool,
    log_file: Path | None,
    log_format: str,
    quiet: bool,
) -> None:
    """Run JOB (a TOML spec): send every row not yet done, then write the output table.

    Safe to kill and to run again: finished rows are never sent twice. Only one run of a
    job at a time: a second one exits with code 75.

    \b
    Example:
        DASHSCOPE_API_KEY=sk-... batchrunner run jobs/reviews.toml
    """
    from .logs import configure
    from .progress import for_terminal

    tty = sys.stderr.isatty()
    configure(log_file=log_file, fmt=log_format, quiet=quiet, tty=tty)  # type: ignore[arg-type]
    spec = load(job)
    summary = runner.run_job(
        spec,
        db=db,
        output=output,
        limit=limit,
        simulate=simulate,
        retry_failed=retry_failed,
        progress=for_terminal(spec.job.name, quiet=quiet, tty=tty),
        prices=prices,
        max_cost_usd=max_cost,
        write_partial=write_partial,
    )
    c = summary.counts
    fields = {
        "job": spec.job.name,
        "status": summary.status,
        "exit_code": summary.exit_code,
        "sent": c.sent,
        "ok": c.ok,
        "failed": c.failed,
        "cost_usd": round(c.cost_usd, 6),
    }
    log.info(
        "%s: %s%s: sent %d, ok %d, failed %d, already done %d, skipped %d; %d input + %d output tokens "
        "(%d cached), %d retries, cost %.6f USD, %.1fs",
        spec.job.name,
        summary.status,
        " (simulated)" if summary.simulated else "",
        c.sent,
        c.ok,
        c.failed,
        summary.already_done,
        summary.skipped,
        c.input_tokens,
        c.output_tokens,
        c.cached_tokens,
        c.retries,
        c.cost_usd,
        summary.elapsed_s,
        extra={"fields": fields},
    )
    if summary.message:
        (log.warning if summary.exit_code else log.info)(summary.message)
    if summary.output_path is not None:
        table = ", ".join(f"{k} {v}" for k, v in sorted(summary.table.items()))
        click.echo(f"output table: {summary.output_path} ({table})")
    click.echo(f"database:     {summary.db_path}")
    sys.exit(summary.exit_code)


def _rate_line(store: Store, last: dict[str, Any]) -> str:
    """Rate and ETA of the last run, from its rows in the store."""
    start = datetime.fromisoformat(last["started_at"])
    end = datetime.fromisoformat(last["ended_at"]) if last["ended_at"] else datetime.now(UTC)
    done = store.db.execute("SELECT count(*) FROM results WHERE run_id = ?", [last["id"]]).fetchone()[0]
    seconds = max((end - start).total_seconds(), 1e-9)
    rate = done / seconds
    left = max(0, (last["rows_total"] or 0) - store.settled_count())
    eta = "-" if not left or not rate else f"{left / rate / 60:.1f} min for about {left} requests left"
    return f"rate {rate:.2f} rows/s over {seconds:.0f}s; ETA {eta}"


@cli.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@_reports_errors
def status(job: Path, db: Path | None) -> None:
    """Show rows by status, error codes, and the last run's rate, ETA and exit code (read-only).

    \b
    Example:
        batchrunner status jobs/reviews.toml
    """
    spec = load(job).with_overrides(db=db)
    store = Store(spec.db_path, readonly=True)
    try:
        counts = store.counts()
        click.echo(f"job {spec.job.name}  store {spec.db_path}")
        click.echo("results: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"))
        for code, n in store.error_counts():
            click.echo(f"  failed with {code}: {n}")
        runs = store.runs()
        if runs:
            last = runs[-1]
            click.echo(
                f"last run #{last['id']}: {last['status']}, exit {last['exit_code']}, "
                f"started {last['started_at']}, ended {last['ended_at'] or '-'}, "
                f"sent {last['sent'] or 0}, ok {last['ok'] or 0}, failed {last['failed'] or 0}"
            )
            click.echo("  " + _rate_line(store, last))
    finally:
        store.close()


@cli.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_reports_errors
def runs(job: Path, db: Path | None, fmt: str) -> None:
    """List the runs of JOB: start, end, status, exit code, counts and cost (read-only).

    \b
    Example:
        batchrunner runs jobs/reviews.toml
    """
    spec = load(job).with_overrides(db=db)
    store = Store(spec.db_path, readonly=True)
    try:
        rows = store.runs()
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        f"{'run':>4} {'status':<11} {'exit':>4} {'started':<29} {'sent':>7} {'ok':>7} {'failed':>6} {'cost_usd':>10}"
    )
    for r in rows:
        exit_code = "-" if r["exit_code"] is None else r["exit_code"]
        click.echo(
            f"{r['id']:>4} {r['status']:<11} {exit_code:>4} {r['started_at']:<29} {r['sent'] or 0:>7} "
            f"{r['ok'] or 0:>7} {r['failed'] or 0:>6} {(r['cost_usd'] or 0):>10.6f}"
        )


@cli.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@click.option("--codes", help="Only rows that failed with these error codes (comma-separated).")
@_reports_errors
def retry(job: Path, db: Path | None, codes: str | None) -> None:
    """Re-queue failed rows of JOB, so that the next `run` sends them again.

    \b
    Example:
        batchrunner retry jobs/reviews.toml --codes DataInspectionFailed,InvalidJSON
        batchrunner run jobs/reviews.toml
    """
    from .lock import JobLock

    spec = load(job).with_overrides(db=db)
    if not spec.db_path.is_file():
        raise StoreError(f"{spec.db_path}: no store here yet; run the job first (or pass --db PATH)")
    wanted = [c.strip() for c in codes.split(",") if c.strip()] if codes else None
    with JobLock(spec.db_path):
        store = Store(spec.db_path)
        try:
            n = store.requeue(wanted)
        finally:
            store.close()
    click.echo(f"re-queued {n} failed row(s); run `batchrunner run {job}` to send them")


@cli.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
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
        batchrunner export jobs/reviews.toml --output reviews.csv
    """
    spec = load(job).with_overrides(db=db, output=output)
    source = Source(spec)
    source.check()
    store = Store(spec.db_path, readonly=True)
    try:
        path, table = sink.export(spec, store, source)
    finally:
        store.close()
    click.echo(f"output table: {path} (" + ", ".join(f"{k} {v}" for k, v in sorted(table.items())) + ")")


@cli.command()
@click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
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

    spec = load(job).with_overrides(db=db)
    result = estimating.estimate(spec, runner.load_prices(spec, prices))
    click.echo(json.dumps(result.to_dict(), indent=2) if fmt == "json" else estimating.render(result))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--by", "by", default="model", show_default=True, help="Group by model, job, day and/or status (comma-separated)."
)
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC) to include.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Last day (UTC) to include.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table", show_default=True
)
@_reports_errors
def report(paths: tuple[Path, ...], by: str, since: Any, until: Any, fmt: str) -> None:
    """Usage and cost of one or more jobs: specs, store files or folders of stores.

    \b
    Example:
        batchrunner report jobs/ --by model,day --since 2026-11-01 --format csv
    """
    from . import report as reporting

    groups = [g.strip() for g in by.split(",") if g.strip()]
    unknown = sorted(set(groups) - {"model", "job", "day", "status"})
    if unknown:
        raise click.BadParameter(f"unknown group(s) {unknown}; use model, job, day, status", param_hint="--by")
    stores = reporting.collect(list(paths))
    built = reporting.build(stores, groups, since.date() if since else None, until.date() if until else None)
    click.echo(reporting.render(built, fmt), nl=False)  # type: ignore[arg-type]


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
def simulate(host: str, port: int, rpm: int | None, tpm: int | None, latency_ms: float, fail_rate: float) -> None:
    """Serve the DashScope simulator until Ctrl-C.

    \b
    Example:
        batchrunner simulate --port 8000 --rpm 600 --latency-ms 800
        DASHSCOPE_BASE_URL=http://127.0.0.1:8000/api/v1 batchrunner run jobs/reviews.toml
    """
    from .simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(rpm=rpm, tpm=tpm, latency_ms=latency_ms, fail_rate=fail_rate, keep_log=False)
    run_simulator(
        config,
        host=host,
        port=port,
        on_ready=lambda url: click.echo(f"DashScope simulator at {url} (set DASHSCOPE_BASE_URL to it)"),
    )


def main() -> None:
    cli()
