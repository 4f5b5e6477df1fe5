//! vigil's configuration: `clients.xml` (the fleet and its alert limits) and `jobs.toml` (the server's settings, SMTP
//! and what is collected where), loaded in two stages and resolved into one [`Config`]. A crate of its own so that
//! what only reads config (the fuzz targets, `vigil check`'s logic) builds without tokio, russh or SQLite; the server
//! re-exports it as `vigil_server::config`.
//!
//! - [`clients`]: reads clients.xml with quick-xml's event reader into raw elements with byte positions, then
//!   validates them into [`Host`]s (the exercise's form verbatim plus vigil's extensions) and merges `<defaults>`.
//! - [`jobs`]: reads jobs.toml with toml's spanned document tree, then validates `[server]`, `[smtp]`, `[alerts]` and
//!   `[[job]]`.
//! - [`resolve`]: what needs both files: which jobs select which host ([`Config::schedule_for`]), and warnings for
//!   selectors that match no host.
//! - [`diag`]: [`Diagnostic`] (file, line, column, message) and the offset-to-position bookkeeping.
//! - [`secret`]: [`Secret`], a password that never prints.
//! - [`database`]: `[server] database` as a PostgreSQL URL ([`PgTarget`]), checked, a password in it refused.
//! - [`overrides`]: [`Overrides`], the per-process values of `vigil serve --listen/--data-dir/--web-listen` (and
//!   every command's `--data-dir`) laid over each config loaded from the files.
//! - [`duration`]: vigil's one duration grammar ([`parse_duration`]), for jobs.toml and the CLI alike.
//!
//! Every problem of a file is reported, not only the first, and both files' problems are reported together. Loading
//! reads the two files and nothing else: no environment variables, no network, no files written.

pub mod clients;
pub mod database;
pub mod diag;
pub mod duration;
pub mod jobs;
pub mod overrides;
pub mod resolve;
pub mod secret;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vigil_schema::job::{Collector, Schedule};

pub use database::PgTarget;
pub use diag::Diagnostic;
pub use duration::{DurationError, parse_duration};
pub use overrides::Overrides;
pub use secret::Secret;

/// The validated configuration of both files.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The fleet, in clients.xml order.
    pub clients: Vec<Host>,
    pub server: ServerSettings,
    pub smtp: Option<SmtpSettings>,
    /// `[alerts]` of jobs.toml.
    pub alerts: AlertSettings,
    /// `[web]` of jobs.toml: the dashboard; `None` when the table is absent (no dashboard).
    pub web: Option<WebSettings>,
    /// The jobs, in jobs.toml order.
    pub jobs: Vec<JobDef>,
    /// The `<defaults>` alert rules of clients.xml (already merged into each host's `alerts`).
    pub defaults: Vec<AlertRule>,
    /// Where each host's name sits in `clients`, for [`Config::host`] (looked up for every stored report).
    host_index: HostIndex,
}

/// Host name to its position in [`Config::clients`]. Only a hint: [`Config::host`] checks the name it finds, so an
/// index that `clients` has drifted from (the field is public) costs a scan, never a wrong host.
#[derive(Clone, Default, PartialEq)]
struct HostIndex(std::collections::HashMap<String, usize>);

impl HostIndex {
    fn of(hosts: &[Host]) -> Self {
        HostIndex(hosts.iter().enumerate().map(|(i, h)| (h.name.clone(), i)).collect())
    }
}

impl std::fmt::Debug for HostIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostIndex({} hosts)", self.0.len())
    }
}

