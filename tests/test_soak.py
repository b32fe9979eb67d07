"""The soak command, shrunk: a fault mix and repeated SIGKILLs, with all its checks passing."""

from __future__ import annotations

from pathlib import Path

from batchrunner.soak import soak


def test_small_soak_passes_its_checks(tmp_path: Path) -> None:
    figures = soak(rows=400, kills=2, seed=3, folder=tmp_path)
    assert figures["checks"] == {
        "table complete, all ok": True,
        "one result per row": True,
        "one stored success per row": True,
        "re-bought only in flight / last moments": True,
    }
    injected = figures["faults injected"]
    assert isinstance(injected, dict) and injected.get("500", 0) > 0
