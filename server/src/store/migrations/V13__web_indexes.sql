-- The web dashboard's roll-ups: per host, chart metric and line, the count, sum, minimum and maximum of the samples
-- of each 5-minute bucket (sample time), so a chart of a month reads 8,640 rows per line, not 259,200. Filled by
-- the daemon's writer from the reports after `last_report_id` (`rollup_state`), so late-arriving samples are added
-- to their bucket; pruned with the reports.
CREATE TABLE rollup_5m (
    host_id   INTEGER NOT NULL REFERENCES hosts (id),
    metric    TEXT    NOT NULL,
    label     TEXT    NOT NULL,
    bucket_ms INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    sum       REAL    NOT NULL,
    min       REAL    NOT NULL,
    max       REAL    NOT NULL,
    PRIMARY KEY (host_id, metric, bucket_ms, label)
) WITHOUT ROWID;

CREATE TABLE rollup_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_report_id INTEGER NOT NULL
) STRICT;
INSERT INTO rollup_state (id, last_report_id) VALUES (1, 0);
