"""The `[batch]` section of a job spec: the Batch API's files, polling, resubmission and deadline."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .wire import batch as wb

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> float:
    """Seconds of a duration written like "90s", "45m", "6h" or "2d". Raises ValueError."""
    match = _DURATION.match(text)
    if match is None:
        msg = f'must be a duration like "90m", "6h" or "2d", got {text!r}'
        raise ValueError(msg)
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def http_url(value: str | None, example: str) -> str | None:
    """A spec's URL key: an http(s) URL, without its trailing slash (ValueError otherwise)."""
    if value is None:
        return None
    if not re.match(r"^https?://[^/\s]+", value):
        msg = f"must be an http(s) URL {example}"
        raise ValueError(msg)
    return value.rstrip("/")


class BatchSection(BaseModel):
    """The Batch API (modes batch and auto): files, polling, resubmission, the deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    completion_window: str = wb.DEFAULT_WINDOW
    max_lines_per_file: Annotated[int, Field(ge=1, le=wb.MAX_LINES)] = wb.MAX_LINES
    max_file_mb: Annotated[float, Field(gt=0, le=wb.MAX_FILE_BYTES // 2**20)] = 500
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    poll_max_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    deadline: str | None = None
    keep_remote_files: bool = False

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return http_url(value, "(the root of the Files and Batches APIs)")

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        wb.window_hours(value)
        return value.strip()

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: str | None) -> str | None:
        if value is not None and duration_s(value) <= 0:
            msg = "must be longer than 0"
            raise ValueError(msg)
        return value

    @property
    def deadline_s(self) -> float | None:
        """The deadline in seconds after the job's first submission (mode auto)."""
        return None if self.deadline is None else duration_s(self.deadline)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)
