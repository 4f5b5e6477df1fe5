-- The hosts a pending config error is about (their `<client>` in clients.xml holds a diagnostic), one name per line,
-- NULL when none: the web dashboard shows them in the state "config error".
ALTER TABLE config_state ADD COLUMN error_hosts TEXT;
