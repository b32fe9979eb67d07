"""Benchmark inputs: a deterministic prompt table and the job specs that run it.

The table imitates customer messages: each row has an id, a category and 300 to 600
characters of text assembled from a fixed pool of sentences (mostly English, a few with
accents or CJK), opened by the row's own ticket number so that no two prompts are equal
(identical requests would be sent once and shared, which would flatter the figures).
The same seed always gives the same table, and the first N rows of a larger table are the
table of N rows.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

SEED = 20_260_101
MIN_CHARS, MAX_CHARS = 300, 600
SYSTEM_PROMPT = "You are a support analyst. Answer in one short sentence."
TEMPLATE = "Summarise this {category} message and say whether it needs a reply:\n{text}"
MODEL = "qwen-plus"
PARAMETERS: dict[str, Any] = {"temperature": 0.7, "max_tokens": 256, "seed": 7}
CATEGORIES = ("billing", "delivery", "account", "product", "returns", "feedback", "technical", "other")

_SUBJECTS = (
    "the parcel",
    "my order",
    "the invoice",
    "your app",
    "the courier",
    "the refund",
    "my account",
    "the new firmware",
    "the replacement part",
    "the support chat",
    "the subscription",
    "the warranty",
    "the checkout page",
    "the tracking link",
    "the mobile version",
    "the gift card",
    "the discount code",
    "the delivery window",
    "the password reset",
    "the monthly statement",
    "the charger",
    "the manual",
)
_VERBS = (
    "arrived",
    "stopped working",
    "was charged twice",
    "never showed up",
    "looks different",
    "keeps crashing",
    "was cancelled",
    "took three weeks",
    "was missing a piece",
    "works again",
    "asked for my address",
    "shows the wrong price",
    "was left at the door",
    "did not load",
    "was exactly as described",
    "broke after two days",
    "got stuck at step four",
    "was refunded",
)
_TAILS = (
    "yesterday",
    "last Tuesday",
    "after the update",
    "during the sale",
    "this morning",
    "for the second time",
    "without any notice",
    "even though I paid for express shipping",
    "while I was travelling",
    "before the weekend",
    "and nobody answered my email",
    "as the confirmation promised",
    "although the status said delivered",
    "in the evening",
)
_EXTRAS = (
    "Please let me know what I should do next.",
    "I have attached the receipt number below.",
    "Honestly the rest of the experience was great.",
    "Could someone call me back before Friday?",
    "This is the third message I am sending about it.",
    "I would like a refund or a replacement, whichever is faster.",
    "Merci pour votre aide, c'était très rapide la dernière fois.",
    "Danke, das Paket war gut verpackt, aber leider beschädigt.",
    "包裹已经收到了，但是说明书是英文的。",
    "The box was fine but the seal was broken.",
    "My neighbour had the same problem with his order.",
    "I really like the colour, but the size is wrong.",
    "Is there a way to change the delivery address now?",
    "Thanks a lot for the quick answer last time!",
)


def _sentence_pool(rng: random.Random, size: int = 4096) -> list[str]:
    """`size` varied sentences built from the phrase lists above."""
    pool: list[str] = []
    for _ in range(size):
        kind = rng.random()
        if kind < 0.2:
            pool.append(rng.choice(_EXTRAS))
            continue
        subject = rng.choice(_SUBJECTS)
        sentence = f"{subject[0].upper()}{subject[1:]} {rng.choice(_VERBS)} {rng.choice(_TAILS)}"
        if kind < 0.45:
            sentence += f", order {rng.randrange(10_000, 99_999)}"
        pool.append(sentence + rng.choice((".", ".", ".", "!", "?")))
    return pool


def prompt_table(n_rows: int, seed: int = SEED) -> pl.DataFrame:
    """A deterministic table of `n_rows` rows: id, category, text (300 to 600 characters)."""
    import polars as pl

    rng = random.Random(seed)
    pool = _sentence_pool(rng)
    ids, categories, texts = prompt_rows(rng, pool, 0, n_rows)
    return pl.DataFrame({"id": ids, "category": categories, "text": texts})


def sentence_pool(seed: int = SEED) -> list[str]:
    """The sentences every table of `seed` is made of (what `prompt_table` draws from)."""
    return _sentence_pool(random.Random(seed))


def prompt_rows(rng: random.Random, pool: list[str], start: int, n_rows: int) -> tuple[list[str], list[str], list[str]]:
    """Rows `start` .. `start + n_rows - 1` drawn from `rng`: (ids, categories, texts). Each
    text opens with the row's own ticket number, so no two rows of one table are equal."""
    n_pool = len(pool)
    ids: list[str] = []
    categories: list[str] = []
    texts: list[str] = []
    randrange = rng.randrange
    for i in range(start, start + n_rows):
        target = MIN_CHARS + randrange(MAX_CHARS - MIN_CHARS + 1)
        parts = [f"Ticket {i + 1}:"]
        length = len(parts[0])
        while length < target:
            piece = pool[randrange(n_pool)]
            parts.append(piece)
            length += len(piece) + 1
        text = " ".join(parts)
        if len(text) > MAX_CHARS:
            text = text[: text.rfind(" ", 0, MAX_CHARS)]
        ids.append(f"t{i + 1:08d}")
        categories.append(CATEGORIES[randrange(len(CATEGORIES))])
        texts.append(text)
    return ids, categories, texts


