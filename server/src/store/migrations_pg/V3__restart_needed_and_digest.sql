-- `[server]` settings edited while `vigil serve` runs are not applied until a restart; the daemon records which
-- ones here so `vigil status` can say so.
--
-- PostgreSQL dialect of migrations/V3__restart_needed_and_digest.sql (INTEGER is BIGINT).
ALTER TABLE config_state ADD COLUMN restart_needed TEXT;

-- The security mail digest of each host: at most one security mail per host per digest period. `last_event_id` is
-- the newest `alert_events` row (rule 'security') a mail has covered; later rows wait for the next mail.
CREATE TABLE security_digest (
    host          TEXT PRIMARY KEY,
    last_mail_ms  BIGINT NOT NULL,
    last_event_id BIGINT NOT NULL
);
CREATE INDEX alert_events_host_rule ON alert_events (host, rule, id);
