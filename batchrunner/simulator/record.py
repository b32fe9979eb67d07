"""One line of the simulator's request log."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    """One request that reached a generation handler.

    time: wall-clock arrival (epoch seconds). model / prompt: the body's model and the text
    of its last user message ("" when unknown). status: the HTTP status sent (0 = dropped).
    key: sha256 of the canonical JSON of the body's model, input and parameters (absent
    parameters count as {}; "" when the body was unreadable); for the OpenAI-compatible
    endpoint, of the native body it was translated to. fault: the injected fault's label
    (its stats key), if any.
    """

    time: float
    model: str | None
    prompt: str
    status: int
    request_id: str
    key: str
    fault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
