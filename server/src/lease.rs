//! Which hosts this `vigil serve` node owns, when several share one database: the lease task renews this node's
//! leases every [`RENEW_EVERY`] through the ingest writer (`store::leases`), takes its share of free or expired
//! hosts, and publishes what it holds as an [`Ownership`]. The owner-only work follows it: the tunnel manager holds
//! the reverse channels of owned hosts, the repair supervisor and the silence check look at owned hosts, local
//! agents are run by the node owning them. Alone on its database, a node owns every host.
//!
//! The task is also the node's heartbeat (the `nodes` row, on the database's clock); on a clean stop it releases its
//! leases and records the stop, so the other nodes take its hosts at once instead of after [`LEASE_TTL`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::IngestHandle;
use crate::store::leases::LEASE_TTL_MS;

/// How often the leases are renewed (and free hosts looked for): well within [`LEASE_TTL`].
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A node that could not renew for this long no longer counts on its leases: another node may hold its hosts.
pub const LEASE_TTL: Duration = Duration::from_millis(LEASE_TTL_MS as u64);

/// The hosts this node owns, each with the epoch of its lease (the guard of owner-only writes).
#[derive(Debug, Clone)]
pub struct Ownership {
    node: Arc<str>,
    held: watch::Receiver<Arc<HashMap<String, i64>>>,
}

impl Ownership {
    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The epoch of this node's lease on `host`, when it owns it.
    pub fn epoch(&self, host: &str) -> Option<i64> {
        self.held.borrow().get(host).copied()
    }

    /// Whether this node owns `host`.
    pub fn owns(&self, host: &str) -> bool {
        self.held.borrow().contains_key(host)
    }

    /// Waits until what this node owns changes; `false` once the lease task is gone.
    pub async fn changed(&mut self) -> bool {
        self.held.changed().await.is_ok()
    }

    /// What this node owns now: host → epoch.
    pub fn held(&self) -> Arc<HashMap<String, i64>> {
        self.held.borrow().clone()
    }
}

/// An ownership that never changes: `node` owns `hosts` at epoch 1 (tests of the owner-only tasks).
#[cfg(test)]
pub fn fixed(node: &str, hosts: &[&str]) -> Ownership {
    let (tx, ownership) = channel(node);
    tx.send_replace(Arc::new(hosts.iter().map(|h| ((*h).to_owned(), 1)).collect()));
    ownership
}

/// Where the lease task publishes the hosts this node owns, each with its lease epoch.
pub type OwnedSender = watch::Sender<Arc<HashMap<String, i64>>>;

/// The sender the lease task publishes to, and the [`Ownership`] the owner-only tasks follow (nothing owned yet).
pub fn channel(node: &str) -> (OwnedSender, Ownership) {
    let (tx, held) = watch::channel(Arc::new(HashMap::new()));
    (tx, Ownership { node: node.into(), held })
}

/// Renews, takes and publishes this node's leases until `cancel`; then releases them and records the stop.
pub async fn run(
    ingest: IngestHandle,
    config: watch::Receiver<Arc<Config>>,
    node: Arc<str>,
    tx: OwnedSender,
    cancel: CancellationToken,
) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        let hosts: Vec<String> = config.borrow().clients.iter().map(|h| h.name.clone()).collect();
        let name = node.clone();
        match ingest.exec(move |s| s.claim_leases(&name, &hosts, LEASE_TTL_MS)).await {
            Ok(Ok(held)) => {
                last_renewed = tokio::time::Instant::now();
                publish(&tx, held);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not renew this node's leases");
                // Past the lease's life another node may own these hosts: stop acting as their owner.
                if last_renewed.elapsed() >= LEASE_TTL {
                    publish(&tx, HashMap::new());
                }
            }
            Err(_) => return,
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    publish(&tx, HashMap::new());
    let name = node.clone();
    let stopped = ingest
        .exec(move |s| {
            s.release_leases(&name)?;
            s.node_stopped(&name, vigil_sys::clock::now_ms())
        })
        .await;
    if let Ok(Err(e)) = stopped {
        tracing::warn!(error = %e, "could not release the leases or record the stop");
    }
}

/// Publishes `held` when it differs from what was published, logging the hosts gained and lost.
fn publish(tx: &OwnedSender, held: HashMap<String, i64>) {
    tx.send_if_modified(|current| {
        if **current == held {
            return false;
        }
        let gained: Vec<&String> = held.keys().filter(|h| current.get(*h) != held.get(*h)).collect();
        let lost: Vec<&String> = current.keys().filter(|h| !held.contains_key(*h)).collect();
        if !gained.is_empty() || !lost.is_empty() {
            tracing::info!(owned = held.len(), ?gained, ?lost, "host ownership changed");
        }
        *current = Arc::new(held);
        true
    });
}
