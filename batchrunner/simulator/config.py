"""What a simulator run is told to do: limits, latency, random faults and scripted faults.

`SimulatorConfig` is immutable; a `Simulator` reads it once per request. Scripted faults
(`FaultRule`) are resolved here into `Fault` values so the request path does no parsing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .catalogue import CODES, SimError, error_for_code, error_for_status

# Fault kinds that are not an error body: what the connection or the answer does instead.
DROP = "drop"  # close the connection without answering
MALFORMED = "malformed"  # 200 with a truncated, non-JSON body
SLOW = "slow"  # wait `slow_s`, then answer normally
TRANSPORT_KINDS = frozenset({DROP, MALFORMED, SLOW})

# The kinds `fault_mix` accepts; the status-number kinds map through `error_for_status`.
MIX_KINDS = frozenset({"500", "503", "429", DROP, MALFORMED, SLOW})

ALWAYS = "always:"

# How streamed events are separated: by a blank line, or not at all (see SimulatorConfig).
BLANK = "blank"
COMPACT = "compact"
FRAMINGS = frozenset({BLANK, COMPACT})


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: `label` is its key in stats; `error` is set for error answers,
    `kind` (drop / malformed / slow) otherwise."""

    label: str
    error: SimError | None = None
    kind: str | None = None


