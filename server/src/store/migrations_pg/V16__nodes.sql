-- The `vigil serve` processes that use this database, each with a heartbeat on the server's clock: `vigil status`
-- shows whether serve runs, and does not show a tunnel "up" that no running serve holds (after a SIGKILL the last
-- recorded states stay behind).
--
-- PostgreSQL dialect of migrations/V16__nodes.sql (INTEGER is BIGINT).
CREATE TABLE nodes (
    name           TEXT PRIMARY KEY,
    pid            BIGINT NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    heartbeat_ms   BIGINT NOT NULL,
    -- Set by a clean stop; NULL while running (or after a crash, which the stale heartbeat tells).
    stopped_at_ms  BIGINT
);
