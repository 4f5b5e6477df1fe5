//! `vigil bootstrap`, `vigil uninstall`, `vigil enroll` and `vigil host-key`: the commands that install, remove
//! and mint agents, printing what became of each host. The work is in `vigil_server::bootstrap`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use vigil_server::{bootstrap, keys};

use super::{Files, Out};

/// `vigil host-key`: the server's SSH host-key fingerprint (created on first use).
pub fn host_key(files: &Files) -> anyhow::Result<ExitCode> {
    let config = files.load()?;
    let mut out = Out::new();
    writeln!(out, "{}", keys::server_fingerprint(&config.server)?)?;
    Ok(ExitCode::SUCCESS)
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

/// `vigil bootstrap`: the plan of each host, executed (or only printed with `--dry-run`), and a summary.
pub fn bootstrap(files: &Files, args: BootstrapArgs<'_>) -> anyhow::Result<ExitCode> {
    let config = files.load()?;
    let outcome = super::runtime()?.block_on(bootstrap::bootstrap(
        config,
        args.hosts,
        args.all,
        args.dry_run,
        args.accept_new_host_key,
        args.parallel,
    ))?;
    write!(Out::new(), "{outcome}")?;
    Ok(if outcome.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `vigil uninstall`: stop and remove each host's agent, and forget its registration.
pub fn uninstall(files: &Files, names: &[String], all: bool, accept_new: bool) -> anyhow::Result<ExitCode> {
    let config = files.load()?;
    let results = super::runtime()?.block_on(bootstrap::uninstall(config, names, all, accept_new))?;
    let mut out = Out::new();
    for (host, r) in &results {
        match r {
            Ok(()) => writeln!(out, "ok     {host}: agent stopped, removed, registration forgotten")?,
            Err(e) => writeln!(out, "FAILED {host}: {e}")?,
        }
    }
    Ok(if results.iter().all(|(_, r)| r.is_ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What `vigil enroll` was asked to do.
#[derive(Debug)]
pub struct EnrollArgs<'a> {
    pub host: &'a str,
    pub dir: &'a Path,
    pub utmp: Option<String>,
    pub auth_log: Option<String>,
}

/// `vigil enroll`: mint, register and write a host's agent files into a directory; prints the agent id.
pub fn enroll(files: &Files, args: EnrollArgs<'_>) -> anyhow::Result<ExitCode> {
    let config = files.load()?;
    let collect = vigil_schema::agent_config::CollectPaths { utmp: args.utmp, auth_log: args.auth_log };
    let agent_id = bootstrap::enroll(&config, args.host, args.dir, collect)?;
    writeln!(Out::new(), "{agent_id}")?;
    Ok(ExitCode::SUCCESS)
}