/// One host of the fleet (a `<client>` of clients.xml).
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Unique name: the `name` attribute, or the ip when absent.
    pub name: String,
    /// The address to reach the host's SSH server: an IP address or a host name.
    pub ip: String,
    /// SSH port, default 22.
    pub port: u16,
    /// SSH login; required for `transport="ssh"`.
    pub username: Option<String>,
    pub auth: Auth,
    /// Where this host's alerts are mailed.
    pub mail: Option<String>,
    /// Pinned SSH host key fingerprint, `SHA256:<43 base64 characters>` as `ssh-keygen -l` prints it: a trailing
    /// `=` (base64 padding) written in clients.xml is removed, so the value compares equal to the printed form.
    pub host_key: Option<String>,
    /// `None`: detected at bootstrap.
    pub os: Option<Os>,
    pub transport: Transport,
    /// `channel="tunnel"|"direct"` on the `<client>`; `None`: `[server] channel` decides (SSH hosts only).
    pub channel: Option<Channel>,
    pub tags: Vec<String>,
    /// The `host:port` this host's agent dials to reach the server, overriding `[server] endpoint`.
    pub endpoint: Option<String>,
    /// The host's own alert rules followed by the `<defaults>` it does not override.
    pub alerts: Vec<AlertRule>,
    /// Whether `vigil serve` repairs this host on its own when it falls silent (`repair="on"`, the default, or
    /// `"off"`). Only SSH hosts are repaired.
    pub repair: bool,
    /// `commands="allow"`: the host runs command jobs (written into its agent.toml at bootstrap).
    pub commands: bool,
    /// `display_name="..."`: how the web pages title the host, any printable text (escaped there); `name` stays
    /// the identifier (agent directory, selectors, database).
    pub display_name: Option<String>,
}

/// How vigil logs in to a host over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials in clients.xml (local transport, or keys offered some other way).
    None,
    /// `password="..."`: the password itself (redacted in `Debug`).
    Password(Secret),
    /// `password_env="VAR"`: the password is read from this environment variable when it is needed.
    PasswordEnv(String),
    /// `key_file="..."`: a private key (path resolved against clients.xml's directory). A `password` or
    /// `password_env` given with it is the key's passphrase.
    KeyFile { path: PathBuf, passphrase: Option<Passphrase> },
}

/// Where the passphrase of a key file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passphrase {
    Inline(Secret),
    Env(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Os {
    Linux,
    Windows,
}

/// How the server reaches a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Over SSH to the host's own sshd (the default).
    #[default]
    Ssh,
    /// This very machine, without SSH.
    Local,
}

/// How an SSH host's agent reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channel {
    /// The server holds an SSH session to the host's sshd with a remote forward on the host's loopback; the agent
    /// dials that port (the default).
    #[default]
    Tunnel,
    /// The agent dials the server's endpoint itself (`[server] endpoint`, or the host's `endpoint`).
    Direct,
}

impl Channel {
    /// The attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Tunnel => "tunnel",
            Channel::Direct => "direct",
        }
    }
}

/// How a host reports, all settings resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporting {
    /// Through the server's SSH session to the host (`channel="tunnel"`).
    Tunnel,
    /// The agent dials the server (`channel="direct"`).
    Direct,
    /// `transport="local"`: the agent on this machine dials the server.
    Local,
}

impl Reporting {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporting::Tunnel => "tunnel",
            Reporting::Direct => "direct",
            Reporting::Local => "local",
        }
    }
}

/// One alert limit of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub kind: AlertKind,
    /// Percent for cpu, memory, swap and disk; load average for load; missed intervals for silence.
    pub limit: f64,
    /// For disk: the mount point watched; `None` means every mount.
    pub mount: Option<String>,
    /// Hysteresis: an alert clears only once the value is below `limit - clear_margin`. `clear="..."` sets it;
    /// default 5 percent points (at most half the limit) for percentages, a tenth of the limit for load, 0 for
    /// silence.
    pub clear_margin: f64,
    /// Minutes between repeated mails while the alert stays raised; `None`: mail once.
    pub repeat_minutes: Option<u32>,
    /// For job and metric alerts: the command job watched.
    pub job: Option<String>,
    /// For metric alerts: the metric's name in the job's parsed output.
    pub metric: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    Cpu,
    Memory,
    Swap,
    Disk,
    Load,
    Silence,
    /// A command job's run failed (non-zero exit, signal, timeout, could not start); resolves on a success.
    Job,
    /// A value parsed from a command job's output.
    Metric,
}

