"""What the CLI's commands share: error reporting, the spec with its overrides, common options."""

from __future__ import annotations

import functools
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .errors import BatchRunnerError, ExitCode

if TYPE_CHECKING:
    from .spec import JobSpec

F = TypeVar("F", bound=Callable[..., Any])


def _reports_errors(func: F) -> F:
    """Turn expected errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BatchRunnerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(int(exc.exit_code))
        except sqlite3.DatabaseError as exc:  # a store damaged where opening it could not tell
            click.echo(f"error: the store could not be read ({exc}); see `--db` and the store's file", err=True)
            sys.exit(int(ExitCode.BAD_INPUT))

    return wrapper  # type: ignore[return-value]


def _spec(
    job: Path,
    *,
    db: Path | None = None,
    output: Path | None = None,
    max_cost: float | None = None,
    max_cost_per_run: float | None = None,
) -> JobSpec:
    """The job spec with the command line's overrides applied (the one place they are)."""
    from .spec import load

    spec = load(job)
    return spec.with_overrides(db=db, output=output, max_cost_usd=max_cost, max_cost_usd_per_run=max_cost_per_run)


job_argument = click.argument("job", type=click.Path(dir_okay=False, path_type=Path))
db_option = click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), help="Store file (default: from the spec)."
)
prices_option = click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML price file that overrides or adds models.",
)
