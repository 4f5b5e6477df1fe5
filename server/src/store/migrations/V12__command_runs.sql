-- Command jobs (jobs.toml `command = [...]`): one row per run, and the values parsed from its output. Both are tied
-- to their report and pruned with it by retention.
CREATE TABLE command_runs (
    id               INTEGER PRIMARY KEY,
    host_id          INTEGER NOT NULL REFERENCES hosts (id),
    client_ip        TEXT NOT NULL,
    report_id        INTEGER NOT NULL REFERENCES reports (id),
    ts               INTEGER NOT NULL,
    job              TEXT NOT NULL,
    started_ms       INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    -- 'exited' (exit_code), 'signaled' (signal), 'timed_out', 'failed_to_start' or 'refused' (detail says why).
    outcome          TEXT NOT NULL
        CHECK (outcome IN ('exited', 'signaled', 'timed_out', 'failed_to_start', 'refused')),
    exit_code        INTEGER,
    signal           INTEGER,
    detail           TEXT,
    stdout           TEXT NOT NULL,
    stderr           TEXT NOT NULL,
    stdout_truncated INTEGER NOT NULL CHECK (stdout_truncated IN (0, 1)),
    stderr_truncated INTEGER NOT NULL CHECK (stderr_truncated IN (0, 1)),
    -- Problems parsing the output (`json` / `metrics`), one per line; NULL when none.
    parse_errors     TEXT
) STRICT;
CREATE INDEX command_runs_host_job_ts ON command_runs (host_id, job, ts);
CREATE INDEX command_runs_ts ON command_runs (ts);
CREATE INDEX command_runs_report ON command_runs (report_id);

CREATE TABLE command_metrics (
    id        INTEGER PRIMARY KEY,
    host_id   INTEGER NOT NULL REFERENCES hosts (id),
    client_ip TEXT NOT NULL,
    report_id INTEGER NOT NULL REFERENCES reports (id),
    ts        INTEGER NOT NULL,
    job       TEXT NOT NULL,
    name      TEXT NOT NULL,
    -- Label pairs as a JSON object ('{}' when none).
    labels    TEXT NOT NULL,
    value     REAL NOT NULL
) STRICT;
CREATE INDEX command_metrics_host_job_name_ts ON command_metrics (host_id, job, name, ts);
CREATE INDEX command_metrics_report ON command_metrics (report_id);
