-- The hosts a pending config error is about (their `<client>` in clients.xml holds a diagnostic), one name per line,
-- NULL when none: the web dashboard shows them in the state "config error".
--
-- PostgreSQL dialect of migrations/V15__config_error_hosts.sql (the same statement).
ALTER TABLE config_state ADD COLUMN error_hosts TEXT;
