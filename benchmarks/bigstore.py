"""S4, a big store: a job of `--rows-s4` rows (10M by default) with 90% of them finished, made
without HTTP (`python -m benchmarks.fabricate`, in a child), then the commands a person runs on
such a job, each in a fresh child process with its wall time and peak RSS:

  - resume: `python -m batchrunner run SPEC --quiet` against a simulator process, timed from its
    launch until the simulator counts its first request (the resume start-up); it is then left
    to send RESUME_ROWS requests (20,000 at 10M rows) and stopped with SIGTERM (the run's own
    Ctrl-C path: it commits what came back and exits 130 without writing the output table), so
    the 1M rows left are not sent at full length. The store must say that the run found every
    fabricated row done (its `already_done`);
  - `status SPEC`, `report SPEC` (the text table) and `export SPEC` (the output table, every row).

The targets: resume start-up <= 3 s, and no command above 600 MB of peak RSS; status and report
should take seconds. The figures vary with the machine's load (other work on a shared machine):
compare them with a run of the code before a change, made the same way.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from .harness import Harness
from .proc import BenchError, Exited, SimulatorProcess, child_env, launch, run_child

DONE = 0.9
RESUME_ROWS = 20_000  # requests the resumed run sends before it is stopped (fewer for small jobs)
FIRST_REQUEST_TIMEOUT_S = 120.0
STARTUP_TARGET_S = 3.0
RSS_TARGET_MB = 600.0
COMMAND_TARGET_S = 5.0  # status and report
STOP_GRACE_S = 60.0  # how long the stopped run may take to commit and exit


def s4(h: Harness) -> dict[str, Any]:
    """Fabricate the job, resume it, then time status, report and export."""
    n = h.sizes.s4_rows
    done = int(n * DONE)
    folder = h.workdir / f"s4-{n}"
    h.say(f"S4: fabricating {n:,} rows, {done:,} of them done")
    figures = fabricated(h, folder, n, done)
    spec = Path(figures["spec"])
    out: dict[str, Any] = {"rows": n, "done": done, "fabricate": figures}
    with h.sim(folder) as sim:
        h.say(f"S4: resuming with `python -m batchrunner run` for {resume_rows(n, done):,} requests")
        out["resume"] = resume(h, spec, sim, resume_rows(n, done))
    out["resume"]["already_done"], out["resume"]["sent"] = last_run(Path(figures["store"]))
    for name, args in (("status", ["status"]), ("report", ["report"]), ("export", ["export"])):
        h.say(f"S4: {name}")
        out[name] = command(h, folder, [*args, str(spec)], name, n)
    text = (folder / "export.log").read_text(encoding="utf-8", errors="replace")
    ok = re.search(r"\bok (\d+)", text)
    out["export"]["ok_rows"] = int(ok.group(1)) if ok else 0
    r = out["resume"]
    startup = r["startup_s"]
    r["pass"] = bool(
        startup is not None
        and startup <= STARTUP_TARGET_S
        and r["already_done"] == done
        and r["peak_rss_mb"] <= RSS_TARGET_MB
    )
    for name in ("status", "report", "export"):
        c = out[name]
        c["pass"] = c["peak_rss_mb"] <= RSS_TARGET_MB and (name == "export" or c["wall_s"] <= COMMAND_TARGET_S)
    out["pass"] = all(out[name]["pass"] for name in ("resume", "status", "report", "export"))
    return out


def resume_rows(n: int, done: int) -> int:
    """Requests the resumed run sends: RESUME_ROWS, or half of what is left when that is less."""
    return max(1, min(RESUME_ROWS, (n - done) // 2))


def fabricated(h: Harness, folder: Path, n: int, done: int) -> dict[str, Any]:
    """Run `python -m benchmarks.fabricate` in a child; its figures, with its wall time and RSS."""
    result = folder / "fabricate.json"
    exited = run_child(
        ["-m", "benchmarks.fabricate", str(folder), "--rows", str(n), "--done", str(done), "--json", str(result)],
        env=child_env(),
        cwd=h.workdir,
        log=h.workdir / "s4-fabricate.log",
        timeout_s=h.timeout(n, 5_000),
    )
    if exited.returncode != 0 or not result.is_file():
        msg = f"fabricating the S4 job failed (exit {exited.returncode}; see {h.workdir / 's4-fabricate.log'})"
        raise BenchError(msg)
    figures: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    figures.update(wall_s=exited.wall_s, peak_rss_mb=exited.maxrss_mb)
    return figures


def resume(h: Harness, spec: Path, sim: SimulatorProcess, rows: int) -> dict[str, Any]:
    """Launch `run SPEC`; seconds until the simulator sees its first request (None if not within
    FIRST_REQUEST_TIMEOUT_S), then SIGTERM once it has seen `rows` requests."""
    args = ["-m", "batchrunner", "run", str(spec), "--quiet"]
    stats = sim.stats()
    try:
        before = int(stats.get()["requests"])
        log = spec.parent / "resume.log"
        with launch(args, env=child_env(sim.base_url), cwd=spec.parent, log=log, what="the resumed run") as child:
            startup = None
            deadline = child.started + FIRST_REQUEST_TIMEOUT_S
            while child.exited is None and time.monotonic() < deadline:
                seen = int(stats.get()["requests"]) - before
                if seen and startup is None:
                    startup = time.monotonic() - child.started
                    deadline = time.monotonic() + h.timeout(rows)
                if seen >= rows:
                    break
                time.sleep(0.02)
            exited = child.stop(grace_s=STOP_GRACE_S)
        sent = int(stats.get()["requests"]) - before
    finally:
        stats.close()
    assert exited is not None
    return {"startup_s": startup, "requests": sent, **_figures(exited)}


def last_run(store: Path) -> tuple[int, int]:
    """(already_done, sent) of the store's last run."""
    conn = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT already_done, sent FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


def command(h: Harness, folder: Path, args: list[str], name: str, rows: int) -> dict[str, Any]:
    """Run `python -m batchrunner ARGS` to its end; its figures (BenchError if it failed)."""
    log = folder / f"{name}.log"
    exited = run_child(
        ["-m", "batchrunner", *args], env=child_env(), cwd=folder, log=log, timeout_s=h.timeout(rows, 5_000)
    )
    if exited.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-800:]
        msg = f"`batchrunner {name}` exited {exited.returncode} (log {log}):\n{tail}"
        raise BenchError(msg)
    return _figures(exited)


def _figures(exited: Exited) -> dict[str, Any]:
    return {
        "wall_s": exited.wall_s,
        "cpu_s": exited.cpu_s,
        "peak_rss_mb": exited.maxrss_mb,
        "exit_code": exited.returncode,
    }
