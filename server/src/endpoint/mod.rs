//! The embedded SSH endpoint agents dial: accepts connections, authenticates agents by key, and runs the vigil
//! protocol on the `vigil` subsystem.
//!
//! - [`handler`]: the russh `Handler`: public-key auth against the [`registry`], one session channel, the `vigil`
//!   subsystem; every other request refused and counted.
//! - [`session`]: the protocol on one authenticated channel: frames, envelopes, hello, jobs, reports, acks.
//! - [`registry`]: which keys may connect, as agents of which hosts.
//! - [`counters`]: what was refused, and a log limiter.
//!
//! Every connection task is spawned on the endpoint's `TaskTracker` and stops on its `CancellationToken`; `run`
//! returns only after all of them have finished.

pub mod counters;
pub mod handler;
pub mod registry;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use russh::keys::PrivateKey;
use russh::server::{Config as SshConfig, run_stream};
use russh::{MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::ingest::IngestHandle;
use counters::Counters;
use registry::Registry;

/// Least time between two registry refreshes caused by unknown keys.
pub const REFRESH_EVERY: Duration = Duration::from_millis(200);

/// Limits and timeouts of the endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Most connections that have not authenticated yet.
    pub max_unauthenticated: usize,
    /// Most connections from one source address that have not authenticated yet: one source cannot take every
    /// anonymous slot and lock the fleet out.
    pub max_unauthenticated_per_source: usize,
    /// Time a peer has to authenticate.
    pub auth_deadline: Duration,
    /// Time an authenticated peer may stay silent (the agent sends keepalives more often).
    pub idle_timeout: Duration,
    /// Reports of one connection waiting for their commit at once (backpressure beyond it).
    pub max_in_flight: usize,
    /// Refused frames on one connection before it is closed.
    pub max_errors: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_unauthenticated: 512,
            max_unauthenticated_per_source: 64,
            auth_deadline: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(180),
            max_in_flight: 256,
            max_errors: 32,
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// The allow-list; sessions watch it and close once their agent is no longer in it.
    registry: watch::Sender<Arc<Registry>>,
    /// Live authenticated connections per agent id.
    per_agent: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    pub config: watch::Receiver<Arc<Config>>,
    pub ingest: IngestHandle,
    pub counters: Counters,
    pub limits: Limits,
    /// The limits every new connection passes, TCP or tunnelled.
    pub admission: Admission,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    /// Serialises registry refreshes after an unknown key: one at a time, at most one per [`REFRESH_EVERY`];
    /// connections that miss meanwhile wait for the running refresh instead of starting their own.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl Shared {
    pub fn new(config: watch::Receiver<Arc<Config>>, ingest: IngestHandle, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            registry: watch::Sender::new(Arc::new(Registry::default())),
            per_agent: Arc::default(),
            config,
            ingest,
            counters: Counters::default(),
            admission: Admission::new(&limits),
            limits,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            last_refresh: tokio::sync::Mutex::new(None),
        })
    }

    /// The current allow-list.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.borrow().clone()
    }

    /// Follows the allow-list: changes on every rebuild.
    pub fn watch_registry(&self) -> watch::Receiver<Arc<Registry>> {
        self.registry.subscribe()
    }

    /// A place among the live connections of `agent_id`, or `None` when it has `[server]
    /// max_connections_per_agent` (of the live config) already: one stolen key cannot take every slot.
    pub fn take_agent_slot(&self, agent_id: &str) -> Option<AgentSlot> {
        let mut live = self.per_agent.lock().ok()?;
        let n = live.entry(agent_id.to_owned()).or_insert(0);
        if *n >= self.config.borrow().server.max_connections_per_agent {
            return None;
        }
        *n += 1;
        Some(AgentSlot { live: self.per_agent.clone(), agent_id: agent_id.to_owned() })
    }

    /// Rebuilds the allow-list from the agents table and the current config.
    pub async fn refresh_registry(&self) {
        let config = self.config.borrow().clone();
        match self.ingest.exec(|store| store.agents()).await {
            Ok(Ok(records)) => {
                let reg = Arc::new(Registry::build(&records, &config));
                tracing::trace!(agents = reg.len(), "agent allow-list rebuilt");
                self.registry.send_replace(reg);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not read the agents table"),
            Err(e) => tracing::warn!(error = %e, "could not read the agents table"),
        }
    }

    /// Refreshes after an unknown key (a host may just have been bootstrapped by another process). Misses that
    /// arrive while a refresh runs wait for it; a brute force of unknown keys costs at most one read of the agents
    /// table per [`REFRESH_EVERY`].
    pub async fn refresh_if_stale(&self) {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return;
        }
        self.refresh_registry().await;
        *last = Some(Instant::now());
    }
}

