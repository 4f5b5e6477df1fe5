//! Live config: watches the directories of clients.xml and jobs.toml (editors save by rename), debounces, reloads
//! through the same [`Config::load`] as start-up, and publishes a valid result; an invalid edit is reported and the
//! last good config stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Overrides};

/// How long to wait after the last file event before reloading (events come in bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// The outcome of one reload, for the caller to record.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// A new config is in force. `restart_needed`: the `[server]` keys edited in the files that were not applied.
    Applied { restart_needed: Vec<&'static str> },
    /// Nothing that can change live changed.
    Unchanged { restart_needed: Vec<&'static str> },
    /// The edit was refused: the diagnostics, and the hosts of clients.xml whose `<client>` they point into.
    Rejected { error: String, hosts: Vec<String> },
}

/// Keeps the `[server]` settings the daemon runs with (`listen`, `data_dir`, `database` and
/// `database_password_env`: the socket is bound and the database open; nothing re-applies them) and the whole
/// `[web]` table in `new`, and returns the keys whose edit was refused (`[web]` keys as `web.listen`,
/// `web.token_env`, or `web` when the table came or went). Both configs carry the process's [`Overrides`], so a key
/// set on the command line compares equal whatever the file says.
pub fn keep_running_server(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let (old, edited) = (&running.server, &mut new.server);
    let mut refused = Vec::new();
    if edited.listen != old.listen {
        edited.listen = old.listen;
        refused.push("listen");
    }
    if edited.data_dir != old.data_dir {
        edited.data_dir.clone_from(&old.data_dir);
        refused.push("data_dir");
    }
    let url = |s: &crate::config::ServerSettings| s.postgres.as_ref().map(|p| p.url.clone());
    if edited.database != old.database || url(edited) != url(old) {
        refused.push("database");
    }
    let password_env = |s: &crate::config::ServerSettings| s.postgres.as_ref().and_then(|p| p.password_env.clone());
    if password_env(edited) != password_env(old) {
        refused.push("database_password_env");
    }
    edited.database.clone_from(&old.database);
    edited.postgres.clone_from(&old.postgres);
    // `[web]`: the dashboard's socket is bound and its token read from the environment at start.
    let (old, edited) = (&running.web, &mut new.web);
    match (old, edited.as_ref()) {
        (Some(o), Some(e)) => {
            if e.listen != o.listen {
                refused.push("web.listen");
            }
            if e.token_env != o.token_env {
                refused.push("web.token_env");
            }
        }
        (None, Some(_)) | (Some(_), None) => refused.push("web"),
        (None, None) => {}
    }
    edited.clone_from(old);
    refused
}

/// How a key [`keep_running_server`] names reads in a message: `[server] listen`, `[web] listen`, `[web]`.
pub fn restart_key(key: &str) -> String {
    match key.strip_prefix("web") {
        Some("") => "[web]".to_owned(),
        Some(rest) => format!("[web] {}", rest.trim_start_matches('.')),
        None => format!("[server] {key}"),
    }
}

/// Where the last applied config is kept (inside the data directory, 0600): `vigil status` falls back to it while
/// the files on disk are invalid.
const LAST_GOOD: [&str; 2] = ["last-good-clients.xml", "last-good-jobs.toml"];

/// Reads both files and validates them, the same way at start-up and on every edit, with the command line's
/// `overrides` laid over them. On success the texts are also saved as the last good config.
pub fn load_and_keep(clients: &Path, jobs: &Path, overrides: &Overrides) -> Result<crate::config::Loaded, ConfigError> {
    let (loaded, sources) = load(clients, jobs, overrides)?;
    keep(&loaded.config, &sources);
    Ok(loaded)
}

/// Both files' texts, and the config they make with `overrides` applied: `Config::load_with_sources`, the one
/// loading path.
fn load(
    clients: &Path,
    jobs: &Path,
    overrides: &Overrides,
) -> Result<(crate::config::Loaded, crate::config::Sources), ConfigError> {
    let (mut loaded, sources) = Config::load_with_sources(clients, jobs)?;
    overrides.apply(&mut loaded.config);
    Ok((loaded, sources))
}

/// Saves both files' texts as the last good config in `config`'s data directory.
fn keep(config: &Config, sources: &crate::config::Sources) {
    let dir = &config.server.data_dir;
    for (name, text) in LAST_GOOD.iter().zip([&sources.clients, &sources.jobs]) {
        if let Err(e) = crate::keys::ensure_private_dir(dir)
            .and_then(|()| crate::keys::write_private(&dir.join(name), text.as_bytes()))
        {
            tracing::warn!(error = %e, "could not keep a copy of the applied config");
        }
    }
}

/// The last config `vigil serve` applied, for views that must work while the files on disk are invalid, with
/// `overrides` applied. The data directory is `overrides.data_dir`, else read leniently from jobs.toml (`[server]
/// data_dir`, default `vigil-data` beside it).
pub fn last_good(clients: &Path, jobs: &Path, overrides: &Overrides) -> Option<Config> {
    let data_dir = match &overrides.data_dir {
        Some(dir) => dir.clone(),
        None => {
            let base = jobs.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let text = std::fs::read(jobs).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let data_dir = text
                .parse::<toml::Table>()
                .ok()
                .and_then(|t| t.get("server")?.get("data_dir")?.as_str().map(PathBuf::from))
                .or_else(|| data_dir_line(&text))
                .unwrap_or_else(|| PathBuf::from("vigil-data"));
            base.join(data_dir)
        }
    };
    let clients_src = std::fs::read_to_string(data_dir.join(LAST_GOOD[0])).ok()?;
    let jobs_src = std::fs::read_to_string(data_dir.join(LAST_GOOD[1])).ok()?;
    let mut config = Config::from_sources(clients, &clients_src, jobs, &jobs_src).ok()?.config;
    overrides.apply(&mut config);
    Some(config)
}

/// `data_dir = "..."` from a jobs.toml that is not valid TOML any more (truncated, half-written): the line, if it
/// survived.
fn data_dir_line(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        if k.trim() != "data_dir" {
            return None;
        }
        let v = v.trim();
        let v = v.strip_prefix('"')?;
        Some(PathBuf::from(&v[..v.find('"')?]))
    })
}

