"""The batch commands of the CLI: `batches JOB` (what is out at the service) and `cancel JOB`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from .clihelp import _reports_errors, _spec, db_option, job_argument


def _age(stamp: object) -> str:
    if not stamp:
        return "-"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(str(stamp))).total_seconds())
    hours, rest = divmod(max(0, seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@click.command()
@job_argument
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_reports_errors
def batches(job: Path, db: Path | None, fmt: str) -> None:
    """List JOB's batch files: state, remote status, lines, counts, created, age (read-only).

    \b
    Example:
        batchrunner batches jobs/batch-reviews.toml
    """
    from .store import Store

    spec = _spec(job, db=db)
    if not spec.db_path.is_file():
        click.echo(f"{spec.job.name}: no batch files (no store yet at {spec.db_path})")
        return
    with Store(spec.db_path, readonly=True) as store:
        files = store.batch_files(spec.job.name) if "batch_files" in store.tables() else []
    if fmt == "json":
        click.echo(json.dumps(files, indent=2))
        return
    if not files:
        click.echo(f"{spec.job.name}: no batch files")
        return
    head = f"{'file':>5} {'state':<10} {'remote':<11} {'lines':>6} {'done':>6} {'failed':>6} {'try':>3}  "
    head += f"{'submitted':<19} {'age':>7}  batch"
    click.echo(head)
    for f in files:
        click.echo(
            f"{f['id']:>5} {f['state']:<10} {f['remote_status'] or '-':<11} {f['lines']:>6} {f['completed'] or 0:>6} "
            f"{f['failed'] or 0:>6} {f['attempt']:>3}  {str(f['submitted_at'] or '-')[:19]:<19} "
            f"{_age(f['submitted_at']):>7}  {f['batch_id'] or '-'}{'  (check)' if f['purpose'] == 'check' else ''}"
        )


@click.command()
@job_argument
@db_option
@_reports_errors
def cancel(job: Path, db: Path | None) -> None:
    """Cancel JOB's live batches, then ingest what they answered (the rest stays pending).

    \b
    Example:
        batchrunner cancel jobs/batch-reviews.toml
    """
    from .batchcancel import cancel_job

    click.echo(cancel_job(_spec(job, db=db)))
