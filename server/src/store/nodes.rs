//! The `nodes` table of migration V16: each `vigil serve` using the database, with its heartbeat (written through
//! the ingest writer by serve's heartbeat task), read by `vigil status` to tell a running serve from a dead one.

use super::params;
use serde::Serialize;

use super::{Store, StoreError, TunnelState};

/// A node whose heartbeat is older than this is not running (a crash or SIGKILL leaves no other trace).
pub const STALE_AFTER_MS: i64 = 30_000;

/// One `vigil serve` process, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub pid: u32,
    pub started_at_ms: i64,
    pub heartbeat_ms: i64,
    /// Set when it stopped cleanly.
    pub stopped_at_ms: Option<i64>,
    /// The machine it runs on (its host name; `None` for a row written before migration V17, whose name was it).
    pub machine: Option<String>,
}

impl NodeRow {
    /// Whether it runs at `now_ms`: not stopped, a heartbeat within [`STALE_AFTER_MS`], and, for a node of this
    /// machine (whatever its `--node` name), its process still there (a SIGKILL is seen at once, not after the heartbeat goes stale).
    pub fn running(&self, now_ms: i64) -> bool {
        let fresh = self.stopped_at_ms.is_none() && now_ms - self.heartbeat_ms <= STALE_AFTER_MS;
        fresh && (self.machine.as_deref().unwrap_or(&self.name) != this_node() || runs_vigil(self.pid))
    }
}

/// This machine's host name: the name of the node `vigil serve` runs here.
pub fn this_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "vigil".into())
}

/// Whether process `pid` of this machine is a `vigil` (where /proc cannot tell, it is assumed to be).
fn runs_vigil(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "vigil")
}

impl Store {
    /// Records that node `name` (this process, `pid`, on this machine) started: its row is replaced, and the tunnels
    /// a dead predecessor left recorded as `up` are marked down (nobody holds them until this node does); those of
    /// hosts another live node owns stay as that node recorded them.
    pub fn node_started(&mut self, name: &str, pid: u32, now_ms: i64) -> Result<(), StoreError> {
        self.conn.transaction(|tx| {
            tx.execute(
                "INSERT INTO nodes (name, pid, started_at_ms, heartbeat_ms, stopped_at_ms, machine)
                 VALUES (?1, ?2, ?3, ?3, NULL, ?4)
                 ON CONFLICT (name) DO UPDATE SET pid = excluded.pid, started_at_ms = excluded.started_at_ms,
                     heartbeat_ms = excluded.heartbeat_ms, stopped_at_ms = NULL, machine = excluded.machine",
                params![name, pid, now_ms, this_node()],
            )?;
            let db_now = super::leases::db_now(tx)?;
            tx.execute(
                "UPDATE tunnels SET state = ?1, error = 'vigil serve restarted', since_ms = ?2 WHERE state = ?3
                 AND host NOT IN (SELECT host FROM leases WHERE node <> ?4 AND expires_at_ms >= ?5)",
                params![TunnelState::Down.as_str(), now_ms, TunnelState::Up.as_str(), name, db_now],
            )?;
            Ok(())
        })
    }

    /// Records that node `name` stopped cleanly.
    pub fn node_stopped(&mut self, name: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE nodes SET heartbeat_ms = ?2, stopped_at_ms = ?2 WHERE name = ?1", params![name, now_ms])?;
        Ok(())
    }

    /// Every node, ordered by name.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let stmt = self
            .conn
            .stmt("SELECT name, pid, started_at_ms, heartbeat_ms, stopped_at_ms, machine FROM nodes ORDER BY name")?;
        let rows = stmt.query_map(params![], |r| {
            Ok(NodeRow {
                name: r.get(0)?,
                pid: r.get(1)?,
                started_at_ms: r.get(2)?,
                heartbeat_ms: r.get(3)?,
                stopped_at_ms: r.get(4)?,
                machine: r.get(5)?,
            })
        })?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_replaces_the_node_and_marks_the_tunnels_a_dead_node_left_up_down() {
        crate::store::each_engine(|store| {
            store.set_tunnel_port("web", 40001).unwrap();
            store.set_tunnel_port("db", 40002).unwrap();
            store.set_tunnel_state("web", TunnelState::Up, None, 10).unwrap();
            store.set_tunnel_state("db", TunnelState::Refused, Some("AllowTcpForwarding no"), 10).unwrap();

            // A node of another machine: only the heartbeat tells (this machine's nodes are also checked by pid).
            store.node_started("s1", 42, 1_000).unwrap();
            store.conn.execute("UPDATE nodes SET machine = 'elsewhere' WHERE name = 's1'", params![]).unwrap();
            let states: Vec<_> = store.tunnels().unwrap().into_iter().map(|t| (t.host, t.state, t.error)).collect();
            assert_eq!(
                states,
                [
                    ("db".to_owned(), TunnelState::Refused, Some("AllowTcpForwarding no".to_owned())),
                    ("web".to_owned(), TunnelState::Down, Some("vigil serve restarted".to_owned())),
                ]
            );
            // (serve's lease task moves the heartbeat, on the database's clock)
            store.conn.execute("UPDATE nodes SET heartbeat_ms = 5000 WHERE name = 's1'", params![]).unwrap();
            let node = &store.nodes().unwrap()[0];
            assert_eq!((node.pid, node.started_at_ms, node.heartbeat_ms), (42, 1_000, 5_000));
            assert!(node.running(5_000 + STALE_AFTER_MS));
            assert!(!node.running(5_001 + STALE_AFTER_MS), "a stale heartbeat: it died");
            store.node_stopped("s1", 6_000).unwrap();
            assert!(!store.nodes().unwrap()[0].running(6_000), "stopped cleanly");
            store.node_started("s1", 43, 7_000).unwrap();
            store.conn.execute("UPDATE nodes SET machine = 'elsewhere' WHERE name = 's1'", params![]).unwrap();
            let nodes = store.nodes().unwrap();
            assert_eq!(nodes.len(), 1);
            assert!(nodes[0].running(7_000) && nodes[0].pid == 43);

            // A node of this machine whose process is gone is not running, whatever its heartbeat says.
            let here = this_node();
            store.node_started(&here, u32::MAX, 8_000).unwrap();
            let node = store.nodes().unwrap().into_iter().find(|n| n.name == here).unwrap();
            assert!(!node.running(8_000));
        });
    }
}
