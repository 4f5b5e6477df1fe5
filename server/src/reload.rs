//! Live config: watches the directories of clients.xml and jobs.toml (editors save by rename), debounces, reloads
//! through the same [`Config::load`] as start-up, and publishes a valid result; an invalid edit is reported and the
//! last good config stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

/// How long to wait after the last file event before reloading (events come in bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// The outcome of one reload, for the caller to record.
#[derive(Debug)]
pub enum Reloaded {
    Applied,
    Unchanged,
    Rejected(String),
}

/// Loads both files; on success publishes the config (when it differs) and returns what happened.
pub fn reload(clients: &Path, jobs: &Path, tx: &watch::Sender<Arc<Config>>) -> Reloaded {
    match Config::load(clients, jobs) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            if **tx.borrow() == loaded.config {
                return Reloaded::Unchanged;
            }
            tx.send_replace(Arc::new(loaded.config));
            Reloaded::Applied
        }
        Err(e @ (ConfigError::Invalid(_) | ConfigError::Io { .. })) => Reloaded::Rejected(e.to_string()),
    }
}

/// Watches until cancelled, calling `on_result` after every reload attempt.
pub async fn watch_files(
    clients: PathBuf,
    jobs: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    cancel: CancellationToken,
    mut on_result: impl FnMut(&Reloaded),
) -> notify::Result<()> {
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(64);
    let names: Vec<std::ffi::OsString> =
        [&clients, &jobs].iter().filter_map(|p| p.file_name().map(|n| n.to_owned())).collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && ev.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
        {
            let _ = ev_tx.try_send(());
        }
    })?;
    let dir_of = |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let dirs: std::collections::BTreeSet<PathBuf> = [dir_of(&clients), dir_of(&jobs)].into_iter().collect();
    for d in &dirs {
        watcher.watch(d, RecursiveMode::NonRecursive)?;
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = ev_rx.recv() => {
                if ev.is_none() {
                    return Ok(());
                }
            }
        }
        // Debounce: wait until the burst is over.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(DEBOUNCE) => break,
                _ = ev_rx.recv() => {}
            }
        }
        let (c, j, t) = (clients.clone(), jobs.clone(), tx.clone());
        let result = tokio::task::spawn_blocking(move || reload(&c, &j, &t))
            .await
            .unwrap_or_else(|e| Reloaded::Rejected(format!("reload task failed: {e}")));
        match &result {
            Reloaded::Applied => tracing::info!("configuration reloaded"),
            Reloaded::Unchanged => tracing::debug!("configuration files touched, nothing changed"),
            Reloaded::Rejected(e) => tracing::error!("configuration edit rejected, the last good one stays:\n{e}"),
        }
        on_result(&result);
    }
}
