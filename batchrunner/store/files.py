"""The store as a file: made whole, checked writable and undamaged, and what to say when it
cannot be used.

A new store is built in a private temporary file beside its path (mode 0600, schema applied)
and renamed into place, so a store file is never empty: a 0-byte file where a store should be
was truncated (or made by something else), and starting over in it would buy every row again.

Damage is looked for on every open (`damage`). `PRAGMA quick_check` reads every page of the
file: about 5 s per GB, 25 s before a resume of a 10M-row job could send anything. So a store
up to WHOLE_CHECK_BYTES is checked whole, and a bigger one table by table: each small table
whole, and each of the tables that grow with the job (BIG_TABLES) along the first and last
entries of its B-tree and of each of its indexes (a few pages each), which finds a damaged root
page and a file cut short. Damage deeper in a big table shows when a command reads that page
(the CLI then reports that the store could not be read).
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


WHOLE_CHECK_BYTES = 64 * 2**20  # a store up to this size gets a full quick_check on each open (~0.3 s)
BIG_TABLES = ("results", "attempts", "batch_lines")  # the tables that grow with the job


def damage(conn: sqlite3.Connection, path: Path, limit: int = 3) -> list[str]:
    """Up to `limit` problems `PRAGMA quick_check` reports (none: the store looks undamaged),
    for the whole file or, above WHOLE_CHECK_BYTES, as the module docstring says."""
    if path.stat().st_size <= WHOLE_CHECK_BYTES:
        return _problems(conn.execute(f"PRAGMA quick_check({int(limit)})"))
    tables = [str(name) for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    found: list[str] = []
    for table in tables:
        if table in BIG_TABLES:
            found += _edges(conn, table)
        else:
            found += _problems(conn.execute(f"PRAGMA quick_check({_quoted(table)})"))
    return found[:limit]


def _problems(rows: sqlite3.Cursor) -> list[str]:
    found = [str(row[0]) for row in rows]
    if found == ["ok"]:
        return []
    return [line for text in found for line in text.splitlines() if line and not line.startswith("***")]


def _edges(conn: sqlite3.Connection, table: str) -> list[str]:
    """Read the first and last entry of `table` and of each of its indexes (named columns)."""
    name = _quoted(table)
    queries = [f"SELECT * FROM {name} ORDER BY rowid{order} LIMIT 1" for order in ("", " DESC")]
    try:
        for index in [str(row[1]) for row in conn.execute(f"PRAGMA index_list({name})")]:
            named = [row[2] for row in conn.execute(f"PRAGMA index_info({_quoted(index)})")]
            if not named or None in named:  # an index on an expression
                continue
            columns = [_quoted(str(c)) for c in named]
            for order in ("", " DESC"):
                keys = ", ".join(f"{c}{order}" for c in columns)
                queries.append(
                    f"SELECT {', '.join(columns)} FROM {name} INDEXED BY {_quoted(index)} ORDER BY {keys} LIMIT 1"
                )
        for sql in queries:
            conn.execute(sql).fetchall()
    except sqlite3.DatabaseError as exc:
        return [f"{table}: {exc}"]
    return []


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
