-- Tamper-evident history of each lot and its products: every event is
-- appended in the transaction that writes the data it describes, and its
-- hash covers the previous event's hash, so changing a stored row or an
-- event breaks the chain from that point on.

CREATE TABLE trace_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code_lot TEXT NOT NULL REFERENCES lots (code_lot),
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (code_lot, seq)
);
