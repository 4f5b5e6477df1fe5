//! What `vigil enroll` wrote for an agent, read back for the protocol test client: [`AgentCreds`] and [`load_key`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use russh::keys::PrivateKey;
use vigil_schema::agent_config::AgentConfigFile;
use vigil_schema::job::Schedule;
use vigil_schema::secret::{AgentSecret, EnvelopeKeys};

/// What an enrolled agent holds: its id, the server it dials and that server's pinned key, its SSH key and its
/// envelope keys, and the hash of the schedule it was given.
#[derive(Clone)]
pub struct AgentCreds {
    pub dir: PathBuf,
    pub agent_id: String,
    pub server: String,
    pub server_host_key: String,
    pub key: PrivateKey,
    pub keys: EnvelopeKeys,
    pub schedule_hash: String,
}

impl std::fmt::Debug for AgentCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCreds")
            .field("dir", &self.dir)
            .field("agent_id", &self.agent_id)
            .field("server", &self.server)
            .field("server_host_key", &self.server_host_key)
            .finish_non_exhaustive()
    }
}

impl AgentCreds {
    /// Reads `<dir>/agent.toml`, the key file it names and the schedule file.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("agent.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: AgentConfigFile = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let key_path = dir.join(&file.key_file);
        let key = load_key(&key_path)?;
        let secret = AgentSecret::from_hex(&file.secret.0).context("agent.toml: envelope secret")?;
        let schedule_path = dir.join(&file.schedule_file);
        let schedule: Schedule = serde_json::from_str(
            &std::fs::read_to_string(&schedule_path).with_context(|| format!("reading {}", schedule_path.display()))?,
        )
        .with_context(|| format!("parsing {}", schedule_path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            agent_id: file.agent_id.clone(),
            server: file.server.clone(),
            server_host_key: file.server_host_key.clone(),
            key,
            keys: secret.derive_keys(),
            schedule_hash: schedule.hash(),
        })
    }
}

/// Reads an OpenSSH private key file.
pub fn load_key(path: &Path) -> Result<PrivateKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKey::from_openssh(text.as_bytes()).with_context(|| format!("{}: not an OpenSSH private key", path.display()))
}
