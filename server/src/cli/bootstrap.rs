//! `vigil bootstrap`, `vigil uninstall`, `vigil enroll` and `vigil host-key`: the commands that install, remove
//! and mint agents, printing what became of each host.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use vigil_server::config::{Auth, Config, Host, Transport};
use vigil_server::remote::{KnownHosts, NewKeys};
use vigil_server::store::Store;
use vigil_server::{bootstrap, keys, provision};

use super::{Files, Out};

/// `vigil host-key`: the server's SSH host-key fingerprint (created on first use).
pub fn host_key(files: &Files) -> anyhow::Result<ExitCode> {
    let config = files.load()?;
    let mut out = Out::new();
    writeln!(out, "{}", keys::host_key_fingerprint(&config.server.data_dir)?)?;
    Ok(ExitCode::SUCCESS)
}

/// The hosts named on the command line (clap has checked that there are some, or `--all`).
fn select_hosts(config: &Config, names: &[String], all: bool) -> anyhow::Result<Vec<Host>> {
    if all {
        return Ok(config.clients.clone());
    }
    names.iter().map(|n| config.host(n).cloned().with_context(|| format!("{n}: no such host in clients.xml"))).collect()
}

fn ctx(config: Config, accept_new: bool) -> anyhow::Result<Arc<bootstrap::Ctx>> {
    let fingerprint = keys::host_key_fingerprint(&config.server.data_dir)?;
    let binary_path = provision::agent_binary()?;
    let binary = std::fs::read(&binary_path).with_context(|| format!("reading {}", binary_path.display()))?;
    let binary_sha = provision::sha256_hex(&binary);
    let store = Store::open(&config.server.database)?;
    let server_up =
        std::net::TcpStream::connect_timeout(&config.server.listen, std::time::Duration::from_millis(500)).is_ok();
    Ok(Arc::new(bootstrap::Ctx {
        known: KnownHosts::new(&config.server.data_dir),
        config: Arc::new(config),
        store: std::sync::Mutex::new(store),
        fingerprint,
        binary_path,
        binary,
        binary_sha,
        new_keys: if accept_new { NewKeys::Accept } else { NewKeys::Refuse },
        server_up,
        checkin_timeout: std::time::Duration::from_secs(20),
    }))
}

/// What `vigil bootstrap` was asked to do.
#[derive(Debug)]
pub struct BootstrapArgs<'a> {
    pub hosts: &'a [String],
    pub all: bool,
    pub dry_run: bool,
    pub accept_new_host_key: bool,
    pub parallel: usize,
}

pub fn bootstrap(files: &Files, args: BootstrapArgs<'_>) -> anyhow::Result<ExitCode> {
    let config = files.load()?;
    let hosts = select_hosts(&config, args.hosts, args.all)?;
    let mut out = Out::new();
    if args.dry_run {
        dry_run(&mut out, &config, &hosts, args.accept_new_host_key)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = ctx(config, args.accept_new_host_key)?;
    let results = super::runtime()?.block_on(bootstrap::run_all(ctx, hosts, args.parallel));
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    writeln!(out, "summary:")?;
    for r in &results {
        match &r.result {
            Ok(done) => writeln!(out, "  ok     {}: {done}", r.host)?,
            Err(e) => writeln!(out, "  FAILED {}: {e}", r.host)?,
        }
    }
    writeln!(out, "{} succeeded, {failed} failed", results.len() - failed)?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `--dry-run`: what would be done to each host.
fn dry_run(out: &mut Out, config: &Config, hosts: &[Host], accept_new: bool) -> std::io::Result<()> {
    let known = KnownHosts::new(&config.server.data_dir);
    for h in hosts {
        let endpoint = provision::endpoint_for(config, h);
        let dir = provision::dir_name(&h.name);
        match h.transport {
            Transport::Local => writeln!(
                out,
                "{}: local: install the agent in {} (0700), register it, start it dialing {endpoint}",
                h.name,
                provision::local::agent_dir(&h.name).display(),
            )?,
            Transport::Ssh => {
                let key = match (&h.host_key, known.get(h)) {
                    (Some(k), _) => format!("pinned host key {k}"),
                    (None, Some(k)) => format!("recorded host key {k}"),
                    (None, None) if accept_new => "new host key will be accepted and recorded".to_owned(),
                    (None, None) => "unknown host key: would be refused without --accept-new-host-key".to_owned(),
                };
                let auth = match &h.auth {
                    Auth::Password(_) => "password",
                    Auth::PasswordEnv(_) => "password from the environment",
                    Auth::KeyFile { .. } => "key file",
                    Auth::None => "no credentials",
                };
                writeln!(
                    out,
                    "{}: ssh {}@{}:{} ({auth}; {key}); install in $TMPDIR/{dir} (0700, /tmp by default; the home \
                     directory if /tmp is noexec), upload the agent unless its sha256 matches, write agent.toml, \
                     key and schedule (0600), start it dialing {endpoint}, confirm its check-in",
                    h.name,
                    h.username.as_deref().unwrap_or("?"),
                    h.ip,
                    h.port
                )?;
            }
        }
    }
    writeln!(out, "dry run: nothing changed")
}

pub fn uninstall(files: &Files, names: &[String], accept_new: bool) -> anyhow::Result<ExitCode> {
    let config = files.load()?;
    let hosts = select_hosts(&config, names, false)?;
    let ctx = ctx(config, accept_new)?;
    let rt = super::runtime()?;
    let mut out = Out::new();
    let mut failed = 0;
    for h in &hosts {
        let r = match h.transport {
            Transport::Local => ctx
                .store
                .lock()
                .map_err(|_| anyhow::anyhow!("store lock poisoned"))
                .and_then(|mut s| Ok(bootstrap::uninstall_local(&h.name, &mut s)?)),
            Transport::Ssh => rt.block_on(bootstrap::uninstall_ssh(&ctx, h)).map_err(anyhow::Error::from),
        };
        match r {
            Ok(()) => writeln!(out, "ok     {}: agent stopped, removed, registration forgotten", h.name)?,
            Err(e) => {
                failed += 1;
                writeln!(out, "FAILED {}: {e:#}", h.name)?;
            }
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What `vigil enroll` was asked to do.
#[derive(Debug)]
pub struct EnrollArgs<'a> {
    pub host: &'a str,
    pub dir: &'a Path,
    pub utmp: Option<String>,
    pub auth_log: Option<String>,
}

pub fn enroll(files: &Files, args: EnrollArgs<'_>) -> anyhow::Result<ExitCode> {
    use provision::{AgentFiles, layout};
    let config = files.load()?;
    let name = args.host;
    let host = config.host(name).with_context(|| format!("{name}: no such host in clients.xml"))?;
    let fingerprint = keys::host_key_fingerprint(&config.server.data_dir)?;
    let paths = vigil_schema::agent_config::CollectPaths { utmp: args.utmp, auth_log: args.auth_log };
    let agent = AgentFiles::new(&config, host, &fingerprint, paths)?;
    keys::ensure_private_dir(args.dir)?;
    let mut store = Store::open(&config.server.database)?;
    store.remove_agents_of_host(name)?;
    store.register_agent(&agent.record(name, vigil_sys::clock::now_ms()))?;
    keys::write_private(&args.dir.join(layout::KEY), agent.creds.private_key_openssh.as_bytes())?;
    keys::write_private(&args.dir.join(layout::SCHEDULE), agent.schedule_json.as_bytes())?;
    keys::write_private(&args.dir.join(layout::CONFIG), agent.agent_toml.as_bytes())?;
    writeln!(Out::new(), "{}", agent.creds.agent_id)?;
    Ok(ExitCode::SUCCESS)
}
