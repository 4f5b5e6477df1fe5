//! `vigil bootstrap`, `vigil uninstall` and `vigil enroll`: installing (or repairing, or upgrading) an agent on each
//! host, removing it, and the credentials it runs with.
//!
//! Each host gets one [`plan::Plan`], decided from what is there (the SSH probe, or a look at the local directory):
//! the dry run prints it, the real run executes the same steps. Files are staged beside the installed ones first,
//! so a failed upload leaves the old agent running and registered; new credentials are registered (replacing the
//! old registration in one transaction) just before the agent restarts, and "ok" waits until a report sealed under
//! them is stored.
//!
//! - [`agents`]: the agent set, and which build a host gets by its OS and architecture.
//! - [`credentials`]: the one place credentials are minted, rendered into files, registered and judged current.
//! - [`plan`]: inspection → steps. [`commands`]: the shell (and PowerShell) text run on hosts; [`platform`]: which
//!   of the two a host gets, and the Windows agent build.
//! - [`ssh`]: the plan over SSH, with [`remote`] (the russh client) and [`known_hosts`]. [`local`]: the plan on this
//!   machine for `transport="local"` (also used by `vigil serve` to start local agents).
//!
//! Running it again is safe: same binary, nothing copied; new binary, upgrade and restart; dead agent, restarted;
//! one agent per directory (the agent's own lock guarantees it). Only a pid verified to be the directory's agent is
//! ever signalled.

pub mod agents;
pub mod commands;
pub mod credentials;
pub mod known_hosts;
pub mod local;
pub mod plan;
pub mod platform;
pub mod remote;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::Instrument;
use vigil_schema::agent_config::CollectPaths;

pub use known_hosts::KnownHosts;
pub use local::{bootstrap_local, uninstall_local};
pub use remote::NewKeys;
pub use ssh::{bootstrap_ssh, uninstall_ssh};

use crate::config::{Config, Host, Transport};
use crate::ingest::{IngestError, IngestHandle};
use crate::keys::KeyError;
use crate::store::{AgentRecord, Store, StoreError};

/// File names inside an agent's directory.
pub mod layout {
    pub const BINARY: &str = "vigil-agent";
    pub const CONFIG: &str = "agent.toml";
    pub const KEY: &str = "agent_key";
    pub const SCHEDULE: &str = "schedule.json";
    pub const PID: &str = "agent.pid";
    pub const LOCK: &str = "agent.lock";
    pub const LOG: &str = "agent.log";
}

/// The agent binary the local transport runs on this machine: `VIGIL_AGENT_BIN`, else the agent set's build for this
/// machine, else `vigil-agent` beside the running `vigil` (see [`agents`]; SSH hosts get [`agents::AgentSet`]'s).
pub fn agent_binary() -> Result<PathBuf, BootstrapError> {
    agents::local_binary()
}

/// Lowercase hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    vigil_schema::to_hex(&Sha256::digest(bytes))
}

/// The directory name an agent of `host` uses inside the temp directory.
pub fn dir_name(host: &str) -> String {
    let safe: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    format!("vigil-agent-{safe}")
}

/// The server endpoint this host's agent dials.
pub fn endpoint_for(config: &Config, host: &Host) -> String {
    host.endpoint.clone().unwrap_or_else(|| config.server.endpoint.clone())
}

/// The other `vigil serve` nodes' endpoints this host's agent tries, in order, when [`endpoint_for`]'s cannot be
/// reached (issue 17; agent.toml's `fallback_servers`). They present the same host key.
/// `[server] fallback_endpoints`, for a host that dials the server's own endpoint (none for a host with an
/// endpoint of its own, e.g. a tunnel's port on its loopback, which whichever node owns the host forwards).
pub fn fallback_endpoints_for(config: &Config, host: &Host) -> Vec<String> {
    if host.endpoint.is_some() {
        return Vec::new();
    }
    config.server.fallback_endpoints.clone()
}

