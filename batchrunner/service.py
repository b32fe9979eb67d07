"""Where a job's requests go and with which key: the endpoint, the base URL, the credentials.

The key is read from the environment variable `[api] api_key_env`, or from `[api]
api_key_file` (which must not be readable by other users). It is kept only in the HTTP
client's headers: never in the store, logs, output or any message.

Keys travel only over https, except to loopback addresses (the simulator, a local server) or
when the spec sets `[api] allow_insecure_http = true`. The base URL is, in order: the
environment variable DASHSCOPE_BASE_URL, `[api] base_url`, the region's default.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import wire
from .batchspec import BatchSection
from .errors import SpecError
from .spec import ApiSection, ModelSection

BASE_URL_ENV = "DASHSCOPE_BASE_URL"
SIMULATED_KEY = "sk-simulated"


def endpoint_path(model: ModelSection, api: ApiSection) -> str:
    """The endpoint path (relative to the base URL) for a model and protocol."""
    if api.protocol == "openai":
        return wire.OPENAI_CHAT_PATH
    if model.endpoint == "text":
        return wire.TEXT_PATH
    if model.endpoint == "multimodal":
        return wire.MULTIMODAL_PATH
    return wire.path_for_model(model.name)


def base_url(api: ApiSection) -> str:
    """The base URL in force: DASHSCOPE_BASE_URL, else the spec's, else the region's default."""
    env = os.environ.get(BASE_URL_ENV, "").rstrip("/")
    return env or api.base_url or wire.base_url_for(api.region, api.protocol)


def batch_root(api: ApiSection, batch: BatchSection, svc: Service) -> str:
    """The root of the Files and Batches APIs: `[batch] base_url`, else the OpenAI-compatible
    root beside the base URL in force (the simulator's, for a simulated run)."""
    if batch.base_url and not svc.simulated:
        check_base_url(batch.base_url, allow_insecure_http=api.allow_insecure_http)
        return batch.base_url
    if api.protocol == "openai" or svc.base_url.endswith(wire.COMPATIBLE_SUFFIX):
        return svc.base_url
    return wire.compatible_root(svc.base_url)


def api_key(api: ApiSection) -> str:
    """The key for a real run, or SpecError saying how to provide it (the key is never shown)."""
    key, where = _read_key(api)
    bad = next((c for c in key if not (c.isascii() and c.isprintable())), None)
    if bad is not None:
        kind = "a line break" if bad in "\r\n" else "a control character" if bad.isascii() else "a non-ASCII character"
        msg = (
            f"the API key in {where} holds {kind}, which cannot be sent in an HTTP header; "
            f"copy the key again (DashScope keys are plain ASCII, like sk-...)"
        )
        raise SpecError(msg)
    return key


def _read_key(api: ApiSection) -> tuple[str, str]:
    """(the key, where it came from)."""
    if api.api_key_file is not None:
        path = api.api_key_file
        try:
            mode = path.stat().st_mode
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"[api] api_key_file: cannot read {path} ({exc.strerror})"
            raise SpecError(msg) from None
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            msg = f"[api] api_key_file: {path} is readable by other users; run `chmod 600 {path}` first"
            raise SpecError(msg)
        if not key:
            msg = f"[api] api_key_file: {path} is empty"
            raise SpecError(msg)
        return key, f"[api] api_key_file {path}"
    key = os.environ.get(api.api_key_env, "").strip()
    if not key:
        msg = (
            f"environment variable {api.api_key_env} is not set: export your DashScope API key in it "
            f"([api] api_key_env names the variable, or set [api] api_key_file), or try the job with --simulate"
        )
        raise SpecError(msg)
    return key, f"environment variable {api.api_key_env}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_insecure_http: bool) -> None:
    """Refuse to send the key in clear text to anything but loopback, unless opted in."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"base URL {url!r} is not an http(s) URL; it looks like https://dashscope-intl.aliyuncs.com/api/v1"
        raise SpecError(msg)
    if parts.scheme == "https" or allow_insecure_http:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return
    msg = (
        f"base URL {url!r} is not https: the API key would travel in clear text. Use https, a loopback "
        f"address, or set [api] allow_insecure_http = true if the network is trusted"
    )
    raise SpecError(msg)


@dataclass(frozen=True)
class Service:
    """Where a run sends its requests, and the key it sends (never shown in its repr)."""

    base_url: str
    api_key: str
    simulated: bool = False

    def __repr__(self) -> str:
        return f"Service(base_url={self.base_url!r}, simulated={self.simulated})"


@contextlib.asynccontextmanager
async def connect(
    api: ApiSection,
    *,
    simulate: bool,
    sim_batch_seconds: float | None = None,
    sim_clock: Callable[[], float] | None = None,
) -> AsyncIterator[Service]:
    """The real service (key and URL checked), or a simulator served in this event loop
    (`sim_batch_seconds`: how long its batches take, on `sim_clock`)."""
    if not simulate:
        url = base_url(api)
        check_base_url(url, allow_insecure_http=api.allow_insecure_http)
        yield Service(url, api_key(api))
        return
    from .simulator import Simulator, SimulatorConfig

    settings: dict[str, Any] = {}
    if sim_batch_seconds is not None:
        settings["batch_seconds"] = sim_batch_seconds
    if sim_clock is not None:
        settings["clock"] = sim_clock
    async with Simulator(SimulatorConfig(**settings)).serve(host="127.0.0.1", port=0) as url:
        if api.protocol == "openai":
            url = wire.compatible_root(url)
        yield Service(url, SIMULATED_KEY, simulated=True)
