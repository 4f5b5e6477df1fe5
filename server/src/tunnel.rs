//! The SSH reverse channel, server side: for each host reporting through a tunnel (`channel="tunnel"`, the default
//! for SSH hosts) that bootstrap registered with a forwarded port, `vigil serve` holds one SSH session to the host's
//! own sshd (bootstrap's login and pinned or known host key; a key never seen is refused) with a remote forward on
//! the host's loopback. The agent dials that port; each forwarded connection is admitted and served by the
//! endpoint exactly like a TCP connection ([`endpoint::spawn_connection`]), its anonymous cap keyed by the host.
//!
//! [`run`] owns one task per tunnel: the set follows the live config and the `tunnels` and `agents` tables (polled
//! every [`WATCH_EVERY`], so a fresh bootstrap is picked up while it waits for its first report). Sessions are set
//! up at most [`MAX_SETUPS`] at once and re-established with jittered backoff; a refused forward waits at least
//! [`REFUSED_WAIT`]. Each change of state is recorded through the ingest writer for `vigil status`.
//!
//! The agent keeps one connection open through its tunnel. When none has been open for [`AGENT_CHECK_AFTER`], the
//! held session probes the host (the bootstrap probe: one exec) and, when no agent runs there (killed, or its
//! directory gone with a reboot), asks the repair supervisor to repair the host now rather than at its silence
//! limit ([`RepairHandle`]); while none connects it looks again every [`AGENT_CHECK_EVERY`].

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::server::Config as SshConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bootstrap::commands::linux;
use crate::bootstrap::remote::{Forwarded, RemoteError, Session};
use crate::bootstrap::{KnownHosts, dir_name};
use crate::config::{Host, Os, Reporting};
use crate::endpoint::{self, Shared, Source};
use crate::lease::Ownership;
use crate::repair::RepairHandle;
use crate::store::TunnelState;

/// How often the wanted set of tunnels is read again.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Most session set-ups (connect, log in, forward) at once: a restart with thousands of hosts does not storm them.
pub const MAX_SETUPS: usize = 16;
/// First wait after a failed set-up or a lost session; doubles up to [`MAX_WAIT`].
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
pub const MAX_WAIT: Duration = Duration::from_secs(120);
/// Least wait after the host's sshd refused the forward: an operator has to change something first.
pub const REFUSED_WAIT: Duration = Duration::from_secs(60);
/// For this long after a node takes a host from another node (not at its own start), a refused forward is retried once
/// after [`HANDOVER_RETRY`] rather than [`REFUSED_WAIT`]: the previous owner's session may still hold the port on
/// the host until its sshd sees it gone.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(30);
pub const HANDOVER_RETRY: Duration = Duration::from_secs(3);
/// With no connection through the tunnel for this long, serve looks on the host whether its agent runs. Longer than
/// an agent's reconnect right after a tunnel comes back (its backoff starts at a second), shorter than a silence
/// limit.
pub const AGENT_CHECK_AFTER: Duration = Duration::from_secs(20);
/// While no agent connects, the look is repeated this often (one exec on the host each time).
pub const AGENT_CHECK_EVERY: Duration = Duration::from_secs(60);
/// Longest wait for the probe's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a tunnel task needs besides its host: shared by all of them.
struct Tasks {
    known: KnownHosts,
    shared: Arc<Shared>,
    ssh: Arc<SshConfig>,
    setups: Semaphore,
    repair: RepairHandle,
    /// This node's name: tunnel states are written as the host's owner.
    node: Arc<str>,
}

/// One wanted tunnel.
#[derive(Debug, Clone)]
struct Wanted {
    host: Host,
    port: u16,
    /// This node's lease on the host: a new epoch (the host was lost and taken back) is a new tunnel.
    epoch: i64,
}

/// Two wants are the same tunnel when everything the session depends on is: where and how to log in, the pinned
/// key and the port. An edit of anything else (alerts, tags, mail) leaves the running tunnel alone.
impl PartialEq for Wanted {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.host, &other.host);
        (self.port, self.epoch) == (other.port, other.epoch)
            && (&a.ip, a.port, &a.username, &a.auth, &a.host_key) == (&b.ip, b.port, &b.username, &b.auth, &b.host_key)
    }
}

