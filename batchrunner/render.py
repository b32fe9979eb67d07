"""One input row -> its requests: messages (text, media, cache markers), seeds, samples, body, key.

    row -> neutral messages -> for each sample: seed -> wire body -> request key

Media cells: a URL (http, https, oss, file) or a data: URI is sent as it is; anything else is
a local file path, relative to the input file's folder, sent inline as a base64 data URI.
Seeds: a fixed seed s gives sample k the seed s + k; "per-row" derives a stable seed from the
row id and the sample number (so reruns and resumes send the same request); a seed column
gives its value + k. With `[job] repeat` > 1 and no seed, "per-row" seeds are used so the
samples differ.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import prompts
from .frozen import fast_init
from .parameters import SEED_MAX, SeedColumn
from .service import endpoint_path
from .spec import JobSpec
from .wire import Wire, for_protocol

# Bump when the same row under the same spec makes a different request (and so another key):
# exports trust a stored row index only under the render context (`Renderer.render_context`) it was
# written in, and the context includes this number.
RENDER_VERSION = 1
URL_PREFIXES = ("http://", "https://", "oss://", "file://", "data:")
MAX_INLINE_BYTES = 10 * 1024 * 1024  # the service's limit on one base64 item
CACHE_MARK = {"type": "ephemeral"}


@fast_init
@dataclass(frozen=True, slots=True)
class Request:
    """One unit of work: a rendered request and the input row (and sample) it came from."""

    key: str
    row_index: int
    row_id: str
    path: str
    body: dict[str, Any]
    est_input_tokens: int
    sample: int = 0
    seed: int | None = None
    content: bytes = b""  # the body as sent: canonical JSON (sorted keys), encoded once

    @property
    def payload(self) -> bytes:
        return self.content or canonical(self.body)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An input row that is not sent (empty prompt cell with `on_empty = "skip"`)."""

    row_index: int
    row_id: str
    reason: str
    sample: int = 0


def derived_seed(row_id: str, sample: int) -> int:
    digest = hashlib.blake2b(f"{row_id}\x00{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MAX


def media_uri(value: str, base: Path) -> str:
    """A media cell as sent: URLs and data URIs as they are, local files inline."""
    if value.startswith(URL_PREFIXES):
        return value
    path = (base / value).expanduser()
    data = path.read_bytes()
    if len(data) * 4 / 3 > MAX_INLINE_BYTES:
        msg = f"{path} is {len(data) / 1e6:.1f} MB; inline files must stay under 7.5 MB (10 MB as base64)"
        raise ValueError(msg)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class Renderer:
    """Turns rows into requests for one job spec."""

    def __init__(self, spec: JobSpec, template: prompts.Template | None) -> None:
        self.spec = spec
        self.template = template
        self.wire: Wire = for_protocol(spec.api.protocol)
        self.path = endpoint_path(spec.model, spec.api)
        self.multimodal = spec.model.multimodal
        self.parameters = spec.parameters.wire()
        self.media_base = spec.input.path.parent
        self.context = spec.prompt.context_text()
        seed = spec.parameters.seed
        self.seed = "per-row" if seed is None and spec.job.repeat > 1 else seed

    def render_context(self, signature: str) -> str | None:
        """A digest of everything that turns input row i (of the file `signature` names) into
        its requests: this code's rendering, the prompt (and its context file's text), model,
        endpoint, parameters, seeds, samples and how the table is read. Equal contexts make the
        same requests from the same row index. None when requests read other files (local media
        in image or video columns): their content is not part of it."""
        spec = self.spec
        if spec.prompt.images or spec.prompt.videos:
            return None
        parts = {
            "version": RENDER_VERSION,
            "input": [signature, spec.input.model_dump(mode="json", exclude={"path"})],
            "prompt": [spec.prompt.model_dump(mode="json"), self.context],
            "model": [spec.model.model_dump(mode="json"), self.path, self.multimodal],
            "parameters": [spec.parameters.model_dump(mode="json"), self.parameters, str(self.seed)],
            "wire": [spec.api.protocol, spec.job.repeat, spec.output.parse_json],
        }
        text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def system_message(self) -> dict[str, Any] | None:
        system = self.spec.prompt.system
        if not system:
            return None
        if self.spec.prompt.cache == "system":
            return {"role": "system", "content": [{"text": system, "cache_control": CACHE_MARK}]}
        return {"role": "system", "content": system}

    def media_items(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for column in self.spec.prompt.images:
            for value in _values(row.get(column)):
                items.append({"image": media_uri(value, self.media_base)})
        for column in self.spec.prompt.videos:
            cell = row.get(column)
            if isinstance(cell, list):
                items.append({"video": [media_uri(v, self.media_base) for v in _values(cell)]})
            elif cell:
                items.append({"video": media_uri(str(cell), self.media_base)})
        return items

    def messages(self, row: dict[str, Any], *, media: bool = True) -> list[dict[str, Any]]:
        """A row's messages; `media=False` leaves media items out (no file is read)."""
        system = self.system_message()
        if self.template is None:
            cell = row[self.spec.prompt.messages_column or ""]
            messages = prompts.parse_messages_cell(cell, None)
            if system is not None and messages[0]["role"] != "system":
                messages.insert(0, system)
            return messages
        text = self.template.render(row)
        items: list[dict[str, Any]] = []
        if self.context:
            marker = {"cache_control": CACHE_MARK} if self.spec.prompt.cache == "context" else {}
            items.append({"text": self.context, **marker})
        if media:
            items.extend(self.media_items(row))
        content: Any = [*items, {"text": text}] if items else text
        return [m for m in (system, {"role": "user", "content": content}) if m is not None]

    def seed_for(self, row: dict[str, Any], row_id: str, sample: int) -> int | None:
        seed = self.seed
        if seed is None:
            return None
        if seed == "per-row":
            return derived_seed(row_id, sample)
        if isinstance(seed, SeedColumn):
            return (int(row[seed.column]) + sample) % (SEED_MAX + 1)
        return (int(seed) + sample) % (SEED_MAX + 1)

    def requests(self, row: dict[str, Any], row_index: int, row_id: str) -> Iterator[Request]:
        messages = self.messages(row)
        estimate = prompts.estimate_tokens(messages)
        for sample in range(self.spec.job.repeat):
            seed = self.seed_for(row, row_id, sample)
            params = self.parameters if seed is None else {**self.parameters, "seed": seed}
            body = self.wire.body(
                self.spec.model.name, messages, params, multimodal=self.multimodal, stream=self.spec.parameters.stream
            )
            content = canonical(body)
            key = key_of(self.path, content)
            yield Request(key, row_index, row_id, self.path, body, estimate, sample, seed, content)


# json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False), the encoder made
# once; bodies are never circular, so the check for it (a dict of ids per call) is left out.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False)


def canonical(body: dict[str, Any]) -> bytes:
    """A body as canonical JSON: sorted keys, no spaces, UTF-8. It is both what is sent and
    what the request key hashes, so it is encoded once per request."""
    return _CANONICAL.encode(body).encode("utf-8")


def key_of(path: str, content: bytes) -> str:
    """A stable 128-bit hex digest of the exact request (endpoint path and canonical body)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(path.encode("utf-8") + b"\n")
    digest.update(content)
    return digest.hexdigest()


def request_key(path: str, body: dict[str, Any]) -> str:
    """The request key of a body (see `key_of`)."""
    return key_of(path, canonical(body))


def _values(cell: Any) -> list[str]:
    if cell is None:
        return []
    if isinstance(cell, list | tuple):
        return [str(v) for v in cell if v]
    return [str(cell)] if str(cell).strip() else []