impl AlertKind {
    pub const ALL: [AlertKind; 8] = [
        AlertKind::Cpu,
        AlertKind::Memory,
        AlertKind::Swap,
        AlertKind::Disk,
        AlertKind::Load,
        AlertKind::Silence,
        AlertKind::Job,
        AlertKind::Metric,
    ];

    /// The name used in clients.xml's `type` attribute.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Cpu => "cpu",
            AlertKind::Memory => "memory",
            AlertKind::Swap => "swap",
            AlertKind::Disk => "disk",
            AlertKind::Load => "load",
            AlertKind::Silence => "silence",
            AlertKind::Job => "job",
            AlertKind::Metric => "metric",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the limit is a percentage.
    pub fn is_percent(self) -> bool {
        matches!(self, AlertKind::Cpu | AlertKind::Memory | AlertKind::Swap | AlertKind::Disk)
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `[server]` of jobs.toml, with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Where the embedded SSH endpoint listens.
    pub listen: SocketAddr,
    /// What agents dial (`host:port`); defaults to `listen`.
    pub endpoint: String,
    /// `[server] fallback_endpoints`: the other nodes' addresses (several nodes on one PostgreSQL), written into
    /// every direct agent's agent.toml after `endpoint`: when its node dies, the agent delivers to another.
    pub fallback_endpoints: Vec<String>,
    /// Absolute; holds the server's host key and the database.
    pub data_dir: PathBuf,
    /// Absolute path of the SQLite database (unused while `postgres` is set).
    pub database: PathBuf,
    /// The PostgreSQL database, when `database` is a `postgres://` URL (with `database_password_env`).
    pub postgres: Option<PgTarget>,
    pub retention_days: u32,
    /// How many connections one agent key may hold open at once (`max_connections_per_agent`, default
    /// [`jobs::DEFAULT_MAX_CONNECTIONS_PER_AGENT`], 1 to [`jobs::MAX_CONNECTIONS_PER_AGENT`]).
    pub max_connections_per_agent: usize,
    /// The shortest time between two automatic repairs of one host (`repair_backoff`, default
    /// [`jobs::DEFAULT_REPAIR_BACKOFF`]); doubled after each failure in a row, up to 16 times.
    pub repair_backoff: Duration,
    /// How many automatic repairs run at once (`repair_parallel`, default [`jobs::DEFAULT_REPAIR_PARALLEL`]).
    pub repair_parallel: usize,
    /// How SSH hosts without a `channel` attribute report (`channel`, default tunnel).
    pub channel: Channel,
}

/// `[alerts]` of jobs.toml: alert settings of the whole server (per-host limits are in clients.xml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// How long security events are gathered into one digest mail (`security_digest`, default
    /// [`jobs::DEFAULT_SECURITY_DIGEST`], at least [`jobs::MIN_SECURITY_DIGEST`]).
    pub security_digest: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self { security_digest: jobs::DEFAULT_SECURITY_DIGEST }
    }
}

/// `[web]` of jobs.toml: the read-only dashboard, JSON API and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// Where the dashboard listens (HTTP).
    pub listen: SocketAddr,
    /// Name of the environment variable holding the access token; required unless `listen` is loopback.
    pub token_env: Option<String>,
}

/// `[smtp]` of jobs.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub from: String,
    pub username: Option<String>,
    /// Name of the environment variable holding the SMTP password (the password is never in the file).
    pub password_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Plain SMTP.
    None,
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// One `[[job]]` of jobs.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDef {
    pub name: String,
    pub collectors: Vec<Collector>,
    pub interval_s: u32,
    pub jitter_s: u32,
    /// Host names or globs (`*`). Empty together with `tags`: the job runs on every host.
    pub hosts: Vec<String>,
    /// Hosts having any of these tags are selected too.
    pub tags: Vec<String>,
    /// A command job (then `collectors` is empty): what it runs and how.
    pub command: Option<vigil_schema::command::CommandSpec>,
}

