"""Rules across a job spec's sections that need more than one key to judge: what a cost
budget needs to be a true bound, and files that must differ. `spec.py` applies them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import JobSpec


def budget_problems(spec: JobSpec) -> list[str]:
    """A cost budget must bound what one request can cost; what keeps it from doing so."""
    if not spec.cost_limited:
        return []
    p, problems = spec.parameters, []
    key = "max_cost_usd" if spec.limits.max_cost_usd is not None else "max_cost_usd_per_run"
    if p.max_tokens is None:
        problems.append(f"[limits] {key} needs [parameters] max_tokens, which bounds what one request can cost")
    if p.enable_thinking is None:
        problems.append(
            f"[limits] {key} needs [parameters] enable_thinking set: false, or true with thinking_budget "
            "(a model that thinks by default bills a chain of thought that max_tokens does not bound)"
        )
    elif p.enable_thinking and p.thinking_budget is None:
        problems.append(f"[limits] {key} with thinking needs [parameters] thinking_budget")
    if p.enable_search or p.enable_code_interpreter:
        problems.append(
            f"[limits] {key} cannot bound enable_search or enable_code_interpreter: the service adds what they find "
            "to the billed input"
        )
    if spec.prompt.videos:
        problems.append(f"[limits] {key} cannot bound [prompt] videos: a video's input tokens have no known bound")
    return problems


def mode_problems(spec: JobSpec) -> list[str]:
    """What `[api] mode` needs of the rest of the spec (streaming, the deadline)."""
    mode, problems = spec.api.mode, []
    if mode in ("batch", "auto") and spec.parameters.stream:
        problems.append(
            f'[parameters] stream: the Batch API does not stream its answers (mode = "{mode}"); '
            "remove stream (or set it false)"
        )
    if mode == "batch-chat" and spec.parameters.stream:
        problems.append(
            "[parameters] stream: the Batch Chat API answers each request whole, once it is done (mode = "
            '"batch-chat"); streaming is not documented for it: remove stream (or set it false)'
        )
    if mode == "auto" and spec.batch.deadline is None:
        problems.append(
            '[batch] deadline: mode = "auto" needs a deadline (e.g. "6h"), after which what the '
            "batches have not answered is sent online"
        )
    if mode == "auto" and spec.parameters.enable_thinking is None:
        problems.append(
            '[parameters] enable_thinking: mode = "auto" sends rows both in batches (where it is always set, '
            "false when left out) and online (where some models think by default): set it true or false"
        )
    if mode != "auto" and spec.batch.deadline is not None:
        problems.append(f'[batch] deadline applies to mode = "auto" only ([api] mode is "{mode}")')
    return problems


def scale_problems(spec: JobSpec) -> list[str]:
    """What `[scale] engine = "ray"` cannot do (yet): the Batch API, and limits it cannot share."""
    if spec.scale.engine != "ray":
        return []
    problems = []
    if spec.api.mode != "online":
        problems.append(
            f'[scale] engine = "ray" runs online requests; [api] mode = "{spec.api.mode}" cannot be sharded'
        )
    for key in ("max_requests", "max_tokens_total"):
        if getattr(spec.limits, key) is not None:
            problems.append(f'[limits] {key} is not shared across Ray shards; use max_cost_usd with engine = "ray"')
    return problems


def same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def path_clashes(spec: JobSpec, *, output: str = "[output] path") -> list[str]:
    """The input table, the output table and the store must be three different files."""
    problems = []
    src, out, db = spec.input.path, spec.output.path, spec.db_path
    if same_file(out, src):
        problems.append(
            f"{output} {str(out)!r} is the input table: writing it would overwrite the input; "
            "name another file (e.g. out/<name>.csv)"
        )
    for other, what in ((src, "the input table"), (out, "the output table")):
        if same_file(db, other):
            problems.append(f"the store ([job] db / --db) {str(db)!r} is {what}; name another file (<name>.sqlite)")
    return problems
