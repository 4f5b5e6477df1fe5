//! `vigil serve`: wires config, store, ingest, the SSH endpoint, live reload, retention, local agents and the web
//! dashboard of `[web]` into one daemon, and owns every task it spawns: one function per long-lived task below, each
//! run on one `TaskTracker` under one `CancellationToken`; `run` returns only after all have finished and the ingest
//! writer has committed what was queued.
//!
//! Every write of the daemon goes through the ingest writer (`IngestHandle::exec`): reports, check-ins, the config
//! state, retention, the dashboard's roll-ups, alert state, mail state, the local agents' registrations and
//! automatic repairs (`crate::repair`: registrations, repair events).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert;
use crate::config::{Config, ConfigError, Overrides, Transport};
use crate::endpoint::{self, Limits, Shared};
use crate::ingest::{self, IngestError, IngestHandle, IngestOptions};
use crate::reload::{self, Reloaded};
use crate::store::{Engine, Store, StoreError};
use vigil_sys::clock::now_ms;

/// How often retention runs (and once at start).
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How often the local agents are checked (and restarted when not running).
pub const LOCAL_AGENTS_EVERY: Duration = Duration::from_secs(15);

/// What `vigil serve` runs on.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub clients: PathBuf,
    pub jobs: PathBuf,
    pub limits: Limits,
    /// Start agents of `transport="local"` hosts that are not running.
    pub start_local_agents: bool,
    /// This node's name (`--node`); the machine's host name when `None`.
    pub node: Option<String>,
    /// jobs.toml keys set on the command line for this process, laid over the files at start and on every reload.
    pub overrides: Overrides,
}

