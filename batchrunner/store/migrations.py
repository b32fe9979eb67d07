"""The store's schema, as a list of named steps applied in order (and recorded in the file).

A step is never edited once released: a store records the names of the steps it has had
(`_batchrunner_migrations`), and a new column or table is a new step at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlite_utils

from .common import COST_COLUMNS, USAGE_COLUMNS

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


def migrate(db: sqlite_utils.Database, until: str | None = None) -> None:
    """Apply the steps this store has not had yet, each in its own transaction (those up to the
    step named `until` only, when given: tests make older stores with it)."""
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
        if step.__name__ == until:
            break


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


@migration
def m008_slim_store(db: sqlite_utils.Database) -> None:
    """Results and attempts without what repeats (see slim.py): the job, mode, model, endpoint,
    parameters (but the seed) and price version once per shape; the raw usage JSON only where
    its template does not give it back; timestamps as milliseconds; UUID request ids as 16
    bytes; a result's answer kept once, in its attempt; the dollar columns computed by the views
    `results_view` and `attempts_view`, which give the old picture. Existing rows move in a few
    set-based statements (one pass to work out each row's shape, template and answer, one to
    copy it); the old tables are dropped (their pages are reused; `VACUUM` frees them)."""
    from . import packing, slim

    db.execute(
        "CREATE TABLE shapes (id INTEGER PRIMARY KEY, job TEXT, mode TEXT, model TEXT, endpoint TEXT, "
        "parameters TEXT, seeded INTEGER NOT NULL DEFAULT 0, price_version TEXT)"
    )
    db.execute(f"CREATE INDEX idx_shapes_all ON shapes ({', '.join(slim.SHAPE_COLUMNS)})")
    db.execute("CREATE TABLE usage_templates (id INTEGER PRIMARY KEY, template TEXT NOT NULL UNIQUE)")
    conn = db.conn
    conn.create_function("batchrunner_usage_template", 1 + len(USAGE_COLUMNS), slim.template_udf, deterministic=True)
    conn.create_function("batchrunner_request_id", 1, packing.packed_id, deterministic=True)
    for table in ("results", "attempts"):
        db.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
        for column, kind in (("m_rest", "TEXT"), ("m_seeded", "INTEGER"), ("m_text", "TEXT"), ("m_answer", "INTEGER")):
            db.execute(f"ALTER TABLE old_{table} ADD COLUMN {column} {kind}")
    r, a = "old_results", "old_attempts"

    def template(t: str) -> str:
        return f"batchrunner_usage_template({t}.usage, {', '.join(f'{t}.{c}' for c in USAGE_COLUMNS)})"

    seeded = slim.seeded_sql(r)
    answer = " AND ".join(f"x.{c} IS {r}.{c}" for c in slim.ANSWER_COLUMNS)
    answer = f"(SELECT max(x.id) FROM {a} x WHERE x.key = {r}.key AND {answer})"
    db.execute(
        f"UPDATE {r} SET m_seeded = {seeded}, m_rest = CASE WHEN {seeded} THEN json_remove({r}.parameters, "
        f"'$.seed') ELSE {r}.parameters END, m_answer = {answer}"
    )
    db.execute(f"UPDATE {r} SET m_text = {template(r)} WHERE m_answer IS NULL AND usage IS NOT NULL")
    db.execute(f"UPDATE {a} SET m_text = {template(a)} WHERE usage IS NOT NULL")
    db.execute(
        f"INSERT INTO shapes ({', '.join(slim.SHAPE_COLUMNS)}) "
        f"SELECT DISTINCT job, mode, model, endpoint, m_rest, m_seeded, price_version FROM {r} "
        f"UNION SELECT DISTINCT NULL, mode, model, NULL, NULL, 0, price_version FROM {a}"
    )
    db.execute(
        f"INSERT INTO usage_templates (template) SELECT m_text FROM {r} WHERE m_text IS NOT NULL "
        f"UNION SELECT m_text FROM {a} WHERE m_text IS NOT NULL"
    )
    integer = {*USAGE_COLUMNS, *COST_COLUMNS, "row_index", "retryable", "http_status", "attempts"}
    integer |= {"possibly_billed_attempts", "latency_ms", "run_id", "sample", "seed", "total_cost_pusd", "shape"}
    integer |= {"answer", "usage_template", "attempt", "possibly_billed", "worst_cost_pusd"}

    def declared(column: str) -> str:
        if column in ("started_at", "finished_at", "request_id"):  # as stored by slim.py, or the text as it came
            return f"[{column}]"
        return f"[{column}] {'INTEGER' if column in integer else 'TEXT'}"

    db.execute(
        f"CREATE TABLE attempts ([id] INTEGER PRIMARY KEY, {', '.join(declared(c) for c in slim.ATTEMPT_COLUMNS[1:])})"
    )
    db.execute(
        f"CREATE TABLE results ([key] TEXT PRIMARY KEY, {', '.join(declared(c) for c in slim.RESULT_COLUMNS[1:])})"
    )
    template_id = "(SELECT id FROM usage_templates u WHERE u.template = m_text)"
    moved = {
        "started_at": packing.ms_sql(f"{a}.started_at"),
        "usage": f"CASE WHEN m_text IS NULL THEN {a}.usage END",
        "usage_template": template_id,
        "shape": (
            f"(SELECT id FROM shapes s WHERE s.job IS NULL AND s.mode IS {a}.mode AND s.model IS {a}.model AND "
            f"s.endpoint IS NULL AND s.parameters IS NULL AND s.seeded = 0 AND s.price_version IS {a}.price_version)"
        ),
        "request_id": f"batchrunner_request_id({a}.request_id)",
    }
    picked = ", ".join(moved.get(c, f"{a}.[{c}]") for c in slim.ATTEMPT_COLUMNS)
    db.execute(f"INSERT INTO attempts ({', '.join(slim.ATTEMPT_COLUMNS)}) SELECT {picked} FROM {a} ORDER BY id")
    moved = {c: f"CASE WHEN m_answer IS NULL THEN {r}.[{c}] END" for c in slim.ANSWER_COLUMNS}
    moved["usage"] = f"CASE WHEN m_answer IS NULL AND m_text IS NULL THEN {r}.usage END"
    moved["usage_template"] = template_id
    moved["request_id"] = f"CASE WHEN m_answer IS NULL THEN batchrunner_request_id({r}.request_id) END"
    moved.update(started_at=packing.ms_sql(f"{r}.started_at"), finished_at=packing.ms_sql(f"{r}.finished_at"))
    same = " AND ".join(f"s.{c} IS {r}.{c}" for c in ("job", "mode", "model", "endpoint", "price_version"))
    moved["shape"] = f"(SELECT id FROM shapes s WHERE {same} AND s.parameters IS m_rest AND s.seeded = m_seeded)"
    moved["answer"] = "m_answer"
    picked = ", ".join(moved.get(c, f"{r}.[{c}]") for c in slim.RESULT_COLUMNS)
    db.execute(f"INSERT INTO results ({', '.join(slim.RESULT_COLUMNS)}) SELECT {picked} FROM {r}")
    db.execute(f"DROP TABLE {r}")
    db.execute(f"DROP TABLE {a}")
    db.execute("CREATE INDEX idx_attempts_key ON attempts (key)")
    db.execute("CREATE INDEX idx_results_status_shape ON results (status, shape)")
    db.execute(slim.results_view_sql())
    db.execute(slim.attempts_view_sql())


@migration
def m009_row_positions(db: sqlite_utils.Database) -> None:
    """Results found by their input row: per run, the digest of its render context (what turns
    row i of its input into its requests, render.Renderer.render_context), and an index on the
    results' row_index. An export reads the results of the runs made in its own context in
    input order, instead of rendering every row again to find its key."""
    db.table("runs").add_column("render_context", str)
    db.execute("CREATE INDEX idx_results_row_index ON results (row_index)")


@migration
def m010_packed_keys(db: sqlite_utils.Database) -> None:
    """Request keys as their 16 bytes rather than 32 hex digits (packing.packed_key), in `results`
    and `attempts` and so in their key indexes: 64 bytes less per answered row. The views show
    them as the text they were (a batch line's custom_id is that text; `batch_lines` keep it)."""
    from . import packing, slim

    db.conn.create_function("batchrunner_packed_key", 1, packing.packed_key, deterministic=True)
    for table in ("results", "attempts"):
        db.execute(f"UPDATE {table} SET key = batchrunner_packed_key(key) WHERE typeof(key) = 'text'")
    db.execute("DROP VIEW IF EXISTS results_view")
    db.execute("DROP VIEW IF EXISTS attempts_view")
    db.execute(slim.results_view_sql())
    db.execute(slim.attempts_view_sql())


@migration
def m011_shards(db: sqlite_utils.Database) -> None:
    """A job sharded over Ray (store/shards.py): its plan, and one row per shard."""
    db.execute(
        "CREATE TABLE shard_plans (job TEXT PRIMARY KEY, shards INTEGER NOT NULL, rows INTEGER NOT NULL, "
        "input_signature TEXT, shared_dir TEXT, created_at TEXT)"
    )
    db.execute(
        "CREATE TABLE shards (job TEXT NOT NULL, shard INTEGER NOT NULL, first_row INTEGER NOT NULL, "
        "end_row INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'planned', tries INTEGER NOT NULL DEFAULT 0, "
        "node TEXT, rows_done INTEGER NOT NULL DEFAULT 0, sent INTEGER NOT NULL DEFAULT 0, "
        "ok INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0, "
        "output_tokens INTEGER NOT NULL DEFAULT 0, cost_pusd INTEGER NOT NULL DEFAULT 0, snapshot_at TEXT, "
        "merged_at TEXT, exit_code INTEGER, message TEXT, PRIMARY KEY (job, shard))"
    )