/// What a bootstrap did to one host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Done {
    pub minted: bool,
    pub uploaded: bool,
    pub started: bool,
    /// What the operator should know (a noexec temp directory, a server that was not running, ...).
    pub notes: Vec<String>,
    /// The plan's lines: every step executed (a dry run: every step that would be), after the agent directory.
    pub steps: Vec<String>,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.minted {
            parts.push("new credentials");
        }
        if self.uploaded {
            parts.push("agent installed");
        }
        if self.started {
            parts.push("agent started");
        }
        if parts.is_empty() {
            parts.push("already up to date and running");
        }
        f.write_str(&parts.join(", "))?;
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// Puts the plan's first line (the agent directory) before the executed steps; an empty plan records nothing.
fn finish_steps(plan: &plan::Plan, done: &mut Done) {
    if !done.steps.is_empty() {
        done.steps.insert(0, plan.lines().swap_remove(0));
    }
}

/// Why one host could not be bootstrapped (or uninstalled, or enrolled).
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    #[error("refusing: {0}")]
    Unsafe(String),
    #[error(
        "agent binary not found at {0} (build the agent set with `scripts/dist.sh`, or the agent with `cargo build -p \
         vigil-agent`, or set VIGIL_AGENT_BIN)"
    )]
    NoBinary(PathBuf),
    #[error("could not encode agent files: {0}")]
    Encode(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Failed(String),
    #[error("internal: {0}")]
    Plan(&'static str),
    #[error("{0}: no such host in clients.xml")]
    NoSuchHost(String),
    /// Inside `vigil serve`: the ingest writer, through which the run reads and writes the database, stopped.
    #[error(transparent)]
    Writer(#[from] IngestError),
}

/// Everything a bootstrap run shares between hosts.
#[derive(Debug)]
pub struct Ctx {
    pub config: Arc<Config>,
    /// The database; `None` in a dry run before any exists, and inside `vigil serve` (see `writer`).
    pub store: Option<Mutex<Store>>,
    /// Inside `vigil serve` (an automatic repair): the daemon's one writer, through which every read and write of
    /// the run goes (the daemon opens no second connection).
    pub writer: Option<IngestHandle>,
    pub fingerprint: String,
    /// The agent builds shipped: one per kind of host, read on first use.
    pub agents: agents::AgentSet,
    pub known: KnownHosts,
    pub new_keys: NewKeys,
    /// Probe and plan only; change nothing (not even the known-hosts file).
    pub dry_run: bool,
    /// Whether `vigil serve` answers on its listen address: then a start is confirmed by delivery, else by process.
    pub server_up: bool,
    /// How long to wait for a check-in (plus the shortest job interval for a first report).
    pub checkin_timeout: Duration,
}

impl Ctx {
    /// Loads what a run needs: the server's key fingerprint, the agent set, the database (read-only in a dry run).
    pub fn new(config: Config, accept_new: bool, dry_run: bool) -> Result<Self, BootstrapError> {
        let fingerprint = crate::keys::server_fingerprint(&config.server)?;
        let store = match (dry_run, Store::open_server_readonly(&config.server)) {
            (false, _) => Some(Store::open_server(&config.server)?),
            (true, Ok(s)) => Some(s),
            (true, Err(StoreError::NotFound(_))) => None,
            (true, Err(e)) => return Err(e.into()),
        };
        let server_up = std::net::TcpStream::connect_timeout(&config.server.listen, Duration::from_millis(500)).is_ok();
        Ok(Self {
            known: KnownHosts::for_server(&config.server),
            config: Arc::new(config),
            store: store.map(Mutex::new),
            writer: None,
            fingerprint,
            agents: agents::AgentSet::find(),
            new_keys: if accept_new { NewKeys::Accept } else { NewKeys::Refuse },
            dry_run,
            server_up,
            checkin_timeout: Duration::from_secs(20),
        })
    }

    /// A run inside `vigil serve` (an automatic repair): the database through `writer`, new host keys refused, a
    /// start confirmed by delivery (serve is up).
    pub fn in_serve(config: Arc<Config>, fingerprint: String, writer: IngestHandle) -> Result<Self, BootstrapError> {
        Ok(Self {
            known: KnownHosts::for_server(&config.server),
            config,
            store: None,
            writer: Some(writer),
            fingerprint,
            agents: agents::AgentSet::find(),
            new_keys: NewKeys::Refuse,
            dry_run: false,
            server_up: true,
            checkin_timeout: Duration::from_secs(20),
        })
    }

    /// Runs `f` on the database: on the daemon's writer inside `vigil serve`, else on this run's own connection.
    pub async fn with_store<R, F>(&self, f: F) -> Result<R, BootstrapError>
    where
        F: FnOnce(&mut Store) -> Result<R, BootstrapError> + Send + 'static,
        R: Send + 'static,
    {
        match &self.writer {
            Some(writer) => writer.exec(f).await?,
            None => f(&mut *self.store()?),
        }
    }

    /// Whether this run has a database to read and write (a dry run before the database exists has none).
    pub fn has_database(&self) -> bool {
        self.writer.is_some() || self.store.is_some()
    }

    fn store(&self) -> Result<MutexGuard<'_, Store>, BootstrapError> {
        let store = self.store.as_ref().ok_or(BootstrapError::Plan("no database in a dry run"))?;
        store.lock().map_err(|_| BootstrapError::Failed("store lock poisoned".into()))
    }

    /// Every registration (none in a dry run before the database exists).
    fn registered(&self) -> Result<Vec<AgentRecord>, BootstrapError> {
        if self.store.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.store()?.agents()?)
    }
}

