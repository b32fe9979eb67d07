"""Ingesting a finished batch: its output and error files into results, one transaction a file.

Whichever of the two files exist are downloaded (the client retries 5xx and cut downloads) to
the spool folder and read a line at a time; each line is matched to its request by `custom_id`
(lines come in any order; unknown or repeated ids are logged and ignored):

    200                                  ok, with its usage and its cost at the batch price
    4xx (not 408/409/429)                failed: the request earned it, sending it again would not help
    batch_expired, batch_cancelled,      no verdict: sent again in a later file, up to [batch]
    429, 5xx, or absent from both files  max_attempts, then failed (`batchrunner retry` re-queues it)

A batch that failed validation records its `errors.data`: the lines it names fail with that
error, the others go back to pending (not counted as a try), so the same file is never sent
again unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import batchrecords
from . import batchstate as bs
from .batchclient import BatchCallFailed, BatchClient
from .batchplan import spool_dir
from .batchrecords import Origin
from .pricing import PriceTable
from .records import Attempt, Failure, Result, RunCounts
from .store import Store, now
from .store.batches import Line, Part
from .wire import MalformedResponse, Usage
from .wire import batch as wb

log = logging.getLogger("batchrunner")

PART = 1000  # lines per slice of a transaction

# A line, what its batch said (None: absent / refused whole), the failure, whether to send it again.
_Item = tuple[Line, "wb.LineResult | None", "Failure | None", bool]


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    resubmit: int = 0  # lines to send again in a new file
    dropped: int = 0  # lines of a refused file, to plan again (not a try)


class Ingester:
    """Turns finished batches into results (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        client: BatchClient,
        *,
        job: str,
        run_id: int,
        prices: PriceTable,
        parameters: dict[str, Any],
        max_attempts: int,
        counts: RunCounts,
        keep_results: bool = True,
        on_cost: Callable[[Line, int, bool], None] | None = None,
    ) -> None:
        self.store, self.client, self.job, self.run_id = store, client, job, run_id
        self.prices, self.parameters, self.max_attempts = prices, parameters, max_attempts
        self.counts = counts
        self.keep_results = keep_results  # False for --batch-check files: their answers are not the job's
        self.on_cost = on_cost  # (line, what it cost, planned by this run): the budget settles it
        self.folder = spool_dir(store.path)

    async def ingest(self, file: dict[str, Any]) -> Tally:
        """Ingest one file in state `terminal`; it ends `ingested`."""
        file_id = int(file["id"])
        lines = self.store.open_lines(file_id)
        tally = Tally()
        for remote in (file["output_file_id"], file["error_file_id"]):
            if remote:
                await self._one_file(file, remote, lines, tally)
        if file["remote_status"] == wb.FAILED and lines:
            self._invalid(file, lines, tally)
        missing = Failure("missing_from_output", "the batch ended without a result for this line")
        self.store.ingest(
            file_id,
            self._parts(file, ((line, None, missing, True) for line in list(lines.values())), tally),
            state=bs.INGESTED,
            ingested_at=now(),
        )
        spool = file.get("spool")
        if spool:
            Path(spool).unlink(missing_ok=True)
        log.info(
            "%s: batch file %d ingested: %d ok, %d failed, %d to send again",
            self.job,
            file_id,
            tally.ok,
            tally.failed,
            tally.resubmit,
        )
        return tally

    async def _one_file(self, file: dict[str, Any], remote: str, lines: dict[str, Line], tally: Tally) -> None:
        path = self.folder / f"{file['id']}-{remote}.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            await self.client.download(remote, path)
        except BatchCallFailed as exc:
            if exc.status != 404:
                raise
            log.error(
                "%s: batch file %s: its result file %s is gone at the service (404): the lines it held cannot "
                "be read, and go again",
                self.job,
                file["id"],
                remote,
            )
            return
        try:
            self.store.ingest(int(file["id"]), self._parts(file, self._read(path, lines), tally))
        finally:
            path.unlink(missing_ok=True)

    def _read(self, path: Path, lines: dict[str, Line]) -> Iterator[_Item]:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    answer = wb.parse_result_line(raw)
                except (MalformedResponse, ValueError) as exc:
                    log.warning("%s: %s line %d is unreadable (%s); ignored", self.job, path.name, number, exc)
                    continue
                line = lines.pop(answer.custom_id, None)
                if line is None:
                    log.warning(
                        "%s: %s line %d: custom_id %r is not an open line of this batch (unknown or repeated); ignored",
                        self.job,
                        path.name,
                        number,
                        answer.custom_id,
                    )
                    continue
                yield line, answer, None, answer.resubmit

    def _parts(
        self,
        file: dict[str, Any],
        items: Iterable[_Item],
        tally: Tally,
    ) -> Iterator[Part]:
        results: list[Result] = []
        attempts: list[Attempt] = []
        outcomes: list[tuple[str, str]] = []
        for line, answer, failure, resubmit in items:
            result, attempt, outcome = self._record(file, line, answer, failure, resubmit, tally)
            if result is not None and self.keep_results:
                results.append(result)
            if self.keep_results:
                attempts.append(attempt)
            outcomes.append((line.custom_id, outcome))
            if len(outcomes) >= PART:
                yield results, attempts, outcomes
                results, attempts, outcomes = [], [], []
        if outcomes:
            yield results, attempts, outcomes

    def _record(
        self,
        file: dict[str, Any],
        line: Line,
        answer: wb.LineResult | None,
        failure: Failure | None,
        resubmit: bool,
        tally: Tally,
    ) -> tuple[Result | None, Attempt, str]:
        started = str(file.get("submitted_at") or file.get("planned_at") or now())
        ts = file.get("submitted_ts")
        latency_ms = int((time.time() - float(ts)) * 1000) if ts else 0
        origin = Origin(line, str(file["model"]), self.parameters, self.run_id, self.job, started, max(0, latency_ms))
        if answer is not None and answer.ok:
            result, attempt = batchrecords.answered(origin, answer, self.prices)
            tally.ok += 1
            if self.keep_results:
                self.counts.ok += 1
                self._paid(file, line, attempt)
            return result, attempt, bs.OK
        if answer is not None:
            failure = Failure(
                answer.code or f"HTTP {answer.status_code}",
                answer.message or "the batch gave no answer for this line",
                answer.status_code,
                answer.request_id,
            )
        assert failure is not None
        if not resubmit:
            usage = answer.usage if answer is not None else None
            failed, attempt = batchrecords.unanswered(
                origin, failure, outcome="failed", final=True, usage=usage, prices=self.prices
            )
            tally.failed += 1
            if self.keep_results:
                self.counts.failed += 1
                self._paid(file, line, attempt)
            return failed, attempt, bs.FAILED
        final = line.attempt >= self.max_attempts
        if final:
            failure = failure.with_message(
                f"no answer after {line.attempt} batch attempt(s) ([batch] max_attempts); the last: "
                f"{failure.error_message}. `batchrunner retry` sends it again"
            )
            tally.failed += 1
            self.counts.failed += self.keep_results
        else:
            tally.resubmit += 1
        outcome = "gave_up" if final else "retry"
        gave_up, attempt = batchrecords.unanswered(origin, failure, outcome=outcome, final=final)
        return gave_up, attempt, bs.RESUBMIT

    def _paid(self, file: dict[str, Any], line: Line, attempt: Attempt) -> None:
        """Count what a line was billed (and let the budget settle its booked worst case)."""
        if attempt.usage is None:
            cost = 0
        else:
            usage = Usage.from_wire(json.loads(attempt.usage))
            cost = attempt.cost_pusd or 0
            priced = self.prices.cost(str(file["model"]), usage) if attempt.cost_pusd is not None else None
            self.counts.paid(usage, priced)
        if self.on_cost is not None:
            self.on_cost(line, cost, file.get("run_id") == self.run_id)

    def _invalid(self, file: dict[str, Any], lines: dict[str, Line], tally: Tally) -> None:
        """A batch that failed validation: fail the lines it names, return the others to pending."""
        errors = [wb.BatchError(**e) for e in json.loads(file.get("errors") or "[]")]
        order = _spool_ids(file.get("spool"))
        named: dict[str, wb.BatchError] = {}
        for error in errors:
            if error.line is not None and 0 < error.line <= len(order):
                named[order[error.line - 1]] = error
        if not named:  # nothing to tell the good lines from the bad: every line fails with the batch
            first = errors[0] if errors else wb.BatchError("batch_failed", "the batch failed validation")
            named = {cid: first for cid in lines}
        failing: list[_Item] = [
            (lines.pop(cid), None, Failure(e.code or "batch_failed", f"{e.message} (batch validation)", 400), False)
            for cid, e in named.items()
            if cid in lines
        ]
        for error in errors:
            log.warning("%s: batch file %s failed validation: %s %s", self.job, file["id"], error.code, error.message)
        self.store.ingest(int(file["id"]), self._parts(file, failing, tally))
        dropped = [(cid, bs.DROPPED) for cid in lines]
        tally.dropped += len(dropped)
        self.store.ingest(int(file["id"]), [([], [], dropped)])
        lines.clear()


def _spool_ids(spool: str | None) -> list[str]:
    """The custom_ids of a planned file in line order (1-based line n is [n - 1])."""
    if not spool or not Path(spool).is_file():
        return []
    ids = []
    with Path(spool).open("rb") as handle:
        for raw in handle:
            if raw.strip():
                ids.append(str(json.loads(raw).get("custom_id")))
    return ids
