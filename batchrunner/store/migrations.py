"""The store's schema, as a list of named steps applied in order (and recorded in the file).

A step is never edited once released: a store records the names of the steps it has had
(`_batchrunner_migrations`), and a new column or table is a new step at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

# The typed usage columns of `results` (the same names as wire.Usage's fields).
USAGE_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_input_tokens",
    "reasoning_tokens",
    "image_tokens",
    "video_tokens",
    "audio_tokens",
)

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []
migration = MIGRATIONS.append


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db.table("results").create(
        {
            "key": str,
            "row_id": str,
            "row_index": int,
            "status": str,
            "retryable": int,
            "content": str,
            "reasoning_content": str,
            "finish_reason": str,
            "tool_calls": str,
            "error_code": str,
            "error_message": str,
            "http_status": int,
            **{c: int for c in USAGE_COLUMNS},
            "usage": str,
            "request_id": str,
            "attempts": int,
            "possibly_billed_attempts": int,
            "latency_ms": int,
            "started_at": str,
            "finished_at": str,
            "model": str,
            "endpoint": str,
            "parameters": str,
            "run_id": int,
        },
        pk="key",
    )
    db.table("results").create_index(["status"])
    db.table("attempts").create(
        {
            "id": int,
            "key": str,
            "run_id": int,
            "attempt": int,
            "started_at": str,
            "latency_ms": int,
            "http_status": int,
            "outcome": str,
            "error_code": str,
            "error_message": str,
            "possibly_billed": int,
            "request_id": str,
            "usage": str,
        },
        pk="id",
    )
    db.table("attempts").create_index(["key"])
    db.table("runs").create(
        {
            "id": int,
            "job": str,
            "spec_digest": str,
            "simulated": int,
            "base_url": str,
            "pid": int,
            "host": str,
            "started_at": str,
            "ended_at": str,
            "status": str,
            "exit_code": int,
            "rows_total": int,
            "already_done": int,
            "sent": int,
            "ok": int,
            "failed": int,
            "skipped": int,
            "attempts": int,
            "retries": int,
            "input_tokens": int,
            "output_tokens": int,
        },
        pk="id",
    )


@migration
def m002_samples_choices_logprobs(db: sqlite_utils.Database) -> None:
    results = db.table("results")
    for column, kind in (("sample", int), ("seed", int), ("choices", str), ("logprobs", str), ("parsed", str)):
        results.add_column(column, kind)


COST_COLUMNS = (
    "cost_pusd",
    "input_cost_pusd",
    "cached_cost_pusd",
    "cache_creation_cost_pusd",
    "output_cost_pusd",
    "saved_pusd",
)


@migration
def m003_costs(db: sqlite_utils.Database) -> None:
    """Cost per row in exact integer pico-USD (1e-12 USD), plus cost_usd for people."""
    results = db.table("results")
    for column in COST_COLUMNS:
        results.add_column(column, int)
    results.add_column("cost_usd", float)
    results.add_column("price_version", str)
    db.table("runs").add_column("cost_usd", float)


@migration
def m004_resume_points(db: sqlite_utils.Database) -> None:
    """Where the next run of the same spec over the same input may start reading."""
    runs = db.table("runs")
    runs.add_column("input_signature", str)
    runs.add_column("resume_offset", int)


@migration
def m005_attempt_costs(db: sqlite_utils.Database) -> None:
    """Usage and cost per attempt, so that every paid attempt is counted (a re-ask for JSON, an
    answer sent again by --retry-failed), the worst case the budget held for it, and per row the
    total of all its paid attempts. In a store written before this step, each row's recorded
    cost goes to its last answered attempt, and answered attempts are no longer "possibly"
    billed: their usage says what they cost. Its other answers (re-asks for JSON) keep their
    tokens but have no cost on record (reports count them as unpriced)."""
    attempts = db.table("attempts")
    attempts.add_column("model", str)
    for column in (*USAGE_COLUMNS, *COST_COLUMNS, "worst_cost_pusd"):
        attempts.add_column(column, int)
    attempts.add_column("cost_usd", float)
    attempts.add_column("price_version", str)
    results = db.table("results")
    results.add_column("total_cost_pusd", int)
    results.add_column("total_cost_usd", float)
    db.execute("UPDATE attempts SET model = (SELECT model FROM results r WHERE r.key = attempts.key)")
    copied = [*USAGE_COLUMNS, *COST_COLUMNS, "cost_usd", "price_version"]
    db.execute(
        f"UPDATE attempts SET ({', '.join(copied)}) = (SELECT {', '.join(copied)} FROM results r "
        "WHERE r.key = attempts.key) WHERE id IN (SELECT max(a.id) FROM attempts a JOIN results r "
        "ON r.key = a.key AND r.run_id = a.run_id WHERE a.usage IS NOT NULL GROUP BY a.key)"
    )
    # The other answers of those stores (re-asks for JSON) keep their tokens, with no cost on record.
    tokens = {
        "input_tokens": "coalesce(json_extract(usage, '$.input_tokens'), json_extract(usage, '$.prompt_tokens'))",
        "output_tokens": "coalesce(json_extract(usage, '$.output_tokens'), json_extract(usage, '$.completion_tokens'))",
    }
    assigned = ", ".join(f"{column} = {value}" for column, value in tokens.items())
    db.execute(f"UPDATE attempts SET {assigned} WHERE usage IS NOT NULL AND input_tokens IS NULL")
    db.execute("UPDATE attempts SET possibly_billed = 0 WHERE usage IS NOT NULL")
    db.execute("UPDATE results SET total_cost_pusd = cost_pusd, total_cost_usd = cost_usd")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def migrate(db: sqlite_utils.Database) -> None:
    """Apply the steps this store has not had yet, each in its own transaction."""
    table = db.table("_batchrunner_migrations")
    if not table.exists():
        table.create({"name": str, "applied_at": str}, pk="name")
    done = {row["name"] for row in table.rows}
    for step in MIGRATIONS:
        if step.__name__ not in done:
            with db.atomic():
                step(db)
                table.insert(
                    {"name": step.__name__, "applied_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
                )


# Steps after m004 are appended here, below `migrate` (they run in the order they are defined).


@migration
def m006_result_job(db: sqlite_utils.Database) -> None:
    """The job that made each result: two specs may share one store. Earlier rows get the job
    of the run that made them."""
    results = db.table("results")
    results.add_column("job", str)
    db.execute("UPDATE results SET job = (SELECT runs.job FROM runs WHERE runs.id = results.run_id)")
    results.create_index(["job", "status"])


@migration
def m007_batches(db: sqlite_utils.Database) -> None:
    """The Batch API: a store identity, one row per planned batch file (its state machine, see
    store/batches.py) and one per request line in it; and the mode (online, batch, batch-chat)
    of each result, attempt and run. Earlier rows were all online."""
    import uuid

    db.table("meta").create({"name": str, "value": str}, pk="name")
    db.table("meta").insert({"name": "store_id", "value": uuid.uuid4().hex})
    db.table("batch_files").create(
        {
            "id": int,
            "job": str,
            "purpose": str,  # job | check (batch-test-model, --batch-check)
            "attempt": int,
            "model": str,
            "endpoint": str,
            "state": str,
            "lines": int,
            "bytes": int,
            "spool": str,
            "ds_name": str,
            "input_file_id": str,
            "batch_id": str,
            "remote_status": str,
            "total": int,
            "completed": int,
            "failed": int,
            "output_file_id": str,
            "error_file_id": str,
            "errors": str,
            "note": str,
            "run_id": int,
            "planned_at": str,
            "submitted_at": str,
            "submitted_ts": float,
            "terminal_at": str,
            "ingested_at": str,
            "cleaned_at": str,
            "updated_at": str,
        },
        pk="id",
    )
    db.table("batch_files").create_index(["job", "state"])
    db.table("batch_lines").create(
        {
            "file": int,
            "custom_id": str,
            "key": str,
            "row_index": int,
            "row_id": str,
            "sample": int,
            "seed": int,
            "attempt": int,
            "worst_pusd": int,
            "outcome": str,
        },
        pk=("file", "custom_id"),
    )
    db.table("batch_lines").create_index(["key"])
    db.table("batch_lines").create_index(["outcome"])
    for table in ("results", "attempts", "runs"):
        db.table(table).add_column("mode", str)
    db.execute("UPDATE results SET mode = 'online'")
    db.execute("UPDATE attempts SET mode = 'online'")
    db.execute("UPDATE runs SET mode = 'online'")
