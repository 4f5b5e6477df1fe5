-- `[server]` settings edited while `vigil serve` runs are not applied until a restart; the daemon records which
-- ones here so `vigil status` can say so.
ALTER TABLE config_state ADD COLUMN restart_needed TEXT;
