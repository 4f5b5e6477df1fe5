//! The `tunnels` table: per host reporting through the SSH reverse channel, the forwarded port its agent dials
//! (written by bootstrap) and the state of serve's session holding the forward (written by serve's tunnel manager
//! through the ingest writer), read by the tunnel manager and `vigil status`.

use super::{OptionalExtension, params};

use super::{Store, StoreError};

/// The state of one host's tunnel, as last recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelState {
    /// Registered by bootstrap; serve has not held it yet.
    Pending,
    /// serve holds the session and the forward.
    Up,
    /// The session is down (unreachable, login failed, connection lost); serve retries with backoff.
    Down,
    /// The host's sshd refuses the forward (`AllowTcpForwarding no`, or the port is taken).
    Refused,
}

impl TunnelState {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Pending => "pending",
            TunnelState::Up => "up",
            TunnelState::Down => "down",
            TunnelState::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => TunnelState::Pending,
            "up" => TunnelState::Up,
            "down" => TunnelState::Down,
            "refused" => TunnelState::Refused,
            other => return Err(StoreError::BadValue(format!("tunnel state {other:?}"))),
        })
    }
}

/// One row of `tunnels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRow {
    pub host: String,
    /// `None`: bootstrap found forwarding refused before any port was learned.
    pub port: Option<u16>,
    pub state: TunnelState,
    /// Why it is down or refused.
    pub error: Option<String>,
    /// When it entered `state` (server clock, ms).
    pub since_ms: Option<i64>,
}

impl Store {
    /// The forwarded port recorded for `host`, if any.
    pub fn tunnel_port(&self, host: &str) -> Result<Option<u16>, StoreError> {
        let port: Option<Option<i64>> =
            self.conn.query_row("SELECT port FROM tunnels WHERE host = ?1", params![host], |r| r.get(0)).optional()?;
        let port = port.flatten();
        port.map(|p| u16::try_from(p).map_err(|_| StoreError::BadValue(format!("tunnel port {p}")))).transpose()
    }

    /// Records the port `host`'s agent dials (bootstrap, which has just seen forwarding allowed). A new port, or a
    /// tunnel recorded as refused, becomes pending; the same port keeps its state.
    pub fn set_tunnel_port(&mut self, host: &str, port: u16) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tunnels (host, port, state) VALUES (?1, ?2, 'pending')
             ON CONFLICT (host) DO UPDATE SET
                 error = CASE WHEN tunnels.port = excluded.port AND tunnels.state <> 'refused'
                              THEN tunnels.error END,
                 state = CASE WHEN tunnels.port = excluded.port AND tunnels.state <> 'refused'
                              THEN tunnels.state ELSE 'pending' END,
                 port = excluded.port",
            params![host, port],
        )?;
        Ok(())
    }

    /// Records the state of `host`'s tunnel (a host without a row is left alone: it was uninstalled meanwhile).
    /// `since_ms` moves only when the state changes.
    pub fn set_tunnel_state(
        &mut self,
        host: &str,
        state: TunnelState,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.set_tunnel_state_as(None, host, state, error, now_ms)
    }

    /// [`Store::set_tunnel_state`] as the owner of `host`: `owner` is (node, lease epoch), and the state is written
    /// only while that lease holds (checked in the same statement), so a node that lost the host cannot overwrite
    /// what its new owner records.
    pub fn set_tunnel_state_as(
        &mut self,
        owner: Option<(&str, i64)>,
        host: &str,
        state: TunnelState,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (node, epoch) = owner.unzip();
        self.conn.execute(
            "UPDATE tunnels SET error = ?3,
                 since_ms = CASE WHEN state = ?2 AND since_ms IS NOT NULL THEN since_ms ELSE ?4 END,
                 state = ?2
             WHERE host = ?1 AND (CAST(?5 AS TEXT) IS NULL
                 OR EXISTS (SELECT 1 FROM leases l WHERE l.host = ?1 AND l.node = ?5 AND l.epoch = ?6))",
            params![host, state.as_str(), error, now_ms, node, epoch],
        )?;
        Ok(())
    }

    /// Records that bootstrap found `host`'s sshd refusing the forward (a row is made when there is none, without a
    /// port, so `vigil status` shows the refusal).
    pub fn set_tunnel_refused(&mut self, host: &str, error: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tunnels (host, port, state, error, since_ms) VALUES (?1, NULL, 'refused', ?2, ?3)
             ON CONFLICT (host) DO UPDATE SET error = excluded.error,
                 since_ms = CASE WHEN tunnels.state = 'refused' THEN tunnels.since_ms ELSE excluded.since_ms END,
                 state = 'refused'",
            params![host, error, now_ms],
        )?;
        Ok(())
    }

    /// Forgets `host`'s tunnel (uninstall).
    pub fn remove_tunnel(&mut self, host: &str) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM tunnels WHERE host = ?1", params![host])?;
        Ok(())
    }

    /// Every recorded tunnel, ordered by host.
    pub fn tunnels(&self) -> Result<Vec<TunnelRow>, StoreError> {
        let stmt = self.conn.stmt("SELECT host, port, state, error, since_ms FROM tunnels ORDER BY host")?;
        let rows = stmt.query_map(params![], |r| {
            Ok((r.get::<String>(0)?, r.get::<Option<i64>>(1)?, r.get::<String>(2)?, r.get(3)?, r.get(4)?))
        })?;
        let mut out = Vec::new();
        for (host, port, state, error, since_ms) in rows {
            let port = port
                .map(|p| u16::try_from(p).map_err(|_| StoreError::BadValue(format!("tunnel port {p}"))))
                .transpose()?;
            out.push(TunnelRow { host, port, state: TunnelState::parse(&state)?, error, since_ms });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_kept_and_the_state_follows_the_tunnel() {
        crate::store::each_engine(|store| {
            assert_eq!(store.tunnel_port("web").unwrap(), None);
            store.set_tunnel_port("web", 40001).unwrap();
            assert_eq!(store.tunnel_port("web").unwrap(), Some(40001));
            store.set_tunnel_state("web", TunnelState::Up, None, 10).unwrap();
            store.set_tunnel_state("web", TunnelState::Up, None, 20).unwrap();
            store.set_tunnel_port("web", 40001).unwrap();
            let rows = store.tunnels().unwrap();
            assert_eq!(rows[0].state, TunnelState::Up, "a re-bootstrap on the same port keeps the state");
            assert_eq!(rows[0].since_ms, Some(10), "since moves only on a change of state");
            store.set_tunnel_state("web", TunnelState::Refused, Some("AllowTcpForwarding no"), 30).unwrap();
            let rows = store.tunnels().unwrap();
            assert_eq!(
                (rows[0].state, rows[0].error.as_deref(), rows[0].since_ms),
                (TunnelState::Refused, Some("AllowTcpForwarding no"), Some(30))
            );
            store.set_tunnel_state("gone", TunnelState::Up, None, 40).unwrap();
            assert_eq!(store.tunnels().unwrap().len(), 1, "a state for a host without a tunnel adds no row");
            store.set_tunnel_refused("db", "AllowTcpForwarding no on db", 50).unwrap();
            let db = store.tunnels().unwrap().into_iter().find(|t| t.host == "db").unwrap();
            assert_eq!((db.port, db.state), (None, TunnelState::Refused));
            store.set_tunnel_port("db", 40002).unwrap();
            assert_eq!(store.tunnel_port("db").unwrap(), Some(40002));
            store.remove_tunnel("db").unwrap();
            store.remove_tunnel("web").unwrap();
            assert!(store.tunnels().unwrap().is_empty());
        });
    }
}
