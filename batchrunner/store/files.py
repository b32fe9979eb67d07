"""The store as a file: made whole, checked writable, and what to say when it cannot be used.

A new store is built in a private temporary file beside its path (mode 0600, schema applied)
and renamed into place, so a store file is never empty: a 0-byte file where a store should be
was truncated (or made by something else), and starting over in it would buy every row again.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from ..errors import StoreError
from .migrations import migrate


def prepare(path: Path, *, new_store: bool) -> None:
    """Before opening a store to write: its folder and file are writable; a missing store is made
    (an empty file only with `new_store`)."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"{path}: cannot create the store's folder ({exc.strerror}); fix [job] db / --db"
        raise StoreError(msg) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        msg = (
            f"{path}: the store's folder {folder} is not writable (SQLite keeps its -wal and -shm "
            "files beside the store); make it writable, or point [job] db / --db elsewhere"
        )
        raise StoreError(msg)
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        msg = f"{path}: the store is not writable by you; fix its permissions (chmod u+rw) or use --db"
        raise StoreError(msg)
    empty = path.is_file() and path.stat().st_size == 0
    if empty and not new_store:
        raise StoreError(empty_message(path, "is empty (0 bytes)"))
    if empty or not path.exists():
        create(path)


def create(path: Path) -> None:
    """A new store at `path`, made whole in a private temporary file and renamed into place."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)  # mode 0600
    os.close(fd)
    try:
        import sqlite_utils

        # Built with a rollback journal, not WAL: every commit lands in the file itself, so
        # nothing can be left behind in a -wal file that a failed close-time checkpoint (a full
        # disk) would leave unmerged. The store switches to WAL when it is opened to write.
        conn = sqlite3.connect(name, isolation_level=None)
        try:
            db = sqlite_utils.Database(conn)
            migrate(db)
        finally:
            conn.close()
        os.replace(name, path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise StoreError(f"{path}: cannot create the store ({reason})") from None
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(name + suffix).unlink(missing_ok=True)


def empty_message(path: Path, what: str) -> str:
    return (
        f"{path}: the store {what}. If it held this job's answers (truncated by a full disk, a copy or an "
        "editor), restore it from a backup: starting over would send and pay for every row again. To start a "
        "new store in it anyway, run again with --new-store"
    )


def damaged(path: Path, detail: str) -> str:
    return (
        f"{path}: the store is damaged ({detail}). Restore it from a backup, or save what "
        f"is readable: `sqlite3 {path} .recover | sqlite3 recovered.sqlite`, then use --db recovered.sqlite"
    )


def unusable(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    text = str(exc)
    if "malformed" in text or "corrupt" in text:
        return StoreError(damaged(path, text))
    if "readonly" in text or "read-only" in text:
        return StoreError(f"{path}: cannot write the store ({text}); fix its permissions or the disk, or use --db")
    return StoreError(f"{path}: cannot open the store: {text}")