/// Why the server could not start (once running, it does not stop on bad input).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A resource of the daemon itself (a thread, the listener's address) could not be had.
    #[error("cannot start: {what}")]
    Runtime {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start: the ingest writer stopped")]
    Ingest(#[source] IngestError),
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    #[error(transparent)]
    Override(#[from] crate::config::overrides::OverrideError),
}

/// Ingest writers (each with its own connection) on PostgreSQL.
const PG_WRITERS: usize = 2;

/// Runs the server until `shutdown` fires.
pub async fn run(opts: ServeOptions, shutdown: CancellationToken) -> Result<(), ServeError> {
    let loaded = reload::load_and_keep(&opts.clients, &opts.jobs, &opts.overrides)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    opts.overrides.check(&config)?;
    let settings = config.server.clone();
    crate::keys::ensure_private_dir(&settings.data_dir)?;
    let host_key = crate::keys::server_host_key(&settings)?;
    let fingerprint = crate::keys::fingerprint(host_key.public_key());

    let mut store = Store::open_server(&settings)?;
    store.set_config_error(None)?;
    store.set_restart_needed(None)?;
    let (ingest, writer) = spawn_ingest(store, &settings)?;

    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: settings.listen, source })?;
    // `[web]` is bound at start, like `[server] listen`, before serve says it listens: a missing token stops it here.
    let web = match &config.web {
        Some(w) => Some(web_listener(w).await?),
        None => None,
    };
    let local_addr =
        listener.local_addr().map_err(|source| ServeError::Runtime { what: "the listener's address", source })?;
    // Watching starts before the announcement: an edit made once serve says it listens is seen.
    let watcher = reload::FileWatcher::start(opts.clients.clone(), opts.jobs.clone(), opts.overrides.clone())
        .inspect_err(|e| tracing::error!(error = %e, "cannot watch the config files, live reload is off"))
        .ok();
    // Printed on stdout for operators and scripts: where agents connect and which key they pin. A closed stdout is
    // no reason not to serve.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "vigil serve: listening on {local_addr}, host key {fingerprint}")
        .and_then(|()| stdout.flush());
    tracing::info!(%local_addr, %fingerprint, hosts = config.clients.len(), jobs = config.jobs.len(), "serving");

    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    // Alert rules follow the config in force; set before the endpoint takes reports.
    ingest.set_alert_config(config_rx.clone()).await.map_err(ServeError::Ingest)?;
    let shared = Shared::new(config_rx.clone(), ingest.clone(), opts.limits.clone());
    shared.refresh_registry().await;

    // This node's row, before the tunnel manager records anything: tunnels a killed predecessor left `up` go down.
    let (node, owned_tx, ownership) = register_node(&ingest, opts.node.clone()).await?;

    let tracker = TaskTracker::new();
    let cancel = shutdown.child_token();
    tracker.spawn(crate::lease::run(ingest.clone(), config_rx.clone(), node.clone(), owned_tx, cancel.clone()));
    let ssh = Arc::new(endpoint::ssh_config(host_key, &opts.limits));
    tracker.spawn(endpoint_task(listener, ssh.clone(), shared.clone(), cancel.clone()));
    // The reverse channel: forwarded connections join the endpoint's tracker, so the endpoint is cancelled after it.
    // Self-healing of silent SSH hosts: the supervisor below; the tunnel manager asks it for a repair now when its
    // session finds no agent running on the host.
    let (repair_handle, repair_requests) = crate::repair::channel();
    tracker.spawn(crate::tunnel::run(shared.clone(), ssh, repair_handle, ownership.clone(), cancel.clone()));
    // Without a watcher the config in force stays for good: its sender is kept, or every follower would stop.
    let _fixed_config = match watcher {
        Some(watcher) => {
            tracker.spawn(reload_task(watcher, config_tx, ingest.clone(), cancel.clone()));
            None
        }
        None => Some(config_tx),
    };
    tracker.spawn(registry_task(shared.clone(), config_rx.clone(), cancel.clone()));
    tracker.spawn(silence_task(ingest.clone(), config_rx.clone(), ownership.clone(), cancel.clone()));
    tracker.spawn(crate::mail::run(ingest.clone(), config_rx.clone(), node, cancel.clone()));
    tracker.spawn(retention_task(ingest.clone(), config_rx.clone(), cancel.clone()));
    tracker.spawn(crate::repair::run(
        ingest.clone(),
        config_rx.clone(),
        fingerprint.clone(),
        repair_requests,
        ownership.clone(),
        cancel.clone(),
    ));
    tracker.spawn(rollup_task(ingest.clone(), cancel.clone()));
    if let Some((listener, token)) = web {
        let health = crate::web::Health { endpoint: shared.clone(), ingest: ingest.clone() };
        let state = crate::web::WebState::open(&settings, config_rx.clone(), token, Some(health))?;
        tracker.spawn(crate::web::run(listener, Arc::new(state), cancel.clone()));
    }
    if opts.start_local_agents {
        tracker.spawn(local_agents_task(shared.clone(), fingerprint, ownership, cancel.clone()));
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down: closing the endpoint, committing what is in flight");
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    ingest.shutdown().await;
    drop(ingest);
    drop(shared);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// The ingest writer on `store`; on PostgreSQL, which runs transactions side by side, more writers on connections of
/// their own keep it busy while serve gathers the next batch (BENCHMARKS.md, "PostgreSQL ingest, fourth pass").
fn spawn_ingest(
    store: Store,
    settings: &crate::config::ServerSettings,
) -> Result<(IngestHandle, std::thread::JoinHandle<Store>), ServeError> {
    let helpers = match store.engine() {
        Engine::Sqlite => Vec::new(),
        Engine::Postgres => (1..PG_WRITERS).map(|_| Store::open_server(settings)).collect::<Result<_, _>>()?,
    };
    ingest::spawn_writers(store, helpers, IngestOptions::default())
        .map_err(|source| ServeError::Runtime { what: "the ingest writer thread", source })
}

/// The dashboard's listener and token (read from `token_env` now: a token named but not set stops the start).
async fn web_listener(w: &crate::config::WebSettings) -> Result<(TcpListener, Option<crate::web::Token>), ServeError> {
    let token = w.token_env.as_deref().map(crate::web::Token::from_env).transpose()?;
    let listener =
        TcpListener::bind(w.listen).await.map_err(|source| crate::web::WebError::Listen { addr: w.listen, source })?;
    let addr =
        listener.local_addr().map_err(|source| ServeError::Runtime { what: "the web listener's address", source })?;
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "vigil serve: web dashboard on http://{addr}/").and_then(|()| stdout.flush());
    tracing::info!(%addr, token = w.token_env.is_some(), "web dashboard");
    Ok((listener, token))
}

/// Cancels `shutdown` on SIGTERM or SIGINT. Never returns when the handlers cannot be installed.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install the signal handlers; stop vigil serve with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

/// The endpoint's accept loop. It stops on its own token (`shared.cancel`), cancelled with ours; then it waits for
/// every connection to finish.
async fn endpoint_task(
    listener: TcpListener,
    ssh: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let endpoint_cancel = shared.cancel.clone();
    let accept = endpoint::run(listener, ssh, shared);
    tokio::pin!(accept);
    tokio::select! {
        _ = &mut accept => return,
        _ = cancel.cancelled() => {}
    }
    endpoint_cancel.cancel();
    accept.await;
}

/// Live reload: a valid edit is published (sessions and the allow-list follow it), an invalid one recorded in the
/// database for `vigil status`, and so is an edit of `[server]`, which needs a restart.
async fn reload_task(
    watcher: reload::FileWatcher,
    config_tx: watch::Sender<Arc<Config>>,
    ingest: IngestHandle,
    cancel: CancellationToken,
) {
    // (the config error, and the `[server]` keys waiting for a restart when the files were valid: an invalid edit
    // says nothing about them)
    type State = (Option<(String, Vec<String>)>, Option<Option<String>>);
    let (state_tx, mut state_rx) = tokio::sync::mpsc::unbounded_channel::<State>();
    let recorder = async move {
        while let Some((error, restart)) = state_rx.recv().await {
            let r = ingest
                .exec(move |s| {
                    s.set_config_error(error.as_ref().map(|e| e.0.as_str()))?;
                    s.set_config_error_hosts(error.as_ref().map_or(&[][..], |e| &e.1))?;
                    match restart {
                        Some(keys) => s.set_restart_needed(keys.as_deref()),
                        None => Ok(()),
                    }
                })
                .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not record the config state in the database"),
                Err(e) => tracing::warn!(error = %e, "could not record the config state in the database"),
            }
        }
    };
    let watcher = watcher.run(config_tx, cancel, move |r| {
        let _ = state_tx.send(match r {
            Reloaded::Rejected { error, hosts } => (Some((error.clone(), hosts.clone())), None),
            Reloaded::Applied { restart_needed } | Reloaded::Unchanged { restart_needed } => {
                (None, Some((!restart_needed.is_empty()).then(|| restart_needed.join(", "))))
            }
        });
    });
    tokio::join!(watcher, recorder);
}

