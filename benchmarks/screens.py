"""Regenerate docs/report.png, the README's picture of `batchrunner report --format html`.

    python -m benchmarks.screens [--out docs/report.png]

Runs a small simulated job in-process (the htmlsize benchmark's 500-row job: failures, 429s,
retries, cache hits), writes its HTML report and has headless Chromium screenshot it
(1280 px wide, network off). Needs chromium and the html extra.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .browser import screenshot
from .htmlsize import seed_store

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--size", default="1280,2900", help="window width,height in CSS pixels")
    args = parser.parse_args()
    from batchrunner.htmlreport import write_html

    with tempfile.TemporaryDirectory(prefix="screens-") as folder:
        store = seed_store(Path(folder))
        page, _ = write_html([store], Path(folder) / "report.html")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page, args.out, size=args.size)
    print(f"{args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