/// One host's outcome.
#[derive(Debug)]
pub struct HostResult {
    pub host: String,
    pub result: Result<Done, BootstrapError>,
}

/// One host's bootstrap, local or SSH, in a span naming the host.
async fn bootstrap_one(ctx: &Arc<Ctx>, host: &Host, progress: &(dyn Fn(&str) + Sync)) -> Result<Done, BootstrapError> {
    match host.transport {
        Transport::Ssh => bootstrap_ssh(ctx, host, progress).await,
        Transport::Local => {
            progress("installing locally");
            let (ctx, host) = (ctx.clone(), host.clone());
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                let build = ctx.agents.local()?;
                if ctx.dry_run {
                    let registered = ctx.registered()?;
                    let (plan, _) = local::plan_local(&ctx.config, &host, &registered, &ctx.fingerprint, &build.sha)?;
                    return Ok(Done { steps: plan.lines(), ..Done::default() });
                }
                let mut store = ctx.store()?;
                bootstrap_local(&ctx.config, &host, &mut store, &ctx.fingerprint, &build.path)
            })
            .await
            .map_err(|e| BootstrapError::Failed(format!("local install task: {e}")))?
        }
    }
}

/// Bootstraps `hosts` with at most `parallel` at once, a progress line per host on stderr, and returns every
/// outcome in the hosts' order.
pub async fn run_all(ctx: Arc<Ctx>, hosts: Vec<Host>, parallel: usize) -> Vec<HostResult> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let width = hosts.iter().map(|h| h.name.len()).max().unwrap_or(4);
    let slots = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let bar = multi
            .add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(format!("{:width$}", host.name)));
        bar.set_message("waiting");
        bar.enable_steady_tick(Duration::from_millis(120));
        let ctx = ctx.clone();
        let slots = slots.clone();
        let span = tracing::info_span!("bootstrap", host = %host.name);
        set.spawn(
            async move {
                let _slot = slots.acquire_owned().await;
                let started = std::time::Instant::now();
                let progress = |m: &str| {
                    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "{m}");
                    bar.set_message(m.to_owned());
                };
                let result = bootstrap_one(&ctx, &host, &progress).await;
                match &result {
                    Ok(done) => bar.finish_with_message(format!("ok: {done}")),
                    Err(e) => {
                        tracing::warn!(error = %e, "bootstrap failed");
                        bar.finish_with_message(format!("FAILED: {e}"));
                    }
                }
                (i, HostResult { host: host.name.clone(), result })
            }
            .instrument(span),
        );
    }
    let mut out: Vec<(usize, HostResult)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// What `vigil bootstrap` prints: each host's steps (done, or planned in a dry run), then a summary.
