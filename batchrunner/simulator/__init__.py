"""A deterministic stand-in for the DashScope generation API, served on loopback.

It speaks the native wire protocol of `batchrunner.wire` (the only part of the package it
imports): the text and multimodal generation endpoints, key checks, the service's validation
messages, per-second rate windows, the implicit and explicit context cache, SSE streaming,
function calling, logprobs, image/video token accounting, and scripted or random faults.
The OpenAI-compatible endpoint (/compatible-mode/v1/chat/completions) gives the same answers
in OpenAI shapes, and the Batch API (/compatible-mode/v1/files and /batches) answers each
line the same way, its progress on `SimulatorConfig.clock`. Answers depend only on (model, messages, seed) and
the parameters that shape them (tools, max_tokens, stop, response_format, n, enable_thinking).
Control endpoints: GET /_simulator/stats, GET /_simulator/log, POST /_simulator/reset (also
under /api/v1/_simulator/).

    with serve_in_thread(SimulatorConfig(rpm=600)) as handle:
        ...  # point a client at handle.base_url (OpenAI clients: handle.compat_base_url)
"""

from __future__ import annotations

from .answers import answer_for, count_tokens, request_key
from .app import Simulator
from .config import FaultRule, SimulatorConfig
from .record import RequestRecord
from .server import ThreadHandle, run_simulator, serve_in_thread

__all__ = [
    "FaultRule",
    "RequestRecord",
    "Simulator",
    "SimulatorConfig",
    "ThreadHandle",
    "answer_for",
    "count_tokens",
    "request_key",
    "run_simulator",
    "serve_in_thread",
]
