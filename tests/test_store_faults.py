"""Faults of the store, its folder and the disks: a clear message and exit 2, never a traceback,
and nothing bought that was bought already.

Families: a damaged store (a corrupt page of results or of attempts), a store that is empty
(0 bytes, or a database without tables) or not batchrunner's (a foreign SQLite file), a store,
folder or lock file the user cannot write or read, the output disk filling during the final
write, a key that cannot be sent (non-ASCII), and `simulate` on a port in use.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import invoke_cli, read_table, small_tmpfs, write_job

from batchrunner.simulator import ThreadHandle
from batchrunner.store import files as storefiles

KEY = "sk-test-store-faults-0123456789"
ROWS = [{"id": f"r{i}", "text": f"row {i} " + "words " * 40} for i in range(300)]


@pytest.fixture
def api_key() -> str:
    return KEY  # the shared `sim` fixture exports it


invoke = invoke_cli


def sent(sim: ThreadHandle) -> int:
    return int(sim.sim.stats()["requests"])


def finished_job(folder: Path, sim: ThreadHandle, overrides: dict | None = None) -> Path:  # type: ignore[type-arg]
    spec = write_job(folder, ROWS, overrides)
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 0, result.output
    return spec


def corrupt(db: Path, table: str) -> None:
    """Overwrite the root page of `table` with garbage (the store is closed and checkpointed)."""
    with sqlite3.connect(db) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xde\xad\xbe\xef" * (size // 4))


# --------------------------------------------------------------------------- damaged stores


@pytest.mark.parametrize("whole", [True, False], ids=["checked-whole", "big-store-checked-by-table"])
@pytest.mark.parametrize("table", ["results", "attempts"])
def test_a_damaged_store_is_reported_by_every_command(
    tmp_path: Path, sim: ThreadHandle, table: str, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not whole:  # as if the store were too big to be read whole on each open
        monkeypatch.setattr(storefiles, "WHOLE_CHECK_BYTES", 0)
    spec = finished_job(tmp_path, sim)
    db = tmp_path / "out" / "t.sqlite"
    corrupt(db, table)
    before = sent(sim)
    for command in ("run", "status", "export", "estimate", "runs", "retry"):
        result = invoke(command, str(spec))
        assert result.exit_code == 2, (command, result.output)
        assert f"{db}: the store is damaged" in result.output and ".recover" in result.output, command
    assert sent(sim) == before


# --------------------------------------------------------------------------- empty, foreign


def test_an_empty_store_file_is_refused_unless_new_store(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = finished_job(tmp_path, sim)
    db = tmp_path / "out" / "t.sqlite"
    db.write_bytes(b"")  # truncated: every answer it held is gone
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert f"{db}: the store is empty (0 bytes)" in result.output and "--new-store" in result.output
    assert sent(sim) == len(ROWS)  # nothing bought a second time
    assert invoke("status", str(spec)).exit_code == 2
    result = invoke("run", str(spec), "-q", "--new-store")
    assert result.exit_code == 0, result.output
    assert sent(sim) == 2 * len(ROWS)  # the user asked for it
    assert invoke("run", str(spec), "-q", "--new-store").exit_code == 0  # a real store is never replaced
    assert sent(sim) == 2 * len(ROWS)


def test_a_new_store_is_created_whole_and_private(tmp_path: Path, sim: ThreadHandle) -> None:
    finished_job(tmp_path, sim)
    db = tmp_path / "out" / "t.sqlite"
    assert db.stat().st_mode & 0o777 == 0o600
    assert not [p.name for p in db.parent.iterdir() if p.name.endswith(".new")]


def test_a_foreign_sqlite_file_gets_no_tables_added(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:5])
    other = tmp_path / "crm.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    conn.close()
    result = invoke("run", str(spec), "-q", "--db", str(other))
    assert result.exit_code == 2
    assert f"{other}: not a batchrunner store" in result.output and "customers" in result.output
    with sqlite3.connect(other) as conn:
        assert [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["customers"]
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crm.sqlite", "data.csv", "job.toml"]  # no lock file left
    assert sent(sim) == 0


def test_a_database_without_tables_needs_new_store(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:5])
    blank = tmp_path / "blank.sqlite"
    with sqlite3.connect(blank) as conn:
        conn.execute("PRAGMA user_version = 7")  # a valid database file, without tables
    conn.close()
    result = invoke("run", str(spec), "-q", "--db", str(blank))
    assert result.exit_code == 2 and "the store has no tables" in result.output
    assert sent(sim) == 0
    result = invoke("run", str(spec), "-q", "--db", str(blank), "--new-store")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- permissions


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, which ignores file permissions, and setpriv cannot drop that here")
    return prefix


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    command = [*unprivileged(), sys.executable, "-m", "batchrunner", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def restore_modes() -> Iterator[list[Path]]:
    """Paths whose permissions a test changes; made writable again at teardown."""
    changed: list[Path] = []
    yield changed
    for path in changed:
        path.chmod(0o700 if path.is_dir() else 0o600)


@pytest.mark.parametrize(
    ("target", "mode", "expected"),
    [
        ("store/t.sqlite", 0o400, "the store is not writable by you"),
        ("store", 0o500, "the store's folder"),
        ("store/t.sqlite.lock", 0o000, "cannot open the job's lock file (Permission denied)"),
    ],
)
def test_a_store_folder_or_lock_the_user_cannot_write(
    tmp_path: Path, restore_modes: list[Path], target: str, mode: int, expected: str
) -> None:
    spec = write_job(tmp_path, ROWS[:5], {"job": {"name": "t", "db": "store/t.sqlite"}})
    first = run_cli("run", str(spec), "--simulate", "-q")
    assert first.returncode == 0, first.stderr
    path = tmp_path / target
    restore_modes.append(path)
    path.chmod(mode)
    result = run_cli("run", str(spec), "--simulate", "-q")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and expected in result.stderr


def test_a_store_in_a_folder_that_cannot_be_created(tmp_path: Path, restore_modes: list[Path]) -> None:
    spec = write_job(tmp_path, ROWS[:5], {"job": {"name": "t", "db": "locked/inner/t.sqlite"}})
    (tmp_path / "locked").mkdir(mode=0o500)
    restore_modes.append(tmp_path / "locked")
    result = run_cli("run", str(spec), "--simulate", "-q")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "lock file" in result.stderr


# --------------------------------------------------------------------------- the output disk


def test_a_full_output_disk_at_the_final_write_exits_2_and_keeps_every_answer(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_job(tmp_path, ROWS)

    def full(self: pl.LazyFrame, path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_text("the first bytes of the table")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.LazyFrame, "sink_csv", full)
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2
    assert "cannot write the output table (No space left on device)" in result.output
    assert "batchrunner export" in result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["t.sqlite", "t.sqlite.lock"]  # no parts, no half table
    with sqlite3.connect(out / "t.sqlite") as conn:
        assert conn.execute("SELECT status, exit_code, ok FROM runs").fetchall() == [("output_failed", 2, len(ROWS))]
    conn.close()
    monkeypatch.undo()
    monkeypatch.setenv("DASHSCOPE_BASE_URL", sim.base_url)
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    exported = invoke("export", str(spec))
    assert exported.exit_code == 0, exported.output
    assert read_table(out / "result.csv")["status"].to_list() == ["ok"] * len(ROWS)
    assert sent(sim) == len(ROWS)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB filesystem (tmpfs), unmounted at the end."""
    with small_tmpfs(tmp_path / "small", "256k") as folder:
        yield folder


