"""Binding an aiohttp application to a TCP port on the running loop, without an access log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

SHUTDOWN_GRACE_S = 0.5  # in-flight handlers (e.g. "slow" faults) are cancelled after this


@asynccontextmanager
async def serve_app(app: web.Application, host: str, port: int, path: str) -> AsyncIterator[str]:
    """Serve `app` on host:port (0 picks a free port); yields http://host:port + `path`."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        bound = runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = f"[{shown}]" if ":" in shown else shown
        yield f"http://{shown}:{bound}{path}"
    finally:
        await runner.cleanup()
