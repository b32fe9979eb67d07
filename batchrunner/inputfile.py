"""The input file as bytes and lines: its encoding, its header, and where exactly it is broken.

polars reads UTF-8 (and, for CSV, UTF-8 with bad bytes replaced). A file in another encoding
(`[input] encoding = "latin1"` or `"cp1252"`), or a JSONL file read with `"utf8-lossy"`, is
re-encoded once, streaming, into a private temporary UTF-8 copy that polars reads instead; the
copy is removed when the Source that made it goes away (or the process ends).

When polars refuses a file, or reads it differently from what the user meant, the functions
here find what to name: the first byte that is not valid in the encoding (with its line), the
first CSV record with more fields than the header, the first JSONL line that is not a JSON
object, a column name given twice. They read the file only when there is something to find
(duplicate JSONL keys: the first `DUPLICATE_SCAN_LINES` lines only, since a full pass in
Python would cost seconds on every run of a large file).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

CHUNK = 1 << 20
DUPLICATE_SCAN_LINES = 1000
# [input] encoding -> (Python codec, error handling) for the files polars cannot read as they are
CODECS = {
    "utf8": ("utf-8", "strict"),
    "utf8-lossy": ("utf-8", "replace"),
    "latin1": ("latin-1", "strict"),
    "cp1252": ("cp1252", "strict"),
}


def first_bad_byte(path: Path, encoding: str = "utf8") -> tuple[int, int, int] | None:
    """(byte offset, line number, byte value) of the first byte `path` cannot be decoded at in
    `encoding` (an `[input] encoding` name), or None when the whole file decodes."""
    codec, _ = CODECS.get(encoding, (encoding, "strict"))
    decoder = codecs.getincrementaldecoder(codec)("strict")
    offset = lines = 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                data = bytes(exc.object)  # what the decoder held back, then this chunk
                held = len(data) - len(chunk)
                line = lines + data.count(b"\n", 0, exc.start) + 1
                return offset - held + exc.start, line, data[exc.start]
            if not chunk:
                return None
            lines += chunk.count(b"\n")
            offset += len(chunk)


def bad_byte_text(path: Path, encoding: str) -> str:
    """Where `path` stops being valid `encoding`, for a message ("" when it is valid)."""
    found = first_bad_byte(path, encoding)
    if found is None:
        return ""
    offset, line, byte = found
    return f"line {line} (byte {offset}, 0x{byte:02x}) is not valid {encoding}"


def transcode(path: Path, encoding: str) -> Path:
    """A private temporary UTF-8 copy of `path`, read as `encoding`. InputError naming the
    line when a byte is not valid in that encoding."""
    codec, errors = CODECS[encoding]
    fd, name = tempfile.mkstemp(prefix="batchrunner-input-", suffix=path.suffix)
    copy = Path(name)
    decoder = codecs.getincrementaldecoder(codec)(errors)
    try:
        with os.fdopen(fd, "wb") as out, path.open("rb") as f:
            while chunk := f.read(CHUNK):
                out.write(decoder.decode(chunk).encode("utf-8"))
            out.write(decoder.decode(b"", final=True).encode("utf-8"))
    except UnicodeDecodeError:
        copy.unlink(missing_ok=True)
        where = bad_byte_text(path, encoding)
        msg = (
            f'{path}: {where}; the file is not {encoding} throughout. Try [input] encoding = "latin1" '
            f'(every byte is a character) or "utf8-lossy" (bad bytes replaced)'
        )
        raise InputError(msg) from None
    except OSError as exc:
        copy.unlink(missing_ok=True)
        msg = f"{path}: cannot re-encode the file from {encoding} into a temporary copy ({exc.strerror})"
        raise InputError(msg) from None
    return copy


class Readable:
    """The file polars reads for an input: the file itself, or a UTF-8 copy of it."""

    def __init__(self, path: Path, fmt: str, encoding: str) -> None:
        self.original = path
        self.path = path
        recode = encoding in ("latin1", "cp1252") or (fmt == "jsonl" and encoding == "utf8-lossy")
        if recode:
            self.path = transcode(path, encoding)
            weakref.finalize(self, _unlink, self.path)

    @property
    def recoded(self) -> bool:
        return self.path != self.original


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


# --------------------------------------------------------------------------- CSV


def _csv_records(path: Path, separator: str) -> Iterator[tuple[int, list[str]]]:
    """(line number where the record ends, fields) of every record of a UTF-8 CSV file."""
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=separator)
        for fields in reader:
            yield reader.line_num, fields


def csv_header(path: Path, separator: str) -> list[str]:
    """The column names of a UTF-8 CSV file's header (empty for an empty file)."""
    for _, fields in _csv_records(path, separator):
        return fields
    return []


def duplicate_names(names: list[str]) -> dict[str, list[int]]:
    """Names given more than once -> their 1-based positions."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names, 1):
        seen.setdefault(name, []).append(i)
    return {name: where for name, where in seen.items() if len(where) > 1}


def ragged_record(path: Path, separator: str) -> tuple[int, int, int] | None:
    """(line, fields, header fields) of the first record with more fields than the header."""
    width = 0
    for line, fields in _csv_records(path, separator):
        if not width:
            width = len(fields)
        elif len(fields) > width:
            return line, len(fields), width
    return None


# --------------------------------------------------------------------------- JSONL


def _json_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line


def bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, what is wrong) of the first line that is not a JSON object."""
    for number, line in _json_lines(path):
        try:
            value = json.loads(line)
        except ValueError as exc:
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            return number, f"not valid JSON ({reason}{where})"
        if not isinstance(value, dict):
            return number, f"a JSON {type(value).__name__}, not an object with one key per column"
    return None


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [k for k, _ in pairs]
    twice = sorted(duplicate_names(names))
    if twice:
        raise _Duplicate(twice[0])
    return dict(pairs)


def duplicate_json_key(path: Path, lines: int = DUPLICATE_SCAN_LINES) -> tuple[int, str] | None:
    """(line number, key) of the first key given twice in one object, in the first `lines` lines."""
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    for number, line in _json_lines(path):
        if number > lines:
            break
        try:
            decoder.decode(line)
        except _Duplicate as exc:
            return number, str(exc)
        except ValueError:
            return None  # a broken line: polars reports it (and bad_json_line names it)
    return None
