"""The account's limits shared among a job's Ray shards, and what the shards report.

DashScope counts requests and tokens per account and model per second, so the shards running
at one time split the job's `requests_per_minute` and `tokens_per_minute` evenly; a shard that
starts or ends moves the split. The sum of what the shards may use never exceeds the limit:

- a shard lowers its rate as soon as it hears of a cut, and the rate it gave up is lent to
  another only once it reported the cut and a window more has passed (its last starts still
  count at the service for that long);
- a raise comes only out of what no shard holds.

So a joining shard may wait a second or two for its share, and the tail of a job is not
starved: the last shard running gets the whole limit.

A cost budget (`max_cost_usd`, what is left of it; or `max_cost_usd_per_run`) is lent the
same way: a shard starts with an even part of what is unlent and is topped up from it while a
quarter of its part is left; a shard that ends gives back what it did not spend (the worst case
of attempts that may have been billed counts as spent). A shard's grant is a ceiling on its
store's total spending (`max_cost_usd` of its run): what its store had spent when it first
joined (`store_spent_pusd`) plus what it was lent. A task that Ray starts again after a death
finds in its store what the dead one committed; what the dead one reported spending beyond
that (answers after the snapshot it was restored from) is taken off its ceiling. A shard whose
ceiling is reached stops like a one-process run at its budget.

`Shares` is plain Python on an injectable clock (tests drive it directly); rayengine.py serves
it to the shards as a Ray actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 1.1  # how long a start may still count at the service after the shard cut its rate
# The counters a shard reports; a task that Ray starts again counts from 0, so the counts of the
# one that died are carried.
CARRIED = (
    *("sent", "ok", "failed", "attempts", "retries", "throttled", "possibly_billed"),
    *("input_tokens", "output_tokens", "cached_tokens", "cost_pusd", "priced", "unpriced"),
)


@dataclass(frozen=True)
class Grant:
    """A shard's share now: starts and tokens per minute, its run's cost ceiling, and whether to stop."""

    rpm: int
    tpm: int | None
    budget_pusd: int | None
    stop: bool = False


@dataclass
class _Held:
    rpm: int = 0
    tpm: int = 0
    released_at: float = 0.0  # a cut's old rate still counts until then
    old_rpm: int = 0
    old_tpm: int = 0
    budget_pusd: int = 0  # lent to this shard
    base_pusd: int = 0  # what its store had spent when it first joined
    lost_pusd: int = 0  # what dead tasks spent that their store no longer shows
    report: dict[str, Any] = field(default_factory=dict)


class Shares:
    """Leases of rate and money to the shards that run, and their last reports."""

    def __init__(
        self,
        rpm: int,
        tpm: int | None,
        budget_pusd: int | None,
        *,
        slots: int,
        shards: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`slots`: how many shards run at once at most; `shards`: how many will run in all."""
        self.rpm, self.tpm, self.budget_pusd = rpm, tpm, budget_pusd
        self.slots = max(1, slots)
        self.left = shards if shards is not None else self.slots  # shards that have not ended
        self.clock = clock
        self.running: dict[int, _Held] = {}
        self.reports: dict[int, dict[str, Any]] = {}  # every shard's last report, ended ones too
        self.carried: dict[int, dict[str, int]] = {}  # counts of a shard's tasks that died
        self.lent_pusd = 0  # money lent and not given back
        self._ghosts: list[tuple[float, int, int]] = []  # (until, rpm, tpm) of shards that just ended
        self.stopping = False

    # ------------------------------------------------------------------ rate

    def _in_use(self, but: int | None = None) -> tuple[int, int]:
        """Starts and tokens per minute the running shards (but one) may still be using."""
        now = self.clock()
        self._ghosts = [g for g in self._ghosts if g[0] > now]
        rpm = sum(g[1] for g in self._ghosts)
        tpm = sum(g[2] for g in self._ghosts)
        for shard, held in self.running.items():
            if shard == but:
                continue
            late = now < held.released_at
            rpm += max(held.rpm, held.old_rpm) if late else held.rpm
            tpm += max(held.tpm, held.old_tpm) if late else held.tpm
        return rpm, tpm

    def _rate(self, shard: int) -> tuple[int, int | None]:
        held = self.running[shard]
        # Split among the shards that will run side by side (so a shard that joins in the
        # steady state finds its part free), and among fewer in the tail.
        parts = max(len(self.running), min(self.slots, self.left))
        target_rpm = self.rpm // parts
        target_tpm = self.tpm // parts if self.tpm else 0
        used_rpm, used_tpm = self._in_use(but=shard)
        rpm = min(target_rpm, max(0, self.rpm - used_rpm))
        tpm = min(target_tpm, max(0, (self.tpm or 0) - used_tpm))
        if rpm < held.rpm or tpm < held.tpm:  # a cut: the old rate counts a window more
            late = self.clock() < held.released_at
            held.old_rpm = max(held.rpm, held.old_rpm if late else 0)
            held.old_tpm = max(held.tpm, held.old_tpm if late else 0)
            held.released_at = self.clock() + WINDOW_S
        held.rpm, held.tpm = rpm, tpm
        return rpm, (tpm if self.tpm else None)

    # ------------------------------------------------------------------ money

    def _free_pusd(self) -> int:
        assert self.budget_pusd is not None
        return max(0, self.budget_pusd - self.lent_pusd)

    def _lend(self, held: _Held, amount: int) -> None:
        amount = max(0, min(amount, self._free_pusd()))
        held.budget_pusd += amount
        self.lent_pusd += amount

    @staticmethod
    def _used(held: _Held, report: dict[str, Any]) -> int:
        """What the shard spent of its loan: its store since it first joined, plus what was lost."""
        store = int(report.get("store_spent_pusd", held.base_pusd)) + int(report.get("spent_pusd", 0))
        return store - held.base_pusd + held.lost_pusd

    def _budget(self, held: _Held, report: dict[str, Any], joining: bool) -> int | None:
        """The shard's ceiling on its store's spending (None: no budget)."""
        if self.budget_pusd is None:
            return None
        if joining:
            open_slots = max(1, self.slots - len(self.running) + 1)
            self._lend(held, self._free_pusd() // open_slots)
        elif held.budget_pusd - self._used(held, report) < held.budget_pusd // 4:
            self._lend(held, self._free_pusd() // max(1, len(self.running)))
        return held.base_pusd + held.budget_pusd - held.lost_pusd

    # ------------------------------------------------------------------ the shards' calls

    def join(self, shard: int, report: dict[str, Any] | None = None) -> Grant:
        """A shard starts: its first share (rpm 0 = wait and report again)."""
        report = report or {}
        known = self.running.get(shard)
        held = self.running.setdefault(shard, _Held())
        before = self.reports.get(shard)
        if known is None:
            held.base_pusd = int(report.get("store_spent_pusd", 0))
        elif before is not None and before.get("pid") != report.get("pid"):  # Ray started it again
            carried = self.carried.setdefault(shard, {})
            for name in CARRIED:
                carried[name] = carried.get(name, 0) + int(before.get(name, 0))
            dead = int(before.get("store_spent_pusd", 0)) + int(before.get("spent_pusd", 0))
            held.lost_pusd += max(0, dead - int(report.get("store_spent_pusd", 0)))
        self.reports[shard] = {**report, "state": "running"}
        rpm, tpm = self._rate(shard)
        return Grant(rpm, tpm, self._budget(held, report, joining=known is None), self.stopping)

    def report(self, shard: int, report: dict[str, Any]) -> Grant:
        """A running shard's counters (spent_pusd among them); its share now."""
        held = self.running.get(shard)
        if held is None:  # a task that lost its place (restarted): it joins again
            return self.join(shard, report)
        self.reports[shard] = {**report, "state": "running"}
        rpm, tpm = self._rate(shard)
        return Grant(rpm, tpm, self._budget(held, report, joining=False), self.stopping)

    def leave(self, shard: int, report: dict[str, Any], state: str) -> None:
        """A shard's task ended (finished, stopped or failed): what it holds is given back."""
        held = self.running.pop(shard, None)
        self.reports[shard] = {**self.reports.get(shard, {}), **report, "state": state}
        self.left = max(0, self.left - 1)
        if held is not None:  # its last starts count a window more (as many as it says it made)
            late = self.clock() < held.released_at
            rpm, tpm = max(held.rpm, held.old_rpm if late else 0), max(held.tpm, held.old_tpm if late else 0)
            if "recent_starts" in report:
                rpm = min(rpm, int(report["recent_starts"]) * 60)
            self._ghosts.append((self.clock() + WINDOW_S, rpm, tpm))
        if held is not None and self.budget_pusd is not None:
            unspent = max(0, held.budget_pusd - self._used(held, self.reports[shard]))
            self.lent_pusd -= unspent

    def stop(self) -> None:
        self.stopping = True

    def snapshot(self) -> dict[int, dict[str, Any]]:
        """Every shard's last report (the driver's progress line and manifest)."""
        shown = {shard: dict(report) for shard, report in self.reports.items()}
        for shard, carried in self.carried.items():
            for name, value in carried.items():
                shown[shard][name] = int(shown[shard].get(name, 0)) + value
        return shown
