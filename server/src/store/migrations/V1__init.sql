-- vigil's first schema. Applied migrations are never edited: a change is a new V<n>__<name>.sql file.
--
-- Times are milliseconds since the Unix epoch. `ts` on every statistics row is the report's collected_at_ms (the
-- host's clock); reports also keep received_at_ms (the server's clock) and their difference.

CREATE TABLE hosts (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    ip   TEXT NOT NULL
) STRICT;

-- One agent credential per host; re-registering a host replaces its row.
CREATE TABLE agents (
    agent_id         TEXT PRIMARY KEY,
    host             TEXT NOT NULL UNIQUE,
    public_key       TEXT NOT NULL,
    secret_hex       TEXT NOT NULL,
    version          TEXT,
    registered_at_ms INTEGER NOT NULL,
    last_seen_at_ms  INTEGER
) STRICT;

-- agent_id is deliberately not a foreign key: history outlives the credential that sent it.
CREATE TABLE reports (
    id              INTEGER PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    host_id         INTEGER NOT NULL REFERENCES hosts (id),
    client_ip       TEXT NOT NULL,
    job             TEXT NOT NULL,
    collected_at_ms INTEGER NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    clock_offset_ms INTEGER NOT NULL,
    dropped         INTEGER NOT NULL,
    UNIQUE (agent_id, seq)
) STRICT;
CREATE INDEX reports_host_received ON reports (host_id, received_at_ms);
CREATE INDEX reports_received ON reports (received_at_ms);

CREATE TABLE system_details (
    id         INTEGER PRIMARY KEY,
    host_id    INTEGER NOT NULL REFERENCES hosts (id),
    client_ip  TEXT NOT NULL,
    report_id  INTEGER NOT NULL REFERENCES reports (id),
    ts         INTEGER NOT NULL,
    hostname   TEXT NOT NULL,
    os_name    TEXT NOT NULL,
    os_version TEXT NOT NULL,
    kernel     TEXT NOT NULL,
    arch       TEXT NOT NULL,
    uptime_s   INTEGER NOT NULL,
    boot_time  INTEGER NOT NULL,
    cpu_model  TEXT NOT NULL,
    cpu_count  INTEGER NOT NULL
) STRICT;
CREATE INDEX system_details_host_ts ON system_details (host_id, ts);
CREATE INDEX system_details_report ON system_details (report_id);