/// Keeps one task per wanted tunnel until `cancel` fires; then cancels and awaits them all.
pub async fn run(
    shared: Arc<Shared>,
    ssh: Arc<SshConfig>,
    repair: RepairHandle,
    ownership: Ownership,
    cancel: CancellationToken,
) {
    let known = KnownHosts::for_server(&shared.config.borrow().server);
    let node: Arc<str> = ownership.node().into();
    let setups = Semaphore::new(MAX_SETUPS);
    let tasks = Arc::new(Tasks { known, shared: shared.clone(), ssh, setups, repair, node: node.clone() });
    let tracker = TaskTracker::new();
    let mut running: HashMap<String, (Wanted, CancellationToken)> = HashMap::new();
    let mut config_rx = shared.config.clone();
    let (mut owned_rx, mut owner_alive) = (ownership.clone(), true);
    // Hosts this node takes at its start were nobody's a moment ago; those it gains later come from another node.
    let run_started = Instant::now();
    loop {
        if let Some(wanted) = wanted(&shared, &ownership).await {
            running.retain(|name, (w, token)| {
                let keep = wanted.get(name) == Some(w);
                if !keep {
                    let why = if ownership.owns(name) {
                        "the host's config or registration changed"
                    } else {
                        "another node owns the host now"
                    };
                    tracing::info!(host = %name, "tunnel closed: {why}");
                    token.cancel();
                }
                keep
            });
            for (name, w) in wanted {
                if running.contains_key(&name) {
                    continue;
                }
                let token = cancel.child_token();
                let span = tracing::info_span!("tunnel", host = %name, port = w.port);
                let handover = run_started.elapsed() > crate::lease::RENEW_EVERY;
                let task = hold(w.clone(), tasks.clone(), token.clone(), handover);
                tracker.spawn(task.instrument(span));
                running.insert(name, (w, token));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = config_rx.changed() => if r.is_err() { break },
            // Hosts taken or lost: act at once (a host taken over from a dead node is waiting for its tunnel).
            alive = owned_rx.changed(), if owner_alive => owner_alive = alive,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
    for (_, token) in running.values() {
        token.cancel();
    }
    tracker.close();
    tracker.wait().await;
    // `vigil status` must not show tunnels up that nobody holds (after a SIGKILL they stay as last recorded).
    for (name, (w, _)) in &running {
        let owner = Some((&*node, w.epoch));
        record(&shared, owner, name, TunnelState::Down, Some("vigil serve stopped".into())).await;
    }
}

/// The tunnels the config and the database ask for: hosts reporting through a tunnel, with a recorded port and a
/// registered agent. `None` when the database could not be read (the running set stays).
async fn wanted(shared: &Shared, ownership: &Ownership) -> Option<HashMap<String, Wanted>> {
    let config = shared.config.borrow().clone();
    let read = shared.ingest.exec(|store| Ok::<_, crate::store::StoreError>((store.tunnels()?, store.agents()?))).await;
    let (tunnels, agents) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the tunnels");
            return None;
        }
        Err(_) => return None,
    };
    let registered: HashSet<&str> = agents.iter().map(|a| a.host.as_str()).collect();
    let ports: HashMap<&str, u16> = tunnels.iter().filter_map(|t| Some((t.host.as_str(), t.port?))).collect();
    Some(
        config
            .clients
            .iter()
            .filter(|h| config.reporting(h) == Reporting::Tunnel && registered.contains(h.name.as_str()))
            .filter_map(|h| {
                let (port, epoch) = (*ports.get(h.name.as_str())?, ownership.epoch(&h.name)?);
                Some((h.name.clone(), Wanted { host: h.clone(), port, epoch }))
            })
            .collect(),
    )
}

/// Records a tunnel's state for `vigil status`.
async fn record(shared: &Shared, owner: Option<(&str, i64)>, host: &str, state: TunnelState, error: Option<String>) {
    let (host, owner) = (host.to_owned(), owner.map(|(n, e)| (n.to_owned(), e)));
    let now = vigil_sys::clock::now_ms();
    let write = move |s: &mut crate::store::Store| {
        s.set_tunnel_state_as(owner.as_ref().map(|(n, e)| (n.as_str(), *e)), &host, state, error.as_deref(), now)
    };
    match shared.ingest.exec(write).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record the tunnel's state"),
    }
}