/// Loads both files (with `overrides` applied); on success publishes the config (when it differs) and returns what
/// happened.
pub fn reload(clients: &Path, jobs: &Path, overrides: &Overrides, tx: &watch::Sender<Arc<Config>>) -> Reloaded {
    match load(clients, jobs, overrides) {
        Ok((mut loaded, texts)) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            let restart_needed = keep_running_server(&tx.borrow(), &mut loaded.config);
            for key in &restart_needed {
                let key = restart_key(key);
                tracing::warn!("restart needed for {key}: vigil serve keeps running with the previous value");
            }
            // The last good copy keeps describing what runs: while a `[server]` edit waits for a restart, `vigil
            // status` finds the database in use through it.
            if restart_needed.is_empty() {
                keep(&loaded.config, &texts);
            }
            if **tx.borrow() == loaded.config {
                return Reloaded::Unchanged { restart_needed };
            }
            tx.send_replace(Arc::new(loaded.config));
            Reloaded::Applied { restart_needed }
        }
        Err(e) => Reloaded::Rejected { hosts: hosts_in_error(clients, &e), error: e.to_string() },
    }
}

/// The hosts a rejected edit is about: those whose `<client>` in clients.xml holds a diagnostic's line.
fn hosts_in_error(clients: &Path, error: &ConfigError) -> Vec<String> {
    let ConfigError::Invalid(diags) = error else { return Vec::new() };
    let lines: Vec<usize> = diags.iter().filter(|d| d.file == clients).map(|d| d.line).collect();
    if lines.is_empty() {
        return Vec::new();
    }
    std::fs::read_to_string(clients).map(|src| crate::config::clients::hosts_at_lines(&src, &lines)).unwrap_or_default()
}

/// The file watch on both config files' directories, set up before the daemon announces itself so an edit made
/// right after start is not missed.
#[derive(Debug)]
pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<()>,
    clients: PathBuf,
    jobs: PathBuf,
    overrides: Overrides,
}