/// One live connection of an agent, counted against `[server] max_connections_per_agent`; given back on drop.
#[derive(Debug)]
pub struct AgentSlot {
    live: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    agent_id: String,
}

impl Drop for AgentSlot {
    fn drop(&mut self) {
        if let Ok(mut live) = self.live.lock()
            && let Some(n) = live.get_mut(&self.agent_id)
        {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.agent_id);
            }
        }
    }
}

/// Held by a connection until it authenticates: its place among the anonymous connections, overall and per source.
#[derive(Debug)]
pub struct Anonymous {
    _overall: tokio::sync::OwnedSemaphorePermit,
    _source: SourceSlot,
}

/// Counts unauthenticated connections per source address.
#[derive(Debug)]
struct SourceSlots {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<Source, usize>>,
}

/// One taken place of a source; given back on drop.
#[derive(Debug)]
pub struct SourceSlot {
    slots: Arc<SourceSlots>,
    source: Source,
}

impl SourceSlots {
    fn new(max: usize) -> Self {
        Self { max, open: std::sync::Mutex::new(std::collections::HashMap::new()) }
    }

    fn take(self: &Arc<Self>, source: Source) -> Option<SourceSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(source.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot { slots: self.clone(), source })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock()
            && let Some(n) = open.get_mut(&self.source)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

/// The russh server configuration: our host key, public-key auth only, bounded windows, keepalives.
pub fn ssh_config(host_key: PrivateKey, limits: &Limits) -> SshConfig {
    SshConfig {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(250),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        keys: vec![host_key],
        inactivity_timeout: Some(limits.idle_timeout),
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        max_auth_attempts: 6,
        window_size: 1 << 20,
        maximum_packet_size: 32768,
        nodelay: true,
        ..SshConfig::default()
    }
}

/// Where a connection comes from, for the per-source cap on unauthenticated connections: the peer's address for
/// TCP, the host for connections forwarded through its tunnel (every one of them comes from the server's own
/// session, so the address says nothing).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Ip(std::net::IpAddr),
    Tunnel(String),
}

/// The admission limits every connection passes, TCP or tunnelled: the total, the anonymous, and the anonymous
/// per source.
#[derive(Debug)]
pub struct Admission {
    total: Arc<Semaphore>,
    unauth: Arc<Semaphore>,
    sources: Arc<SourceSlots>,
}

/// What a connection holds from admission until it ends.
#[derive(Debug)]
pub struct Admitted {
    total: tokio::sync::OwnedSemaphorePermit,
    anonymous: Anonymous,
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            unauth: Arc::new(Semaphore::new(limits.max_unauthenticated)),
            sources: Arc::new(SourceSlots::new(limits.max_unauthenticated_per_source)),
        }
    }

    /// A place for a new connection from `source`, or `None` (logged and counted) when a limit is reached.
    pub fn admit(&self, shared: &Shared, source: Source, peer: &str) -> Option<Admitted> {
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            return None;
        };
        let Some(source_slot) = self.sources.take(source) else {
            if let Some(n) = Counters::bump(&shared.counters.auth_rejected) {
                tracing::info!(%peer, count = n, "too many unauthenticated connections from this source; closing");
            }
            return None;
        };
        let Ok(unauth) = self.unauth.clone().try_acquire_owned() else {
            Counters::bump(&shared.counters.auth_rejected);
            tracing::debug!(%peer, "too many unauthenticated connections; closing");
            return None;
        };
        Some(Admitted { total, anonymous: Anonymous { _overall: unauth, _source: source_slot } })
    }
}

