"""Every error batchrunner raises on purpose, rooted at one class, and the exit-code table.

    BatchRunnerError            anything batchrunner reports to the user instead of a traceback
    ├── SpecError               the job spec is unreadable or invalid              (exit 2)
    ├── InputError              the input table cannot be used as it is            (exit 2)
    ├── OutputError             the output table cannot be written                 (exit 2)
    ├── StoreError              the store is missing, damaged, empty, not ours     (exit 2)
    │                           or not writable (nor its folder or lock file)
    ├── ServiceUnreachable      the first requests could not even connect          (exit 2)
    ├── AuthError               the service refused the key, account or model      (exit 3)
    └── JobLocked               another process is running the same job            (exit 75)

Each message says what is wrong, where (file, key, row) and what to do about it.
No message ever contains the API key.

A run that ends without an exception reports its ending through `RunSummary.exit_code`, one
of the codes of `ExitCode` (the CLI's exit status).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit codes of `batchrunner run` (and of the other commands where they apply)."""

    OK = 0  # every row ok
    FAILED_ROWS = 1  # finished, some rows failed (see `status`, `retry`) or are still pending
    BAD_INPUT = 2  # bad spec, input, output or store; nothing was sent
    AUTH = 3  # the service refused the key, account or model; the run stopped
    BUDGET = 4  # stopped by a budget limit; resumable
    OUTAGE = 5  # stopped by the circuit breaker (the service looks down); resumable
    BATCHES_RUNNING = 6  # batch mode, --detach: batches are still running at the service; run again to collect
    STORE = 7  # the store could not be written (disk full, I/O error); answers kept aside; resumable
    LOCKED = 75  # the job is already running elsewhere; nothing was done (EX_TEMPFAIL)
    INTERRUPTED = 130  # stopped by a signal; every answer received is saved; resumable


EXIT_CODE_HELP = {
    ExitCode.OK: "all rows ok",
    ExitCode.FAILED_ROWS: "finished with failed (or still pending) rows",
    ExitCode.BAD_INPUT: "bad spec, input, output or store (nothing sent)",
    ExitCode.AUTH: "aborted by an authentication or permission error",
    ExitCode.BUDGET: "stopped by a budget limit (resumable)",
    ExitCode.OUTAGE: "stopped by the circuit breaker, the service looks down (resumable)",
    ExitCode.BATCHES_RUNNING: "batches still running at the service (--detach): run again to collect",
    ExitCode.STORE: "the store could not be written; answers kept in a side file (resumable)",
    ExitCode.LOCKED: "the job is already running elsewhere (nothing done)",
    ExitCode.INTERRUPTED: "interrupted (resumable)",
}


class BatchRunnerError(Exception):
    """A failure batchrunner explains to the user; `exit_code` is what the CLI returns."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class SpecError(BatchRunnerError):
    """The job spec (TOML) cannot be read or does not validate."""


class InputError(BatchRunnerError):
    """The input table is missing, empty or inconsistent with the spec."""


class OutputError(BatchRunnerError):
    """The output table cannot be written where the spec says."""


class StoreError(BatchRunnerError):
    """The checkpoint store is missing, damaged, empty, not a batchrunner store, or not writable."""


class ServiceUnreachable(BatchRunnerError):
    """The run's first requests could not connect (refused, unknown host, TLS, no file
    descriptors): a configuration error, not an outage."""


class AuthError(BatchRunnerError):
    """The service answered 401 / 403 or an account or model error: no request can succeed."""

    exit_code = ExitCode.AUTH

    def __init__(self, message: str, *, status: int = 0, code: str = "", request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id


class JobLocked(BatchRunnerError):
    """Another process holds the job's lock."""

    exit_code = ExitCode.LOCKED
