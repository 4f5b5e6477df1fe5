//! Loading `agent.toml` (format in `vigil_schema::agent_config`) into what the agent runs with.

use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;
use vigil_schema::agent_config::AgentConfigFile;
use vigil_schema::job::Schedule;
use vigil_schema::secret::{AgentSecret, EnvelopeKeys};

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{}: {cause}", path.display())]
    Toml { path: PathBuf, cause: toml::de::Error },
    #[error("{}: {field}: {cause}", path.display())]
    Secret { path: PathBuf, field: String, cause: vigil_schema::secret::SecretError },
    #[error("{}: not an OpenSSH private key: {cause}", path.display())]
    Key { path: PathBuf, cause: russh::keys::ssh_key::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: &'static str },
}

/// The agent's resolved configuration. `Debug` shows no key material (the key types redact themselves).
#[derive(Debug)]
pub struct AgentConfig {
    pub agent_id: String,
    pub server: String,
    /// The other nodes' endpoints, tried in order after `server` (`push`'s rotation).
    pub fallback_servers: Vec<String>,
    pub server_host_key: String,
    pub key: PrivateKeyBox,
    pub keys: EnvelopeKeys,
    /// Keys of the secrets this agent had before (`previous_secrets`): spooled reports sealed under them are
    /// re-sealed under [`AgentConfig::keys`] at start.
    pub previous_keys: Vec<EnvelopeKeys>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub spool_max_reports: u64,
    pub schedule_file: PathBuf,
    pub utmp: Option<PathBuf>,
    pub auth_log: Option<PathBuf>,
    /// The directory holding agent.toml: the agent's private directory.
    pub dir: PathBuf,
    /// The host opted in to command jobs (`commands = true`).
    pub commands: bool,
}

/// The agent's SSH private key, never printed.
pub struct PrivateKeyBox(pub PrivateKey);

impl std::fmt::Debug for PrivateKeyBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl AgentConfig {
    /// Reads and checks `agent.toml` and the key file it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: &'static str| ConfigError::Invalid { path: path.to_owned(), message };
        let secret_error = |field: String, cause| ConfigError::Secret { path: path.to_owned(), field, cause };
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io { path: path.to_owned(), cause })?;
        let file: AgentConfigFile =
            toml::from_str(&text).map_err(|cause| ConfigError::Toml { path: path.to_owned(), cause })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let resolve = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { dir.join(p) };
        if file.agent_id.is_empty() || file.agent_id.len() > vigil_schema::envelope::MAX_AGENT_ID {
            return Err(invalid("agent_id must be 1 to 64 characters"));
        }
        if !file.server_host_key.starts_with("SHA256:") {
            return Err(invalid("server_host_key must be a SHA256:... fingerprint"));
        }
        if !file.fallback_servers.iter().all(|s| is_host_port(s)) {
            return Err(invalid("fallback_servers must be host:port endpoints"));
        }
        let secret = AgentSecret::from_hex(&file.secret.0).map_err(|e| secret_error("secret".into(), e))?;
        let previous_keys = file
            .previous_secrets
            .iter()
            .enumerate()
            .map(|(i, s)| AgentSecret::from_hex(&s.0).map(|s| s.derive_keys()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(i, e)| secret_error(format!("previous_secrets[{i}]"), e))?;
        let key_path = resolve(&file.key_file);
        let key_text =
            std::fs::read_to_string(&key_path).map_err(|cause| ConfigError::Io { path: key_path.clone(), cause })?;
        let key = PrivateKey::from_openssh(key_text.as_bytes())
            .map_err(|cause| ConfigError::Key { path: key_path.clone(), cause })?;
        Ok(Self {
            agent_id: file.agent_id.clone(),
            server: file.server.clone(),
            fallback_servers: file.fallback_servers.clone(),
            server_host_key: file.server_host_key.clone(),
            key: PrivateKeyBox(key),
            keys: secret.derive_keys(),
            previous_keys,
            spool_dir: resolve(&file.spool_dir),
            spool_max_bytes: file.spool_max_bytes.max(1),
            spool_max_reports: file.spool_max_reports.max(1),
            schedule_file: resolve(&file.schedule_file),
            utmp: file.collect.utmp.as_deref().map(resolve),
            auth_log: file.collect.auth_log.as_deref().map(resolve),
            dir,
            commands: file.commands,
        })
    }

    /// The schedule saved by the last pull (or by bootstrap); empty when there is none yet.
    pub fn load_schedule(&self) -> Schedule {
        match std::fs::read(&self.schedule_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.schedule_file.display(), error = %e, "saved schedule unreadable, waiting for the server's");
                Schedule::default()
            }),
            Err(_) => Schedule::default(),
        }
    }

    /// Saves a pulled schedule so a restart runs it even before reconnecting.
    pub fn save_schedule(&self, schedule: &Schedule) -> std::io::Result<()> {
        vigil_sys::fs::write_private(&self.schedule_file, &serde_json::to_vec(schedule).map_err(std::io::Error::other)?)
    }
}

/// `host:port` with a non-empty host and a port number (`[v6]:port` included).
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_servers_must_be_host_and_port() {
        for ok in ["127.0.0.1:7022", "node-b.example:22", "[::1]:7022"] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in ["", "127.0.0.1", ":7022", "node-b:", "node-b:70000", "node-b:x"] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}
