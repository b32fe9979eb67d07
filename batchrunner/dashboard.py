"""The live view of a job: `batchrunner run JOB --dashboard [PORT]` and `batchrunner watch JOB`.

A small aiohttp server on 127.0.0.1 only, in a thread with its own event loop, so it never
holds up the run's loop. It serves two things, both read-only:

- `/`: the HTML report's page (htmlpage.page, with the same charts: charts.chart_specs), its
  cards replaced by the live ones (rows done, rate, ETA, money so far against the budget, the
  run's state) followed by the report's; the page polls `/data.json` every REFRESH_S seconds;
- `/data.json`: `{"cards": <html>, "specs": <chart specs>}`, what the page redraws itself from.

Every read opens the store read-only (a connection of its own, in a worker thread) through
htmlreport.gather and Store's counts; one read at a time, and a read at most every REFRESH_S / 2
seconds whatever the number of open pages. The page carries no key, prompt or answer: the
report's data (row ids, error codes and messages, counts, money) and the run's figures.

Requests from another address, or naming another host (a DNS-rebinding page), get 403.
"""

from __future__ import annotations

import asyncio
import html
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .errors import BatchRunnerError
from .pricing import CURRENCY, format_usd

if TYPE_CHECKING:
    from aiohttp import web

    from .spec import JobSpec

HOST = "127.0.0.1"
REFRESH_S = 2.0
LOOPBACK = ("127.0.0.1", "::1")
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
WAITING = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">'
    "<title>batchrunner live</title></head><body><p>Waiting for the run to open its store: {}</p></body></html>"
)


def _card(key: str, label: str, value: str, exact: Any, note: str = "") -> str:
    note_html = f'<div class="note">{html.escape(note)}</div>' if note else ""
    return (
        f'<div class="card live" data-key="{key}" data-value="{html.escape(str(exact))}">'
        f'<div class="label">{html.escape(label)}</div><div class="value">{html.escape(value)}</div>{note_html}</div>'
    )


