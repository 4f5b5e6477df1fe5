-- Alerts and mail (issue 6). Applied migrations are never edited: a change is a new V<n>__<name>.sql file.
--
-- Hosts are named by their clients.xml name (not hosts.id): an alert can concern a host that never reported.
-- `rule` is a rule key: cpu, memory, swap, load, silence, disk (any mount) or disk:<mount>.

-- The current state of each (host, rule) that ever fired. No row: ok.
CREATE TABLE alert_state (
    host         TEXT NOT NULL,
    rule         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    value        REAL,
    limit_value  REAL NOT NULL,
    since_ms     INTEGER NOT NULL,
    last_mail_ms INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    PRIMARY KEY (host, rule)
) STRICT;

-- Every transition (and every mailed security report): the history `vigil alerts` lists.
CREATE TABLE alert_events (
    id          INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    host        TEXT NOT NULL,
    ip          TEXT NOT NULL,
    rule        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('firing', 'repeat', 'resolved', 'security', 'cleared')),
    value       REAL,
    limit_value REAL,
    detail      TEXT NOT NULL
) STRICT;
CREATE INDEX alert_events_at ON alert_events (at_ms);

-- Mail waiting to be sent, written in the transaction of the event it tells about. The mailer sets sent_ms right
-- after the SMTP server accepted the message; `failed` rows were refused for good (bad address, 5xx).
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    event_id        INTEGER REFERENCES alert_events (id),
    created_ms      INTEGER NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    sent_ms         INTEGER
) STRICT;
CREATE INDEX outbox_pending ON outbox (status, id);
