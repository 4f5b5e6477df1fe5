//! The `leases` table of migration V17: which live `vigil serve` node owns each host. [`Store::claim_leases`] is one
//! round of the protocol (renew, release the excess, take what is free, on the database's clock), [`holds`] the
//! check every owner-only write makes in its own transaction, [`Store::leases`] what `vigil status` shows.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::{Db, Engine, Store, StoreError, Tx, params};

/// A lease not renewed for this long has expired: another node may take the host. Nodes renew every few seconds.
pub const LEASE_TTL_MS: i64 = 10_000;

/// One host's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    pub host: String,
    pub node: String,
    pub epoch: i64,
    pub expires_at_ms: i64,
}

/// The columns `host, node, epoch, expires_at_ms` of `leases` as a [`LeaseRow`].
fn lease_row(r: &super::Row<'_>) -> Result<LeaseRow, StoreError> {
    Ok(LeaseRow { host: r.get(0)?, node: r.get(1)?, epoch: r.get(2)?, expires_at_ms: r.get(3)? })
}

/// The database's clock in milliseconds since the epoch: leases and node heartbeats are judged by it, so the
/// nodes' own clocks may disagree.
pub(super) fn db_now(db: &Db) -> Result<i64, StoreError> {
    let sql = match db.engine() {
        Engine::Sqlite => "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        Engine::Postgres => "SELECT CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)",
    };
    db.query_row(sql, params![], |r| r.get(0))
}

/// Whether `node` holds `host`'s lease at `epoch`: the guard of every owner-only write, run inside the write's
/// transaction. An expired lease still held (nobody took it) counts: its epoch would have moved otherwise.
pub fn holds(tx: Tx<'_>, host: &str, node: &str, epoch: i64) -> Result<bool, StoreError> {
    let found = tx.0.query_opt(
        "SELECT 1 FROM leases WHERE host = ?1 AND node = ?2 AND epoch = ?3",
        params![host, node, epoch],
        |r| r.get::<i64>(0),
    )?;
    Ok(found.is_some())
}