impl FileWatcher {
    /// Starts watching the directories of `clients` and `jobs`; each reload applies `overrides`.
    pub fn start(clients: PathBuf, jobs: PathBuf, overrides: Overrides) -> notify::Result<Self> {
        let (ev_tx, events) = mpsc::channel::<()>(64);
        let names: Vec<std::ffi::OsString> =
            [&clients, &jobs].iter().filter_map(|p| p.file_name().map(|n| n.to_owned())).collect();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Only changes count: reading a file (ours included) raises access events, which must not reload.
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_) | notify::EventKind::Other)
                && ev.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
            {
                let _ = ev_tx.try_send(());
            }
        })?;
        let dir_of =
            |p: &Path| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let dirs: std::collections::BTreeSet<PathBuf> = [dir_of(&clients), dir_of(&jobs)].into_iter().collect();
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        Ok(Self { _watcher: watcher, events, clients, jobs, overrides })
    }

    /// Reloads after every burst of changes until cancelled, calling `on_result` after every reload attempt.
    pub async fn run(
        mut self,
        tx: watch::Sender<Arc<Config>>,
        cancel: CancellationToken,
        mut on_result: impl FnMut(&Reloaded),
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ev = self.events.recv() => {
                    if ev.is_none() {
                        return;
                    }
                }
            }
            // Debounce: wait until the burst is over.
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    _ = self.events.recv() => {}
                }
            }
            let (c, j, o, t) = (self.clients.clone(), self.jobs.clone(), self.overrides.clone(), tx.clone());
            let result = tokio::task::spawn_blocking(move || reload(&c, &j, &o, &t)).await.unwrap_or_else(|e| {
                Reloaded::Rejected { error: format!("reload task failed: {e}"), hosts: Vec::new() }
            });
            match &result {
                Reloaded::Applied { .. } => tracing::info!("configuration reloaded"),
                Reloaded::Unchanged { .. } => tracing::debug!("configuration files touched, nothing else changed"),
                Reloaded::Rejected { error: e, .. } => {
                    tracing::error!("configuration edit rejected, the last good one stays:\n{e}")
                }
            }
            on_result(&result);
        }
    }
}