def parse_outcome(outcome: str | int) -> Fault:
    """Turn one scripted outcome (a status number, a code name or a transport kind) into a Fault.

    Raises ValueError for anything the simulator cannot produce.
    """
    if isinstance(outcome, bool):
        msg = f"fault outcome {outcome!r} must be a status number or a name, not a bool"
        raise ValueError(msg)
    if isinstance(outcome, int):
        return Fault(str(outcome), error=error_for_status(outcome))
    if outcome in TRANSPORT_KINDS:
        return Fault(outcome, kind=outcome)
    if outcome.isdigit():
        return Fault(outcome, error=error_for_status(int(outcome)))
    if outcome in CODES:
        return Fault(outcome, error=error_for_code(outcome))
    known = ", ".join(sorted(TRANSPORT_KINDS | CODES.keys()))
    msg = f"unknown fault outcome {outcome!r}; use an HTTP status, or one of: {known}"
    raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class FaultRule:
    """A scripted fault sequence for requests whose last user message contains `match`.

    The i-th arrival of one distinct request body gets `outcomes[i]`; after the list runs out
    it is answered normally, unless the last outcome is written "always:<outcome>", which then
    repeats forever. Outcomes: an HTTP status (429, 500, ...), a code name
    ("DataInspectionFailed", "Throttling.AllocationQuota", ...), "drop", "malformed", "slow".
    """

    match: str
    outcomes: tuple[str | int, ...]
    _parsed: tuple[Fault, ...] = field(init=False, repr=False, compare=False)
    _forever: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.match:
            msg = "FaultRule.match must be a non-empty string"
            raise ValueError(msg)
        parsed: list[Fault] = []
        forever = False
        for i, outcome in enumerate(self.outcomes):
            if isinstance(outcome, str) and outcome.startswith(ALWAYS):
                if i != len(self.outcomes) - 1:
                    msg = f"{outcome!r} must be the last outcome of FaultRule({self.match!r})"
                    raise ValueError(msg)
                forever = True
                outcome = outcome[len(ALWAYS) :]
            parsed.append(parse_outcome(outcome))
        object.__setattr__(self, "_parsed", tuple(parsed))
        object.__setattr__(self, "_forever", forever)

    def fault_at(self, arrival: int) -> Fault | None:
        """The fault for the `arrival`-th (0-based) arrival of one body, or None to answer."""
        if arrival < len(self._parsed):
            return self._parsed[arrival]
        if self._forever and self._parsed:
            return self._parsed[-1]
        return None


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything a simulator run is told: limits, latency, faults, keys and logging.

    rpm / tpm: requests and tokens per minute, enforced per sliding window (see limits.py).
    latency_ms: wait before every answer. fail_rate: chance of a 500 InternalError.
    fault_mix: chance per kind ("500", "503", "429", "drop", "malformed", "slow").
    slow_s: how long a "slow" fault waits. rng_seed: seeds every random choice.
    valid_keys: accepted API keys (None accepts any key starting "sk-").
    faults: scripted FaultRules. keep_log: record each request in `Simulator.log`.
    retry_after_s: when set, 429 answers carry `Retry-After` (the real service sends none).
    max_output_tokens: the upper bound of `max_tokens` for every model.
    sse_framing: "blank" puts a blank line after every streamed event (the usual framing);
    "compact" writes each event straight after the previous one, as some real DashScope
    streams do. sse_crlf: end stream lines with CRLF. sse_bom: start a stream with a UTF-8
    byte-order mark. sse_gzip: send streams gzip-compressed (Content-Encoding: gzip).
    Batch API (see batches.py): `clock` is what a batch's progress is measured on (seconds;
    tests pass a controlled one); a batch validates for `batch_validate_s`, then answers one
    line every `batch_line_s` (0: all at once) and expires after its completion window.
    `batch_none_id` is what an absent output / error file id is written as (None or "").
    `batch_seconds`, when set, replaces that pacing: every batch takes this many seconds of
    the clock from creation to completion (it validates for min(batch_validate_s,
    batch_seconds / 10), then its lines are answered evenly over the rest).
    Batch API faults (counted in stats; see batchfaults.py): the first `batch_drop_creates`
    POST /batches make their batch but close the connection without answering; the first
    `batch_throttle_creates` answer 429 and make nothing; the first `batch_fail_gets`
    GET /batches/{id} answer 503; with `batch_download_503`, the first download of each
    file's content answers 503; the first `batch_cut_downloads` downloads send half the body
    (Content-Length promising all of it) and close the connection. A batch line matched by
    a FaultRule gets the rule's outcome as its line's status (transport kinds: 500).
    """

    rpm: int | None = None
    tpm: int | None = None
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    fault_mix: dict[str, float] = field(default_factory=dict)
    slow_s: float = 30.0
    rng_seed: int = 0
    valid_keys: frozenset[str] | None = None
    faults: tuple[FaultRule, ...] = ()
    keep_log: bool = True
    retry_after_s: float | None = None
    max_output_tokens: int = 32768
    sse_framing: str = BLANK
    sse_crlf: bool = False
    sse_bom: bool = False
    sse_gzip: bool = False
    clock: Callable[[], float] = time.monotonic
    batch_validate_s: float = 1.0
    batch_line_s: float = 0.01
    batch_none_id: str | None = None
    batch_seconds: float | None = None
    batch_drop_creates: int = 0
    batch_throttle_creates: int = 0
    batch_fail_gets: int = 0
    batch_download_503: bool = False
    batch_cut_downloads: int = 0

    def __post_init__(self) -> None:
        self._check_batch_fields()
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                msg = f"SimulatorConfig.{name} must be positive or None, got {value}"
                raise ValueError(msg)
        if self.sse_framing not in FRAMINGS:
            msg = f"SimulatorConfig.sse_framing must be one of {sorted(FRAMINGS)}, got {self.sse_framing!r}"
            raise ValueError(msg)
        unknown = set(self.fault_mix) - MIX_KINDS
        if unknown:
            msg = f"unknown fault_mix kinds {sorted(unknown)}; use {sorted(MIX_KINDS)}"
            raise ValueError(msg)
        total = self.fail_rate + sum(self.fault_mix.values())
        probabilities = [self.fail_rate, *self.fault_mix.values()]
        if any(p < 0 or math.isnan(p) for p in probabilities) or total > 1.0 + 1e-9:
            msg = f"fail_rate and fault_mix must be probabilities summing to <= 1, got {total}"
            raise ValueError(msg)
        if self.valid_keys is not None and not isinstance(self.valid_keys, frozenset):
            object.__setattr__(self, "valid_keys", frozenset(self.valid_keys))
        object.__setattr__(self, "faults", tuple(self.faults))

    def _check_batch_fields(self) -> None:
        if self.batch_validate_s < 0 or self.batch_line_s < 0 or self.batch_none_id not in (None, ""):
            msg = 'SimulatorConfig: batch_validate_s and batch_line_s must be >= 0; batch_none_id None or ""'
            raise ValueError(msg)
        if self.batch_seconds is not None and not self.batch_seconds > 0:
            msg = f"SimulatorConfig.batch_seconds must be positive or None, got {self.batch_seconds}"
            raise ValueError(msg)
        for name in ("batch_drop_creates", "batch_throttle_creates", "batch_fail_gets", "batch_cut_downloads"):
            if getattr(self, name) < 0:
                msg = f"SimulatorConfig.{name} must be >= 0, got {getattr(self, name)}"
                raise ValueError(msg)

    def random_faults(self) -> tuple[tuple[float, Fault], ...]:
        """The random fault table: (cumulative probability, fault), in a fixed order."""
        table: list[tuple[float, Fault]] = []
        edge = 0.0
        kinds = [("500", self.fail_rate), *sorted(self.fault_mix.items())]
        for kind, p in kinds:
            if p > 0:
                edge += p
                table.append((edge, parse_outcome(kind)))
        return tuple(table)