/// A stable order of hosts per node, so two nodes looking for free hosts at once mostly pick different ones.
fn spread(node: &str, host: &str) -> u64 {
    // FNV-1a over node and host: cheap, stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0]).chain(host.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Store {
    /// One round of the lease protocol for `node` over the configured `hosts`, in one transaction: the node's
    /// heartbeat moves (database clock); with `n` live nodes its share is ⌈hosts / n⌉; it renews its leases up to
    /// that share and releases the rest (and any of a host no longer configured), then takes free or expired hosts
    /// up to its share, bumping their epoch. Returns what it holds now: host → epoch.
    pub fn claim_leases(
        &mut self,
        node: &str,
        hosts: &[String],
        ttl_ms: i64,
    ) -> Result<HashMap<String, i64>, StoreError> {
        self.conn.transaction(|tx| {
            let now = db_now(tx)?;
            tx.execute("UPDATE nodes SET heartbeat_ms = ?2, stopped_at_ms = NULL WHERE name = ?1", params![node, now])?;
            let live: i64 = tx.query_row(
                "SELECT count(*) FROM nodes WHERE stopped_at_ms IS NULL AND heartbeat_ms > ?1 AND name <> ?2",
                params![now - ttl_ms, node],
                |r| r.get(0),
            )?;
            let share = hosts.len().div_ceil(usize::try_from(live + 1).unwrap_or(1));
            let rows = tx.query_map("SELECT host, node, epoch, expires_at_ms FROM leases", params![], lease_row)?;
            let wanted: HashSet<&str> = hosts.iter().map(String::as_str).collect();
            let mut mine: Vec<&LeaseRow> =
                rows.iter().filter(|l| l.node == node && wanted.contains(l.host.as_str())).collect();
            mine.sort_by(|a, b| a.host.cmp(&b.host));
            let (keep, excess) = mine.split_at(mine.len().min(share));
            let mut held: HashMap<String, i64> = keep.iter().map(|l| (l.host.clone(), l.epoch)).collect();
            tx.execute("UPDATE leases SET expires_at_ms = ?2 WHERE node = ?1", params![node, now + ttl_ms])?;
            for l in excess
                .iter()
                .copied()
                .chain(rows.iter().filter(|l| l.node == node && !wanted.contains(l.host.as_str())))
            {
                tx.execute("DELETE FROM leases WHERE host = ?1 AND node = ?2", params![l.host, node])?;
            }
            let taken: HashSet<&str> =
                rows.iter().filter(|l| l.expires_at_ms >= now).map(|l| l.host.as_str()).collect();
            let mut free: Vec<&String> =
                hosts.iter().filter(|h| !taken.contains(h.as_str()) && !held.contains_key(h.as_str())).collect();
            free.sort_by_key(|h| spread(node, h));
            for host in free.into_iter().take(share.saturating_sub(held.len())) {
                let epoch = tx.query_opt(
                    "INSERT INTO leases (host, node, epoch, expires_at_ms) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (host) DO UPDATE SET node = excluded.node, epoch = leases.epoch + 1,
                         expires_at_ms = excluded.expires_at_ms
                     WHERE leases.expires_at_ms < ?4
                     RETURNING epoch",
                    params![host, node, now + ttl_ms, now],
                    |r| r.get::<i64>(0),
                )?;
                if let Some(epoch) = epoch {
                    held.insert(host.clone(), epoch);
                }
            }
            Ok(held)
        })
    }

    /// Gives up every lease of `node` (a clean stop), so other nodes take its hosts at once.
    pub fn release_leases(&mut self, node: &str) -> Result<usize, StoreError> {
        self.conn.execute("DELETE FROM leases WHERE node = ?1", params![node])
    }

    /// The host key every node presents (OpenSSH private key text): the one stored, or `offer` when none is yet
    /// (the first node to offer wins; every node reads the winner back).
    pub fn shared_server_key(&mut self, offer: &str) -> Result<String, StoreError> {
        self.conn.execute(
            "INSERT INTO server_key (id, private_key) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
            params![offer],
        )?;
        self.conn.query_row("SELECT private_key FROM server_key WHERE id = 1", params![], |r| r.get(0))
    }

    /// The host key fingerprint recorded for `addr` (`[ip]:port`) in the shared known hosts.
    pub fn known_host(&self, addr: &str) -> Result<Option<String>, StoreError> {
        self.conn.query_opt("SELECT fingerprint FROM known_hosts WHERE addr = ?1", params![addr], |r| r.get(0))
    }

    /// Records (or replaces) the fingerprint of `addr` in the shared known hosts.
    pub fn set_known_host(&mut self, addr: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO known_hosts (addr, fingerprint) VALUES (?1, ?2)
             ON CONFLICT (addr) DO UPDATE SET fingerprint = excluded.fingerprint",
            params![addr, fingerprint],
        )?;
        Ok(())
    }

    /// Every lease, by host, with the database's clock to judge them by.
    pub fn leases(&self) -> Result<(Vec<LeaseRow>, i64), StoreError> {
        let rows = self.conn.query_map(
            "SELECT host, node, epoch, expires_at_ms FROM leases ORDER BY host",
            params![],
            lease_row,
        )?;
        Ok((rows, db_now(&self.conn)?))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i}")).collect()
    }

    /// Two stores on one database, as two nodes are: a SQLite file opened twice, or one PostgreSQL database.
    fn two_nodes(f: impl Fn(&mut Store, &mut Store)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        f(&mut Store::open(&path).unwrap(), &mut Store::open(&path).unwrap());
        let url = vigil_testkit::fresh_database();
        f(&mut Store::open_postgres(&url, None).unwrap(), &mut Store::open_postgres(&url, None).unwrap());
    }

    #[test]
    fn nodes_share_the_hosts_and_take_over_a_dead_nodes_after_its_leases_expire() {
        two_nodes(|a, b| {
            let all = hosts(5);
            a.node_started("a", 1, 0).unwrap();
            let held_a = a.claim_leases("a", &all, 400).unwrap();
            assert_eq!(held_a.len(), 5, "alone, a takes every host");
            assert!(held_a.values().all(|e| *e == 1));

            b.node_started("b", 2, 0).unwrap();
            assert!(b.claim_leases("b", &all, 400).unwrap().is_empty(), "all taken, none expired");
            let held_a = a.claim_leases("a", &all, 400).unwrap();
            assert_eq!(held_a.len(), 3, "a sees b and keeps its share");
            let held_b = b.claim_leases("b", &all, 400).unwrap();
            assert_eq!(held_b.len(), 2, "b takes what a released");
            assert!(held_a.keys().all(|h| !held_b.contains_key(h)), "one owner per host");
            let tx_holds = |s: &Store, h: &str, n: &str, e: i64| holds(s.view(), h, n, e).unwrap();
            let (h, e) = held_b.iter().next().unwrap();
            assert!(tx_holds(a, h, "b", *e) && !tx_holds(a, h, "a", *e));

            // a dies: its leases and heartbeat go stale; b takes its hosts with a new epoch.
            std::thread::sleep(std::time::Duration::from_millis(450));
            let held_b = b.claim_leases("b", &all, 400).unwrap();
            assert_eq!(held_b.len(), 5, "b owns every host once a's leases expired: {held_b:?}");
            for (h, e) in &held_a {
                assert_eq!(held_b[h], e + 1, "a taken host's epoch moves");
                assert!(!tx_holds(b, h, "a", *e), "a's writes as owner are refused now");
            }
            let (rows, now) = b.leases().unwrap();
            assert!(rows.iter().all(|l| l.node == "b" && l.expires_at_ms > now));

            // A host dropped from the config loses its lease; a clean stop releases the rest.
            let fewer = hosts(4);
            assert_eq!(b.claim_leases("b", &fewer, 400).unwrap().len(), 4);
            assert_eq!(b.leases().unwrap().0.len(), 4);
            assert_eq!(b.release_leases("b").unwrap(), 4);
        });
    }
}