#[derive(Debug)]
pub struct Outcome {
    pub dry_run: bool,
    pub results: Vec<HostResult>,
}

impl Outcome {
    /// Whether the command succeeded: every host, or (a dry run, which changes nothing) always.
    pub fn success(&self) -> bool {
        self.dry_run || self.results.iter().all(|r| r.result.is_ok())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.results {
            if let Ok(done) = &r.result {
                for line in &done.steps {
                    writeln!(f, "step {}: {line}", r.host)?;
                }
            }
        }
        if self.dry_run {
            for r in &self.results {
                if let Err(e) = &r.result {
                    writeln!(f, "{}: cannot plan ({e}); an install would use $TMPDIR/{}", r.host, dir_name(&r.host))?;
                }
            }
            return writeln!(f, "dry run: nothing changed");
        }
        writeln!(f, "summary:")?;
        let mut failed = 0;
        for r in &self.results {
            match &r.result {
                Ok(done) => writeln!(f, "  ok     {}: {done}", r.host)?,
                Err(e) => {
                    failed += 1;
                    writeln!(f, "  FAILED {}: {e}", r.host)?;
                }
            }
        }
        writeln!(f, "{} succeeded, {failed} failed", self.results.len() - failed)
    }
}

/// `vigil bootstrap`: the hosts named (`all`: every host), planned and (unless `dry_run`) installed.
pub async fn bootstrap(
    config: Config,
    names: &[String],
    all: bool,
    dry_run: bool,
    accept_new: bool,
    parallel: usize,
) -> Result<Outcome, BootstrapError> {
    let hosts = select(&config, names, all)?;
    let ctx = Arc::new(tokio::task::block_in_place(|| Ctx::new(config, accept_new, dry_run))?);
    Ok(Outcome { dry_run, results: run_all(ctx, hosts, parallel).await })
}

/// `vigil uninstall`: stops and removes the agent of each host named (`all`: every host) and forgets its
/// registration. Returns each host's outcome, in order.
pub async fn uninstall(
    config: Config,
    names: &[String],
    all: bool,
    accept_new: bool,
) -> Result<Vec<(String, Result<(), BootstrapError>)>, BootstrapError> {
    let hosts = select(&config, names, all)?;
    let ctx = Arc::new(tokio::task::block_in_place(|| Ctx::new(config, accept_new, false))?);
    let mut out = Vec::new();
    for h in hosts {
        let span = tracing::info_span!("uninstall", host = %h.name);
        let r = match h.transport {
            Transport::Local => {
                let _entered = span.enter();
                ctx.store().and_then(|mut s| uninstall_local(&h.name, &mut s))
            }
            Transport::Ssh => uninstall_ssh(&ctx, &h).instrument(span).await,
        };
        if let Err(e) = &r {
            tracing::warn!(host = %h.name, error = %e, "uninstall failed");
        }
        out.push((h.name, r));
    }
    Ok(out)
}

/// `vigil enroll`: mints credentials for `name`, registers them, and writes the agent's files into `dir` (0700,
/// files 0600), installing and starting nothing. Returns the agent id.
pub fn enroll(config: &Config, name: &str, dir: &Path, collect: CollectPaths) -> Result<String, BootstrapError> {
    let host = config.host(name).ok_or_else(|| BootstrapError::NoSuchHost(name.to_owned()))?;
    let fingerprint = crate::keys::server_fingerprint(&config.server)?;
    let files = credentials::AgentFiles::mint(config, host, &fingerprint, collect, Vec::new())?;
    credentials::write_into(dir, &files)?;
    let mut store = Store::open_server(&config.server)?;
    credentials::register(&mut store, &files, name)?;
    Ok(files.creds.agent_id.clone())
}

/// The hosts named, in order, or every host.
fn select(config: &Config, names: &[String], all: bool) -> Result<Vec<Host>, BootstrapError> {
    if all {
        return Ok(config.clients.clone());
    }
    names.iter().map(|n| config.host(n).cloned().ok_or_else(|| BootstrapError::NoSuchHost(n.clone()))).collect()
}