/// Holds one host's tunnel until `cancel`: sets the session up, serves what it forwards, and sets it up again
/// after a failure or a loss, with backoff.
async fn hold(w: Wanted, tasks: Arc<Tasks>, cancel: CancellationToken, handover: bool) {
    let shared = &tasks.shared;
    let mut backoff = vigil_sys::backoff::Backoff::new(FIRST_WAIT, MAX_WAIT);
    let (started, mut handover_retry) = (Instant::now(), handover);
    loop {
        let set_up = {
            let _permit = tokio::select! {
                _ = cancel.cancelled() => return,
                p = tasks.setups.acquire() => p,
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                // Boxed, as is the probe below: a held tunnel's task then keeps only what an idle session needs.
                r = Box::pin(set_up(&w, &tasks.known)) => r,
            }
        };
        let wait = match set_up {
            Ok((session, forwarded)) => {
                tracing::info!("tunnel up");
                record(shared, Some((&tasks.node, w.epoch)), &w.host.name, TunnelState::Up, None).await;
                backoff.reset();
                let lost = serve(&w, session, forwarded, &tasks, &cancel).await;
                if cancel.is_cancelled() {
                    return;
                }
                tracing::warn!(reason = %lost, "tunnel lost");
                record(shared, Some((&tasks.node, w.epoch)), &w.host.name, TunnelState::Down, Some(lost)).await;
                backoff.next_wait()
            }
            Err(e @ RemoteError::ForwardRefused { .. }) => {
                tracing::warn!(error = %e, "tunnel refused");
                record(shared, Some((&tasks.node, w.epoch)), &w.host.name, TunnelState::Refused, Some(e.to_string()))
                    .await;
                if handover_retry && started.elapsed() < HANDOVER_GRACE {
                    // Just taken over from another node, whose session may hold the port a moment longer: one
                    // early retry (a host that really refuses forwarding is then left alone for a minute).
                    handover_retry = false;
                    vigil_sys::backoff::jittered(HANDOVER_RETRY)
                } else {
                    backoff.next_wait().max(vigil_sys::backoff::jittered(REFUSED_WAIT))
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "tunnel down");
                record(shared, Some((&tasks.node, w.epoch)), &w.host.name, TunnelState::Down, Some(e.to_string()))
                    .await;
                backoff.next_wait()
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

type Forwards = tokio::sync::mpsc::UnboundedReceiver<Forwarded>;

/// Logs in to the host and asks its sshd for the forward.
async fn set_up(w: &Wanted, known: &KnownHosts) -> Result<(Session, Forwards), RemoteError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let session = Session::open_forwarding(&w.host, known, tx).await?;
    match session.forward(w.port).await {
        Ok(_) => Ok((session, rx)),
        Err(e) => {
            session.close().await;
            Err(e)
        }
    }
}

/// Serves forwarded connections until the session ends (returns why) or `cancel` fires (closes it); looks for the
/// agent on the host while none is connected.
async fn serve(
    w: &Wanted,
    mut session: Session,
    mut forwarded: Forwards,
    tasks: &Tasks,
    cancel: &CancellationToken,
) -> String {
    enum Next {
        Cancelled,
        Closed,
        Channel(Option<Forwarded>),
        Check,
    }
    let live = Arc::new(AtomicUsize::new(0));
    let check_agent = w.host.repair && w.host.os != Some(Os::Windows);
    let mut next_check = Instant::now() + AGENT_CHECK_AFTER;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => Next::Cancelled,
            _ = session.closed() => Next::Closed,
            f = forwarded.recv() => Next::Channel(f),
            _ = tokio::time::sleep_until(next_check), if check_agent => Next::Check,
        };
        match next {
            Next::Cancelled => {
                session.close().await;
                return "closed".into();
            }
            Next::Closed | Next::Channel(None) => return "the SSH session to the host ended".into(),
            Next::Channel(Some(forward)) => {
                let (channel, origin) = *forward;
                let peer = format!("tunnel {} ({origin})", w.host.name);
                let source = Source::Tunnel(w.host.name.clone());
                let shared = &tasks.shared;
                if let Some(admitted) = shared.admission.admit(shared, source, &peer) {
                    let stream = Counted::new(channel.into_stream(), live.clone());
                    endpoint::spawn_connection(shared, tasks.ssh.clone(), stream, peer, admitted);
                }
            }
            Next::Check if live.load(Ordering::Acquire) > 0 => next_check = Instant::now() + AGENT_CHECK_AFTER,
            Next::Check => {
                next_check = Instant::now() + AGENT_CHECK_EVERY;
                match tokio::time::timeout(PROBE_TIMEOUT, Box::pin(agent_running(&session, &w.host))).await {
                    Ok(Ok(true)) => tracing::debug!("no connection through the tunnel, but the agent runs"),
                    Ok(Ok(false)) => {
                        let asked = tasks.repair.request(&w.host.name);
                        tracing::warn!(repair_requested = asked, "no agent runs on the host");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not look for the agent on the host"),
                    Err(_) => tracing::warn!("could not look for the agent on the host: the probe timed out"),
                }
            }
        }
    }
}

/// Whether the host's agent runs, by the bootstrap probe (false when its directory is gone).
async fn agent_running(session: &Session, host: &Host) -> Result<bool, RemoteError> {
    let probe = session.run(&linux::probe(&dir_name(&host.name)), None).await?;
    Ok(probe.stdout_text().lines().any(|l| l.trim() == "running=1"))
}

/// A forwarded stream counted among its tunnel's live connections while it exists.
struct Counted<S> {
    inner: S,
    live: Arc<AtomicUsize>,
}

impl<S> Counted<S> {
    fn new(inner: S, live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::AcqRel);
        Self { inner, live }
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AlertKind, AlertRule, Auth, Transport};

    fn host() -> Host {
        Host {
            name: "web".into(),
            ip: "10.0.0.1".into(),
            port: 22,
            username: Some("vigil".into()),
            auth: Auth::PasswordEnv("PW".into()),
            mail: None,
            host_key: None,
            os: None,
            transport: Transport::Ssh,
            channel: None,
            repair: true,
            commands: false,
            tags: Vec::new(),
            endpoint: None,
            alerts: Vec::new(),
            display_name: None,
        }
    }

    #[test]
    fn only_an_edit_the_session_depends_on_restarts_a_tunnel() {
        let w = Wanted { host: host(), port: 40001, epoch: 1 };
        let mut alerts = w.clone();
        alerts.host.tags = vec!["db".into()];
        alerts.host.mail = Some("ops@example.com".into());
        alerts.host.alerts = vec![AlertRule {
            kind: AlertKind::Cpu,
            limit: 90.0,
            mount: None,
            clear_margin: 5.0,
            repeat_minutes: None,
            job: None,
            metric: None,
        }];
        assert_eq!(w, alerts, "tags, mail and alert limits leave the tunnel alone");
        for edit in [
            |h: &mut Wanted| h.port = 40002,
            |h: &mut Wanted| h.host.ip = "10.0.0.2".into(),
            |h: &mut Wanted| h.host.port = 2222,
            |h: &mut Wanted| h.host.username = Some("root".into()),
            |h: &mut Wanted| h.host.auth = Auth::PasswordEnv("OTHER".into()),
            |h: &mut Wanted| h.host.host_key = Some("SHA256:x".into()),
        ] {
            let mut other = w.clone();
            edit(&mut other);
            assert_ne!(w, other, "{other:?}");
        }
    }

    /// serve holds one russh client session per tunnel, and each session allocates three queues of 32 `Msg` slots
    /// up front. third_party/russh boxes the one large variant (third_party/README.md): a russh upgrade that loses
    /// that change fails here, not silently in the tunnel benchmark.
    #[test]
    fn a_russh_session_queue_slot_stays_small() {
        let slot = std::mem::size_of::<russh::client::Msg>();
        assert!(slot <= 160, "russh::client::Msg is {slot} B: re-apply third_party/russh.diff");
    }
}