/// A loaded configuration and the warnings that did not stop it from loading.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// The text of both files as they were read and validated, for a caller that keeps a copy of what it applied.
/// `Debug` shows only the lengths: clients.xml may hold passwords.
#[derive(Clone)]
pub struct Sources {
    pub clients: String,
    pub jobs: String,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("clients", &format_args!("<{} bytes>", self.clients.len()))
            .field("jobs", &format_args!("<{} bytes>", self.jobs.len()))
            .finish()
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// Every error of both files, in file then source order.
    #[error("{}", diag::list(.0))]
    Invalid(Vec<Diagnostic>),
}

impl Config {
    /// How `host` reports: local, or over SSH through the tunnel or directly (its `channel`, else `[server]
    /// channel`).
    pub fn reporting(&self, host: &Host) -> Reporting {
        match (host.transport, host.channel.unwrap_or(self.server.channel)) {
            (Transport::Local, _) => Reporting::Local,
            (Transport::Ssh, Channel::Tunnel) => Reporting::Tunnel,
            (Transport::Ssh, Channel::Direct) => Reporting::Direct,
        }
    }

    /// Reads and validates both files. Nothing else is touched.
    pub fn load(clients: &Path, jobs: &Path) -> Result<Loaded, ConfigError> {
        Self::load_with_sources(clients, jobs).map(|(loaded, _)| loaded)
    }

    /// [`Config::load`], also returning the text that was validated. Every load goes through here: `vigil check`
    /// and the other commands through [`Config::load`], `vigil serve`'s start-up and each live reload directly
    /// (they keep the text as the last good config).
    pub fn load_with_sources(clients: &Path, jobs: &Path) -> Result<(Loaded, Sources), ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|error| ConfigError::Io { path: path.to_path_buf(), error })
        };
        let sources = Sources { clients: read(clients)?, jobs: read(jobs)? };
        let loaded = Self::from_sources(clients, &sources.clients, jobs, &sources.jobs)?;
        Ok((loaded, sources))
    }

    /// Validates both files from their text; the paths name them in diagnostics and anchor relative paths.
    pub fn from_sources(
        clients_path: &Path,
        clients_src: &str,
        jobs_path: &Path,
        jobs_src: &str,
    ) -> Result<Loaded, ConfigError> {
        let clients = clients::parse(clients_path, clients_src);
        let jobs = jobs::parse(jobs_path, jobs_src);
        match (clients, jobs) {
            (Ok(c), Ok(j)) => Ok(resolve::resolve(c, j)),
            (c, j) => {
                let mut all = c.err().unwrap_or_default();
                all.extend(j.err().unwrap_or_default());
                Err(ConfigError::Invalid(all))
            }
        }
    }

    /// The host with this name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        let indexed = self.host_index.0.get(name).and_then(|&i| self.clients.get(i)).filter(|h| h.name == name);
        indexed.or_else(|| self.clients.iter().find(|h| h.name == name))
    }

    /// The jobs this host runs, in canonical order; empty for an unknown host.
    pub fn schedule_for(&self, host: &str) -> Schedule {
        match self.host(host) {
            Some(h) => resolve::schedule(&self.jobs, h),
            None => Schedule::default(),
        }
    }

    /// The hosts a job runs on, in clients.xml order.
    pub fn hosts_of(&self, job: &JobDef) -> Vec<&Host> {
        self.clients.iter().filter(|h| job.selects(h)).collect()
    }
}

