//! Agents on this machine (`transport="local"`), without SSH: the private directory in the temp directory, looking
//! at what is installed, executing a [`Plan`] there, and stopping only a process verified to be the agent.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vigil_schema::agent_config::CollectPaths;

use super::credentials::{self, AgentFiles, Installed};
use super::plan::{Inputs, Inspection, Plan, Step};
use super::{BootstrapError, Done, dir_name, endpoint_for, fallback_endpoints_for, layout, sha256_hex};
use crate::config::{Config, Host};
use crate::store::{AgentRecord, Store};

/// The private directory of `host`'s local agent: `$TMPDIR/vigil-agent-<host>`.
pub fn agent_dir(host: &str) -> PathBuf {
    std::env::temp_dir().join(dir_name(host))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |error| BootstrapError::Io { path: path.to_owned(), error }
}

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Checks that an existing `dir` is a plain directory of this user (a shared temp directory is hostile ground).
fn check_ours(dir: &Path) -> Result<bool, BootstrapError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            Err(BootstrapError::Unsafe(format!("{} exists and is not a plain directory", dir.display())))
        }
        Ok(m) if m.uid() != my_uid() => {
            Err(BootstrapError::Unsafe(format!("{} belongs to another user", dir.display())))
        }
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Creates the directory 0700, or checks that an existing one is ours and not a symlink, and makes it 0700.
pub fn ensure_dir(dir: &Path) -> Result<(), BootstrapError> {
    check_ours(dir)?;
    vigil_sys::fs::private_dir(dir).map_err(io(dir))
}

/// Whether an agent holds the directory's lock (i.e. runs).
pub fn is_running(dir: &Path) -> bool {
    let Ok(f) = File::options().read(true).write(true).open(dir.join(layout::LOCK)) else { return false };
    match f.try_lock() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(_) => true,
    }
}

/// What is installed in `dir`.
pub fn inspect(dir: &Path) -> Result<Inspection, BootstrapError> {
    let exists = check_ours(dir)?;
    let read = |name| exists.then(|| std::fs::read(dir.join(name)).ok()).flatten();
    let installed = read(layout::CONFIG).and_then(|text| {
        let text = zeroize::Zeroizing::new(String::from_utf8(text).ok()?);
        Installed::parse(&text, dir.join(layout::KEY).is_file())
    });
    Ok(Inspection {
        dir: dir.display().to_string(),
        agent_sha: read(layout::BINARY).map(|b| sha256_hex(&b)),
        installed,
        running: exists && is_running(dir),
        notes: Vec::new(),
    })
}

fn staged(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}{name}", super::commands::linux::STAGED))
}

/// Writes one staged file with `mode`, durably.
fn stage_file(dir: &Path, name: &str, mode: u32, bytes: &[u8]) -> Result<(), BootstrapError> {
    let path = staged(dir, name);
    vigil_sys::fs::write_private(&path, bytes).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io(&path))
}

/// Installs or repairs the agent of a local host: the same [`Plan`] an SSH host gets, executed here.
pub fn bootstrap_local(
    config: &Config,
    host: &Host,
    store: &mut Store,
    server_fingerprint: &str,
    binary: &Path,
) -> Result<Done, BootstrapError> {
    let dir = agent_dir(&host.name);
    let bytes = std::fs::read(binary).map_err(io(binary))?;
    let registered = store.agents()?;
    let plan = plan_local(config, host, &registered, server_fingerprint, &sha256_hex(&bytes))?;
    execute(config, host, store, server_fingerprint, &bytes, &dir, &plan)
}

/// The plan for a local host (what a dry run prints).
pub fn plan_local(
    config: &Config,
    host: &Host,
    registered: &[AgentRecord],
    server_fingerprint: &str,
    binary_sha: &str,
) -> Result<(Plan, Inspection), BootstrapError> {
    let insp = inspect(&agent_dir(&host.name))?;
    let endpoint = endpoint_for(config, host);
    let fallbacks = fallback_endpoints_for(config, host);
    let inputs = Inputs {
        registered,
        host: &host.name,
        fingerprint: server_fingerprint,
        endpoint: &endpoint,
        fallbacks: &fallbacks,
        commands: host.commands,
        binary_sha,
        // The local agent's start is confirmed by its lock (bootstrap_local also runs inside `vigil serve`).
        server_up: false,
    };
    Ok((Plan::decide(&insp, &inputs), insp))
}

