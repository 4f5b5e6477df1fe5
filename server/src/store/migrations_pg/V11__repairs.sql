-- Automatic repairs by `vigil serve` (issue 13): the last attempt on each host, kept for the backoff (which
-- survives a restart) and for `vigil status`. Every attempt is also an `alert_events` row with rule 'repair'
-- (state 'resolved' when repaired, 'firing' when it failed or was refused). `failures` counts failed attempts in a
-- row; a repair mail goes out when it reaches the mail threshold, once per streak.
--
-- PostgreSQL dialect of migrations/V11__repairs.sql (INTEGER is BIGINT).
CREATE TABLE repairs (
    host            TEXT PRIMARY KEY,
    last_attempt_ms BIGINT NOT NULL,
    outcome         TEXT NOT NULL CHECK (outcome IN ('repaired', 'failed', 'refused')),
    detail          TEXT NOT NULL,
    failures        BIGINT NOT NULL
);
