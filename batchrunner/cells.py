"""The row-number column, and checks of the cells' content that go beyond the table's shape: local media files, and
the word JSON that json_object output needs in the messages sent. Both run in
`Source.check`, before anything is sent, a slice at a time where rows must be rendered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from . import prompts
from .errors import InputError
from .render import URL_PREFIXES

if TYPE_CHECKING:
    from .source import Source

JSON_WORD = "json"
ROW_INDEX = "__batchrunner_row__"  # the column of input row numbers added to every slice


def row_numbers(indexes: list[int]) -> str:
    """Row numbers as a user counts them (1 = first data row)."""
    return ", ".join(str(i + 1) for i in indexes)


def check_media(source: Source) -> None:
    """Local media files must exist and fit inline, before anything is sent."""
    prompt = source.spec.prompt
    columns = [*prompt.images, *prompt.videos]
    if not columns:
        return
    base = source.spec.input.path.parent
    for column in columns:
        cells = source.frame().select(ROW_INDEX, column).collect()
        for index, cell in cells.iter_rows():
            for value in cell if isinstance(cell, list) else [cell]:
                if not value or str(value).startswith(URL_PREFIXES):
                    continue
                path = (base / str(value)).expanduser()
                if not path.is_file():
                    msg = (
                        f"{source.spec.input.path}: row {index + 1}, column {column!r}: media file {str(value)!r} "
                        f"not found (local paths are relative to the input file's folder; URLs pass as they are)"
                    )
                    raise InputError(msg)
                if path.stat().st_size * 4 / 3 > 10 * 1024 * 1024:
                    msg = (
                        f"{source.spec.input.path}: row {index + 1}, column {column!r}: {path} is too large to "
                        f"send inline (over 10 MB as base64); host it and put its URL in the cell"
                    )
                    raise InputError(msg)


def check_json_word(source: Source, size: int = 5000) -> None:
    """json_object output needs the word JSON in the messages sent: the service refuses a
    request whose messages lack it (any case, in any message). So each row's messages are
    rendered (a slice at a time, media left out) and checked here, before anything is sent.
    Rows need no rendering when the template's fixed text says JSON (then every row does)
    or when one of their template cells does (its text is in the user message)."""
    fmt = source.spec.parameters.response_format
    if fmt is None or fmt.type != "json_object":
        return
    prompt, template = source.spec.prompt, source.template
    columns = template.columns if template is not None else (prompt.messages_column or "",)
    if template is not None:
        fixed = [prompt.system or "", source.renderer.context or "", *(text for text, _ in template.parts)]
        if any(JSON_WORD in text.lower() for text in fixed):
            return
        schema = source.frame().collect_schema()
        said = [pl.col(c).str.contains(f"(?i){JSON_WORD}") for c in columns if schema[c] == pl.String]
        unsure = ~pl.any_horizontal(said).fill_null(False) if said else pl.lit(True)
    else:
        unsure = pl.lit(True)
    empty = source.empty_condition() if prompt.on_empty == "skip" else None
    if empty is not None:  # rows left out are never sent
        unsure = unsure & ~empty
    if not source.frame().filter(unsure).select(pl.len()).collect(engine="streaming").item():
        return
    lacking: list[int] = []
    for offset in range(0, source.n_rows, size):
        frame = source.frame().slice(offset, size).filter(unsure).select(ROW_INDEX, *columns)
        lacking += _without_word(source, frame.collect())
        if len(lacking) >= 5:
            break
    if lacking:
        where = (
            "[prompt] system or template"
            if template is not None
            else "those rows' messages (or to [prompt] system, if they have no system message)"
        )
        msg = (
            f"{source.spec.input.path}: row(s) {row_numbers(lacking[:5])}: response_format json_object needs the word "
            f"JSON in the messages sent, and these rows' messages lack it (the service would refuse them); "
            f'add it to {where} (e.g. "Reply in JSON.")'
        )
        raise InputError(msg)


def _without_word(source: Source, batch: pl.DataFrame) -> list[int]:
    """The row indexes of the rows whose rendered messages lack the word JSON."""
    lacking: list[int] = []
    for row in batch.iter_rows(named=True):
        try:
            messages = source.renderer.messages(row, media=False)
        except ValueError:
            continue  # an empty messages cell sent as it is: the service judges it
        if not prompts.mentions(messages, JSON_WORD):
            lacking.append(int(row[ROW_INDEX]))
    return lacking
