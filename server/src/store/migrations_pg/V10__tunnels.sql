-- The SSH reverse channel: for each host that reports through a tunnel, the port on the host's loopback its agent
-- dials (learned by bootstrap, kept across serve restarts and re-bootstraps), and the state of the session `vigil
-- serve` holds to the host's sshd with the remote forward on that port (or bootstrap's refusal), for `vigil status`.
--
-- PostgreSQL dialect of migrations/V10__tunnels.sql (INTEGER is BIGINT).
CREATE TABLE tunnels (
    host      TEXT PRIMARY KEY,
    -- NULL: bootstrap found forwarding refused before any port was learned.
    port      BIGINT CHECK (port BETWEEN 1 AND 65535),
    state     TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'up', 'down', 'refused')),
    error     TEXT,
    since_ms  BIGINT
);
