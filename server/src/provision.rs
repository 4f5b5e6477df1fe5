//! Provisioning an agent: the private directory it lives in, the files bootstrap writes there (binary, agent.toml,
//! key, initial schedule), its registration with the server, and starting and stopping it.
//!
//! The steps are transport-neutral ([`AgentFiles`] is what gets written, wherever); [`local`] applies them to this
//! machine without SSH.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vigil_schema::agent_config::{AgentConfigFile, CollectPaths, SecretHex};
use vigil_schema::job::Schedule;

use crate::config::{Config, Host};
use crate::keys::AgentCredentials;
use crate::store::AgentRecord;

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

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Keys(#[from] crate::keys::KeyError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Unsafe(String),
    #[error("agent binary not found at {0} (build it with `cargo build -p vigil-agent`, or set VIGIL_AGENT_BIN)")]
    NoBinary(PathBuf),
    #[error("could not encode agent.toml: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io { path: path.to_owned(), source }
}

/// The agent binary shipped to Linux hosts: `VIGIL_AGENT_BIN`, else `vigil-agent` beside the running `vigil`.
pub fn agent_binary() -> Result<PathBuf, ProvisionError> {
    if let Some(p) = std::env::var_os("VIGIL_AGENT_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(ProvisionError::NoBinary(p)) };
    }
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let p = exe.with_file_name(layout::BINARY);
    if p.is_file() { Ok(p) } else { Err(ProvisionError::NoBinary(p)) }
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

/// Everything written into a new agent's directory, besides the binary.
#[derive(Debug)]
pub struct AgentFiles {
    pub creds: AgentCredentials,
    pub agent_toml: String,
    pub schedule_json: String,
}

impl AgentFiles {
    /// Mints credentials for `host` and renders its files.
    pub fn new(
        config: &Config,
        host: &Host,
        server_fingerprint: &str,
        collect: CollectPaths,
    ) -> Result<Self, ProvisionError> {
        let creds = AgentCredentials::mint(&host.name)?;
        let file = AgentConfigFile {
            agent_id: creds.agent_id.clone(),
            server: endpoint_for(config, host),
            server_host_key: server_fingerprint.to_owned(),
            key_file: layout::KEY.into(),
            secret: SecretHex(creds.secret.to_hex()),
            previous_secrets: Vec::new(),
            spool_dir: "spool".into(),
            spool_max_bytes: vigil_schema::agent_config::DEFAULT_SPOOL_MAX_BYTES,
            spool_max_reports: vigil_schema::agent_config::DEFAULT_SPOOL_MAX_REPORTS,
            schedule_file: layout::SCHEDULE.into(),
            collect,
        };
        let agent_toml = toml::to_string(&file).map_err(|e| ProvisionError::Encode(e.to_string()))?;
        let schedule: Schedule = config.schedule_for(&host.name);
        let schedule_json = serde_json::to_string(&schedule).map_err(|e| ProvisionError::Encode(e.to_string()))?;
        Ok(Self { creds, agent_toml, schedule_json })
    }

    /// The row the server keeps: public key and envelope secret.
    pub fn record(&self, host: &str, now_ms: i64) -> AgentRecord {
        AgentRecord {
            agent_id: self.creds.agent_id.clone(),
            host: host.to_owned(),
            public_key: self.creds.public_key_openssh.clone(),
            secret_hex: self.creds.secret.to_hex(),
            version: None,
            registered_at_ms: now_ms,
            last_seen_at_ms: None,
        }
    }
}

/// Installing and running agents on this machine, without SSH.
pub mod local {
    use std::fs::File;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::{ProvisionError, io, layout};

    /// The private directory of `host`'s local agent: `$TMPDIR/vigil-agent-<host>`.
    pub fn agent_dir(host: &str) -> PathBuf {
        std::env::temp_dir().join(super::dir_name(host))
    }

    fn my_uid() -> Result<u32, ProvisionError> {
        std::fs::metadata("/proc/self").map(|m| m.uid()).map_err(io(Path::new("/proc/self")))
    }

    /// Creates the directory 0700, or checks that an existing one is ours, private and not a symlink (a shared
    /// temp directory is hostile ground).
    pub fn ensure_dir(dir: &Path) -> Result<(), ProvisionError> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) => {
                if m.file_type().is_symlink() || !m.is_dir() {
                    return Err(ProvisionError::Unsafe(format!(
                        "{} exists and is not a plain directory",
                        dir.display()
                    )));
                }
                if m.uid() != my_uid()? {
                    return Err(ProvisionError::Unsafe(format!("{} belongs to another user", dir.display())));
                }
                if m.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
                }
                Ok(())
            }
            Err(_) => std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(io(dir)),
        }
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

    /// Copies the agent binary in when its hash differs. Returns whether it changed.
    pub fn install_binary(dir: &Path, binary: &Path) -> Result<bool, ProvisionError> {
        let new = std::fs::read(binary).map_err(io(binary))?;
        let dest = dir.join(layout::BINARY);
        if std::fs::read(&dest).is_ok_and(|old| super::sha256_hex(&old) == super::sha256_hex(&new)) {
            return Ok(false);
        }
        let tmp = dir.join(".vigil-agent.tmp");
        std::fs::write(&tmp, &new).map_err(io(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(true)
    }

    /// Starts the agent detached (`setsid -f`), so it outlives this process and is never our zombie.
    pub fn start(dir: &Path) -> Result<(), ProvisionError> {
        let log = File::options().create(true).append(true).open(dir.join(layout::LOG)).map_err(io(dir))?;
        let log2 = log.try_clone().map_err(io(dir))?;
        let status = Command::new("setsid")
            .arg("-f")
            .arg(dir.join(layout::BINARY))
            .arg("--config")
            .arg(dir.join(layout::CONFIG))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status()
            .map_err(io(Path::new("setsid")))?;
        if !status.success() {
            return Err(ProvisionError::Unsafe(format!("setsid exited with {status}")));
        }
        // The agent takes its lock within milliseconds; wait for it so the caller can rely on is_running.
        for _ in 0..50 {
            if is_running(dir) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ProvisionError::Unsafe(format!("agent in {} did not start; see {}", dir.display(), layout::LOG)))
    }

    /// Stops the agent (SIGTERM, then SIGKILL after 5 s) if it runs.
    pub fn stop(dir: &Path) -> Result<(), ProvisionError> {
        if !is_running(dir) {
            return Ok(());
        }
        let pid = std::fs::read_to_string(dir.join(layout::PID)).map_err(io(dir))?;
        let pid = pid.trim().to_owned();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        for _ in 0..250 {
            if !is_running(dir) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }

    /// Writes a file 0600.
    pub fn write_private(dir: &Path, name: &str, contents: &[u8]) -> Result<(), ProvisionError> {
        crate::keys::write_private(&dir.join(name), contents)?;
        Ok(())
    }
}