/// Accepts connections on `listener` until `shared.cancel` fires, then waits for every connection to finish.
pub async fn run(listener: TcpListener, ssh: Arc<SshConfig>, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admitted) = shared.admission.admit(&shared, Source::Ip(peer.ip()), &peer.to_string()) else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        spawn_connection(&shared, ssh.clone(), socket, peer.to_string(), admitted);
    }
    shared.tracker.close();
    shared.tracker.wait().await;
    tracing::info!("endpoint closed: {}", shared.counters.summary());
}

/// Runs the SSH server and the vigil protocol on one admitted connection, whatever carries it (a TCP socket, or a
/// channel forwarded through a host's tunnel), on the endpoint's tracker; `peer` names it in the logs.
pub fn spawn_connection<S>(shared: &Arc<Shared>, ssh: Arc<SshConfig>, stream: S, peer: String, admitted: Admitted)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let authenticated = Arc::new(AtomicBool::new(false));
    let Admitted { total: total_permit, anonymous } = admitted;
    // One span per connection: the peer now, the agent and host once it authenticates (see the handler).
    let span = tracing::info_span!("conn", %peer, agent = tracing::field::Empty, host = tracing::field::Empty);
    let handler = handler::Handler::new(shared.clone(), authenticated.clone(), anonymous, span.clone());
    let shared2 = shared.clone();
    let conn = async move {
        let _total = total_permit;
        let deadline = shared2.limits.auth_deadline;
        let session = match tokio::time::timeout(deadline, run_stream(ssh, stream, handler)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                Counters::bump(&shared2.counters.timeouts);
                return;
            }
        };
        let handle = session.handle();
        tokio::pin!(session);
        let auth_timer = async {
            tokio::time::sleep(deadline).await;
            if authenticated.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = &mut session => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "session ended");
                }
            }
            _ = auth_timer => {
                if let Some(n) = Counters::bump(&shared2.counters.timeouts) {
                    tracing::info!(count = n, "peer did not authenticate in time; closing");
                }
                let _ = handle.disconnect(russh::Disconnect::ByApplication, "authentication timeout".into(), String::new()).await;
            }
            _ = shared2.cancel.cancelled() => {
                // Give the protocol task time to ack what is in flight; the agent closes when it is done.
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut session).await;
                let _ = handle.disconnect(russh::Disconnect::ByApplication, "server shutting down".into(), String::new()).await;
            }
        }
    };
    shared.tracker.spawn(tracing::Instrument::instrument(conn, span));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_slots_cap_one_address_and_come_back() {
        let slots = Arc::new(SourceSlots::new(2));
        let a = Source::Ip([127, 0, 0, 2].into());
        let b = Source::Ip([127, 0, 0, 1].into());
        let first = slots.take(a.clone()).unwrap();
        let _second = slots.take(a.clone()).unwrap();
        assert!(slots.take(a.clone()).is_none(), "a third from the same source is refused");
        assert!(slots.take(b).is_some(), "another source still gets in");
        let t = Source::Tunnel("web".into());
        let _t1 = slots.take(t.clone()).unwrap();
        let _t2 = slots.take(t.clone()).unwrap();
        assert!(slots.take(t).is_none(), "a tunnel's connections are capped per host");
        assert!(slots.take(Source::Tunnel("db".into())).is_some(), "another host's tunnel still gets in");
        drop(first);
        assert!(slots.take(a).is_some(), "a place comes back when its connection authenticates or ends");
    }
}
