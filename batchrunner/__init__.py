"""batchrunner: run a table of prompts through DashScope (Qwen), rate-limited, checkpointed to
SQLite and resumable. The CLI (`batchrunner`) is a thin layer over these functions.

Names are imported on first use, so that importing the package (and starting the CLI) stays
cheap: `run_job` brings in polars and the HTTP stack only when it is called for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import AuthError, BatchRunnerError, ExitCode, InputError, JobLocked, OutputError, SpecError, StoreError

if TYPE_CHECKING:
    from .progress import Progress
    from .records import RunCounts, RunSummary
    from .runner import run_job
    from .spec import JobSpec, from_dict
    from .spec import load as load_spec

_LAZY = {
    "JobSpec": ("spec", "JobSpec"),
    "Progress": ("progress", "Progress"),
    "RunCounts": ("records", "RunCounts"),
    "RunSummary": ("records", "RunSummary"),
    "from_dict": ("spec", "from_dict"),
    "load_spec": ("spec", "load"),
    "run_job": ("runner", "run_job"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        msg = f"module 'batchrunner' has no attribute {name!r}"
        raise AttributeError(msg)
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


__all__ = [
    "AuthError",
    "BatchRunnerError",
    "ExitCode",
    "InputError",
    "JobLocked",
    "JobSpec",
    "OutputError",
    "Progress",
    "RunCounts",
    "RunSummary",
    "SpecError",
    "StoreError",
    "from_dict",
    "load_spec",
    "run_job",
]
