"""Headless Chromium for the HTML report: dump a page's DOM after its scripts ran, or screenshot it.

Used by the tests (tests/test_htmlreport.py), by `python -m benchmarks.screens` (docs/report.png)
and by `python -m benchmarks.htmlsize` (size and load time of a large job's report). The network
is off for the page: a proxy on port 9 (discard, nothing listens) takes every request, and the
page is read from disk. A live page (`http://127.0.0.1:PORT/`, the dashboard) is the one
exception: given as a URL, it is loaded from loopback (the proxy still takes everything else).
Each Chromium runs in its own process group, ended with the group when
it overruns its timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
)


def find_chromium() -> str | None:
    """The Chromium binary (BATCHRUNNER_CHROMIUM, else Debian's), None when not installed."""
    named = os.environ.get("BATCHRUNNER_CHROMIUM")
    for path in ([named] if named else []) + list(CANDIDATES):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def _address(page: Path | str) -> tuple[str, tuple[str, ...]]:
    """The address to load and the flags: a file with loopback off too, a loopback URL with it on."""
    if isinstance(page, str):
        if not page.startswith(("http://127.0.0.1:", "http://localhost:")):
            msg = f"only a loopback URL may be loaded: {page}"
            raise ValueError(msg)
        return page, tuple(f for f in FLAGS if not f.startswith("--proxy-bypass-list"))
    return page.resolve().as_uri(), FLAGS


def _run(
    chromium: str, args: list[str], timeout_s: float, flags: tuple[str, ...] = FLAGS
) -> subprocess.CompletedProcess[str]:
    """Chromium with `args`, its whole process group ended if it is still running at `timeout_s`."""
    with tempfile.TemporaryDirectory(prefix="batchrunner-chromium-") as profile:
        command = [chromium, *flags, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        finally:
            if proc.poll() is None:  # pragma: no cover - communicate returned or raised above
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _end_group(proc.pid)
        return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _end_group(pgid: int) -> None:
    """End what is left of Chromium's process group (its helpers may outlive the browser)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def dump_dom(page: Path | str, *, budget_ms: int = 10_000, timeout_s: float = 120) -> str:
    """The page's DOM after its scripts ran (virtual time: up to `budget_ms` of it); `page` is
    a file, or a loopback URL."""
    chromium = find_chromium()
    if chromium is None:
        msg = "chromium is not installed (apt-get install -y chromium)"
        raise FileNotFoundError(msg)
    address, flags = _address(page)
    done = _run(chromium, [f"--virtual-time-budget={budget_ms}", "--dump-dom", address], timeout_s, flags)
    return done.stdout


def screenshot(
    page: Path | str, png: Path, *, size: str = "1280,2400", budget_ms: int = 10_000, timeout_s: float = 120
) -> Path:
    """A PNG of the page at `size` (width,height in CSS pixels)."""
    chromium = find_chromium()
    if chromium is None:
        msg = "chromium is not installed (apt-get install -y chromium)"
        raise FileNotFoundError(msg)
    args = [f"--virtual-time-budget={budget_ms}", f"--screenshot={png.resolve()}", f"--window-size={size}"]
    address, flags = _address(page)
    _run(chromium, [*args, "--hide-scrollbars", address], timeout_s, flags)
    return png


def load_seconds(page: Path, *, timeout_s: float = 120) -> float:
    """Wall-clock seconds for Chromium to start, load the page, run its scripts and dump the DOM
    (real time: no virtual-time budget beyond what the scripts need)."""
    start = time.perf_counter()
    dump_dom(page, budget_ms=10_000, timeout_s=timeout_s)
    return time.perf_counter() - start