def test_a_real_full_disk_during_the_output_write(tmp_path: Path, small_disk: Path, sim: ThreadHandle) -> None:
    rows = [{"id": f"r{i}", "text": os.urandom(300).hex()} for i in range(600)]  # ~400 KB, incompressible
    spec = write_job(
        tmp_path, rows, {"job": {"name": "t", "db": "t.sqlite"}, "output": {"path": str(small_disk / "r.csv")}}
    )
    result = invoke("run", str(spec), "-q")
    assert result.exit_code == 2, result.output
    assert "cannot write the output table (No space left on device)" in result.output
    assert list(small_disk.iterdir()) == []  # what could not be finished was removed
    assert sent(sim) == len(rows)
    exported = invoke("export", str(spec), "--output", str(tmp_path / "r.parquet"))
    assert exported.exit_code == 0, exported.output
    assert sent(sim) == len(rows)


# --------------------------------------------------------------------------- keys and ports


def test_a_non_ascii_key_is_refused_without_being_shown(
    tmp_path: Path, sim: ThreadHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-clé-copiée-0123456789"
    monkeypatch.setenv("DASHSCOPE_API_KEY", key)
    result = invoke("run", str(write_job(tmp_path, ROWS[:5])), "-q")
    assert result.exit_code == 2
    assert "holds a non-ASCII character" in result.output and key not in result.output
    assert sent(sim) == 0 and not (tmp_path / "out").exists()


def test_simulate_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "batchrunner", "simulate", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr
