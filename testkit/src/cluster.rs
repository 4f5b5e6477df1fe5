//! One PostgreSQL cluster for tests: `initdb` in a temporary directory, the `postgres` server started directly (so
//! its PID is ours) on a free loopback port, SQL through `psql`, and stop-by-PID plus removal when dropped.
//!
//! Layout of the directory (0755, so the `postgres` account can reach it; where it goes: `place`): `data/` (0700,
//! the cluster), `sock/` (the unix socket), `postgres.log` (the server's output). The superuser is `vigil`; the unix
//! socket trusts it, TCP on 127.0.0.1 does too unless [`Options::password`] is set (then scram-sha-256).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::owner::Owner;
use crate::place;
use crate::programs::{Programs, programs};
use crate::signal;
use crate::watchdog::Watchdog;

/// The cluster's superuser.
pub const SUPERUSER: &str = "vigil";

/// How long a start may take before it is given up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown (SIGINT) may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Ports tried when another process takes the free port between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;

/// How a cluster is set up; [`Options::default`] is what tests want.
#[derive(Clone)]
pub struct Options {
    /// The superuser's password. When set, TCP connections must give it (scram-sha-256); the unix socket, which
    /// [`Postgres::psql`] uses, stays trusted. `None` (default): TCP on loopback is trusted too.
    pub password: Option<String>,
    /// Durable commits (`fsync`, `synchronous_commit`, `full_page_writes` on), as a production server runs, for
    /// benchmarks. Off by default: a test cluster does not outlive a crash of the machine, and tests run faster.
    pub fsync: bool,
    /// The server's `max_connections` (default 100).
    pub max_connections: u32,
    /// Further server settings, each passed as `-c name=value`.
    pub settings: Vec<(String, String)>,
    /// TLS: the server presents this certificate, and TCP connections must use TLS (`hostssl` only in
    /// pg_hba.conf; the unix socket stays as it is). `None` (default): no TLS.
    pub tls: Option<ServerTls>,
}

/// A server certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("cert_pem_len", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options { password: None, fsync: false, max_connections: 100, settings: Vec::new(), tls: None }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("fsync", &self.fsync)
            .field("max_connections", &self.max_connections)
            .field("settings", &self.settings)
            .field("tls", &self.tls.as_ref().map(|_| "<certificate and key>"))
            .finish()
    }
}

/// A running PostgreSQL cluster, stopped and removed on drop.
pub struct Postgres {
    programs: &'static Programs,
    port: u16,
    pid: u32,
    password: Option<String>,
    server: Mutex<Child>,
    watchdog: Mutex<Option<Watchdog>>,
    dir: TempDir,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("dir", &self.dir.path())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Starts a cluster with the default [`Options`] (no password, fsync off).
    pub fn start() -> io::Result<Postgres> {
        Postgres::start_with(Options::default())
    }

    /// Runs `initdb`, starts `postgres` on a free loopback port and returns once it accepts connections.
    pub fn start_with(options: Options) -> io::Result<Postgres> {
        let programs = programs()?;
        let owner = Owner::for_this_process()?;
        let dir = make_dir(owner, options.fsync)?;
        initdb(programs, owner, dir.path(), options.password.as_deref())?;
        let mut options = options;
        if let Some(tls) = &options.tls {
            let files = tls_files(owner, dir.path(), tls, options.password.is_some())?;
            options.settings.extend(files);
        }
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut child = spawn_server(programs, owner, dir.path(), port, &options)?;
            match wait_ready(&mut child, dir.path(), port) {
                Ok(()) => {
                    let pid = child.id();
                    let watchdog =
                        Watchdog::spawn(pid, dir.path()).inspect_err(|_| stop_child(&mut child, Duration::ZERO))?;
                    return Ok(Postgres {
                        programs,
                        port,
                        pid,
                        password: options.password,
                        server: Mutex::new(child),
                        watchdog: Mutex::new(Some(watchdog)),
                        dir,
                    });
                }
                Err(Start::PortTaken) => stop_child(&mut child, Duration::ZERO),
                Err(Start::Failed(e)) => {
                    stop_child(&mut child, Duration::ZERO);
                    last_error = Some(e);
                    break;
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AddrInUse, format!("no free port in {PORT_ATTEMPTS} attempts"))
        }))
    }

    /// `postgres://vigil@127.0.0.1:PORT/<db>` (no password in it, even when the cluster has one).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The superuser's password, when [`Options::password`] set one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The temporary directory holding `data/`, `sock/` and `postgres.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory of the server's unix socket (a libpq `host=` value).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The server's log so far (its stderr), for a failing test's message.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Creates the database `name` (letters, digits, `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a plain database name: {name:?}")));
        }
        // FILE_COPY (PostgreSQL 15+) copies template1's files instead of writing each page to the WAL: about half
        // the time here, with fsync off.
        let strategy = if self.major_version() >= 15 { " STRATEGY = FILE_COPY" } else { "" };
        self.psql("postgres", &format!("CREATE DATABASE {name}{strategy}"))?;
        Ok(self.url(name))
    }

    /// A new, empty database with a name unique in this process; returns its URL.
    pub fn fresh_database(&self) -> io::Result<String> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("t{}_{n}", std::process::id()))
    }

    /// Runs `sql` (any number of statements, as a script) with `psql -v ON_ERROR_STOP=1 -At` in one session on
    /// `db` through the unix socket, and returns its stdout (rows as `a|b` lines). An error carries psql's stderr.
    pub fn psql(&self, db: &str, sql: &str) -> io::Result<String> {
        let mut cmd = self.psql_command(db);
        cmd.arg("-h").arg(self.socket_dir());
        run_psql(cmd, sql)
    }

    /// Like [`Postgres::psql`], but over TCP to 127.0.0.1 with `password` (or none), to test authentication.
    pub fn psql_tcp(&self, db: &str, sql: &str, password: Option<&str>) -> io::Result<String> {
        let mut cmd = self.psql_command(db);
        cmd.args(["-h", "127.0.0.1", "-w"]);
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        run_psql(cmd, sql)
    }

    /// Whether the postmaster is still running.
    pub fn is_running(&self) -> bool {
        let exited = matches!(self.server().try_wait(), Ok(Some(_)));
        if exited {
            self.reaped();
        }
        !exited
    }

    /// Kills the server at once, as a crash would: SIGKILL to the postmaster and every backend (its process group).
    pub fn kill9(&self) -> io::Result<()> {
        let mut child = self.server();
        if child.try_wait()?.is_none() {
            // Not reaped yet, so the group is still ours.
            signal::to_group(self.pid, signal::SIGKILL)?;
            child.wait()?;
        }
        drop(child);
        self.reaped();
        Ok(())
    }

    /// The postmaster has been reaped: its PID is free for reuse, which the watchdog must know.
    fn reaped(&self) {
        if let Some(w) = self.watchdog.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            w.postmaster_gone();
        }
    }

    /// The cluster's major version (data/PG_VERSION), 0 when unreadable.
    fn major_version(&self) -> u32 {
        let text = fs::read_to_string(self.dir.path().join("data/PG_VERSION")).unwrap_or_default();
        text.trim().parse().unwrap_or(0)
    }

    fn server(&self) -> MutexGuard<'_, Child> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(&self.programs.psql);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", db]);
        clear_pg_env(&mut cmd);
        // Messages in English, whatever the machine's locale: tests match them.
        cmd.env("LC_ALL", "C");
        cmd
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_child(&mut self.server(), STOP_GRACE);
        if let Some(w) = self.watchdog.lock().unwrap_or_else(PoisonError::into_inner).take() {
            w.dismiss();
        }
        // `dir` (a TempDir) is removed after this, when the fields drop.
    }
}

/// Why a start attempt failed.
enum Start {
    /// Another process bound the port first: try another.
    PortTaken,
    Failed(io::Error),
}

/// The cluster's directory (where: `place`), 0755 so the `postgres` account can traverse it.
fn make_dir(owner: Owner, durable: bool) -> io::Result<TempDir> {
    let dir = tempfile::Builder::new().prefix("vigil-pg-").tempdir_in(place::base_dir(owner, durable))?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    for (sub, mode) in [("data", 0o700), ("sock", 0o755)] {
        let p = dir.path().join(sub);
        fs::DirBuilder::new().mode(mode).create(&p)?;
        owner.give(&p)?;
    }
    Ok(dir)
}

fn initdb(programs: &Programs, owner: Owner, dir: &Path, password: Option<&str>) -> io::Result<()> {
    let mut cmd = Command::new(&programs.initdb);
    cmd.arg("-D").arg(dir.join("data"));
    cmd.args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
    let pwfile = dir.join("pwfile");
    match password {
        None => {
            cmd.args(["-A", "trust"]);
        }
        Some(pw) => {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&pwfile)?;
            writeln!(f, "{pw}")?;
            owner.give(&pwfile)?;
            cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"]).arg(format!("--pwfile={}", pwfile.display()));
        }
    }
    cmd.current_dir(dir).stdin(Stdio::null());
    clear_pg_env(&mut cmd);
    owner.apply(&mut cmd);
    let out = cmd.output();
    if password.is_some() {
        let _ = fs::remove_file(&pwfile);
    }
    check(&out?, "initdb")
}

/// Writes the certificate and key (0600, the owner's) beside the data directory and a pg_hba.conf that takes TCP
/// connections over TLS only; returns the settings that turn TLS on.
fn tls_files(owner: Owner, dir: &Path, tls: &ServerTls, password: bool) -> io::Result<Vec<(String, String)>> {
    let mut settings = vec![("ssl".to_owned(), "on".to_owned())];
    for (name, pem, setting) in
        [("server.crt", &tls.cert_pem, "ssl_cert_file"), ("server.key", &tls.key_pem, "ssl_key_file")]
    {
        let path = dir.join(name);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(pem.as_bytes())?;
        owner.give(&path)?;
        settings.push((setting.to_owned(), path.display().to_string()));
    }
    let method = if password { "scram-sha-256" } else { "trust" };
    let hba =
        format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\nhostnossl all all 127.0.0.1/32 reject\n");
    fs::write(dir.join("data").join("pg_hba.conf"), hba)?;
    Ok(settings)
}

fn spawn_server(programs: &Programs, owner: Owner, dir: &Path, port: u16, options: &Options) -> io::Result<Child> {
    let log = OpenOptions::new().create(true).append(true).open(dir.join("postgres.log"))?;
    let mut cmd = Command::new(&programs.postgres);
    cmd.arg("-D").arg(dir.join("data")).arg("-p").arg(port.to_string()).arg("-k").arg(dir.join("sock"));
    let mut settings = vec![
        ("listen_addresses".to_owned(), "127.0.0.1".to_owned()),
        ("max_connections".to_owned(), options.max_connections.to_string()),
    ];
    if !options.fsync {
        for name in ["fsync", "synchronous_commit", "full_page_writes"] {
            settings.push((name.to_owned(), "off".to_owned()));
        }
    }
    settings.extend(options.settings.iter().cloned());
    for (name, value) in settings {
        cmd.arg("-c").arg(format!("{name}={value}"));
    }
    // Its own process group: a terminal's Ctrl-C does not reach it, and kill9 can take every backend at once.
    cmd.current_dir(dir).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
    clear_pg_env(&mut cmd);
    owner.apply(&mut cmd);
    cmd.spawn()
}

/// Waits until the server says, in `postmaster.pid`, that it accepts connections (what `pg_ctl -w` reads).
fn wait_ready(child: &mut Child, dir: &Path, port: u16) -> Result<(), Start> {
    let start = Instant::now();
    let pidfile = dir.join("data/postmaster.pid");
    let log_tail = || {
        let log = fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
        let from = log.len().saturating_sub(2000);
        log.get(from..).unwrap_or_default().to_owned()
    };
    loop {
        if let Some(status) = child.try_wait().map_err(Start::Failed)? {
            let log = log_tail();
            if log.contains("Address already in use") {
                return Err(Start::PortTaken);
            }
            return Err(Start::Failed(io::Error::other(format!("postgres exited ({status}):\n{log}"))));
        }
        if let Ok(text) = fs::read_to_string(&pidfile) {
            let lines: Vec<&str> = text.lines().collect();
            let ours = lines.first().is_some_and(|l| l.trim() == child.id().to_string());
            let on_port = lines.get(3).is_some_and(|l| l.trim() == port.to_string());
            if ours && on_port && lines.get(7).is_some_and(|l| l.trim() == "ready") {
                return Ok(());
            }
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(Start::Failed(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("postgres not ready after {START_TIMEOUT:?}:\n{}", log_tail()),
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops an unreaped server child: SIGINT (fast shutdown) and up to `grace` for it to exit, then SIGKILL to its
/// whole process group; reaps it.
fn stop_child(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let pid = child.id();
    if !grace.is_zero() && signal::to_process(pid, signal::SIGINT).is_ok() {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Still unreaped: the group id cannot have been reused.
    let _ = signal::to_group(pid, signal::SIGKILL);
    let _ = child.wait();
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Removes libpq's environment (PGHOST, PGPASSWORD, PGOPTIONS...) so only our arguments count.
fn clear_pg_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("PG")) {
            cmd.env_remove(name);
        }
    }
}

fn run_psql(mut cmd: Command, sql: &str) -> io::Result<String> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| io::Error::other("psql's stdin is not a pipe"))?;
    let sql = sql.to_owned();
    // Written from another thread: a large script and a large result would otherwise fill both pipes.
    let writer = std::thread::spawn(move || stdin.write_all(sql.as_bytes()));
    let out = child.wait_with_output()?;
    let written = writer.join().map_err(|_| io::Error::other("the thread writing psql's stdin panicked"))?;
    check(&out, "psql")?;
    written?;
    String::from_utf8(out.stdout).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// An error with the program's stderr when it failed.
fn check(out: &Output, what: &str) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())))
}
