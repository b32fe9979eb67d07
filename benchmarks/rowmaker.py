"""The rows of S4's fabricated job (see `fabricate`), made in worker processes.

`Maker` works out, for a slice of the input table, what a run against the simulator stores for
each row: the request key that `render` computes, the simulator's answer, tokens and cost, and
the attempt. A row's request body differs from every other's only in its user message, so its
canonical JSON is a fixed prefix and suffix around that message's JSON text (likewise the
simulator's answer material); the prefixes come from rendering one row with batchrunner's own
Renderer, and a sample of rows (every CHECK_EVERY-th) is worked out the slow way too
(`Renderer.requests`, `answers.answer_for`) and must agree. `Bulk` puts a row's own values into
the stored form of the job's first row (as `Store.write` stored it), column by column.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from batchrunner import prompts, wire
from batchrunner.pricing import Cost, pusd_to_usd
from batchrunner.records import Attempt, Result, dumps
from batchrunner.render import Renderer, key_of
from batchrunner.runner import prices_for
from batchrunner.simulator import answers
from batchrunner.spec import JobSpec, load
from batchrunner.store.packing import iso_of, packed_key
from batchrunner.store.slim import ATTEMPT_COLUMNS, RESULT_COLUMNS

from .data import SEED, prompt_rows, sentence_pool

CHECK_EVERY = 4_999  # rows whose key and answer are worked out the slow way too
ROWS_PER_S = 2_000  # the pace of the run the timestamps describe
TOKEN_PATTERN = answers._TOKEN.pattern  # the simulator's token: one CJK character, word or punctuation mark


@dataclass(frozen=True, slots=True)
class Row:
    """One finished request: what varies from row to row in the store."""

    key: str
    row_id: str
    row_index: int
    content: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    started_ms: int
    latency_ms: int
    request_id: bytes  # a version 4 UUID's
    cost: Cost | None


class Maker:
    """Works out the finished rows of one spec (one per process)."""

    def __init__(self, spec: JobSpec, t0_ms: int) -> None:
        assert spec.prompt.template is not None
        self.spec = spec
        self.t0_ms = t0_ms
        self.template = prompts.parse_template(spec.prompt.template, where="fabricate")
        self.renderer = Renderer(spec, self.template)
        self.prices = prices_for(spec)
        self.model = spec.model.name
        self.max_tokens = spec.parameters.max_tokens
        self.pool = sentence_pool()
        self._costs: dict[tuple[int, int], Cost | None] = {}
        probe = {"id": "t0", "category": "billing", "text": "probe"}
        request = next(self.renderer.requests(probe, 0, "t0"))
        self.path, self.seed = request.path, request.seed
        self.parameters = dumps(wire.parameters_of(request.body))
        messages = wire.messages_of(request.body)
        user = self.template.render(probe)
        self.key_parts = _around(request.payload, json.dumps(user, ensure_ascii=False).encode())
        material = answers.answer_material(self.model, messages, self.seed)
        self.material_parts = _around(material, json.dumps(user).encode())
        self.fixed_tokens = answers.input_tokens(messages) - answers.count_tokens(user)
        pieces: list[pl.Expr] = []
        for literal, column in self.template.parts:
            pieces += [pl.lit(literal)] if literal else []
            pieces += [pl.col(column).cast(pl.String)] if column is not None else []
        self.user = pl.concat_str(pieces)  # the template, over a whole frame
        texts = pl.Series([*self.pool, user])
        if texts.str.count_matches(TOKEN_PATTERN).to_list() != [answers.count_tokens(t) for t in texts]:
            msg = "polars counts the simulator's tokens differently in this table; the fabricator needs updating"
            raise RuntimeError(msg)

    def table(self, start: int, n: int) -> pl.DataFrame:
        """Rows start .. start+n-1 of the input table (made from the chunk's own generator)."""
        ids, categories, texts = prompt_rows(random.Random(f"{SEED}:{start}"), self.pool, start, n)
        return pl.DataFrame({"id": ids, "category": categories, "text": texts})

    def rows(self, frame: pl.DataFrame, start: int) -> Iterator[Row]:
        """The finished rows of `frame` (whose first row is input row `start`). The user
        messages and their token counts are worked out for the whole frame at once (polars)."""
        (key_head, key_tail), (mat_head, mat_tail) = self.key_parts, self.material_parts
        users = frame.select(self.user.alias("user"))["user"]
        counts = users.str.count_matches(TOKEN_PATTERN).to_list()
        ids = frame["id"].to_list()
        path, generate, max_tokens, fixed = self.path, answers.generate, self.max_tokens, self.fixed_tokens
        for i, (row_id, user, count) in enumerate(zip(ids, users.to_list(), counts, strict=True), start=start):
            key = key_of(path, key_head + json.dumps(user, ensure_ascii=False).encode() + key_tail)
            text, out_tokens, finish = generate(mat_head + json.dumps(user).encode() + mat_tail, max_tokens)
            digest = bytearray(hashlib.blake2b(key.encode(), digest_size=16).digest())
            digest[6], digest[8] = (digest[6] & 0x0F) | 0x40, (digest[8] & 0x3F) | 0x80  # a version 4 UUID
            in_tokens = fixed + count
            started = self.t0_ms + i * 1000 // ROWS_PER_S
            cost = self._cost(in_tokens, out_tokens)
            made = Row(
                key, row_id, i, text, finish, in_tokens, out_tokens, started, 20 + digest[0] % 40, bytes(digest), cost
            )
            if i % CHECK_EVERY == 0:
                self.check(frame.row(i - start, named=True), made)
            yield made

    def _cost(self, in_tokens: int, out_tokens: int) -> Cost | None:
        found = self._costs.get((in_tokens, out_tokens), self)
        if found is self:
            usage = wire.Usage(input_tokens=in_tokens, output_tokens=out_tokens, total_tokens=in_tokens + out_tokens)
            found = self._costs[in_tokens, out_tokens] = self.prices.cost(self.model, usage)
        assert found is None or isinstance(found, Cost)
        return found

    def check(self, row: dict[str, Any], made: Row) -> None:
        """The row's key and answer, the slow way (render, the simulator's answer_for)."""
        request = next(self.renderer.requests(row, made.row_index, made.row_id))
        messages = wire.messages_of(request.body)
        answer = answers.answer_for(self.model, messages, request.seed, self.max_tokens)
        fast = (made.key, made.content, made.output_tokens, made.finish_reason, made.input_tokens)
        slow = (request.key, *answer, answers.input_tokens(messages))
        if fast != slow:
            msg = f"row {made.row_index}: the fabricated request differs from batchrunner's ({fast} != {slow})"
            raise RuntimeError(msg)

    def records(self, row: Row, run_id: int) -> tuple[Result, Attempt]:
        """The result and attempt a run records for `row` (what Store.write is given)."""
        usage: dict[str, Any] = {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens}
        usage |= {"total_tokens": row.input_tokens + row.output_tokens, "prompt_tokens_details": {"cached_tokens": 0}}
        tokens = wire.Usage.from_wire(usage)
        answered: dict[str, Any] = {
            "http_status": 200,
            "request_id": str(uuid.UUID(bytes=row.request_id)),
            "usage": dumps(usage),
        }
        answered |= {name: getattr(tokens, name) for name in wire.USAGE_FIELDS}
        if row.cost is not None:
            c = row.cost
            answered |= {"cost_pusd": c.total_pusd, "cost_usd": pusd_to_usd(c.total_pusd), "saved_pusd": c.saved_pusd}
            answered |= {"input_cost_pusd": c.input_pusd, "cached_cost_pusd": c.cached_pusd}
            answered |= {"cache_creation_cost_pusd": c.cache_creation_pusd, "output_cost_pusd": c.output_pusd}
            answered["price_version"] = self.prices.version
        start = iso_of(row.started_ms)
        attempt = Attempt(row.key, run_id, 1, start, row.latency_ms, "ok", model=self.model, **answered)
        result = Result(
            key=row.key,
            row_id=row.row_id,
            row_index=row.row_index,
            status="ok",
            retryable=0,
            attempts=1,
            possibly_billed_attempts=0,
            latency_ms=row.latency_ms,
            started_at=start,
            finished_at=iso_of(row.started_ms + row.latency_ms),
            model=self.model,
            endpoint=self.path,
            parameters=self.parameters,
            run_id=run_id,
            seed=self.seed,
            job=self.spec.job.name,
            content=row.content,
            finish_reason=row.finish_reason,
            **answered,
        )
        return result, attempt


def _around(whole: bytes, part: bytes) -> tuple[bytes, bytes]:
    """(what comes before `part` in `whole`, what comes after it); `part` must occur once."""
    at = whole.find(part)
    if at < 0 or whole.find(part, at + 1) >= 0:
        msg = "the request body does not hold the user message once; the fabricator needs updating"
        raise RuntimeError(msg)
    return whole[:at], whole[at + len(part) :]


class Bulk:
    """A finished row in the stored form of the first one, with its own values put in."""

    RESULT_OWN: tuple[str, ...] = ("key", "row_id", "row_index", "content", "finish_reason", "latency_ms")
    RESULT_OWN += ("started_at", "finished_at", "total_cost_pusd", "answer")
    ATTEMPT_OWN: tuple[str, ...] = ("id", "key", "started_at", "latency_ms", "request_id", "input_tokens")
    ATTEMPT_OWN += ("output_tokens", "total_tokens", "cost_pusd", "input_cost_pusd", "cached_cost_pusd")
    ATTEMPT_OWN += ("cache_creation_cost_pusd", "output_cost_pusd", "saved_pusd")

    def __init__(self, result: Sequence[Any], attempt: Sequence[Any]) -> None:
        self.result = list(result)
        self.attempt = list(attempt)
        self.r = {c: RESULT_COLUMNS.index(c) for c in self.RESULT_OWN}
        self.a = {c: ATTEMPT_COLUMNS.index(c) for c in self.ATTEMPT_OWN}

    def rows(self, row: Row) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """(the results row, the attempts row) of `row`; its attempt's id is its row index + 1."""
        c = row.cost
        pusd: tuple[int | None, ...] = (None,) * 6
        if c is not None:
            pusd = (c.total_pusd, c.input_pusd, c.cached_pusd, c.cache_creation_pusd, c.output_pusd, c.saved_pusd)
        key = packed_key(row.key)  # as the store keeps it
        own: tuple[Any, ...] = (key, row.row_id, row.row_index, row.content, row.finish_reason, row.latency_ms)
        own += (row.started_ms, row.started_ms + row.latency_ms, pusd[0], row.row_index + 1)
        result = self.result
        for name, value in zip(self.RESULT_OWN, own, strict=True):
            result[self.r[name]] = value
        own = (row.row_index + 1, key, row.started_ms, row.latency_ms, row.request_id, row.input_tokens)
        own += (row.output_tokens, row.input_tokens + row.output_tokens, *pusd)
        attempt = self.attempt
        for name, value in zip(self.ATTEMPT_OWN, own, strict=True):
            attempt[self.a[name]] = value
        return tuple(result), tuple(attempt)


@dataclass
class Chunk:
    """What a worker made of one chunk: the rows to insert and their sums."""

    results: list[tuple[Any, ...]] = field(default_factory=list)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_pusd: int = 0


_MAKER: Maker | None = None
_BULK: Bulk | None = None


def setup(spec_path: Path, t0_ms: int, result: Sequence[Any], attempt: Sequence[Any]) -> None:
    """Set up this process to make chunks (a worker's initializer)."""
    global _MAKER, _BULK  # noqa: PLW0603 (one Maker per worker process)
    _MAKER, _BULK = Maker(load(spec_path), t0_ms), Bulk(result, attempt)


def make_chunk(start: int, n: int, done: int, through_api: int, part: Path) -> Chunk:
    """Write input rows start .. start+n-1 to `part`; the bulk rows of those below `done`
    (and at or past `through_api`: those before it went in through Store.write)."""
    assert _MAKER is not None and _BULK is not None
    frame = _MAKER.table(start, n)
    frame.write_parquet(part)
    chunk = Chunk()
    first, end = max(start, through_api), min(start + n, done)
    for row in _MAKER.rows(frame.slice(first - start, max(0, end - first)), first):
        result, attempt = _BULK.rows(row)
        chunk.results.append(result)
        chunk.attempts.append(attempt)
        chunk.input_tokens += row.input_tokens
        chunk.output_tokens += row.output_tokens
        chunk.cost_pusd += row.cost.total_pusd if row.cost else 0
    return chunk
