-- Several `vigil serve` nodes on one database (issue 17).
--
-- leases: each host is owned by one live node. The owner holds the host's reverse channel, repairs it and judges its
-- silence; it renews the lease every few seconds on the database's clock. A lease that expired may be taken by
-- another node, which bumps `epoch`: an owner-only write checks (host, node, epoch) in its own transaction, so a
-- node that lost a host (paused, cut off from the database) cannot write as its owner any more.
CREATE TABLE leases (
    host          TEXT PRIMARY KEY,
    node          TEXT NOT NULL,
    epoch         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX leases_node ON leases (node);

-- The SSH host key every node presents (OpenSSH private key format), so agents that pinned it reach whichever node
-- holds their host. Written once by the first node of a shared PostgreSQL; a SQLite server keeps its key file.
CREATE TABLE server_key (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    private_key TEXT NOT NULL
) STRICT;

-- The mailer's claim on a pending mail: one node sends it; a claim that outlived `claimed_until_ms` (its node died
-- mid-send) is taken again.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until_ms INTEGER;

-- The machine a node runs on, so `vigil status` there can tell a killed node by its pid whatever the node's name.
ALTER TABLE nodes ADD COLUMN machine TEXT;

-- The SSH host keys bootstrap accepted (`--accept-new-host-key`), shared by every node: a node taking over a host
-- knows its key without a bootstrap of its own. `addr` is `[ip]:port`, as in the data directory's known_hosts file.
CREATE TABLE known_hosts (
    addr        TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
) STRICT;
