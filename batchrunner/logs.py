"""Logging for the CLI: plain or JSON lines, to stderr and optionally to a file.

The library only logs to the `batchrunner` logger; `configure` decides where lines go. On a
terminal, progress is a tqdm bar and the periodic progress lines (logger
`batchrunner.progress`) go to the log file only; elsewhere (cron, pipes) they go to stderr
too. `--quiet` keeps stderr to warnings and errors.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from .errors import OutputError

PROGRESS = "batchrunner.progress"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `fields` given."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        return json.dumps(line, ensure_ascii=False, default=str)


class _NotProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(PROGRESS)


def configure(*, log_file: Path | None, fmt: Literal["text", "json"], quiet: bool, tty: bool) -> None:
    logger = logging.getLogger("batchrunner")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING if quiet else logging.INFO)
    stderr.setFormatter(formatter if fmt == "json" else logging.Formatter("%(message)s"))
    if tty:
        stderr.addFilter(_NotProgress())
    logger.addHandler(stderr)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            msg = f"--log-file {log_file}: cannot open it for writing ({exc.strerror or exc}); name a writable file"
            raise OutputError(msg) from None
        handler.setFormatter(formatter)
        logger.addHandler(handler)
