"""The `run` flags that say where a job runs: `--engine ray`, `--address`, `--shards`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click


def scale_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the flags; the command gets them as one `scale` mapping (for JobSpec.with_scale)."""

    @functools.wraps(command)
    def wrapped(*args: Any, engine: str | None, address: str | None, shards: int | None, **kwargs: Any) -> Any:
        return command(*args, scale={"engine": engine, "address": address, "shards": shards}, **kwargs)

    flags = [
        click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            help="Where the job runs: this machine, or shards over a Ray cluster (sets [scale] engine).",
        ),
        click.option("--address", help="With --engine ray: the cluster's head, host:port or ray://host:port."),
        click.option("--shards", type=click.IntRange(min=1), help="With --engine ray: how many shards to plan."),
    ]
    for flag in reversed(flags):
        wrapped = flag(wrapped)
    return wrapped