/// How often the allow-list is rebuilt from the agents table even when nothing here changed it: other processes
/// (`vigil enroll`, `bootstrap`, `uninstall`) change registrations, and a session whose key is no longer registered
/// is closed within this period.
pub const REGISTRY_REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The allow-list follows every applied config, and the agents table every [`REGISTRY_REFRESH_EVERY`].
async fn registry_task(shared: Arc<Shared>, mut config_rx: watch::Receiver<Arc<Config>>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = config_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(REGISTRY_REFRESH_EVERY) => {}
        }
        shared.refresh_registry().await;
    }
}

/// Retention, the one place data is pruned: reports (with their statistics rows), alert history and finished mail
/// older than `retention_days`, hourly and once at start.
async fn retention_task(ingest: IngestHandle, config_rx: watch::Receiver<Arc<Config>>, cancel: CancellationToken) {
    loop {
        let days = i64::from(config_rx.borrow().server.retention_days);
        let cutoff = vigil_sys::clock::now_ms() - days * 86_400_000;
        match ingest.exec(move |s| s.prune(cutoff)).await {
            Ok(Ok(p)) if p.reports > 0 || p.alert_rows > 0 => {
                tracing::info!(reports = p.reports, alert_rows = p.alert_rows, days, "pruned data past retention");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning failed"),
            Err(_) => return,
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

/// How often new reports are rolled up into the dashboard's 5-minute buckets.
pub const ROLLUP_EVERY: Duration = Duration::from_secs(60);

/// Records this process as node `name` (`--node`; else this machine's host name) in the `nodes` table; returns the
/// node's name and the channel its lease task publishes ownership on.
async fn register_node(
    ingest: &IngestHandle,
    name: Option<String>,
) -> Result<(Arc<str>, crate::lease::OwnedSender, crate::lease::Ownership), ServeError> {
    let node = name.unwrap_or_else(crate::store::nodes::this_node);
    let (name, pid) = (node.clone(), std::process::id());
    ingest.exec(move |s| s.node_started(&name, pid, now_ms())).await.map_err(ServeError::Ingest)??;
    let (tx, ownership) = crate::lease::channel(&node);
    Ok((node.into(), tx, ownership))
}

/// The dashboard's roll-ups (`store::web`), on the writer: at start (catching up in chunks) and every
/// [`ROLLUP_EVERY`]. Charts of coarse buckets read them, plus the raw rows of reports not rolled up yet.
async fn rollup_task(ingest: IngestHandle, cancel: CancellationToken) {
    loop {
        loop {
            match ingest.exec(|s| s.roll_up()).await {
                Ok(Ok(n)) if n > 0 && !cancel.is_cancelled() => continue,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rolling up reports for the dashboard failed");
                    break;
                }
                Err(_) => return,
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ROLLUP_EVERY) => {}
        }
    }
}

/// Local agents: starts (installing when needed) those of `transport="local"` hosts that are not running, at start
/// and every [`LOCAL_AGENTS_EVERY`]. Their registration is written on the ingest writer, like every other write of
/// the daemon; a new one refreshes the allow-list at once.
async fn local_agents_task(
    shared: Arc<Shared>,
    fingerprint: String,
    ownership: crate::lease::Ownership,
    cancel: CancellationToken,
) {
    loop {
        let config = shared.config.borrow().clone();
        if config.clients.iter().any(|h| h.transport == Transport::Local && ownership.owns(&h.name)) {
            let (fp, owned) = (fingerprint.clone(), ownership.held());
            match shared.ingest.exec(move |store| supervise_local(&config, store, &fp, &owned)).await {
                Ok(true) => shared.refresh_registry().await,
                Ok(false) => {}
                Err(_) => return,
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LOCAL_AGENTS_EVERY) => {}
        }
    }
}

/// Bootstraps every local host whose agent is not running. Returns whether credentials changed. Runs on the writer
/// thread: a check is a few file reads; an install (first start, or after the agent died) holds ingest for as long
/// as it takes to start the agent.
fn supervise_local(
    config: &Config,
    store: &mut Store,
    fingerprint: &str,
    owned: &std::collections::HashMap<String, i64>,
) -> bool {
    let binary = match crate::bootstrap::agent_binary() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start local agents");
            return false;
        }
    };
    let mut minted = false;
    for host in config.clients.iter().filter(|h| h.transport == Transport::Local && owned.contains_key(&h.name)) {
        match crate::bootstrap::bootstrap_local(config, host, store, fingerprint, &binary) {
            Ok(done) if done != crate::bootstrap::Done::default() => {
                tracing::info!(host = %host.name, "local agent: {done}");
                minted |= done.minted;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(host = %host.name, error = %e, "local agent"),
        }
    }
    minted
}

/// Silence and security digests: runs [`alert::check_silence`] and [`alert::flush_security_digests`] every
/// [`alert::SILENCE_CHECK_EVERY`] on the writer thread with the config in force, until `cancel` fires or the writer
/// stops. (Old alert history is pruned by the retention task.)
async fn silence_task(
    ingest: IngestHandle,
    config: watch::Receiver<Arc<Config>>,
    ownership: crate::lease::Ownership,
    cancel: CancellationToken,
) {
    let started = now_ms();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(alert::SILENCE_CHECK_EVERY) => {}
        }
        let cfg = config.borrow().clone();
        let (node, held) = (ownership.node().to_owned(), ownership.held());
        let checks = move |s: &mut Store| {
            s.write_tx(|c| {
                let now = now_ms();
                let owner = alert::Owner { node: &node, held: &held };
                alert::check_silence(c, &cfg, started, now, Some(&owner))?;
                alert::flush_security_digests(c, &cfg, now, Some(&owner))
            })
        };
        match ingest.exec(checks).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "silence check or security digest failed"),
            Err(_) => return,
        }
    }
}