def write_table(frame: pl.DataFrame, path: Path) -> Path:
    """Write `frame` as CSV or parquet, by the suffix of `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def write_inputs(wanted: Mapping[Path, int]) -> None:
    """Write the first `rows` rows of one generated table to each path (CSV or parquet)."""
    frame = prompt_table(max(wanted.values()))
    for path, rows in wanted.items():
        write_table(frame.head(rows), path)


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.data ROWS:PATH ...`: write benchmark inputs.

    The benchmark generates its tables in this separate process so that its own memory stays
    small: a child's peak RSS as the kernel reports it never falls below its parent's RSS at
    the moment the child was started.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data", description=main.__doc__)
    parser.add_argument("targets", nargs="+", help="ROWS:PATH (.csv or .parquet)")
    args = parser.parse_args(argv)
    wanted: dict[Path, int] = {}
    for target in args.targets:
        rows, _, path = str(target).partition(":")
        wanted[Path(path)] = int(rows)
    write_inputs(wanted)


def render_messages(category: str, text: str) -> list[dict[str, str]]:
    """The messages batchrunner sends for one row of the table (for the SDK baseline)."""
    user = TEMPLATE.replace("{category}", category).replace("{text}", text)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    msg = f"cannot write {value!r} to a benchmark spec"
    raise TypeError(msg)


def spec_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text for a spec made of flat sections of scalars."""
    lines: list[str] = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


def write_spec(
    folder: Path,
    *,
    name: str,
    input_path: Path,
    requests_per_minute: int,
    concurrency: int,
    output_name: str = "output.parquet",
    processes: int = 1,
    scale: Mapping[str, Any] | None = None,
) -> Path:
    """Write `folder/job.toml` for a job over `input_path`; returns the spec's path.

    The spec is the README's ordinary shape: system prompt, template, qwen-plus, a few
    parameters, the given limits, a parquet output table and the store beside it; `scale`
    is the `[scale]` section when given (e.g. `{"engine": "ray"}`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = {
        "job": {"name": name},
        "input": {"path": str(input_path), "id_column": "id"},
        "prompt": {"system": SYSTEM_PROMPT, "template": TEMPLATE},
        "model": {"name": MODEL},
        "parameters": dict(PARAMETERS),
        "limits": {
            "requests_per_minute": requests_per_minute,
            "concurrency": concurrency,
            "timeout_s": 60,
            "max_retries": 6,
            "processes": processes,
        },
        "output": {"path": str(folder / "out" / output_name)},
    }
    if scale:
        sections["scale"] = dict(scale)
    spec = folder / "job.toml"
    spec.write_text(spec_toml(sections), encoding="utf-8")
    return spec


if __name__ == "__main__":
    main()