impl JobDef {
    /// Whether this job runs on `host`: no selector means every host; otherwise a host matching any name/glob in
    /// `hosts` or having any tag in `tags`.
    pub fn selects(&self, host: &Host) -> bool {
        if self.hosts.is_empty() && self.tags.is_empty() {
            return true;
        }
        self.hosts.iter().any(|p| values::glob_match(p, &host.name)) || self.tags.iter().any(|t| host.tags.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENTS: &str = r#"<clients>
  <client ip="10.0.0.5" port="22" username="user" password="secret" mail="ops@example.com">
    <alert type="memory" limit="50%"/>
  </client>
</clients>"#;

    const JOBS: &str = r#"[server]
listen = "127.0.0.1:7022"
data_dir = "data"

[[job]]
name = "vitals"
collectors = ["cpu"]
interval = "10s"
"#;

    #[test]
    fn both_files_errors_are_reported_together() {
        let bad_clients = CLIENTS.replace("port=\"22\"", "port=\"0\"");
        let bad_jobs = JOBS.replace("\"10s\"", "\"0s\"");
        let err = Config::from_sources(Path::new("c.xml"), &bad_clients, Path::new("j.toml"), &bad_jobs)
            .expect_err("both files are bad");
        let ConfigError::Invalid(diags) = &err else { panic!("{err}") };
        assert_eq!(diags.len(), 2, "{err}");
        assert_eq!(diags[0].file, Path::new("c.xml"));
        assert_eq!(diags[1].file, Path::new("j.toml"));
        assert_eq!(err.to_string().lines().count(), 2);
    }

    #[test]
    fn load_reports_unreadable_files() {
        let err = Config::load(Path::new("/nonexistent/clients.xml"), Path::new("/nonexistent/jobs.toml"))
            .expect_err("missing file");
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/clients.xml"), "{err}");
    }

    /// Hosts are found by name through the index, and still found (never another host) after `clients` changes.
    #[test]
    fn host_lookup_by_name_survives_a_changed_list() {
        let many = r#"<clients>
  <client name="a" ip="10.0.0.1" username="u" password="p" mail="ops@example.com"/>
  <client name="b" ip="10.0.0.2" username="u" password="p" mail="ops@example.com"/>
  <client name="c" ip="10.0.0.3" username="u" password="p" mail="ops@example.com"/>
</clients>"#;
        let mut cfg = Config::from_sources(Path::new("c.xml"), many, Path::new("j.toml"), JOBS).expect("valid").config;
        for (name, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            assert_eq!(cfg.host(name).map(|h| h.ip.as_str()), Some(ip));
        }
        assert!(cfg.host("10.0.0.1").is_none(), "a named host is not found by its address");
        cfg.clients.reverse();
        cfg.clients.remove(0);
        assert_eq!(cfg.host("a").map(|h| h.ip.as_str()), Some("10.0.0.1"));
        assert_eq!(cfg.host("b").map(|h| h.ip.as_str()), Some("10.0.0.2"));
        assert!(cfg.host("c").is_none());
        assert_eq!(format!("{cfg:?}").matches("HostIndex(3 hosts)").count(), 1);
    }

    #[test]
    fn lookups() {
        let loaded = Config::from_sources(Path::new("c.xml"), CLIENTS, Path::new("j.toml"), JOBS).expect("valid");
        let cfg = loaded.config;
        assert!(cfg.host("10.0.0.5").is_some());
        assert!(cfg.host("nope").is_none());
        assert_eq!(cfg.schedule_for("10.0.0.5").jobs.len(), 1);
        assert!(cfg.schedule_for("nope").jobs.is_empty());
        assert_eq!(cfg.hosts_of(&cfg.jobs[0]).len(), 1);
    }

    #[test]
    fn sources_debug_shows_no_text() {
        let s = Sources { clients: CLIENTS.into(), jobs: JOBS.into() };
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(shown, format!("Sources {{ clients: <{} bytes>, jobs: <{} bytes> }}", CLIENTS.len(), JOBS.len()));
    }
}