fn execute(
    config: &Config,
    host: &Host,
    store: &mut Store,
    server_fingerprint: &str,
    binary: &[u8],
    dir: &Path,
    (plan, insp): &(Plan, Inspection),
) -> Result<Done, BootstrapError> {
    let mut done = Done::default();
    let mut files: Option<AgentFiles> = None;
    let mut replaced = None;
    for step in &plan.steps {
        match *step {
            Step::Stage { binary: with_binary, credentials } => {
                ensure_dir(dir)?;
                let result = (|| {
                    if with_binary {
                        stage_file(dir, layout::BINARY, 0o700, binary)?;
                    }
                    if credentials {
                        let f = AgentFiles::mint(
                            config,
                            host,
                            server_fingerprint,
                            CollectPaths::default(),
                            insp.previous_secrets(),
                        )?;
                        for (name, mode, bytes) in f.parts() {
                            stage_file(dir, name, mode, bytes)?;
                        }
                        files = Some(f);
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    remove_staged(dir);
                    return Err(e);
                }
                done.uploaded = with_binary;
            }
            Step::Register => {
                let f = files.as_ref().ok_or(BootstrapError::Plan("register before staging"))?;
                replaced = Some(credentials::register(store, f, &host.name)?.1);
                done.minted = true;
            }
            Step::Activate { stop: stop_first, binary, credentials, start: start_after } => {
                let result = activate(dir, stop_first, binary, credentials, start_after);
                if let Err(e) = result {
                    if let Some(old) = &replaced {
                        credentials::unregister(store, &host.name, old.as_ref())?;
                    }
                    return Err(e);
                }
                done.started = start_after;
            }
            Step::Confirm(_) => {
                if !is_running(dir) {
                    return Err(BootstrapError::Failed(format!("agent in {} is not running", dir.display())));
                }
            }
        }
        done.steps.push(step.to_string());
    }
    super::finish_steps(plan, &mut done);
    Ok(done)
}

fn remove_staged(dir: &Path) {
    for name in [layout::BINARY, layout::KEY, layout::SCHEDULE, layout::CONFIG] {
        let _ = std::fs::remove_file(staged(dir, name));
    }
}

fn activate(
    dir: &Path,
    stop_first: bool,
    binary: bool,
    credentials: bool,
    start_after: bool,
) -> Result<(), BootstrapError> {
    if stop_first {
        stop(dir)?;
    }
    let mut names = Vec::new();
    if binary {
        names.push(layout::BINARY);
    }
    if credentials {
        names.extend([layout::KEY, layout::SCHEDULE, layout::CONFIG]);
    }
    for name in names {
        let to = dir.join(name);
        std::fs::rename(staged(dir, name), &to).map_err(io(&to))?;
    }
    vigil_sys::fs::sync_parent(&dir.join(layout::CONFIG)).map_err(io(dir))?;
    if start_after {
        start(dir)?;
    }
    Ok(())
}

/// Starts the agent detached by its own `--detach` (a session of its own, output to agent.log; no util-linux
/// `setsid` needed), so it outlives this process and is never our zombie; `--detach` returns once the agent holds its
/// lock, or fails with the log's last lines.
pub fn start(dir: &Path) -> Result<(), BootstrapError> {
    let binary = dir.join(layout::BINARY);
    let out = Command::new(&binary)
        .arg("--config")
        .arg(dir.join(layout::CONFIG))
        .arg("--detach")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(io(&binary))?;
    if !out.status.success() || !is_running(dir) {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(BootstrapError::Failed(format!(
            "agent in {} did not start ({}): {}",
            dir.display(),
            out.status,
            why.trim()
        )));
    }
    Ok(())
}

/// Stops the agent of `dir` if it runs, by the agent binary's own `--stop` (the one check every host gets:
/// `agent/src/control.rs` signals only a pid verified as this directory's agent, SIGTERM then SIGKILL). A staged new
/// binary, when there is one, does the stopping: an installed binary from an older vigil may lack the flag.
pub fn stop(dir: &Path) -> Result<(), BootstrapError> {
    if !is_running(dir) {
        return Ok(());
    }
    let staged = staged(dir, layout::BINARY);
    let tool = if staged.is_file() { staged } else { dir.join(layout::BINARY) };
    let out = Command::new(&tool).arg("--stop").arg(dir).stdin(Stdio::null()).output().map_err(io(&tool))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(BootstrapError::Unsafe(format!("{}: {}; nothing signalled", dir.display(), why.trim())));
    }
    Ok(())
}

/// Stops a local agent (verified) and removes its directory (only a plain directory of this user), and its
/// registration.
pub fn uninstall_local(host: &str, store: &mut Store) -> Result<(), BootstrapError> {
    let dir = agent_dir(host);
    if check_ours(&dir)? {
        stop(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    store.remove_agents_of_host(host)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("t");
        std::fs::create_dir(&target).unwrap();
        let link = tmp.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(check_ours(&link), Err(BootstrapError::Unsafe(_))));
        assert!(matches!(inspect(&link), Err(BootstrapError::Unsafe(_))));
        assert!(!check_ours(&tmp.path().join("missing")).unwrap());
    }
}