def _seconds(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _eta(left: int, rate: float) -> str:
    if not left:
        return "done"
    if not rate:
        return "—"
    s = left / rate
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def live_figures(spec: JobSpec) -> dict[str, Any]:
    """The job's live figures from its store (read-only): rows done of the total, this run's
    rate, the ETA, money so far against the budget, the run's state."""
    from .lock import live_holder
    from .status import shown_status
    from .store import Store

    job = spec.job.name
    with Store(spec.db_path, readonly=True) as store:
        counts, queued = store.counts(job), store.queued_count(job)
        last = store.last_run(job)
        runs = store.runs(job)
        finished = 0 if last is None else sum(store.run_tally(last["id"]).values())
    settled = counts.get("ok", 0) + counts.get("failed", 0) - queued  # as `status` counts it
    total = (last or {}).get("rows_total") or 0
    spent = sum(r.get("paid_pusd") or 0 for r in runs)
    this_run = (runs[-1].get("paid_pusd") or 0) if runs else 0
    figures: dict[str, Any] = {"settled": settled, "total": total, "spent_pusd": spent, "run_pusd": this_run}
    state, rate = "no run yet", 0.0
    if last is not None:
        state = shown_status(last, live_holder(spec.db_path))
        if last.get("exit_code") is not None and state != "running":
            state += f", exit {last['exit_code']}"
        start = _seconds(last["started_at"])
        end = _seconds(last["ended_at"]) or datetime.now(UTC)
        if start is not None:
            rate = finished / max((end - start).total_seconds(), 1e-9)
        figures["run_id"] = last["id"]
    figures.update(state=state, rate=rate, left=max(0, total - settled))
    return figures


def live_cards(spec: JobSpec, f: dict[str, Any]) -> str:
    """The live cards (see live_figures), before the report's own."""
    parts = [
        _card("run_state", "Run", f["state"], f["state"], f"run #{f['run_id']}" if "run_id" in f else ""),
        _card("rows_done", "Rows done", f"{f['settled']:,} / {f['total']:,}", f["settled"], "ok or failed for good"),
        _card("rate", "Rate", f"{f['rate']:.2f} rows/s", f"{f['rate']:.6f}", "this run"),
        _card("eta", "ETA", _eta(f["left"], f["rate"]), f["left"], f"{f['left']:,} rows left"),
    ]
    limits = spec.limits
    budget, spent = limits.max_cost_usd, f["spent_pusd"]
    if budget is None and limits.max_cost_usd_per_run is not None:
        budget, spent = limits.max_cost_usd_per_run, f["run_pusd"]
    shown = f"{format_usd(spent, 6)} {CURRENCY}"
    if budget is not None:
        share = Decimal(spent) / Decimal(1_000_000_000_000) / Decimal(str(budget)) * 100
        note = f"of {budget} {CURRENCY} budget ({share:.1f}%)"
    else:
        note = "no budget set"
    parts.append(_card("money_so_far", "Money so far", shown, format_usd(spent, 12), note))
    updated = datetime.now(UTC).strftime("%H:%M:%S UTC")
    parts.append(_card("updated", "Updated", updated, updated, f"every {REFRESH_S:g} s"))
    return "\n".join(parts)


@dataclass
class Snapshot:
    """What the page shows at one moment, and when it was read."""

    cards: str
    specs: dict[str, Any]
    data: dict[str, Any]
    at: float


def read_snapshot(spec: JobSpec) -> Snapshot:
    """Read the store (read-only) and build the page's cards and chart specs (blocking: run it in a thread)."""
    from . import charts, htmlpage, htmlreport

    figures = live_figures(spec)
    data = htmlreport.gather([spec.db_path])
    cards = live_cards(spec, figures) + "\n" + htmlpage.cards_html(data)
    return Snapshot(cards, charts.chart_specs(data), data, time.monotonic())


@dataclass
class Dashboard:
    """The live page's server, in a thread of its own: `start()` gives the URL, `stop()` ends it."""

    spec: JobSpec
    port: int = 0
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _latest: Snapshot | None = None
    _lock: asyncio.Lock | None = None

    def start(self) -> str:
        """Listen on 127.0.0.1:`port` (0: a free one) and return the page's URL."""
        self._thread = threading.Thread(target=self._serve, name="batchrunner-dashboard", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            msg = f"the dashboard could not listen on {HOST}:{self.port}: {self._error}"
            raise BatchRunnerError(msg)
        return self.url

    def stop(self) -> None:
        """Close the server (open connections too) and end its thread; about half a second at most."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by start(); the thread ends
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        guard = self._guard

        @web.middleware
        async def only_this_machine(request: web.Request, handler: Any) -> web.StreamResponse:
            return await guard(request, handler)

        app = web.Application(middlewares=[only_this_machine])
        app.router.add_get("/", self._page)
        app.router.add_get("/data.json", self._data)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, self.port, reuse_address=True)
            await site.start()
            port = runner.addresses[0][1]
            self.port, self.url = port, f"http://{HOST}:{port}/"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    @property
    def _hosts(self) -> set[str]:
        return {f"{HOST}:{self.port}", f"localhost:{self.port}"}

    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """403 for a peer that is not this machine, or a Host header naming another host."""
        from aiohttp import web

        from_here = request.remote in LOOPBACK
        if not from_here or request.headers.get("Host", "") not in self._hosts:
            return web.Response(status=403, text="the dashboard answers this machine only (127.0.0.1)\n")
        response: web.StreamResponse = await handler(request)
        response.headers.update(HEADERS)
        return response

    async def _snapshot(self) -> Snapshot | None:
        """The latest snapshot, read again when older than half the refresh period; None while
        the store cannot be read yet."""
        assert self._lock is not None
        async with self._lock:
            latest = self._latest
            if latest is None or time.monotonic() - latest.at >= REFRESH_S / 2:
                try:
                    self._latest = await asyncio.to_thread(read_snapshot, self.spec)
                except (BatchRunnerError, OSError) as exc:
                    if latest is None:
                        self._why = str(exc)
                        return None
            return self._latest

    _why: str = ""

    async def _page(self, request: web.Request) -> web.Response:
        from aiohttp import web

        from . import htmlpage

        snap = await self._snapshot()
        if snap is None:
            return web.Response(text=WAITING.format(html.escape(self._why)), content_type="text/html")
        title = f"batchrunner live · {self.spec.job.name}"
        text = await asyncio.to_thread(
            htmlpage.page, snap.data, snap.specs, title=title, data_url="data.json", refresh_s=REFRESH_S,
            cards=snap.cards,
        )  # fmt: skip
        return web.Response(text=text, content_type="text/html")

    async def _data(self, request: web.Request) -> web.Response:
        from aiohttp import web

        snap = await self._snapshot()
        if snap is None:
            return web.json_response({"waiting": self._why}, status=503)
        return web.json_response({"cards": snap.cards, "specs": snap.specs})
