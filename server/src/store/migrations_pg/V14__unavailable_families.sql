-- Statistics families a host's agent was asked for and cannot serve there (on Windows: the Security event log closed
-- to the agent, or no session API, as under Wine), as its reports say (`Stats.unavailable`). One row per host and
-- family while it lasts: a report that serves the family again removes the row. `vigil status` lists them, so a
-- family that is not available never looks like an empty, healthy one. Not history: nothing to prune.
--
-- PostgreSQL dialect of migrations/V14__unavailable_families.sql (INTEGER is BIGINT; STRICT and WITHOUT ROWID are
-- SQLite's own and dropped).
CREATE TABLE unavailable_families (
    host_id  BIGINT NOT NULL REFERENCES hosts (id),
    family   TEXT   NOT NULL,
    reason   TEXT   NOT NULL,
    -- Sample time of the first report that said so.
    since_ts BIGINT NOT NULL,
    PRIMARY KEY (host_id, family)
);
