-- `[server]` settings edited while `vigil serve` runs are not applied until a restart; the daemon records which
-- ones here so `vigil status` can say so.
ALTER TABLE config_state ADD COLUMN restart_needed TEXT;

-- The security mail digest of each host: at most one security mail per host per digest period. `last_event_id` is
-- the newest `alert_events` row (rule 'security') a mail has covered; later rows wait for the next mail.
CREATE TABLE security_digest (
    host          TEXT PRIMARY KEY,
    last_mail_ms  INTEGER NOT NULL,
    last_event_id INTEGER NOT NULL
) STRICT;
CREATE INDEX alert_events_host_rule ON alert_events (host, rule, id);
