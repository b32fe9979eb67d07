"""Where the API key comes from, and where it may be sent.

The key is read from the environment variable `[api] api_key_env`, or from `[api]
api_key_file` (which must not be readable by other users). It is kept only in the HTTP
client's headers: never in the store, logs, output or any message.

Keys travel only over https, except to loopback addresses (the simulator, a local server) or
when the spec sets `[api] allow_insecure_http = true`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from urllib.parse import urlsplit

from .errors import SpecError
from .spec import JobSpec


def api_key_for(spec: JobSpec) -> str:
    """The key for a real run, or SpecError saying how to provide it."""
    api = spec.api
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
        return key
    key = os.environ.get(api.api_key_env, "").strip()
    if not key:
        msg = (
            f"environment variable {api.api_key_env} is not set: export your DashScope API key in it "
            f"([api] api_key_env names the variable, or set [api] api_key_file), or try the job with --simulate"
        )
        raise SpecError(msg)
    return key


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
    if parts.scheme == "https" or allow_insecure_http:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return
    msg = (
        f"base URL {url!r} is not https: the API key would travel in clear text. Use https, a loopback "
        f"address, or set [api] allow_insecure_http = true if the network is trusted"
    )
    raise SpecError(msg)
