//! `vigil serve`: wires config, store, ingest, the SSH endpoint, live reload, retention and local agents into one
//! daemon, and owns every task it spawns: each runs on one `TaskTracker` under one `CancellationToken`, and `run`
//! returns only after all have finished and the ingest writer has committed what was queued.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Transport};
use crate::endpoint::{self, Limits, Shared};
use crate::ingest::{self, IngestOptions};
use crate::reload::{self, Reloaded};
use crate::store::now_ms;
use crate::store::{Store, StoreError};

/// What `vigil serve` runs on.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub clients: PathBuf,
    pub jobs: PathBuf,
    pub limits: Limits,
    /// Start agents of `transport="local"` hosts that are not running.
    pub start_local_agents: bool,
}

/// Why the server could not start (once running, it does not stop on bad input).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Keys(#[from] crate::keys::KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start: {0}")]
    Start(String),
}

/// Runs the server until `shutdown` fires.
pub async fn run(opts: ServeOptions, shutdown: CancellationToken) -> Result<(), ServeError> {
    let loaded = crate::reload::load_and_keep(&opts.clients, &opts.jobs)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    let settings = config.server.clone();
    crate::keys::ensure_private_dir(&settings.data_dir)?;
    let host_key = crate::keys::load_or_create_host_key(&settings.data_dir)?;
    let fingerprint = crate::keys::fingerprint(host_key.public_key());

    let mut store = Store::open(&settings.database)?;
    store.set_config_error(None)?;
    let (ingest, writer) =
        ingest::spawn(store, IngestOptions::default()).map_err(|e| ServeError::Start(e.to_string()))?;

    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: settings.listen, source })?;
    let local_addr = listener.local_addr().map_err(|e| ServeError::Start(e.to_string()))?;
    // Printed on stdout for operators and scripts: where agents connect and which key they pin.
    println!("vigil serve: listening on {local_addr}, host key {fingerprint}");
    tracing::info!(%local_addr, %fingerprint, hosts = config.clients.len(), jobs = config.jobs.len(), "serving");

    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    // Alert rules follow the config in force; set before the endpoint takes reports.
    ingest.set_alert_config(config_rx.clone()).await.map_err(|e| ServeError::Start(e.to_string()))?;
    let shared = Shared::new(config_rx.clone(), ingest.clone(), opts.limits.clone());
    shared.refresh_registry().await;

    let tracker = TaskTracker::new();
    let cancel = shutdown.child_token();

    // The endpoint stops on its own token, a child of ours.
    let ssh = Arc::new(endpoint::ssh_config(host_key, &opts.limits));
    {
        let shared = shared.clone();
        let cancel = cancel.clone();
        let endpoint_cancel = shared.cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = endpoint::run(listener, ssh, shared) => {}
                _ = async { cancel.cancelled().await; endpoint_cancel.cancel(); std::future::pending::<()>().await } => {}
            }
        });
    }

    // Live reload: a valid edit is published (sessions and the allow-list follow it), an invalid one recorded.
    {
        let (clients, jobs) = (opts.clients.clone(), opts.jobs.clone());
        let ingest = ingest.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
            let recorder = {
                let ingest = ingest.clone();
                async move {
                    while let Some(err) = err_rx.recv().await {
                        let r = ingest.exec(move |s| s.set_config_error(err.as_deref())).await;
                        if !matches!(r, Ok(Ok(()))) {
                            tracing::warn!("could not record the config state in the database");
                        }
                    }
                }
            };
            let watcher = reload::watch_files(clients, jobs, config_tx, cancel, move |r| {
                let _ = err_tx.send(match r {
                    Reloaded::Rejected(e) => Some(e.clone()),
                    _ => None,
                });
            });
            let (res, ()) = tokio::join!(watcher, recorder);
            if let Err(e) = res {
                tracing::error!("cannot watch the config files, live reload is off: {e}");
            }
        });
    }

    // The allow-list follows every applied config.
    {
        let shared = shared.clone();
        let mut rx = config_rx.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                shared.refresh_registry().await;
            }
        });
    }

    // Alerts: the periodic silence check, and the mailer sending the outbox.
    tracker.spawn(crate::alert::watch_silence(ingest.clone(), config_rx.clone(), cancel.clone()));
    tracker.spawn(crate::mail::run(ingest.clone(), config_rx.clone(), cancel.clone()));

    // Retention: prune hourly (and once at start).
    {
        let ingest = ingest.clone();
        let cancel = cancel.clone();
        let rx = config_rx.clone();
        tracker.spawn(async move {
            loop {
                let days = i64::from(rx.borrow().server.retention_days);
                let cutoff = now_ms() - days * 86_400_000;
                match ingest.exec(move |s| s.prune(cutoff)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(reports = n, "pruned data older than {days} days"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("pruning failed: {e}"),
                    Err(_) => return,
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        });
    }

    // Local agents: start (installing when needed) those not running, at start and every 15 s.
    if opts.start_local_agents {
        let rx = config_rx.clone();
        let cancel = cancel.clone();
        let db = settings.database.clone();
        let fingerprint = fingerprint.clone();
        let shared = shared.clone();
        tracker.spawn(async move {
            loop {
                let config = rx.borrow().clone();
                let has_local = config.clients.iter().any(|h| h.transport == Transport::Local);
                if has_local {
                    let (db, fp) = (db.clone(), fingerprint.clone());
                    let result = tokio::task::spawn_blocking(move || supervise_local(&config, &db, &fp)).await;
                    if let Ok(true) = result {
                        shared.refresh_registry().await;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                }
            }
        });
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

/// Bootstraps every local host whose agent is not running. Returns whether credentials changed.
fn supervise_local(config: &Config, db: &std::path::Path, fingerprint: &str) -> bool {
    let binary = match crate::bootstrap::agent_binary() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("cannot start local agents: {e}");
            return false;
        }
    };
    let mut store = match Store::open(db) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot start local agents: {e}");
            return false;
        }
    };
    let mut minted = false;
    for host in config.clients.iter().filter(|h| h.transport == Transport::Local) {
        match crate::bootstrap::bootstrap_local(config, host, &mut store, fingerprint, &binary) {
            Ok(done) if done != crate::bootstrap::Done::default() => {
                tracing::info!(host = %host.name, "local agent: {done}");
                minted |= done.minted;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(host = %host.name, "local agent: {e}"),
        }
    }
    minted
}
