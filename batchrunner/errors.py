"""Every error batchrunner raises on purpose, rooted at one class.

    BatchRunnerError            anything batchrunner reports to the user instead of a traceback
    ├── SpecError               the job spec is unreadable or invalid            (exit 2)
    ├── InputError              the input table cannot be used as it is          (exit 2)
    ├── OutputError             the output table or store cannot be written      (exit 2)
    ├── AuthError               the service refused the key or the model         (exit 3)
    └── StoreError              the SQLite store is missing or not ours          (exit 2)

Each message says what is wrong, where (file, key, row) and what to do about it.
No message ever contains the API key.
"""

from __future__ import annotations


class BatchRunnerError(Exception):
    """A failure batchrunner explains to the user; `exit_code` is what the CLI returns."""

    exit_code = 2


class SpecError(BatchRunnerError):
    """The job spec (TOML) cannot be read or does not validate."""


class InputError(BatchRunnerError):
    """The input table is missing, empty or inconsistent with the spec."""


class OutputError(BatchRunnerError):
    """The output table cannot be written where the spec says."""


class StoreError(BatchRunnerError):
    """The checkpoint store is missing, locked or not a batchrunner store."""


class AuthError(BatchRunnerError):
    """The service answered 401 or 403: the key, workspace or model access is wrong."""

    exit_code = 3
