"""batchrunner: run a table of prompts through DashScope (Qwen), rate-limited, checkpointed to
SQLite and resumable. The CLI (`batchrunner`) is a thin layer over these functions."""

from .errors import AuthError, BatchRunnerError, InputError, OutputError, SpecError, StoreError
from .runner import Progress, RunSummary, run_job
from .spec import JobSpec, from_dict, load

load_spec = load

__all__ = [
    "AuthError",
    "BatchRunnerError",
    "InputError",
    "JobSpec",
    "OutputError",
    "Progress",
    "RunSummary",
    "SpecError",
    "StoreError",
    "from_dict",
    "load_spec",
    "run_job",
]
