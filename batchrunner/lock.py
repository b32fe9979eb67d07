"""One run per job at a time: an advisory lock file beside the store.

`<store>.lock` is locked with flock(2) for as long as a run (or `retry`) writes to the store,
and holds who has it (pid, host, start time) as JSON. The kernel drops the lock when its
process dies, however it dies, so a lock left by a killed run is simply free again: the next
run takes it over and says whose it was. Readers (`status`, `export`, `report`, `runs`)
never take it: SQLite's WAL mode lets them read while a run writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType

from .errors import JobLocked, StoreError
from .store import now


class JobLock:
    """`with JobLock(db_path):` holds the job's lock or raises JobLocked naming the holder."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(f"{db_path}.lock")
        self.previous: dict[str, object] | None = None  # a dead holder whose lock was taken over
        self.created = False  # whether this lock made the lock file
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            msg = (
                f"{self.path}: cannot open the job's lock file ({exc.strerror}). The store's folder must be "
                "writable, and the lock file (if there) readable and writable by you: fix the permissions "
                "(no run of this job may be going when you remove it), or point [job] db / --db elsewhere"
            )
            raise StoreError(msg) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"
                if holder
                else "another process"
            )
            msg = (
                f"{self.path.with_suffix('')}: the job is already running ({who}); "
                "this run exits without sending anything. Try again when that run ends."
            )
            raise JobLocked(msg) from None
        self.previous = _read(fd) or None  # left behind by a run that did not end cleanly
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def discard(self) -> None:
        """Release, and remove the lock file if this lock made it: the store beside it turned out
        not to be usable (a foreign file, say), so nothing of ours should stay there."""
        if self._fd is not None and self.created:
            self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a clean release leaves no holder behind
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


def live_holder(db_path: Path) -> dict[str, object] | None:
    """Who runs the job now ({"pid", "host", "started_at"}, possibly empty), or None when no
    process holds its lock. Takes nothing: a shared probe, released at once."""
    try:
        fd = os.open(Path(f"{db_path}.lock"), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0)
        value = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