-- Logged-in sessions; `source` is where the agent read them (utmp path, ...).
CREATE TABLE sessions (
    id          INTEGER PRIMARY KEY,
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    client_ip   TEXT NOT NULL,
    report_id   INTEGER NOT NULL REFERENCES reports (id),
    ts          INTEGER NOT NULL,
    source      TEXT,
    user        TEXT NOT NULL,
    terminal    TEXT NOT NULL,
    remote_host TEXT,
    login_time  INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_host_ts ON sessions (host_id, ts);
CREATE INDEX sessions_report ON sessions (report_id);

-- per_core_pct is a JSON array of percentages, one per logical core.
CREATE TABLE cpu (
    id           INTEGER PRIMARY KEY,
    host_id      INTEGER NOT NULL REFERENCES hosts (id),
    client_ip    TEXT NOT NULL,
    report_id    INTEGER NOT NULL REFERENCES reports (id),
    ts           INTEGER NOT NULL,
    total_pct    REAL NOT NULL,
    per_core_pct TEXT NOT NULL,
    load1        REAL NOT NULL,
    load5        REAL NOT NULL,
    load15       REAL NOT NULL
) STRICT;
CREATE INDEX cpu_host_ts ON cpu (host_id, ts);
CREATE INDEX cpu_report ON cpu (report_id);

CREATE TABLE memory (
    id        INTEGER PRIMARY KEY,
    host_id   INTEGER NOT NULL REFERENCES hosts (id),
    client_ip TEXT NOT NULL,
    report_id INTEGER NOT NULL REFERENCES reports (id),
    ts        INTEGER NOT NULL,
    total     INTEGER NOT NULL,
    used      INTEGER NOT NULL,
    available INTEGER NOT NULL,
    free      INTEGER NOT NULL,
    used_pct  REAL NOT NULL
) STRICT;
CREATE INDEX memory_host_ts ON memory (host_id, ts);
CREATE INDEX memory_report ON memory (report_id);

CREATE TABLE swap (
    id        INTEGER PRIMARY KEY,
    host_id   INTEGER NOT NULL REFERENCES hosts (id),
    client_ip TEXT NOT NULL,
    report_id INTEGER NOT NULL REFERENCES reports (id),
    ts        INTEGER NOT NULL,
    total     INTEGER NOT NULL,
    used      INTEGER NOT NULL,
    free      INTEGER NOT NULL,
    used_pct  REAL NOT NULL
) STRICT;
CREATE INDEX swap_host_ts ON swap (host_id, ts);
CREATE INDEX swap_report ON swap (report_id);

CREATE TABLE partitions (
    id          INTEGER PRIMARY KEY,
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    client_ip   TEXT NOT NULL,
    report_id   INTEGER NOT NULL REFERENCES reports (id),
    ts          INTEGER NOT NULL,
    device      TEXT NOT NULL,
    mount_point TEXT NOT NULL,
    fs_type     TEXT NOT NULL,
    options     TEXT NOT NULL
) STRICT;
CREATE INDEX partitions_host_ts ON partitions (host_id, ts);
CREATE INDEX partitions_report ON partitions (report_id);

CREATE TABLE disk_usage (
    id           INTEGER PRIMARY KEY,
    host_id      INTEGER NOT NULL REFERENCES hosts (id),
    client_ip    TEXT NOT NULL,
    report_id    INTEGER NOT NULL REFERENCES reports (id),
    ts           INTEGER NOT NULL,
    mount_point  TEXT NOT NULL,
    total        INTEGER NOT NULL,
    used         INTEGER NOT NULL,
    free         INTEGER NOT NULL,
    used_pct     REAL NOT NULL,
    inodes_total INTEGER,
    inodes_used  INTEGER
) STRICT;
CREATE INDEX disk_usage_host_ts ON disk_usage (host_id, ts);
CREATE INDEX disk_usage_report ON disk_usage (report_id);

CREATE TABLE network (
    id             INTEGER PRIMARY KEY,
    host_id        INTEGER NOT NULL REFERENCES hosts (id),
    client_ip      TEXT NOT NULL,
    report_id      INTEGER NOT NULL REFERENCES reports (id),
    ts             INTEGER NOT NULL,
    name           TEXT NOT NULL,
    rx_bytes       INTEGER NOT NULL,
    tx_bytes       INTEGER NOT NULL,
    rx_packets     INTEGER NOT NULL,
    tx_packets     INTEGER NOT NULL,
    rx_errors      INTEGER NOT NULL,
    tx_errors      INTEGER NOT NULL,
    rx_dropped     INTEGER NOT NULL,
    tx_dropped     INTEGER NOT NULL,
    rx_bytes_per_s REAL,
    tx_bytes_per_s REAL
) STRICT;
CREATE INDEX network_host_ts ON network (host_id, ts);
CREATE INDEX network_report ON network (report_id);

-- event_time is the event's own time (seconds since the epoch, as the agent reports it); `source` is the log read.
CREATE TABLE security_events (
    id           INTEGER PRIMARY KEY,
    host_id      INTEGER NOT NULL REFERENCES hosts (id),
    client_ip    TEXT NOT NULL,
    report_id    INTEGER NOT NULL REFERENCES reports (id),
    ts           INTEGER NOT NULL,
    source       TEXT,
    event_time   INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('login_failed', 'login_succeeded', 'sudo', 'other')),
    user         TEXT,
    event_source TEXT,
    message      TEXT NOT NULL
) STRICT;
CREATE INDEX security_events_host_ts ON security_events (host_id, ts);
CREATE INDEX security_events_report ON security_events (report_id);

-- The pending configuration error `vigil serve` recorded for `vigil status` (NULL when the config is good).
CREATE TABLE config_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    error         TEXT,
    updated_at_ms INTEGER NOT NULL
) STRICT;
INSERT INTO config_state (id, error, updated_at_ms) VALUES (1, NULL, 0);
