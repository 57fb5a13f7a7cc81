-- The last run of each simulator task: which instance runs it, with which
-- parameters. A row still `running` whose instance is gone (killed, or its
-- PostgreSQL session closed) is an interrupted run the page offers to resume.

CREATE TABLE task_runs (
    task TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    instance TEXT NOT NULL,
    params TEXT NOT NULL,
    run_id TEXT,
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