/// Watches until cancelled, calling `on_result` after every reload attempt: [`FileWatcher::start`] (without
/// overrides), then [`FileWatcher::run`].
pub async fn watch_files(
    clients: PathBuf,
    jobs: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    cancel: CancellationToken,
    on_result: impl FnMut(&Reloaded),
) -> notify::Result<()> {
    FileWatcher::start(clients, jobs, Overrides::default())?.run(tx, cancel, on_result).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_settings_bound_at_start_are_kept_and_named() {
        let jobs = |listen: &str, db: &str, days: u32| {
            format!(
                "[server]\nlisten = \"{listen}\"\ndata_dir = \"d\"\ndatabase = \"{db}\"\nretention_days = {days}\n\n\
                 [[job]]\nname = \"v\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n"
            )
        };
        let clients = "<clients><client name=\"web\" ip=\"10.0.0.1\" username=\"u\"/></clients>";
        let load = |j: &str| {
            Config::from_sources(Path::new("c.xml"), clients, Path::new("j.toml"), j)
                .map(|l| l.config)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let running = load(&jobs("127.0.0.1:7022", "a.db", 30));
        let mut edited = load(&jobs("127.0.0.1:7023", "b.db", 20));
        assert_eq!(keep_running_server(&running, &mut edited), ["listen", "database"]);
        assert_eq!(edited.server.listen, running.server.listen);
        assert_eq!(edited.server.database, running.server.database);
        assert_eq!(edited.server.retention_days, 20, "what applies live is applied");
        let mut same = load(&jobs("127.0.0.1:7022", "a.db", 30));
        assert!(keep_running_server(&running, &mut same).is_empty());
        // `[web]` is bound at start too: a changed listen or token, or the table added or removed, waits.
        let web = |w: &str| load(&format!("{}\n[web]\n{w}\n", jobs("127.0.0.1:7022", "a.db", 30)));
        let running_web = web("listen = \"127.0.0.1:7080\"");
        let mut moved = web("listen = \"127.0.0.1:7081\"\ntoken_env = \"T\"");
        assert_eq!(keep_running_server(&running_web, &mut moved), ["web.listen", "web.token_env"]);
        assert_eq!(moved.web, running_web.web);
        let mut gone = load(&jobs("127.0.0.1:7022", "a.db", 30));
        assert_eq!(keep_running_server(&running_web, &mut gone), ["web"]);
        assert_eq!(gone.web, running_web.web);
        assert!(keep_running_server(&running_web, &mut web("listen = \"127.0.0.1:7080\"")).is_empty());
        assert_eq!(
            ["listen", "web.listen", "web"].map(restart_key),
            ["[server] listen", "[web] listen", "[web]"].map(String::from)
        );
    }

    #[test]
    fn database_and_its_password_variable_wait_for_a_restart() {
        let jobs = |db: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n{db}\n[[job]]\nname = \"v\"\n\
                 collectors = [\"cpu\"]\ninterval = \"10s\"\n"
            )
        };
        let clients = "<clients><client name=\"web\" ip=\"10.0.0.1\" username=\"u\"/></clients>";
        let load = |j: &str| {
            Config::from_sources(Path::new("c.xml"), clients, Path::new("j.toml"), &jobs(j))
                .map(|l| l.config)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let pg = "database = \"postgres://vigil@db/vigil\"\ndatabase_password_env = \"P\"";
        let running = load(pg);
        for (edit, refused) in [
            ("", &["database", "database_password_env"][..]),
            ("database = \"postgres://vigil@db2/vigil\"\ndatabase_password_env = \"P\"", &["database"][..]),
            ("database = \"postgres://vigil@db/vigil\"\ndatabase_password_env = \"Q\"", &["database_password_env"][..]),
            ("database = \"postgres://vigil@db/vigil\"", &["database_password_env"][..]),
            (pg, &[][..]),
        ] {
            let mut edited = load(edit);
            assert_eq!(keep_running_server(&running, &mut edited), refused, "{edit}");
            assert_eq!(edited.server, running.server, "{edit}");
        }
        let mut to_pg = load(pg);
        assert_eq!(
            keep_running_server(&load(""), &mut to_pg),
            ["database", "database_password_env"],
            "SQLite to PostgreSQL"
        );
        assert_eq!(to_pg.server.postgres, None);
    }

    /// `vigil serve --listen --data-dir --web-listen`: every reload lays the same overrides over the files, so an
    /// edit of an overridden key changes nothing and is not "restart needed"; the rest of an edit applies.
    #[test]
    fn overrides_win_on_every_reload_and_need_no_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (clients, jobs) = (dir.path().join("clients.xml"), dir.path().join("jobs.toml"));
        let write_jobs = |listen: u16, data: &str, web: u16, days: u32| {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{listen}\"\ndata_dir = \"{data}\"\nretention_days = {days}\n\n\
                 [web]\nlisten = \"127.0.0.1:{web}\"\n\n[[job]]\nname = \"v\"\ncollectors = [\"cpu\"]\n\
                 interval = \"10s\"\n"
            );
            std::fs::write(&jobs, text).unwrap();
        };
        std::fs::write(&clients, "<clients><client name=\"web\" ip=\"10.0.0.1\" username=\"u\"/></clients>").unwrap();
        write_jobs(7022, "shared", 7080, 30);
        let node_dir = dir.path().join("node-a");
        let overrides = Overrides {
            listen: Some("127.0.0.1:7100".parse().unwrap()),
            data_dir: Some(node_dir.clone()),
            web_listen: Some("127.0.0.1:7180".parse().unwrap()),
        };
        let started = load_and_keep(&clients, &jobs, &overrides).unwrap().config;
        assert_eq!(started.server.listen.port(), 7100);
        assert_eq!(started.server.endpoint, "127.0.0.1:7100");
        assert_eq!(
            (started.server.data_dir.as_path(), started.server.database.as_path()),
            (node_dir.as_path(), node_dir.join("vigil.db").as_path())
        );
        assert_eq!(started.web.as_ref().unwrap().listen.port(), 7180);
        assert!(node_dir.join(LAST_GOOD[1]).is_file(), "the last good copy is kept in the node's data directory");
        assert!(!dir.path().join("shared").exists(), "the file's data directory is not this node's");
        let (tx, rx) = watch::channel(Arc::new(started.clone()));

        // The overridden keys edited in the file, with a key that applies live.
        write_jobs(7023, "elsewhere", 7081, 20);
        assert_eq!(reload(&clients, &jobs, &overrides, &tx), Reloaded::Applied { restart_needed: vec![] });
        let now = rx.borrow().clone();
        assert_eq!(
            (now.server.listen, &now.server.data_dir, now.server.retention_days),
            (started.server.listen, &node_dir, 20)
        );
        assert_eq!(now.web, started.web);
        // The same keys without overrides are the file's, bound at start.
        let plain = load_and_keep(&clients, &jobs, &Overrides::default()).unwrap().config;
        let (tx, _rx) = watch::channel(Arc::new(plain));
        write_jobs(7024, "elsewhere", 7081, 20);
        assert_eq!(
            reload(&clients, &jobs, &Overrides::default(), &tx),
            Reloaded::Applied { restart_needed: vec!["listen"] }
        );
        // While the files are broken, views find the node's last good config through the override.
        std::fs::write(&jobs, "[server\n").unwrap();
        let last = last_good(&clients, &jobs, &overrides).unwrap();
        assert_eq!(
            (last.server.listen, last.server.retention_days, &last.server.data_dir),
            (started.server.listen, 20, &node_dir)
        );
    }

    #[test]
    fn data_dir_survives_a_broken_jobs_toml() {
        let broken = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"/srv/vigil\"  # here\n[[job]]\nname = \"vit";
        assert!(broken.parse::<toml::Table>().is_err());
        assert_eq!(data_dir_line(broken), Some(PathBuf::from("/srv/vigil")));
        assert_eq!(data_dir_line("nothing here"), None);
        assert_eq!(data_dir_line("data_dir = unquoted"), None);
    }
}
