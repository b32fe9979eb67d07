"""The words of the batch state machine, shared by the store, the executor and the displays.

A batch file goes, one committed step at a time, through

    planned -> uploading -> uploaded -> creating -> submitted -> terminal -> ingested -> cleaned

(`abandoned` when it can never be sent: its local file is gone before the upload, or the service
refused it; its lines go back to pending). Every step is committed before the remote call that
follows it, so a run killed anywhere resumes from the step it reached: `uploading` uploads again
(an upload bills nothing), `creating` first looks for the batch by its `ds_name` and adopts it
(a create whose answer was lost is never simply sent again), `submitted` polls, `terminal`
downloads and ingests, `ingested` deletes the remote files.

A line's `outcome` is NULL while its file may still answer it, then `ok`, `failed` (a 4xx that
sending again would not fix), `resubmit` (no verdict: expired, cancelled, 429, 5xx, absent from
both files; it goes into a later file until `[batch] max_attempts`), `dropped` (its file was
abandoned before it was sent: not an attempt) or `retried` (a `resubmit` that `batchrunner retry`
forgave).
"""

from __future__ import annotations

PLANNED = "planned"
UPLOADING = "uploading"
UPLOADED = "uploaded"
CREATING = "creating"
SUBMITTED = "submitted"
TERMINAL = "terminal"
INGESTED = "ingested"
CLEANED = "cleaned"
ABANDONED = "abandoned"

STATES = (PLANNED, UPLOADING, UPLOADED, CREATING, SUBMITTED, TERMINAL, INGESTED, CLEANED, ABANDONED)
UNFINISHED = (PLANNED, UPLOADING, UPLOADED, CREATING, SUBMITTED, TERMINAL)  # lines may still be answered
DONE = (INGESTED, CLEANED, ABANDONED)

OK = "ok"
FAILED = "failed"
RESUBMIT = "resubmit"
DROPPED = "dropped"
RETRIED = "retried"

JOB = "job"  # a file of the job's rows
CHECK = "check"  # a --batch-check file on batch-test-model
